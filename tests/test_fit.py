"""captcha-ml fit: inspection, model input, style derivation and files, one tiny end-to-end run."""

from __future__ import annotations

import shutil
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from captcha_ml import fit
from captcha_ml.cli import app
from captcha_ml.config import DataConfig
from captcha_ml.data import synthetic
from captcha_ml.data.glyphs import GlyphBank
from captcha_ml.data.real import DataError
from captcha_ml.data.synthetic import SyntheticSpec
from captcha_ml.model import CaptchaNet, output_length
from captcha_ml.reader import Reader
from helpers import assert_fonts_draw_every_symbol

DIGITS = "0123456789"
DIGITS_SPEC = synthetic.preset("captcha", charset=DIGITS, min_len=4, max_len=4, width=96,
                               height=32)


def _labels(n: int, length=4, charset=DIGITS) -> list[str]:
    """n distinct labels, lengths cycling through ``length`` (int or tuple)."""
    lengths = length if isinstance(length, tuple) else (length,)
    out = []
    for i in range(n):  # i's digits in base len(charset), scrambled by a prime: all distinct
        k, v = lengths[i % len(lengths)], 7919 * i + 1234
        out.append("".join(charset[v // len(charset) ** j % len(charset)] for j in range(k)))
    assert len(set(out)) == n, "more labels than the lengths allow"
    return out


def _write(folder: Path, labels: list[str], sizes=((80, 30),), bg=255, ink=0, mode="L") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, label in enumerate(labels):
        size = sizes[i % len(sizes)]
        colour = (bg, bg // 2, 0) if mode == "RGB" else bg
        img = Image.new(mode, size, colour)
        ImageDraw.Draw(img).text((3 + i % 7, 5), label, fill=(ink,) * 3 if mode == "RGB" else ink)
        img.save(folder / f"{label}_{i:04d}.png")
    return folder


def test_inspect_sizes_lengths_rare_and_duplicates(tmp_path):
    labels = _labels(70, length=(4, 5, 6)) + ["0z12"]
    data = _write(tmp_path / "d", labels, sizes=((60, 20), (90, 30), (120, 40)))
    shutil.copy(next(data.glob("0z12_*")), data / "9999_copy.png")  # same pixels, other label
    insp = fit.inspect(data)
    assert insp.size == (90, 30) and len(insp.sizes) == 3
    assert (insp.min_len, insp.max_len) == (4, 6) and insp.channels == 1
    assert len(insp.conflicts) == 1 and insp.conflicts[0]["labels"] == ["0z12", "9999"]
    assert all(label not in ("0z12", "9999") for _, label in insp.samples)  # both copies dropped
    assert "z" not in insp.charset  # only seen in the dropped noisy image
    notes = "\n".join(fit.inspection_notes(insp))
    assert "policy: treat all as the median size 90x30" in notes and "label noise" in notes


def test_inspect_warns_on_rare_characters_and_spaces(tmp_path):
    insp = fit.inspect(_write(tmp_path / "d", _labels(64) + ["12x4", "12 4"]))
    assert insp.rare == {"x": 1, " ": 1}
    notes = fit.inspection_notes(insp)
    assert any(n.startswith("warning: characters seen fewer than 5") for n in notes)
    assert any(n.startswith("warning: spaces in 1 of the labels (e.g. '12 4')") for n in notes)


def test_too_small_folder_names_the_minimum(tmp_path):
    with pytest.raises(DataError, match=r"30 usable .*at least 60"):
        fit.inspect(_write(tmp_path / "d", _labels(30)))
    # Copies of one image (same label) count once: the split keeps them in one part.
    data = _write(tmp_path / "copies", _labels(50))
    for i, image in enumerate(sorted(data.glob("*.png"))[:20]):
        shutil.copy(image, data / f"{image.name.split('_')[0]}_copy{i}.png")
    with pytest.raises(DataError, match=r"50 usable distinct .*20 more are copies.*at least 60"):
        fit.inspect(data)
    assert fit.inspect(_write(tmp_path / "copies", _labels(70)[50:])).distinct == 70


def test_case_insensitive_lowercases_labels_and_charset(tmp_path):
    labels = [s.upper() if i % 2 else s for i, s in enumerate(_labels(64, 5, "abcdefgh234"))]
    data = _write(tmp_path / "d", labels)
    insp = fit.inspect(data, case_sensitive=False)
    assert insp.charset == insp.charset.lower() and "A" not in insp.charset
    assert all(label == label.lower() for _, label in insp.samples) and insp.mixed_case
    assert "B" in fit.inspect(data).charset  # case-sensitive keeps both cases


def test_every_font_of_the_mix_draws_every_symbol():
    """fit renders any charset of up to 62 symbols in every font of FONT_MIX: each font is
    found among the bundled ones and draws each of 0-9a-zA-Z as its own glyph (none missing,
    which PIL would draw as the font's empty box)."""
    from captcha_ml.fit.style import FONT_MIX

    assert_fonts_draw_every_symbol(FONT_MIX)


@pytest.mark.parametrize("size,max_len", [((90, 30), 8), ((300, 80), 6), ((160, 60), 4)])
def test_model_input_gives_ctc_enough_steps(size, max_len):
    h, w, _ = fit.model_input(size, max_len)
    assert 32 <= h <= 64 and w % 8 == 0
    assert CaptchaNet(11).output_length(w) == output_length(w) >= 2 * max_len + 1


def test_narrow_text_widens_the_input_for_ctc():
    """Symbols that take a small share of the width get CTC_STEPS_PER_SYMBOL steps each in the
    text line (lower4to7: 7 symbols in 57% of 120 pixels had 1.2 and dropped or merged
    doubled letters); at most MAX_WIDEN x the aspect's width; wide symbols change nothing.
    The share is that of the narrowest tenth of the sample's symbols: long labels squeezed
    into the line the short ones fill."""
    share, steps = 0.1, fit.budget.CTC_STEPS_PER_SYMBOL
    h, w, why = fit.model_input((120, 40), 7, symbol_share=share)
    assert h == 40 and output_length(w) * share >= steps > output_length(120) * share
    assert f"{steps:g} per symbol" in why
    assert fit.model_input((120, 40), 7, symbol_share=0.001)[1] == fit.budget.MAX_WIDEN * 120
    assert fit.model_input((120, 40), 7, symbol_share=0.2) == fit.model_input((120, 40), 7)
    line = (0.1, 0.6)  # every label spans half the width; 2 of 20 have 7 letters, 18 have 4
    stats = [{"span": line, "length": 7}] * 2 + [{"span": line, "length": 4}] * 18
    assert fit.symbol_share(stats) == pytest.approx(0.5 / 7)  # the median would say 0.5 / 4


def test_finetuning_reads_a_larger_input_and_the_plan_pays_for_it():
    """Tall sources are pretrained at <= 40 rows and finetuned at up to 72; the budget gives
    finetuning fewer steps in proportion to the pixels; short sources use one input."""
    assert fit.model_input((200, 75), 5)[:2] == (40, 104)
    assert fit.model_input((200, 75), 5, fit.FINETUNE_MAX_HEIGHT)[:2] == (72, 192)
    assert fit.model_input((120, 40), 6, fit.FINETUNE_MAX_HEIGHT)[:2] == fit.model_input((120, 40), 6)[:2]
    # Small text is read larger: ink at 90x30 (text ~14.5 of 30 rows) finetunes with it at
    # FINETUNE_TEXT_ROWS rows, both sides grown alike; text that is tall enough, or a height
    # at its limit, stays.
    rows = fit.budget.FINETUNE_TEXT_ROWS
    small = fit.model_input((90, 30), 4, fit.FINETUNE_MAX_HEIGHT, 0.11)
    h, w, why = fit.model_input((90, 30), 4, fit.FINETUNE_MAX_HEIGHT, 0.11, 14.5, rows)
    assert small[:2] == (32, 184) and 14.5 * h / 30 == pytest.approx(rows, abs=0.5)
    assert w % 8 == 0 and w / 184 == pytest.approx(h / 32, abs=0.05)
    assert f"then {h}x{w}, not 32x184" in why and "FINETUNE_TEXT_ROWS" in why
    tall = rows * 30 / 32 + 0.5  # over `rows` rows at the 32-row input already
    assert fit.model_input((90, 30), 4, fit.FINETUNE_MAX_HEIGHT, 0.11, tall, rows) == small
    assert fit.model_input((90, 30), 4, 40, 0.11, 5, rows)[0] == 40
    cost = fit.input_cost((40, 104), (72, 192))
    assert 1 < cost <= 72 * 192 / (40 * 104) and fit.input_cost((40, 104), (40, 104)) == 1
    same, dear = fit.plan_budget(10, 100.0), fit.plan_budget(10, 100.0, finetune_cost=cost)
    assert dear.pretrain_steps == same.pretrain_steps
    assert dear.finetune_steps == pytest.approx(same.finetune_steps / cost, abs=1)


@pytest.mark.parametrize("bf16_rate, chosen", [(250.0, "bf16"), (110.0, "no"), (60.0, "no")])
def test_probe_chooses_bfloat16_only_where_it_is_faster(monkeypatch, bf16_rate, chosen):
    """auto: bfloat16 autocast where a step runs >= BF16_MIN_SPEEDUP x faster (AMX CPUs), else
    float32; then the chosen precision is timed on batches from a rendered pool; a precision
    given is timed alone."""
    import itertools

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU, as here
    monkeypatch.setattr(fit.budget, "_pool_batches", lambda *a: ((x for x in ["pool"]), 0.002))
    timed = []

    def rate(model, batches, precision, steps):
        rendered = not isinstance(batches, itertools.repeat)
        timed.append((precision, rendered))
        return {"no": 100.0, "bf16": bf16_rate}[precision] / (2 if rendered else 1)

    monkeypatch.setattr(fit.budget, "_images_per_s", rate)
    probe = fit.probe_throughput(DIGITS_SPEC, 32, 96, 3, 11)
    assert probe.precision == chosen and probe.step_images_per_s == {"no": 100.0, "bf16": bf16_rate}
    assert f"{bf16_rate / 100:.1f}x" in probe.why
    assert probe.images_per_s == probe.step_images_per_s[chosen] / 2 and probe.render_s == 0.002
    assert timed == [("no", False), ("bf16", False), (chosen, True)]
    timed.clear()
    forced = fit.probe_throughput(DIGITS_SPEC, 32, 96, 3, 11, precision="bf16")
    assert forced.precision == "bf16" and forced.step_images_per_s == {}
    assert timed == [("bf16", True)]


def test_probe_times_the_gpu_where_one_trains(monkeypatch):
    """With a GPU, training runs there (Accelerate's choice), so the probe times it there and
    both precisions are probed on it; without one, on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fit.budget.train_device().type == "cuda"
    monkeypatch.setattr(fit.budget, "_pool_batches", lambda *a: ((x for x in ["pool"]), 0.002))
    monkeypatch.setattr(fit.budget, "_images_per_s",
                        lambda model, batches, precision, steps: {"no": 900.0, "bf16": 1800.0}[
                            precision])
    probe = fit.probe_throughput(DIGITS_SPEC, 32, 96, 3, 11)
    assert probe.precision == "bf16" and "on this GPU (1800 vs 900 images/s" in probe.why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fit.budget.train_device().type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_probe_steps_run_on_the_gpu():
    """On a GPU machine the timed steps really run there (model and batches moved), in both
    precisions."""
    import itertools

    model = CaptchaNet(11, 1)
    x = torch.randn(8, 1, 32, 64)  # on the CPU, as the pool's loader gives them
    assert fit.budget._images_per_s(model, itertools.repeat(x), "no", steps=2) > 0
    assert fit.budget._images_per_s(model, itertools.repeat(x), "bf16", steps=2) > 0
    assert next(model.parameters()).device.type == "cuda"


def test_probe_times_real_steps_on_pool_batches():
    """The probe's timing runs real float32 and bfloat16 training steps on the CPU, on batches
    from a small pool it rendered (timing the rendering too)."""
    import itertools

    import torch

    model = CaptchaNet(11, 1)
    x = torch.randn(4, 1, 32, 64)
    assert fit.budget._images_per_s(model, itertools.repeat(x), "no", steps=1) > 0
    assert fit.budget._images_per_s(model, itertools.repeat(x), "bf16", steps=1) > 0
    batches, render_s = fit.budget._pool_batches(DIGITS_SPEC, 32, 96, 3, 4, pool=6)
    assert next(batches).shape == (4, 3, 32, 96) and 0 < render_s < 5
    assert fit.budget._images_per_s(CaptchaNet(11, 3), batches, "no", steps=4) > 0  # cycles


def test_steps_and_pool_fill_the_time_together():
    """Rendering a stage's pool (its synthetic images / POOL_REUSE, over the cores) plus
    training its steps takes the stage's seconds; pools are capped; finetuning's pool holds
    only its synthetic share."""
    seconds, ips, render_s = 100.0, 500.0, 0.002
    steps, pool = fit.budget.pooled_steps(seconds, ips, 32, 1.0, render_s, cores=2)
    assert pool == -(-steps * 32 // fit.budget.POOL_REUSE)
    step_s = 32 / ips + 32 * render_s / (fit.budget.POOL_REUSE * 2)  # one step, rounded away
    assert pool * render_s / 2 + steps * 32 / ips == pytest.approx(seconds, abs=step_s)
    no_render, _ = fit.budget.pooled_steps(seconds, ips, 32, 1.0, 0.0, cores=2)
    assert no_render == int(seconds * ips / 32) > steps
    steps16, half = fit.budget.pooled_steps(seconds, ips, 16, 0.5, render_s, cores=2)
    assert half == -(-steps16 * 8 // fit.budget.POOL_REUSE)  # 8 synthetic images a step
    assert fit.budget.pooled_steps(1e6, ips, 32, 1.0, render_s, 2)[1] == fit.budget.POOL_MAX_IMAGES
    plan = fit.plan_budget(10, ips, render_s=render_s, cores=2, finetune_share=0.5)
    assert plan.pretrain_pool == fit.budget.pool_size(plan.pretrain_steps, 32, 1.0)
    assert plan.finetune_pool == fit.budget.pool_size(plan.finetune_steps, 16, 0.5)
    assert fit.plan_budget(10, ips, max_steps=3).pretrain_pool == 3 * 32 // fit.budget.POOL_REUSE
    # Pretraining's share of the training time (10 minutes less a 90 s reserve), as its limit;
    # none under --max-steps.
    assert plan.pretrain_minutes == pytest.approx(fit.budget.PRETRAIN_SHARE * 510 / 60, abs=1e-3)
    assert fit.plan_budget(10, ips, max_steps=3).pretrain_minutes == 0


def test_config_rerun_keeps_its_precision_unless_told():
    from captcha_ml import config

    pre, fine = config.load(None, ["train.mixed_precision=bf16"]), config.load(None)
    assert fit.configs.override_precision(pre, fine, "auto").endswith("=no (from the configs)")
    assert (pre.train.mixed_precision, fine.train.mixed_precision) == ("bf16", "no")
    assert "(--precision)" in fit.configs.override_precision(pre, fine, "bf16")
    assert pre.train.mixed_precision == fine.train.mixed_precision == "bf16"


def test_unknown_precision_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--precision 'fp8': use one of auto, no, bf16"):
        fit.run(tmp_path / "missing", tmp_path / "out", precision="fp8")
    assert not (tmp_path / "out").exists()


def _styled(tmp_path: Path, name: str, spec: SyntheticSpec) -> fit.Inspection:
    synthetic.generate(tmp_path / name, 60, spec, seed=name, workers=1)
    return fit.inspect(tmp_path / name)


def test_style_follows_polarity_and_colour(tmp_path):
    dark_on_light = synthetic.preset("real", charset=DIGITS, min_len=4, max_len=4,
                                     width=120, height=40)
    light_on_dark = SyntheticSpec(style="captcha", width=120, height=40, charset=DIGITS,
                                  min_len=4, max_len=4, background=(0, 40),
                                  foreground=(200, 255), dots=20, grey=False)
    a, notes_a = fit.derive_style(_styled(tmp_path, "a", dark_on_light))
    b, notes_b = fit.derive_style(_styled(tmp_path, "b", light_on_dark))
    assert a.grey and not b.grey
    assert a.background[0] > a.foreground[1] and b.background[1] < b.foreground[0]
    assert a.style == "real" and b.style == "captcha" and b.dots > a.dots
    # Only the "real" drawer blurs; the line says what the "captcha" drawer does instead.
    assert any(f"blur {a.blur}" in n for n in notes_a)
    assert any("does not read blur" in n for n in notes_b)
    assert "dark glyphs on light" in notes_a[0] and "light glyphs on dark" in notes_b[0]


def test_style_encodes_renders_as_jpegs_where_the_sample_is_jpegs(tmp_path):
    """A sample of JPEGs gets renders encoded at its quality, each file's estimated from its
    quantisation table; PNGs, or JPEGs under half of the files, leave renders lossless."""
    spec = SyntheticSpec(style="captcha", width=120, height=40, charset=DIGITS, min_len=4,
                         max_len=4, grey=False)
    pngs = _styled(tmp_path, "png", spec)
    folder = tmp_path / "jpg"
    folder.mkdir()
    saved = {}
    for i, (path, label) in enumerate(pngs.samples):
        for quality in (40, 60):
            saved[i, quality] = folder / f"{label}_{i:03d}_q{quality}.jpg"
            Image.open(path).save(saved[i, quality], quality=quality)
    assert fit.style.jpeg_quality([saved[0, 40], saved[1, 60], saved[2, 60]]) == (60, 3)
    assert fit.style.jpeg_quality([saved[0, 40], pngs.samples[1][0], pngs.samples[2][0]]) == (0, 1)
    for path in folder.glob("*_q40.jpg"):
        path.unlink()
    jpegs, notes = fit.derive_style(fit.inspect(folder))
    assert jpegs.jpeg == 60 and any("are JPEGs of quality ~60: every render" in n for n in notes)
    lossless, notes = fit.derive_style(pngs)
    assert lossless.jpeg == 0 and any("0 of 60 sample images are JPEGs" in n for n in notes)


def test_style_measures_text_line_and_colour_pairs(tmp_path):
    """Text drawn in a known box with two colour pairs: the derived style finds both."""
    pairs = ((235, 230, 200, 60, 90, 170), (200, 235, 235, 150, 40, 40))
    truth = SyntheticSpec(style="captcha", width=200, height=70, charset=DIGITS, min_len=5,
                          max_len=5, font_sizes=(30,), palette=pairs, text_width=(0.45, 0.55),
                          text_left=(0.2, 0.3), curves=0, dots=0, strikes=(0, 0), grey=False)
    insp = _styled(tmp_path, "boxed", truth)
    spec, notes = fit.derive_style(insp)
    assert spec.style == "captcha" and not spec.grey
    # Measured, then calibrated against renders of itself: the box and start come out near
    # the truth, and the font size near the one the text was drawn with.
    assert 0.38 <= spec.text_width[0] <= spec.text_width[1] <= 0.62
    assert 0.14 <= spec.text_left[0] <= spec.text_left[1] <= 0.36
    assert 22 <= sum(spec.font_sizes) / len(spec.font_sizes) <= 40
    for row in spec.palette:  # every measured pair is near one of the true pairs
        assert min(max(abs(a - b) for a, b in zip(row[:3], p[:3])) for p in pairs) <= 25
    assert len(spec.palette) >= 2 and any("text line" in n for n in notes)
    # 5 symbols in about half the width: each takes about a tenth of it.
    assert 0.07 <= fit.symbol_share(fit.sample_stats(insp)) <= 0.13
    assert any(n.startswith("calibration:") for n in notes)
    assert spec.scale == 1 and not any("drawn at" in n for n in notes)  # text ~22+ rows


def test_thin_lines_across_the_image_are_not_measured_as_text():
    """Four hairlines drawn across a small image (as ink_small's generator draws them) leave
    the text line's measures as they are without them: width, start, height and gaps; text
    drawn in one-pixel strokes is still found and measured (the ink is then measured whole)."""
    font = synthetic.font_path("DejaVuSans-Bold.ttf")

    def image(lines: bool, thin: bool = False) -> Image.Image:
        im = Image.new("RGB", (90, 30), (240, 240, 235))
        draw = ImageDraw.Draw(im)
        if thin:  # glyph-like boxes one pixel thin
            for x in (8, 20, 32, 44):
                draw.rectangle((x, 9, x + 8, 21), outline=(30, 30, 30), width=1)
        else:
            draw.text((6, 15), "4k7b", font=ImageFont.truetype(font, 17), fill=(40, 40, 60),
                      anchor="lm")
        if lines:
            for (x0, y0, x1, y1) in ((0, 3, 89, 27), (0, 24, 89, 6), (2, 12, 88, 18),
                                     (60, 0, 80, 29)):
                draw.line((x0, y0, x1, y1), fill=(50, 50, 50), width=1)
        return im

    clean, noisy = fit.style._image_stats(image(False)), fit.style._image_stats(image(True))
    for key in ("span", "rows_span"):
        assert noisy[key] == pytest.approx(clean[key], abs=0.04), key
    assert abs(noisy["text_rows"] - clean["text_rows"]) <= 1
    assert noisy["gaps"] == pytest.approx(clean["gaps"], abs=0.06)
    thin = fit.style._image_stats(image(False, thin=True))
    assert thin["found"] and thin["span"][0] == pytest.approx(8 / 90, abs=0.02)
    assert thin["span"][1] == pytest.approx(53 / 90, abs=0.02)


def test_style_draws_small_text_larger(tmp_path):
    """Text under DRAW_TEXT_ROWS rows high (here ~15 in 90x30) is drawn at twice the size and
    resized, and the style line says so."""
    small = SyntheticSpec(style="captcha", width=90, height=30, charset=DIGITS, min_len=4,
                          max_len=4, font_sizes=(15,), curves=0, dots=0, strikes=(0, 0),
                          grey=False, scale=2)
    spec, notes = fit.derive_style(_styled(tmp_path, "small", small))
    assert spec.scale == 2 and any("drawn at 2x (180x60)" in n for n in notes), notes


def test_style_draws_glyphs_in_their_own_colours_where_the_sample_does(tmp_path):
    """A sample whose glyphs each take their own colour gets glyph_colours, taken from its
    glyphs; a sample drawn in one colour an image keeps the palette's one glyph colour."""
    base = dict(style="captcha", width=200, height=70, charset=DIGITS, min_len=5, max_len=5,
                font_sizes=(34,), palette=((240, 240, 230, 40, 40, 40),), text_width=(0.6, 0.7),
                text_left=(0.1, 0.2), curves=0, dots=0, strikes=(0, 0), grey=False,
                spaces=0.0)
    colours = ((150, 0, 0), (0, 110, 0), (0, 0, 160), (120, 0, 120))
    many, notes = fit.derive_style(_styled(tmp_path, "many", SyntheticSpec(
        **base, glyph_colours=colours)))
    assert len(many.glyph_colours) >= 20
    for c in many.glyph_colours[:20]:  # each near one of the colours drawn
        assert min(max(abs(a - b) for a, b in zip(c, t)) for t in colours) <= 40, c
    assert any("each glyph in its own colour" in n for n in notes)
    one, notes = fit.derive_style(_styled(tmp_path, "one", SyntheticSpec(**base)))
    assert one.glyph_colours == () and any("one glyph colour an image" in n for n in notes)


def test_glyph_colours_measure_pale_glyphs_too():
    """Each glyph's colour is measured on its own core: pale glyphs beside dark ones (kaptcha
    draws a third of its glyphs paler than half-way to its darkest ink) are measured, not
    left out or mixed with their neighbours' ink."""
    img = Image.new("RGB", (200, 70), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(synthetic.font_path("DejaVuSans-Bold.ttf"), 50)
    colours = ((20, 20, 120), (230, 200, 150), (170, 230, 230), (120, 20, 20))
    for i, colour in enumerate(colours):
        draw.text((12 + 46 * i, 5), "8", fill=colour, font=font)
    measured = fit.style._image_stats(img, len(colours))["glyph_rgb"]
    assert len(measured) == len(colours)
    for got, drawn in zip(measured, colours):
        assert max(abs(a - b) for a, b in zip(got, drawn)) <= 12, (got, drawn)


def test_text_layout_crops_to_where_the_text_lies(tmp_path):
    """Text in the middle third of a wide image: the crop holds every image's ink, drops most
    of the margins, and the symbol's share of the cropped width grows accordingly; text across
    the whole image gets no crop."""
    narrow = SyntheticSpec(style="captcha", width=300, height=60, charset=DIGITS, min_len=4,
                           max_len=4, font_sizes=(28,), text_width=(0.3, 0.34),
                           text_left=(0.33, 0.36), curves=0, dots=0, strikes=(0, 0), grey=True)
    insp = _styled(tmp_path, "narrow", narrow)
    stats = fit.sample_stats(insp)
    layout = fit.text_layout(stats)
    left, top, right, bottom = layout.crop
    # The text's height as a share of the image's (what decides finetuning's input height).
    assert layout.text_share == statistics.median(s["text_rows"] / 60 for s in stats)
    assert 0.2 < layout.text_share < 0.8
    assert right - left < 0.6 and "data.crop=" in layout.why
    for path, _ in insp.samples:
        lum = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        ink = np.abs(lum - np.median(lum)) > 8  # faint images too: the crop holds them
        if not ink.any():  # the library drew its glyphs in the background's colour
            continue
        cols, rows = np.flatnonzero(ink.any(0)), np.flatnonzero(ink.any(1))
        assert left * 300 <= cols[0] and cols[-1] < right * 300, path
        assert top * 60 <= rows[0] and rows[-1] < bottom * 60, path
    (w, h), share = layout.cropped((300, 60))
    assert w == round(300 * (right - left)) and share == pytest.approx(
        layout.symbol_share / (right - left))
    wide = replace(narrow, width=120, height=40, font_sizes=(34,), text_width=(0.9, 0.95),
                   text_left=(0.02, 0.04))
    full = fit.text_layout(fit.sample_stats(_styled(tmp_path, "wide", wide)))
    assert full.crop == () and full.cropped((120, 40)) == ((120, 40), full.symbol_share)


def test_calibration_corrects_a_wrong_guess(tmp_path):
    """Start from a font twice too large and a box twice too narrow: after calibration the
    renders measure like the sample (text height, line width and start)."""
    truth = SyntheticSpec(style="captcha", width=200, height=70, charset=DIGITS, min_len=5,
                          max_len=5, font_sizes=(30,), palette=((235, 230, 200, 60, 90, 170),),
                          text_width=(0.5, 0.6), text_left=(0.2, 0.25), curves=0, dots=0,
                          strikes=(0, 0), grey=False)
    insp = _styled(tmp_path, "truth", truth)
    real = [fit.style._image_stats(p) for p, _ in insp.samples[:24]]
    wrong = SyntheticSpec(**{**truth.to_dict(), "font_sizes": (60,), "text_width": (0.25, 0.3),
                             "text_left": (0.5, 0.55), "palette": truth.palette})
    fixed, note = fit.calibrate(wrong, real)
    real_w, real_left, real_h = fit.style._line_measures(real)
    measured = [fit.style._image_stats(synthetic.render(fixed, "check", i)[0]) for i in range(24)]
    w, left, h = fit.style._line_measures(measured)
    assert abs(w - real_w) < 0.05 and abs(left - real_left) < 0.05 and abs(h - real_h) <= 3
    assert fixed.font_sizes[0] < 45 and "calibration" in note


@pytest.mark.parametrize("stretch", [True, False])
def test_glyph_shapes_follow_the_sample(tmp_path, stretch):
    """A lowercase sample drawn stretched to the line (the captcha library) or at font
    proportions (most other generators): fit draws its synthetic glyphs the same way, and
    says so; a digits sample of the "real" drawer (no text box, no lowercase: nothing tells
    the two apart) is left stretched, unmeasured. Turned by up to 5 degrees: turned by 12,
    its descenders uncut since session 49, the sample at font proportions measures as near
    stretched renders as renders at font proportions (0.14 either way), and there the
    likeness step decides."""
    truth = SyntheticSpec(style="captcha", width=160, height=60, charset="abdeghknpqsxy",
                          min_len=5, max_len=5, fonts=(synthetic.font_path("DejaVuSans.ttf"),),
                          font_sizes=(36,), palette=((235, 230, 200, 60, 90, 170),),
                          text_width=(0.6, 0.7), text_left=(0.1, 0.15), stretch=stretch,
                          rotate=(-5.0, 5.0), curves=0, dots=0, strikes=(0, 0), grey=False)
    insp = _styled(tmp_path, f"s{stretch}", truth)
    spec, notes = fit.derive_style(insp)
    word = "stretched to the line" if stretch else "at their font proportions"
    assert spec.stretch is stretch and any(f"style: glyphs {word}" in n for n in notes)
    digits = synthetic.preset("real", charset=DIGITS, min_len=5, max_len=5, stretch=False)
    spec, notes = fit.derive_style(_styled(tmp_path, "d", digits))
    assert spec.style == "real" and spec.stretch is True
    assert not any("style: glyphs " in n for n in notes)


@pytest.mark.parametrize("stretch", [True, False])
def test_glyph_shapes_of_capitals_from_the_gaps(tmp_path, stretch):
    """Capitals packed into their line (wheezy.captcha's look): stretched to the line, the
    captcha library's glyphs are tall and narrow, and spread to the sample's line width they
    leave gaps the sample does not have; at font proportions they match. fit tells the two
    apart by the gap columns in the line."""
    truth = SyntheticSpec(style="captcha", width=200, height=75, charset="ABDEGHKNPRSXY",
                          min_len=5, max_len=5, fonts=(synthetic.font_path("DejaVuSans-Bold.ttf"),),
                          font_sizes=(40,), palette=((235, 230, 200, 60, 90, 170),),
                          text_width=(0.6, 0.65), text_left=(0.1, 0.15), stretch=stretch,
                          spaces=0.0, overlap=0.1, curves=0, dots=0, strikes=(0, 0), grey=False)
    spec, notes = fit.derive_style(_styled(tmp_path, f"c{stretch}", truth))
    word = "stretched to the line" if stretch else "at their font proportions"
    assert spec.stretch is stretch
    assert any(f"style: glyphs {word}" in n and "gaps" in n for n in notes)


def test_calibration_matches_the_stroke_thickness(tmp_path):
    """A sample drawn with thin strokes: calibration thins the library's bolder glyphs until
    renders measure like the sample (median horizontal ink run through the strokes)."""
    truth = SyntheticSpec(style="captcha", width=200, height=70, charset=DIGITS, min_len=5,
                          max_len=5, font_sizes=(34,), palette=((235, 230, 200, 60, 90, 170),),
                          text_width=(0.5, 0.6), text_left=(0.2, 0.25), curves=0, dots=0,
                          strikes=(0, 0), grey=False, stroke=-1.5)
    real = [fit.style._image_stats(p) for p, _ in _styled(tmp_path, "thin", truth).samples[:24]]
    start = SyntheticSpec(**{**truth.to_dict(), "stroke": 0.0, "palette": truth.palette})
    kept, note = fit.calibrate(start, real)  # by default strokes are measured, not changed
    assert kept.stroke == 0.0 and "strokes not changed (--match-stroke)" in note
    fixed, note = fit.calibrate(start, real, match_stroke=True)
    assert fixed.stroke < -0.7 and "stroke change" in note
    measured = [fit.style._image_stats(synthetic.render(fixed, "check", i)[0]) for i in range(24)]
    real_stroke = statistics.mean(s["stroke"] for s in real)
    assert abs(statistics.mean(s["stroke"] for s in measured) - real_stroke) <= 0.6


def test_calibration_does_not_erase_small_glyphs_to_match_noisy_strokes(tmp_path):
    """Small thin glyphs under thin lines, where the start draws thick curves: the stroke is
    measured on the text alone, so thinning converges to the sample's strokes instead of
    erasing the glyphs (measured with the curves, glyphs thinned under 2-pixel runs dropped
    out and the curves' runs remained: calibration ran away to -1.42, the text 0.2 px)."""
    truth = SyntheticSpec(style="captcha", width=90, height=30, charset=DIGITS, min_len=4,
                          max_len=4, font_sizes=(20,), palette=((235, 230, 200, 60, 90, 170),),
                          text_width=(0.5, 0.6), text_left=(0.1, 0.15), curves=1,
                          curve_width=(1, 1), dots=0, strikes=(1, 2), grey=False, stroke=-1.0,
                          scale=2)
    real = [fit.style._image_stats(p) for p, _ in _styled(tmp_path, "thin", truth).samples[:24]]
    fixed, _ = fit.calibrate(replace(truth, stroke=0.0, curve_width=(3, 4)), real,
                             match_stroke=True)
    text = fit.style._text_stats(fixed, "check", 24)
    real_stroke = statistics.mean(s["stroke"] for s in real)
    assert abs(statistics.mean(s["stroke"] for s in text) - real_stroke) <= 1.0, fixed.stroke


@pytest.mark.parametrize("spaces", [0.0, 0.6])
def test_calibration_finds_how_often_glyphs_are_spaced(tmp_path, spaces):
    """The captcha library puts a space before half of the glyphs; other generators pack them.
    The renders of the derived style get the sample's share of gaps in the text line."""
    truth = SyntheticSpec(style="captcha", width=200, height=70, charset=DIGITS, min_len=5,
                          max_len=5, font_sizes=(30,), palette=((235, 230, 200, 60, 90, 170),),
                          text_width=(0.5, 0.6), text_left=(0.2, 0.25), curves=0, dots=0,
                          strikes=(0, 0), grey=False, spaces=spaces)
    real = [fit.style._image_stats(p) for p, _ in _styled(tmp_path, "truth", truth).samples[:24]]
    fixed, note = fit.calibrate(SyntheticSpec(**{**truth.to_dict(), "spaces": 0.5,
                                                 "palette": truth.palette}), real)
    assert abs(fixed.spaces - spaces) <= 0.25 and f"spaces {fixed.spaces}" in note
    with pytest.raises(DataError, match="spaces"):
        SyntheticSpec(spaces=1.5)


def test_font_match_finds_the_face_that_drew_the_sample(tmp_path):
    """The universal model ranks the face a sample was drawn in first; the style then draws
    half its glyphs in it where it leads the other faces by MATCH_LEAD, else keeps the mix."""
    serif = SyntheticSpec(style="captcha", width=240, height=70, charset="0123456789abcdefoxyz",
                          min_len=6, max_len=6, fonts=(synthetic.font_path("DejaVuSerif.ttf"),),
                          font_sizes=(44, 50), background=(0, 50), foreground=(190, 255),
                          dots=20, grey=False)
    insp = _styled(tmp_path, "serif", serif)
    spec, _ = fit.derive_style(insp)
    model = fit.configs.UNIVERSAL_WEIGHTS
    found = fit.rank_fonts(insp, spec, model, samples=60, renders=30)
    assert found.scores[0][0] == "DejaVuSerif.ttf" and found.lead > 0
    scores = [score for _, score in found.scores]
    assert found.lead == pytest.approx(scores[0] - sum(scores[1:]) / (len(scores) - 1))
    assert {name for name, _ in found.scores} == set(fit.fonts.UNIVERSAL_FONTS)
    leaned, found, line = fit.match_fonts(insp, spec, model, lead=0.0, samples=60, renders=30)
    assert found.chosen == "DejaVuSerif.ttf" and line.startswith("fonts: DejaVuSerif.ttf draws")
    names = [Path(f).name for f in leaned.fonts]
    assert names[:len(fit.style.FONT_MIX)] == list(fit.style.FONT_MIX)  # the mix stays
    assert names.count("DejaVuSerif.ttf") / len(names) >= fit.MATCH_SHARE
    kept, found, line = fit.match_fonts(insp, spec, model, lead=1.0, samples=60, renders=30)
    assert kept == spec and not found.chosen and line.startswith("fonts: the mix kept")
    assert found.summary()["chosen"] == "none"
    # A face listed twice in a style file draws twice the share: the file keeps repeats.
    synthetic.save_style(leaned, tmp_path / "style.yaml")
    assert synthetic.load_style(tmp_path / "style.yaml")["fonts"] == leaned.fonts
    # Without the universal model there is nothing to compare faces with.
    same, found, line = fit.match_fonts(insp, spec, tmp_path / "missing.pt")
    assert same == spec and found is None and "not matched" in line


def _digits_only_font(src: str, dest: Path) -> Path:
    """A copy of the face SRC that holds glyphs for the digits alone (as a site's font may)."""
    from fontTools import subset

    options = subset.Options()
    face = subset.load_font(src, options)
    sub = subset.Subsetter(options)
    sub.populate(text=DIGITS)
    sub.subset(face)
    subset.save_font(face, str(dest), options)
    return dest


def test_given_fonts_are_checked_and_draw_half_the_glyphs(tmp_path):
    """--fonts: font files and folders (searched at any depth) are expanded and checked; a file
    that does not load or lacks a symbol is skipped with its reason; what is left draws half
    the synthetic glyphs or more, each face equally, fit's mix the rest."""
    faces = tmp_path / "site fonts"
    (faces / "bold").mkdir(parents=True)
    sans = shutil.copyfile(synthetic.font_path("DejaVuSans.ttf"), faces / "bold" / "Site.TTF")
    digits = _digits_only_font(synthetic.font_path("DejaVuSerif.ttf"), faces / "digits.ttf")
    (faces / "broken.otf").write_bytes(b"not a font")
    (faces / "readme.txt").write_text("fonts of the site")
    files = fit.fonts.given_fonts([faces, sans])  # the file named again is listed once
    assert files == (faces / "bold" / "Site.TTF", faces / "broken.otf", digits)
    usable, skipped = fit.fonts.usable_fonts(files, DIGITS)
    assert usable == (str(sans), str(digits))
    assert len(skipped) == 1 and "broken.otf: not a font" in skipped[0]
    usable, skipped = fit.fonts.usable_fonts(files, DIGITS + "aB")
    assert usable == (str(sans),) and "digits.ttf: no glyph for 'aB'" in skipped[1]
    with pytest.raises(DataError, match="none of the 2 font files.*no glyph for 'x'"):
        fit.fonts.usable_fonts((faces / "broken.otf", digits), "x1")
    with pytest.raises(DataError, match="no such file or folder"):
        fit.fonts.given_fonts([tmp_path / "missing.ttf"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no font files"):
        fit.fonts.given_fonts([tmp_path / "empty"])
    spec = SyntheticSpec(style="captcha", width=160, height=60, charset=DIGITS, min_len=4,
                         max_len=4, fonts=tuple(synthetic.font_path(f) for f in fit.style.FONT_MIX))
    for given in ((str(digits),), (str(sans), str(digits)),
                  tuple(f"/fonts/face{i}.ttf" for i in range(4))):
        drawn, line = fit.fonts.use_given_fonts(spec, given)
        assert drawn.fonts[:len(spec.fonts)] == spec.fonts  # the mix stays, after it the faces
        share = sum(f in given for f in drawn.fonts) / len(drawn.fonts)
        assert share >= fit.MATCH_SHARE and f"draw {share:.0%} of the glyphs" in line
        assert {drawn.fonts.count(f) for f in given} == {drawn.fonts.count(given[0])}
    many = tuple(f"/fonts/face{i}.ttf" for i in range(44))  # more faces than the mix: once each
    drawn, line = fit.fonts.use_given_fonts(spec, many)
    assert drawn.fonts == spec.fonts + many and "face5.ttf and 38 more" in line
    # The synthetic glyphs are drawn in a given face.
    image, label = synthetic.render(replace(spec, fonts=(str(digits),)), 0, 0)
    assert image.size == (160, 60) and len(label) == 4


@pytest.mark.slow
def test_fit_with_given_fonts(tmp_path, monkeypatch):
    """fit --fonts: no faces compared; the style file lists the given face after the mix,
    fit.yaml the files given, the parent run a copy; --fonts with --config and a missing font
    stop before any work."""
    monkeypatch.chdir(tmp_path)
    spec = synthetic.preset("captcha", charset=DIGITS, min_len=4, max_len=4, width=96, height=32)
    synthetic.generate(tmp_path / "data", 60, spec, seed="fonts", workers=1)
    face = _digits_only_font(synthetic.font_path("DejaVuSerif.ttf"), tmp_path / "site.ttf")

    def no_ranking(*args, **kwargs):
        raise AssertionError("faces compared although the user named them")

    monkeypatch.setattr(fit.runner, "match_fonts", no_ranking)
    lines: list[str] = []
    result = fit.run(tmp_path / "data", tmp_path / "out", max_steps=1, say=lines.append,
                     tracking_uri="sqlite:///m.db", universal=False, likeness=False,
                     fonts=(str(face),))
    assert "fonts: yours (site.ttf) draw 50% of the glyphs, the mix the rest" in "\n".join(lines)
    style = yaml.safe_load((tmp_path / "out" / "style.yaml").read_text())
    assert style["fonts"] == list(fit.style.FONT_MIX) + [str(face)] * len(fit.style.FONT_MIX)
    fit_yaml = yaml.safe_load((tmp_path / "out" / "fit.yaml").read_text())
    assert fit_yaml["fit"]["fonts_given"] == {"files": [str(face)]}
    # The parent run keeps a copy of each face, so the style can be drawn again elsewhere.
    logged = MlflowClient("sqlite:///m.db").list_artifacts(result["parent_run_id"], "fonts")
    assert [a.path for a in logged] == ["fonts/site.ttf"]
    runner = CliRunner()
    result = runner.invoke(app, ["fit", str(tmp_path / "data"), "--out", str(tmp_path / "o2"),
                                 "--fonts", str(face), "--config",
                                 str(tmp_path / "out" / "fit.yaml")])
    assert result.exit_code != 0 and "--fonts applies to a fresh fit" in result.output
    result = runner.invoke(app, ["fit", str(tmp_path / "data"), "--out", str(tmp_path / "o3"),
                                 "--fonts", str(tmp_path / "nope.ttf")])
    assert result.exit_code != 0 and "nope.ttf: no such file or folder" in result.output
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_likeness_tunes_the_noise_towards_the_sample(tmp_path):
    """Renders of the sample's own generator are nearer the sample, to the universal model,
    than renders with other noise; tuning picks the generator's curve width and specks from
    wrong starting values, and keeps them where no value is nearer by the margin."""
    truth = SyntheticSpec(style="captcha", width=160, height=60, charset=DIGITS, min_len=5,
                          max_len=5, palette=((235, 230, 200, 60, 90, 170),), curves=1,
                          curve_width=(4, 4), specks=(40, 60), grey=False)
    insp = _styled(tmp_path, "truth", truth)
    start = replace(truth, curve_width=(1, 1), specks=(0, 0))
    model = fit.configs.UNIVERSAL_WEIGHTS
    tries = {"curve_width": ((1, 1), (4, 4)), "specks": ((0, 0), (40, 60))}
    tuned, found, line = fit.tune_style(insp, start, model, images=60, tuned=tries)
    assert (tuned.curve_width, tuned.specks) == ((4, 4), (40, 60)), found.summary()
    assert found.kept == {"curve_width": (4, 4), "specks": (40, 60)}
    assert found.final < found.start and line.startswith("likeness: curve_width [4, 4]")
    # A second round tries the other values again, with both kept: nothing nearer, so it ends.
    assert [k for k, _, _ in found.tried] == ["curve_width", "specks"] * 2 and found.rounds == 2
    kept, found, line = fit.tune_style(insp, start, model, images=60, tuned=tries, margin=1.0)
    assert kept == start and not found.kept and "nothing changed" in line
    # font_warp warps glyphs at font proportions only: stretched glyphs are not tried with it.
    warps = {"font_warp": ((0.0, 0.0), (0.05, 0.3))}
    _, found, _ = fit.tune_style(insp, replace(start, stretch=True), model, images=8, tuned=warps)
    assert found.tried == []
    _, found, _ = fit.tune_style(insp, replace(start, stretch=False), model, images=8, tuned=warps)
    assert {k for k, _, _ in found.tried} == {"font_warp"}  # kept, it is tried again
    # Settings with one value (not a range) are tuned alike: the generator draws no noise dots,
    # so a start with the library's dots drops them; its summary shows the value as it is.
    _, found, line = fit.tune_style(insp, replace(truth, dots=40), model, images=60,
                                    tuned={"dots": (0,)})
    assert found.kept == {"dots": 0} and "dots 0;" in line, found.summary()
    assert found.summary()["kept"] == {"dots": 0} and found.summary()["tried"][0][:7] == "dots=0:"
    # overlap spaces glyphs placed by their widths: a pitch places them itself.
    pitched = replace(start, style="real", pitch=(0.6, 0.7))
    _, found, _ = fit.tune_style(insp, pitched, model, images=8, tuned={"overlap": (0.1,)})
    assert found.tried == []
    _, found, line = fit.tune_style(insp, start, model, images=8, tuned={})  # nothing to tune
    assert found.tried == [] and "nothing changed" in line
    # Without the universal model there is nothing to compare images with.
    same, found, line = fit.tune_style(insp, start, tmp_path / "missing.pt")
    assert same == start and found is None and "not tuned" in line


def test_likeness_finds_glyphs_at_their_own_heights(tmp_path):
    """A generator that places each glyph at its own height (bob) is told from one drawing
    them on a line: tuning from a flat line takes the sample's bob; a spec without the
    captcha drawer's text box (which bob moves glyphs in) is not tried with it."""
    truth = SyntheticSpec(style="captcha", width=200, height=80, charset=DIGITS, min_len=5,
                          max_len=5, palette=((250, 250, 250, 30, 30, 120),), curves=0, dots=0,
                          strikes=(0, 0), stretch=False, font_sizes=(32, 36), spaces=0.0,
                          text_width=(0.8, 0.9), text_left=(0.05, 0.1), bob=0.2, grey=False)
    insp = _styled(tmp_path, "bobbed", truth)
    model, tries = fit.configs.UNIVERSAL_WEIGHTS, {"bob": (0.0, 0.2)}
    tuned, found, line = fit.tune_style(insp, replace(truth, bob=0.0), model, images=60,
                                        tuned=tries)
    assert tuned.bob == 0.2 and "bob 0.2" in line, found.summary()
    boxless = replace(truth, bob=0.0, text_width=(0.0, 0.0), text_left=(0.0, 0.0))
    _, found, _ = fit.tune_style(insp, boxless, model, images=8, tuned=tries)
    assert found.tried == []


def test_likeness_search_takes_back_a_choice_a_later_setting_made_needless():
    """The coordinate search runs rounds until one keeps nothing: a setting chosen to stand in
    for one tried after it (thick curves for the clutter fragments draw, say) goes back once
    that one is drawn; one round keeps the stand-in; a setting's values are only tried where
    they change the spec."""
    start = SyntheticSpec(curve_width=(1, 2), fragments=(0, 0))
    table = {((1, 2), (0, 0)): 10.0, ((3, 5), (0, 0)): 8.0, ((3, 5), (5, 15)): 5.0,
             ((1, 2), (5, 15)): 2.0}

    def distance(spec):
        return table[spec.curve_width, spec.fragments]

    settings = {"curve_width": ((1, 2), (3, 5)), "fragments": ((0, 0), (5, 15))}
    spec, best, tried, rounds = fit.likeness.search(start, 10.0, distance, settings)
    assert (spec.curve_width, spec.fragments, best, rounds) == ((1, 2), (5, 15), 2.0, 3)
    assert tried == [("curve_width", (3, 5), 8.0), ("fragments", (5, 15), 5.0),
                     ("curve_width", (1, 2), 2.0), ("curve_width", (3, 5), 5.0),
                     ("fragments", (0, 0), 10.0),
                     ("curve_width", (3, 5), 5.0), ("fragments", (0, 0), 10.0)]
    spec, best, tried, rounds = fit.likeness.search(start, 10.0, distance, settings, rounds=1)
    assert (spec.curve_width, spec.fragments, best, rounds, len(tried)) == ((3, 5), (5, 15), 5.0, 1, 2)
    # A fall of less than the margin keeps nothing, and one round ends the search.
    spec, best, tried, rounds = fit.likeness.search(start, 10.0, distance, settings, margin=0.9)
    assert (spec, best, rounds, len(tried)) == (start, 10.0, 1, 2)


def test_likeness_takes_the_other_glyph_shape_where_it_looks_nearer(tmp_path):
    """A lowercase sample drawn at font proportions: started stretched (what the pixel
    measures may choose), the likeness step tries the other shape first and takes it; started
    at the sample's shape, it keeps it. Without a model, the other shape is not even made."""
    truth = SyntheticSpec(style="captcha", width=160, height=60, charset="abdeghknpqy",
                          min_len=5, max_len=5, palette=((235, 230, 200, 60, 90, 170),),
                          curves=0, dots=0, strikes=(0, 0), grey=False, stretch=False)
    insp = _styled(tmp_path, "truth", truth)
    model = fit.configs.UNIVERSAL_WEIGHTS
    tuned, found, line = fit.tune_style(insp, replace(truth, stretch=True), model, images=60,
                                        tuned={}, other_shape=lambda: truth)
    assert not tuned.stretch and found.kept == {"stretch": False}, found.summary()
    (name, value, d), = found.tried
    assert (name, value) == ("stretch", False) and d <= found.start * (1 - fit.likeness.SHAPE_MARGIN)
    assert "glyphs at their font proportions (not warped) instead" in line
    kept, found, _ = fit.tune_style(insp, truth, model, images=60, tuned={},
                                    other_shape=lambda: replace(truth, stretch=True))
    assert kept == truth and not found.kept and [k for k, _, _ in found.tried] == ["stretch"]

    def never():
        raise AssertionError("the other shape was made without a model to compare it with")

    same, found, _ = fit.tune_style(insp, truth, tmp_path / "missing.pt", other_shape=never)
    assert same == truth and found is None


def test_likeness_distance_is_frechet():
    """Equal covariances leave the squared distance of the means; scaling one covariance by
    k^2 adds n (1 - k)^2 (n dimensions, identity covariance)."""
    cov, mean = np.eye(4), np.zeros(4)
    distance = fit.likeness.FeatureStats.distance
    assert distance((mean, cov), (mean, cov)) == pytest.approx(0, abs=1e-9)
    assert distance((mean, cov), (mean + 2, cov)) == pytest.approx(16)
    assert distance((mean, cov), (mean, 9 * cov)) == pytest.approx(4 * (1 - 3) ** 2)


def test_style_file_round_trip_and_config(tmp_path):
    spec = SyntheticSpec(style="captcha", width=150, height=50, charset="abc",
                         fonts=(synthetic.font_path("DejaVuSerif.ttf"),), mixed_case=True)
    path = synthetic.save_style(spec, tmp_path / "style.yaml")
    assert yaml.safe_load(path.read_text())["fonts"] == ["DejaVuSerif.ttf"]  # portable name
    loaded = synthetic.spec_from_config(DataConfig(style=str(path), charset="xyz", width=96,
                                                   height=32))
    assert (loaded.width, loaded.height, loaded.charset) == (150, 50, "xyz")  # canvas kept
    img, label = synthetic.render(loaded, 0, 0)
    assert img.size == (150, 50) and set(label) <= set("xyz")
    assert synthetic.spec_from_config(DataConfig(style="captcha")).style == "captcha"
    path.write_text("colour: red\n")
    with pytest.raises(DataError, match="unknown style keys"):
        synthetic.load_style(path)


def test_fit_end_to_end_files_runs_and_registration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's artifact root (./mlruns) goes under tmp_path
    spec = synthetic.preset("captcha", charset=DIGITS, min_len=4, max_len=4, width=144, height=48)
    synthetic.generate(tmp_path / "data", 60, spec, seed="e2e", workers=1)
    # A space in the output path (a folder named "my fits") travels through fit's configs.
    out, uri = tmp_path / "my fits" / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The universal model reads these digits well; cut the glyph bank anyway.
    monkeypatch.setattr(fit.configs, "GLYPHS_BELOW", 1.01)
    result = CliRunner().invoke(app, ["fit", str(tmp_path / "data"), "--out", str(out),
                                      "--max-steps", "2", "--tracking-uri", uri, "--name", "e2e",
                                      "--match-stroke"])
    assert result.exit_code == 0, result.output
    assert "zero-shot (pretrained only)" in result.output and "fit summary" in result.output
    assert "(before pretraining, the universal model: " in result.output
    assert "stroke change" in result.output  # --match-stroke reached the calibration
    assert "test misreads" in result.output
    for name in ("fit.yaml", "style.yaml", "inspection.json", "style_samples.png",
                 "fit_report.txt", "splits/train.csv", "splits/valid.csv", "splits/test.csv",
                 "pretrain/best.pt", "finetune/best.pt"):
        assert (out / name).is_file(), name
    fit_yaml = yaml.safe_load((out / "fit.yaml").read_text())
    assert fit_yaml["pretrain"]["data"]["style"] == str(out / "style.yaml")
    assert fit_yaml["finetune"]["train"]["init_from"] == str(out / "pretrain" / "best.pt")
    # Pretraining starts from the universal model shipped with the package.
    assert fit_yaml["pretrain"]["train"]["init_from"] == str(fit.configs.UNIVERSAL_WEIGHTS)
    assert "pretraining starts from the universal model" in result.output
    assert "(10 of the 10 symbols known to it" in result.output
    assert "fonts: " in result.output  # matched, or the mix kept: said either way
    assert fit_yaml["fit"]["font_match"] == fit_yaml["fit"]["font_scores"]["chosen"]
    assert "likeness: " in result.output  # the style's noise tuned, every distance kept
    likeness = fit_yaml["fit"]["likeness"]
    assert 1 <= likeness["rounds"] <= fit.likeness.ROUNDS
    assert 0 < len(likeness["tried"]) <= 1 + likeness["rounds"] * sum(
        len(v) for v in fit.likeness.TUNED.values())  # 1: the other glyph shape
    assert likeness["distance_tuned"] <= likeness["distance_derived"]
    assert fit_yaml["fit"]["pretrain_init"] == str(fit.configs.UNIVERSAL_WEIGHTS)
    # --max-steps decides the steps: no time limit to fill.
    assert fit_yaml["pretrain"]["train"]["fill_time"] is False
    # Pretraining at height <= 40 (widened from the aspect's 120 for CTC_STEPS_PER_SYMBOL
    # steps per narrowest symbol), finetuning at the source's 48 rows (aspect kept).
    sizes = [(fit_yaml[k]["data"]["height"], fit_yaml[k]["data"]["width"])
             for k in ("pretrain", "finetune")]
    assert sizes == [(40, 136), (48, 144)]
    # Finetuning mixes in synthetic images of the same derived style.
    assert fit_yaml["finetune"]["data"]["style"] == str(out / "style.yaml")
    assert fit_yaml["finetune"]["data"]["synthetic_share"] == fit.FINETUNE_SYNTHETIC_SHARE > 0
    assert fit_yaml["finetune"]["data"]["augment_strength"] == fit.FINETUNE_AUGMENT_STRENGTH
    assert fit_yaml["finetune"]["data"]["augment_local"] is True
    assert fit_yaml["finetune"]["data"]["augment_lines"] == fit.FINETUNE_AUGMENT_LINES > 0
    assert fit_yaml["finetune"]["data"]["tta"] is True and not fit_yaml["pretrain"]["data"]["tta"]
    # ... composed of the train part's glyphs, cut after pretraining where it aligns them.
    assert fit_yaml["finetune"]["data"]["glyphs"] == str(out / "glyphs")
    bank = GlyphBank.load(out / "glyphs")
    assert bank.size == (144, 48) and set(bank.glyphs) <= set(DIGITS) and bank.lengths[0] == 4
    assert "glyphs: " in result.output and (out / "glyphs" / "samples.png").is_file()
    # ... half of that part: the rest is still rendered from the style.
    assert fit_yaml["finetune"]["data"]["glyph_share"] == fit.FINETUNE_GLYPH_SHARE < 1
    assert f"data.glyph_share={fit.FINETUNE_GLYPH_SHARE:g}, the rest rendered" in result.output
    assert Reader.load(out / "finetune" / "best.pt").preprocess.tta  # the registered reader too
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("captcha_ml")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "fit")
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId")
                == parent.info.run_id}
    assert children == {"pretrain", "zero_shot", "finetune", "test"}
    assert {"zero_shot/valid_seq_acc", "zero_shot/start_valid_seq_acc", "test/seq_acc",
            "fit/likeness_derived", "fit/likeness_tuned", "fit/glyphs"} <= set(parent.data.metrics)
    assert parent.data.params["fit.charset"] == DIGITS
    assert parent.data.params["fit.glyphs"] == "composed"
    assert int(client.get_model_version_by_alias("e2e", "champion").version) == 1
    # An edited fit.yaml is read back; a broken one names the file and the fix.
    fit_yaml["finetune"]["train"]["lr"] = 5e-4
    (out / "edited.yaml").write_text(yaml.safe_dump(fit_yaml))
    assert fit.read_fit_yaml(out / "edited.yaml")[1].train.lr == 5e-4
    # Rerun into another --out: the style file the configs trained on comes along.
    other = tmp_path / "other"
    other.mkdir()
    fit.configs.adopt_style(str(out / "edited.yaml"), other)
    assert (other / "style.yaml").read_text() == (out / "style.yaml").read_text()
    pre, fine = fit.read_fit_yaml(out / "edited.yaml")
    fit.configs.repoint(pre, fine, other, {"train": other / "t.csv", "valid": other / "v.csv"})
    assert pre.data.style == fine.data.style == str(other / "style.yaml")
    assert fine.data.glyphs == str(other / "glyphs")  # fit cuts it again there
    (out / "broken.yaml").write_text(yaml.safe_dump({"pretrain": fit_yaml["pretrain"]}))
    with pytest.raises(DataError, match="finetune"):
        fit.read_fit_yaml(out / "broken.yaml")


def test_config_rerun_reuses_unchanged_pretraining(tmp_path, monkeypatch):
    """A --config rerun that edits only finetuning reuses the pretrained model (into another
    --out too); a changed pretrain section, a touched checkpoint or --no-reuse-pretrain train."""
    monkeypatch.chdir(tmp_path)
    spec = synthetic.preset("captcha", charset=DIGITS, min_len=4, max_len=4, width=96, height=32)
    synthetic.generate(tmp_path / "data", 60, spec, seed="reuse", workers=1)
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"

    def fit_(target: Path, *extra: str) -> str:
        result = CliRunner().invoke(app, ["fit", str(tmp_path / "data"), "--out", str(target),
                                          "--max-steps", "1", "--tracking-uri", uri, *extra])
        assert result.exit_code == 0, result.output
        return result.output

    monkeypatch.setattr(fit.configs, "GLYPHS_BELOW", 0.0)  # the style reads it well enough
    output = fit_(out)
    assert "pretrain: reusing" not in output and "glyphs: none cut" in output
    assert not (out / "glyphs").exists()
    best = out / "pretrain" / "best.pt"
    first = best.read_bytes()
    edited = yaml.safe_load((out / "fit.yaml").read_text())
    edited["finetune"]["train"]["lr"] = 5e-4
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    # Same OUT: reused, untouched, and finetuning starts from it.
    output = fit_(out, "--config", str(tmp_path / "edited.yaml"))
    assert f"pretrain: reusing {best.resolve()}" in output
    assert best.read_bytes() == first
    client = MlflowClient(uri)
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("captcha_ml")
                                                 .experiment_id], order_by=["start_time DESC"])
                  if r.info.run_name == "fit")
    assert parent.data.tags["fit.pretrain_reused_from_run"]
    # Another OUT: the fit.yaml's own pretraining is found and used where it lies.
    other = tmp_path / "other"
    output = fit_(other, "--config", str(tmp_path / "edited.yaml"))
    assert f"pretrain: reusing {best.resolve()}" in output and not (other / "pretrain").exists()
    assert (yaml.safe_load((other / "fit.yaml").read_text())["finetune"]["train"]["init_from"]
            == str(best.resolve()))
    # The opt-out trains again (and writes a new record); so would a changed pretrain section,
    # a checkpoint changed behind the record's back, or an unreadable record.
    pre, _ = fit.read_fit_yaml(tmp_path / "edited.yaml")
    before = fit.reusable_pretraining(pre, [out / "pretrain"])["result"]["run_id"]
    assert "pretrain: reusing" not in fit_(out, "--config", str(tmp_path / "edited.yaml"),
                                           "--no-reuse-pretrain")
    assert fit.reusable_pretraining(pre, [out / "pretrain"])["result"]["run_id"] != before
    first = best.read_bytes()
    changed, _ = fit.read_fit_yaml(tmp_path / "edited.yaml")
    changed.train.lr = 5e-4
    assert fit.reusable_pretraining(changed, [out / "pretrain"]) is None
    (out / "style.yaml").write_text((out / "style.yaml").read_text().replace("dots:", "dots: 1 #"))
    assert fit.reusable_pretraining(pre, [out / "pretrain"]) is None
    (out / "style.yaml").write_text((out / "style.yaml").read_text().replace("dots: 1 #", "dots:"))
    assert fit.reusable_pretraining(pre, [out / "pretrain"])
    best.write_bytes(first + b"x")
    assert fit.reusable_pretraining(pre, [out / "pretrain"]) is None
    (out / "pretrain" / fit.PRETRAIN_RECORD).write_text("{not json")
    assert fit.reusable_pretraining(pre, [out / "pretrain"]) is None
    # A fresh fit (no --config) into it derives anew and keeps the edited files aside.
    (out / "style.yaml").write_text((out / "style.yaml").read_text() + "# my edit\n")
    edited_fit = (out / "fit.yaml").read_text()
    output = fit_(out)
    kept = next((out / "previous").iterdir())
    assert f"kept in {kept}" in output
    assert (kept / "style.yaml").read_text().endswith("# my edit\n")
    assert (kept / "fit.yaml").read_text() == edited_fit
    assert "# my edit" not in (out / "style.yaml").read_text()


def test_summary_lists_the_most_confused_symbols():
    from captcha_ml import metrics

    preds, labels = ["8AB4", "8CB4", "1234", "12"], ["BAB4", "BCB4", "1234", "123"]
    report = {"confusions": [{"true": t, "pred": p, "count": n}
                             for (t, p), n in metrics.confusions(preds, labels).most_common()]}
    assert fit.confusion_line(report).startswith("test misreads, true->read: B->8 x2 (")
    assert "none of equal length" in fit.confusion_line({"confusions": []})


# Finetuning's validation loss as measured: a multicolorcaptcha sample that overfit (session 36:
# lowest at step 1256 of 6237, never below 8.65 after the half), a wheezy fit and a claptcha
# fit that did not (session 35; session 34's seed 0: ended 23% above its lowest).
OVERFIT = [(628, 7.49), (1256, 7.15), (1884, 7.55), (2512, 8.71), (3140, 9.00), (3768, 8.65),
           (4396, 8.79), (5024, 8.99), (5652, 9.29), (6237, 9.12)]
HEALTHY = [(817, 0.60), (1634, 0.43), (2451, 0.48), (3268, 0.35), (4085, 0.25), (4902, 0.29),
           (5719, 0.25), (6536, 0.27), (7353, 0.21), (8170, 0.24), (8269, 0.23)]
CLAPTCHA = [(1093, 0.6186), (2186, 0.6592), (3279, 0.6838), (4372, 0.2825), (5465, 0.3929),
            (6558, 0.2802), (7651, 0.3956), (8744, 0.3047), (9837, 0.3631), (10930, 0.35),
            (11016, 0.3453)]


def _history(points):
    return [{"step": s, "seq_acc": 0.5, "cer": 0.1, "loss": loss} for s, loss in points]


def test_advice_names_overfitting_from_the_validation_loss():
    lines = fit.advice(0.04, _history(OVERFIT), 350, best_step=3768)
    assert len(lines) == 1 and "overfit its 350 training images" in lines[0]
    assert "lowest at step 1256 of 6237 (7.15) and stayed at 8.65 or above" in lines[0]
    assert "More labeled images" in lines[0] and "step 3768" in lines[0]
    assert fit.advice(0.95, _history(HEALTHY), 350, best_step=7353) == []
    assert fit.advice(0.92, _history(CLAPTCHA), 350, best_step=4372) == []
    # Its lowest point just before the half, the end 22% above it: the loss still came back
    # near it after the half, so this is no overfit (the end alone would say it is).
    nudged = [(s, 0.29 if s == 6558 else loss) for s, loss in CLAPTCHA]
    assert fit.overfit(_history(nudged)) is None
    # At the target, or with too few validations to tell, nothing is advised.
    assert fit.advice(0.99, _history(OVERFIT), 350, best_step=3768) == []
    assert fit.advice(0.04, _history(OVERFIT[:3]), 350, best_step=1256) == []
    # The second half's lowest at OVERFIT_RISE times the first half's is one; just below, not.
    flat = [(s, 1.0 if s <= 500 else fit.OVERFIT_RISE) for s in range(100, 1100, 100)]
    early, late, last = fit.overfit(_history(flat))
    assert (early["step"], late["step"], last) == (100, 600, 1000)
    flat[-1] = (1000, fit.OVERFIT_RISE - 0.01)
    assert fit.overfit(_history(flat)) is None


def test_summary_carries_the_advice(tmp_path):
    """The printed summary (fit_report.txt) has the advice line after the misreads."""
    from captcha_ml.fit import runner

    def summary(seq_acc, points):
        test = {"metrics": {"seq_acc": seq_acc, "char_acc": 0.5, "cer": 0.5, "count": 75},
                "confusions": [{"true": "1", "pred": "7", "count": 15}]}
        result = {"test": test, "zero_shot": {"seq_acc": 0.0},
                  "finetune": {"history": _history(points), "best_step": 3768,
                               "best_checkpoint": "best.pt"},
                  "times": {"pretrain": 120.0, "finetune": 876.0}}
        return runner._summary(result, {"name": "captcha-x", "version": 1}, 17.4, tmp_path,
                               "run", train_images=350)

    lines = summary(0.04, OVERFIT)
    assert lines[3].startswith("advice: finetuning overfit its 350 training images")
    assert lines[2].startswith("test misreads") and lines[4].startswith("time: 17.4 min")
    assert not any(line.startswith("advice") for line in summary(0.95, HEALTHY))


def test_budget_finetune_gets_the_time_pretraining_left(tmp_path, monkeypatch):
    """With a budget (no --max-steps), finetuning is re-planned from the time actually left at
    the rate pretraining ran; fit.yaml and the parent run record the steps that ran."""
    monkeypatch.chdir(tmp_path)
    # No probe: a fixed plan, trained in bfloat16 autocast as on a CPU with AMX.
    monkeypatch.setattr(fit.budget, "probe_throughput",
                        lambda *a, **k: fit.Probe(12.0, "bf16", {"no": 5.0, "bf16": 12.0}, "test"))
    spec = synthetic.preset("captcha", charset=DIGITS, min_len=4, max_len=4, width=96, height=32)
    synthetic.generate(tmp_path / "data", 60, spec, seed="budget", workers=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lines: list[str] = []
    result = fit.run(tmp_path / "data", tmp_path / "out", budget_minutes=1.2, tracking_uri=uri,
                     name="budget", say=lines.append, universal=False, font_match=False,
                     likeness=False)
    plan = fit.plan_budget(1.2, 12.0)
    note = next(line for line in lines if "min left -> finetune" in line)
    ran = int(note.split("-> finetune ")[1].split(" steps")[0])
    assert f"(planned {plan.finetune_steps})" in note and ran >= plan.finetune_steps // 4
    fit_yaml = yaml.safe_load((tmp_path / "out" / "fit.yaml").read_text())
    assert fit_yaml["finetune"]["train"]["max_steps"] == ran
    assert fit_yaml["fit"]["finetune_steps_replanned"] == ran
    # ... and a time limit: on a machine that slows down, finetuning ends with the budget.
    limit = fit_yaml["finetune"]["train"]["max_minutes"]
    assert 0 < limit < 1.2 and f"train.max_minutes={limit:g}" in note
    assert fit_yaml["finetune"]["train"]["fill_time"] is True  # and fills a faster machine's
    # Pretraining is held to its planned share of the budget, and fills it where the probe
    # timed too low.
    assert fit_yaml["pretrain"]["train"]["max_minutes"] == plan.pretrain_minutes > 0
    assert fit_yaml["pretrain"]["train"]["fill_time"] is True
    assert f"(at most {plan.pretrain_minutes:g} min: train.max_minutes)" in "\n".join(lines)
    # Pretraining validates on the real valid part and stops once it reads it no better.
    assert fit_yaml["pretrain"]["data"]["valid"] == fit_yaml["finetune"]["data"]["valid"] == str(
        tmp_path / "out" / "splits" / "valid.csv")
    assert fit_yaml["pretrain"]["train"]["early_stop_patience"] == fit.PRETRAIN_PATIENCE > 0
    assert fit_yaml["pretrain"]["train"]["eval_every"] == max(
        1, plan.pretrain_steps // fit.PRETRAIN_EVALS)
    assert any(line.startswith("pretrain: real valid part seq_acc ") for line in lines)
    assert fit_yaml["fit"]["precision"] == "bf16"
    assert 0 < fit_yaml["fit"]["symbol_share"] < 0.5  # measured on the sample, for the input
    assert 0 < fit_yaml["fit"]["text_share"] <= 1  # the text's height, too
    assert fit_yaml["finetune"]["train"]["select"] == "last"  # its final weights are the model
    assert any(line.startswith("precision: bfloat16 autocast") for line in lines)
    assert fit_yaml["pretrain"]["train"]["mixed_precision"] == "bf16"
    assert fit_yaml["finetune"]["train"]["mixed_precision"] == "bf16"
    parent = MlflowClient(uri).get_run(result["parent_run_id"])
    assert parent.data.params["fit.finetune_steps_replanned"] == str(ran)
    assert float(parent.data.params["fit.pretrain_images_per_s"]) > 0
    assert float(parent.data.params["fit.finetune_images_per_s"]) > 0  # timed on its own data
    assert "(timed on its own data)" in note
    assert fit.replan_finetune(100, 16, seconds_left=-5, images_per_s=50) == (25, 1)  # floor
    assert fit.replan_finetune(100, 16, seconds_left=64, images_per_s=50) == (200, 1)
    assert fit.replan_finetune(100, 16, 64, 50, synthetic_share=0.5) == (
        200, 200 * 8 // fit.budget.POOL_REUSE)  # 8 synthetic images a step
    assert fit_yaml["finetune"]["data"]["synthetic_pool"] == fit.budget.pool_size(ran, 16, 0.5)
    # --no-font-match: the font mix as derived, no faces compared.
    assert not any(line.startswith("fonts: ") for line in lines)
    assert "font_match" not in fit_yaml["fit"]
    # --no-likeness: the style's noise as derived, no distances measured.
    assert not any(line.startswith("likeness: ") for line in lines)
    assert "likeness" not in fit_yaml["fit"]
    # --no-universal: pretraining from random weights.
    assert fit_yaml["pretrain"]["train"]["init_from"] == ""
    assert "pretraining starts from random weights" in lines
    assert fit_yaml["fit"]["pretrain_init"] == "random"
    assert MlflowClient(uri).get_run(result["parent_run_id"]).data.params[
        "fit.pretrain_init"] == "random"
    # No loader process on a CPU, two on a GPU.
    assert fit_yaml["pretrain"]["data"]["num_workers"] == fit.budget.loader_workers()


def test_cli_budget_default_is_fits():
    """The CLI imports fit lazily (fast startup), so the default is written twice: equal."""
    from inspect import signature

    from captcha_ml import cli

    option = signature(cli.fit).parameters["budget_minutes"].default
    assert (option.default == fit.DEFAULT_BUDGET_MINUTES
            == signature(fit.run).parameters["budget_minutes"].default)


def test_shipped_universal_model_is_fits_network_as_its_config_trains_it():
    """captcha_ml/weights/universal-layer2.pt is what experiments/universal.yaml trains: fit's
    depth, its 62 symbols, colour input at its size; it loads into fit's network as it is."""
    from captcha_ml import checkpoint, config
    from captcha_ml.model import build_model

    payload = checkpoint.load_payload(fit.configs.UNIVERSAL_WEIGHTS)
    cfg = config.load(Path(__file__).resolve().parents[1] / "experiments" / "universal.yaml")
    assert payload["model"]["depth"] == cfg.model.depth == fit.budget.FIT_DEPTH
    assert payload["charset"]["symbols"] == cfg.data.charset and len(cfg.data.charset) == 62
    pre = payload["preprocess"]
    assert (pre["height"], pre["width"], pre["channels"]) == (cfg.data.height, cfg.data.width,
                                                              cfg.data.channels) == (40, 176, 3)
    net = build_model(cfg.model, len(cfg.data.charset) + 1, cfg.data.channels)
    net.load_state_dict(payload["state_dict"])  # strict: every key, every shape


def test_universal_more_continues_the_shipped_model_on_the_same_mixture():
    """experiments/universal_more.yaml (the CPU continuation the shipped file comes from)
    starts from the shipped file and trains the network universal.yaml trains on the same
    mixture, so the two configs cannot drift apart."""
    from captcha_ml import config

    root = Path(__file__).resolve().parents[1]
    first = config.load(root / "experiments" / "universal.yaml")
    more = config.load(root / "experiments" / "universal_more.yaml")
    assert (root / more.train.init_from).resolve() == fit.configs.UNIVERSAL_WEIGHTS
    assert replace(more.data, num_workers=first.data.num_workers) == first.data
    assert more.model == first.model
    assert more.train.stage == first.train.stage and more.train.batch_size == first.train.batch_size


def test_pretraining_is_not_reused_after_its_starting_model_changed(tmp_path):
    """The reuse fingerprint covers the starting checkpoint's content, not only its path: a
    retrained universal model at the same path trains pretraining again."""
    from captcha_ml import config

    start = tmp_path / "universal.pt"
    start.write_bytes(b"one")
    pre = config.load(None, [f"train.init_from={start}", f"train.output_dir={tmp_path}"])
    before = fit.pretrain_fingerprint(pre)
    assert fit.pretrain_fingerprint(pre) == before
    start.write_bytes(b"two")
    assert fit.pretrain_fingerprint(pre) != before
    # ... and the content of the real valid part pretraining validates on (it picks the
    # weights and stops early), not its path: another OUT's split of the same data reuses.
    for name, rows in (("a.csv", "x.png,1\n"), ("b.csv", "x.png,1\n"), ("c.csv", "x.png,2\n")):
        (tmp_path / name).write_text("path,label\n" + rows)
    pre.data.valid = str(tmp_path / "a.csv")
    before = fit.pretrain_fingerprint(pre)
    pre.data.valid = str(tmp_path / "b.csv")
    assert fit.pretrain_fingerprint(pre) == before
    pre.data.valid = str(tmp_path / "c.csv")
    assert fit.pretrain_fingerprint(pre) != before


def test_glyph_bank_is_cut_only_below_the_gate_and_falls_back_to_the_style(tmp_path, monkeypatch):
    """fit composes finetuning's synthetic half of the train part's glyphs only where the
    pretrained model reads the real valid part below GLYPHS_BELOW; where nothing can be cut,
    it renders the style instead of stopping after pretraining."""
    import mlflow
    from types import SimpleNamespace

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("glyphs")  # not an earlier test's experiment id, absent here
    said: list[str] = []
    cut: list[str] = []

    def cut_bank(model, train, out):
        cut.append(out)
        raise DataError("no images to cut glyphs from")

    monkeypatch.setattr(fit.runner, "cut_bank", cut_bank)
    fine = SimpleNamespace(data=SimpleNamespace(glyphs=str(tmp_path / "glyphs")))
    with mlflow.start_run() as run:
        fit.runner._glyphs("pre.pt", fit.configs.GLYPHS_BELOW, fine, {"train": "t.csv"},
                           said.append)
        assert fine.data.glyphs == "" and not cut and "none cut" in said[-1]
        fine.data.glyphs = str(tmp_path / "glyphs")
        fit.runner._glyphs("pre.pt", 0.03, fine, {"train": "t.csv"}, said.append)
    assert cut == [str(tmp_path / "glyphs")] and fine.data.glyphs == ""
    assert "no images to cut glyphs from" in said[-1] and "rendered from the style" in said[-1]
    params = mlflow.get_run(run.info.run_id).data.params
    assert params["fit.glyphs"] == "rendered"
