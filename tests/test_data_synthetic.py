"""Synthetic captchas: seeded rendering, resumable parallel writer, on-the-fly datasets."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import secrets
from pathlib import Path

import captcha.image
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from captcha_ml.data.datasets import (GlyphImages, LabeledImages, Pool, SyntheticImages,
                                      SyntheticPool)
from captcha_ml.data.glyphs import GlyphBank, cut, symbol_bounds
from captcha_ml.data.real import DataError, read_manifest
from captcha_ml.config import DataConfig
from captcha_ml.data.synthetic import (SyntheticSpec, generate, jpeg_round_trip, load_style,
                                       preset, render, save_style, spec_from_config)
from captcha_ml.data.transforms import (ImageError, Preprocess, _mesh_warp,
                                        _specks_and_blur, augment, ink_colour)

SMALL = dict(width=80, height=24, font_sizes=(16, 18))


@pytest.mark.parametrize("style", ["real", "oblique", "captcha"])
def test_render_is_pure_and_restores_secrets(style):
    spec = preset(style, **SMALL)
    a, la = render(spec, 7, 3)
    b, lb = render(spec, 7, 3)
    assert la == lb and a.tobytes() == b.tobytes() and a.size == (80, 24)
    assert render(spec, 7, 4)[0].tobytes() != a.tobytes()
    assert render(spec, 8, 3)[0].tobytes() != a.tobytes()
    assert captcha.image.secrets is secrets
    assert a.mode == ("L" if spec.grey else "RGB")


def test_real_style_keeps_glyph_shapes_and_places_text_left():
    """The 'real' preset draws upright glyphs at font proportions (stretch off), with fuzzy
    copies and start hooks; every knob (a fixed pitch too) changes the image."""
    spec = preset("real", charset="2345678bcdefgmnpwxy")
    assert spec.stretch is False and spec.hooks == (1, 2) and spec.fonts == ("DejaVuSans.ttf",)
    img, label = render(spec, 0, 0)
    ink = np.asarray(img) < 100
    cols = np.flatnonzero(ink[10:40].sum(axis=0) > 2)  # text columns (lines are thin)
    assert img.size == (200, 50) and len(label) == 5
    assert cols.min() < 60 and cols.max() < 190  # text starts in the left part, like the real set
    for change in (dict(jitter=(3, 3)), dict(hooks=(0, 0)), dict(stretch=True),
                   dict(pitch=(0.5, 0.6)), dict(rotate=(20.0, 20.0)), dict(squeeze=(0.7, 0.7)),
                   dict(slant=(0.2, 0.2)), dict(font_warp=(0.2, 0.3))):
        other = preset("real", charset="2345678bcdefgmnpwxy", **change)
        assert render(other, 0, 0)[0].tobytes() != img.tobytes(), change


@pytest.mark.parametrize("style", ["captcha", "real"])
def test_stretch_off_keeps_lowercase_short_in_both_drawers(style):
    """Stretched (the library's look), a lowercase "c" is drawn as tall as a "C"; at font
    proportions it is clearly shorter, in both drawers."""
    def ink_rows(letter: str, stretch: bool) -> float:
        spec = SyntheticSpec(style=style, width=160, height=60, charset=letter, min_len=4,
                             max_len=4, fonts=("DejaVuSans.ttf",), font_sizes=(36,),
                             rotate=(0.0, 0.0), warp=(0.0, 0.0), stretch=stretch, curves=0,
                             strikes=(0, 0), dots=0, blur=(0, 0), grey=True,
                             # light on dark: the library pastes glyphs by their brightness
                             background=(0, 0) if style == "captcha" else (250, 250),
                             foreground=(255, 255) if style == "captcha" else (0, 0))
        heights = []
        for i in range(4):
            lum = np.asarray(render(spec, 1, i)[0], dtype=np.float32)
            ink = lum > 128 if style == "captcha" else lum < 128
            heights.append(int(ink.any(axis=1).sum()))
        return float(np.mean(heights))

    assert ink_rows("c", True) > 0.9 * ink_rows("C", True)
    assert ink_rows("c", False) < 0.85 * ink_rows("C", False)


def test_repeat_makes_twins_and_bad_values_are_refused():
    def twins(spec):
        labels = [render(spec, 0, i)[1] for i in range(200)]
        return sum(a == b for x in labels for a, b in zip(x, x[1:])) / (4 * len(labels))

    base = dict(charset="abcdefghijklmnopqrst", **SMALL)
    assert twins(preset("oblique", **base)) < 0.12 < 0.3 < twins(preset("oblique", repeat=0.5,
                                                                         **base))
    with pytest.raises(DataError, match="overlap and repeat"):
        preset("real", repeat=1.0)


def test_style_file_round_trips_new_fields(tmp_path):
    spec = preset("real", charset="ab", jitter=(1, 2), hooks=(0, 1), rotate=(-3.0, 3.0),
                  palette=[[200, 210, 220, 5, 6, 7]], curve_width=[1, 3])
    path = save_style(spec, tmp_path / "s.yaml")
    loaded = SyntheticSpec(**load_style(path))
    assert loaded.palette == ((200, 210, 220, 5, 6, 7),) and loaded.curve_width == (1, 3)
    hash(loaded)  # nested palette rows stay hashable (specs key the per-process drawer cache)
    assert (loaded.jitter, loaded.hooks, loaded.rotate, loaded.stretch) == ((1, 2), (0, 1),
                                                                              (-3.0, 3.0), False)
    assert render(loaded, 1, 2)[0].tobytes() == render(spec, 1, 2)[0].tobytes()


def test_a_line_narrower_than_its_box_is_spread_not_stretched():
    """A text box wider than the text: the glyphs keep their width (strokes as thick as in a
    box the text fills) and the gaps between them grow."""
    from captcha_ml.fit.style import _image_stats

    spec = SyntheticSpec(style="captcha", width=240, height=60, charset="ABDEHKNRSX", min_len=5,
                         max_len=5, font_sizes=(30,), palette=((235, 230, 200, 20, 20, 20),),
                         text_width=(0.45, 0.45), text_left=(0.05, 0.05), spaces=0.0, curves=0,
                         dots=0, strikes=(0, 0), blur=(0, 0), grey=False)
    wide = SyntheticSpec(**{**spec.to_dict(), "text_width": (0.9, 0.9), "palette": spec.palette})

    def measures(sp):
        stats = [_image_stats(render(sp, 0, i)[0]) for i in range(12)]
        return (np.mean([s["stroke"] for s in stats]), np.median([s["gaps"] for s in stats]),
                np.median([s["span"][1] - s["span"][0] for s in stats]))

    stroke, gaps, line = measures(spec)
    wide_stroke, wide_gaps, wide_line = measures(wide)
    assert abs(wide_line - 0.9) < 0.06 and wide_line > line + 0.3, (line, wide_line)  # its box
    assert abs(wide_stroke - stroke) < 1.0, (stroke, wide_stroke)
    assert wide_gaps > gaps + 0.2, (gaps, wide_gaps)


def ink_columns(img, bg) -> np.ndarray:
    """Per column: does any pixel differ from the background colour by more than 150?"""
    return ((np.abs(np.asarray(img).astype(int) - bg).sum(axis=2) > 150)).any(axis=0)


def test_jpeg_renders_are_the_lossless_render_through_a_jpeg():
    """``jpeg``: each render is its lossless render encoded at that quality and decoded, label
    and mode unchanged; 0 is lossless; a quality outside 1-100 is refused."""
    base = SyntheticSpec(style="captcha", charset="0123456789", min_len=4, max_len=4,
                         grey=False)
    lossless, label = render(base, "jpeg", 3)
    lossy, lossy_label = render(dataclasses.replace(base, jpeg=30), "jpeg", 3)
    assert lossy_label == label and lossy.mode == "RGB"
    assert np.array_equal(np.asarray(lossy), np.asarray(jpeg_round_trip(lossless, 30)))
    assert np.abs(np.asarray(lossy, dtype=int) - np.asarray(lossless, dtype=int)).mean() > 1
    grey = render(dataclasses.replace(base, grey=True, jpeg=30), "jpeg", 3)[0]
    assert grey.mode == "L"
    for bad in (-1, 101):
        with pytest.raises(DataError, match="jpeg is a JPEG quality"):
            SyntheticSpec(jpeg=bad)


def test_palette_text_box_and_thick_curves():
    """A palette pair colours background and glyphs; the text line stays in its box."""
    bg, fg = (10, 200, 30), (250, 240, 0)
    spec = SyntheticSpec(style="captcha", width=200, height=60, charset="ABCDEFGH", min_len=5,
                         max_len=5, font_sizes=(30,), palette=(bg + fg,), text_width=(0.3, 0.3),
                         text_left=(0.6, 0.6), curves=0, dots=0, strikes=(0, 0), grey=False)
    img = np.asarray(render(spec, 0, 0)[0]).astype(int)
    assert np.abs(img[0, 0] - bg).max() <= 12 + 3 + 8  # palette jitter, then the library's smoothing
    ink = np.abs(img - img[0, 0]).sum(axis=2) > 150
    cols = np.flatnonzero(ink.any(axis=0))
    # The text's ink spans the box: from 0.6 to 0.9 of the width, whatever the font's width.
    assert abs(cols.min() - 0.6 * 200) <= 3 and abs(cols.max() - 0.9 * 200) <= 3
    assert np.abs(np.median(img[ink], axis=0) - fg).max() < 60
    # Jitter shifts a colour's brightness, not its tint: channel differences stay the pair's.
    corners = np.array([np.asarray(render(spec, 0, i)[0]).astype(int)[0, 0] for i in range(12)])
    assert np.ptp(corners[:, 0]) > 6  # brightness does vary
    assert np.abs(corners[:, 0] - corners[:, 1] - (bg[0] - bg[1])).max() <= 6 + 2
    # Thick curves draw more ink than the library's 1-pixel arcs, on the same images.
    thin = SyntheticSpec(**{**spec.to_dict(), "curves": 1, "text_width": (0.0, 0.0)})
    thick = SyntheticSpec(**{**thin.to_dict(), "curve_width": (4, 4)})

    def ink_share(sp):
        return np.mean([(np.abs(np.asarray(render(sp, 0, i)[0]).astype(int) - bg).sum(axis=2)
                         > 150).mean() for i in range(8)])

    assert ink_share(thick) > ink_share(thin) + 0.01
    # Half of the thick curves are Bezier curves over the text line (0.6-0.9 of the width
    # here): no ink left of it; the waves and arcs start near the left edge.
    thick_in_box = SyntheticSpec(**{**spec.to_dict(), "curves": 1, "curve_width": (3, 3)})
    over_text = [not ink_columns(render(thick_in_box, 0, i)[0], bg)[:110].any()
                 for i in range(40)]
    assert 0.3 <= np.mean(over_text) <= 0.7, np.mean(over_text)
    assert thick_in_box.text_width == (0.3, 0.3)
    with pytest.raises(DataError, match="six values"):
        SyntheticSpec(palette=((1, 2, 3),))
    with pytest.raises(DataError, match="text_width"):
        SyntheticSpec(text_width=(0.5, 1.5))
    with pytest.raises(DataError, match="curve_width"):
        SyntheticSpec(curve_width=(3, 1))
    with pytest.raises(DataError, match="font_warp"):
        SyntheticSpec(font_warp=(0.3, 0.6))


def test_spec_lengths_and_charset():
    spec = preset("real", charset="ab", min_len=2, max_len=4, **SMALL)
    labels = [render(spec, 0, i)[1] for i in range(30)]
    assert set("".join(labels)) <= set("ab") and {len(x) for x in labels} == {2, 3, 4}
    with pytest.raises(DataError, match="unknown synthetic style"):
        preset("fancy")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generate_workers_and_resume(tmp_path):
    spec = preset("real", charset="ab", min_len=1, max_len=2, **SMALL)  # labels repeat
    one = generate(tmp_path / "one", 12, spec, seed=5, workers=1, chunk=4)
    two = generate(tmp_path / "two", 12, spec, seed=5, workers=2, chunk=4)
    assert _files(one.parent) == _files(two.parent)
    rows = read_manifest(one).samples
    assert len(rows) == 12 and len({lbl for _, lbl in rows}) < 12  # repeated labels kept apart
    # Interrupt: lose some files, leave a stale temp file and no manifest; rerun finishes.
    pngs = sorted(two.parent.glob("*.png"))
    for p in pngs[::3]:
        p.unlink()
    (two.parent / f".{pngs[1].name}.tmp-999").write_bytes(b"partial")
    two.unlink()
    generate(tmp_path / "two", 12, spec, seed=5, workers=2, chunk=4)
    assert _files(one.parent) == _files(two.parent)


def test_generate_refuses_other_seed_in_same_folder(tmp_path):
    spec = preset("captcha", **SMALL)
    generate(tmp_path / "g", 2, spec, seed=0, workers=1)
    with pytest.raises(DataError, match="another spec or seed"):
        generate(tmp_path / "g", 2, spec, seed=1, workers=1)
    # A folder written before a spec field existed (here: stroke) resumes at its default.
    meta = json.loads((tmp_path / "g" / "generate.json").read_text())
    del meta["spec"]["stroke"]
    (tmp_path / "g" / "generate.json").write_text(json.dumps(meta))
    generate(tmp_path / "g", 3, spec, seed=0, workers=1)
    with pytest.raises(DataError, match="another spec or seed"):
        generate(tmp_path / "g", 3, dataclasses.replace(spec, stroke=1.0), seed=0, workers=1)


def test_synthetic_dataset_epochs_and_indices():
    spec = preset("real", **SMALL)
    pre = Preprocess(height=24, width=80)
    ds = SyntheticImages(spec, size=4, preprocess=pre, seed=0)
    x0, l0 = ds[0]
    assert x0.shape == (1, 24, 80) and len(l0) == 5
    assert torch.equal(SyntheticImages(spec, 4, pre, seed=0)[0][0], x0)
    assert not torch.equal(ds[1][0], x0)
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], x0)
    assert not torch.equal(SyntheticImages(spec, 4, pre, seed=0, stream="valid")[0][0], x0)
    with pytest.raises(IndexError):
        ds[4]


def test_synthetic_pool_holds_the_on_the_fly_images_and_cycles_them():
    """A pool renders SyntheticImages' epoch 0 once (in parallel or not: the same pixels) and
    keeps it as uint8; the network sees exactly what on-the-fly rendering would give it, and
    every epoch moves on through the pool."""
    spec = preset("captcha", **SMALL)
    pre = Preprocess(height=24, width=80, channels=3)
    fly = SyntheticImages(spec, 5, pre, seed=3, stream="mix")
    pool = SyntheticPool(spec, 2, pre, pool=5, seed=3, stream="mix", workers=0)
    assert pool.pixels.dtype == torch.uint8 and pool.pixels.shape == (5, 3, 24, 80)
    assert len(pool) == 2 and [pool[i][1] for i in range(2)] == [fly[i][1] for i in range(2)]
    assert torch.equal(pool[1][0], fly[1][0])  # pixels -> normalize == the one preprocessing
    pool.set_epoch(2)  # items 4, 5 -> pool images 4, 0
    assert pool[0][1] == fly[4][1] and torch.equal(pool[1][0], fly[0][0])
    parallel = SyntheticPool(spec, 2, pre, pool=5, seed=3, stream="mix", workers=2)
    assert torch.equal(parallel.pixels, pool.pixels) and parallel.labels == pool.labels
    with pytest.raises(IndexError):
        pool[2]
    with pytest.raises(ValueError, match="at least one image"):
        SyntheticPool(spec, 2, pre, pool=0)


def test_labeled_images_augment_and_broken_file(tmp_path, make_images):
    folder = make_images(tmp_path / "imgs", ["abc12", "bcd23"])
    samples = [(str(p), p.stem) for p in sorted(folder.glob("*.png"))]
    pre = Preprocess(height=20, width=60)
    plain = LabeledImages(samples, pre)
    aug = LabeledImages(samples, pre, augment=True, seed=1)
    assert plain[0][1] == "abc12" and plain[0][0].shape == (1, 20, 60)
    first = aug[0][0]
    assert torch.equal(LabeledImages(samples, pre, augment=True, seed=1)[0][0], first)
    aug.set_epoch(1)
    assert not torch.equal(aug[0][0], first)
    # data.augment_strength scales the jitter: same draws, larger moves away from the original.
    gentle, strong = (LabeledImages(samples, pre, augment=True, seed=1, strength=k)[0][0]
                      for k in (0.25, 2.0))
    moved = [float((x - plain[0][0]).abs().mean()) for x in (gentle, strong)]
    assert moved[0] < moved[1]
    Path(samples[1][0]).write_bytes(b"not a png")
    with pytest.raises(ImageError, match="bcd23.png"):
        plain[1]


def test_local_jitter_keeps_the_background_and_is_seeded():
    """augment(local=True): mesh warp, specks and blur add to the affine jitter, draw their
    colours from the image (a dark captcha gets no white corners or specks), and depend only on
    the rng; local=False draws exactly what it drew before local existed."""
    img = Image.new("RGB", (120, 40), (20, 30, 60))
    ImageDraw.Draw(img).rectangle((40, 10, 80, 30), fill=(230, 230, 200))
    outs = [augment(img, random.Random(k), 2.0, local=True) for k in range(12)]
    for out in outs:
        px = np.asarray(out)
        assert out.size == img.size and out.mode == "RGB"
        assert px.min(axis=2).max() > 100  # the glyph block survives
        for corner in (px[0, 0], px[0, -1], px[-1, 0], px[-1, -1]):
            assert corner.max() < 120, corner  # background colour, not white fill
    again = augment(img, random.Random(3), 2.0, local=True)
    assert again.tobytes() == outs[3].tobytes()
    plain = augment(img, random.Random(3), 2.0)
    assert plain.tobytes() != again.tobytes()
    corners = [np.asarray(augment(img, random.Random(k), 2.0)).min(axis=2)[[0, 0, -1, -1], [0, -1, 0, -1]]
               for k in range(12)]
    assert max(c.max() for c in corners) > 100  # without local: the old white fill
    # The mesh warp moves only inner grid points: a plain image stays plain (no outside pixels).
    flat = Image.new("L", (90, 30), 200)
    assert set(np.unique(np.asarray(_mesh_warp(flat, random.Random(0), 4.0)))) == {200}
    # Specks cut the glyph block in the background's colour.
    block = Image.new("L", (200, 50), 255)
    ImageDraw.Draw(block).rectangle((0, 0, 199, 19), fill=0)
    cut = np.asarray(_specks_and_blur(block, random.Random(5), 4.0))
    assert (cut[:20] > 100).any()
    for k in range(300):  # tiny images, many one-pixel specks: every box is drawable
        _specks_and_blur(Image.new("L", (40, 16), 255), random.Random(k), 4.0)


def test_lines_cross_the_text_in_its_colour():
    """augment(lines=1): a wavy line in the text's colour (light on dark too) over at least
    half the width; lines=0 draws exactly what it drew before lines existed."""
    for bg, ink in (((230, 230, 200), (20, 60, 150)), ((10, 20, 30), (240, 220, 90))):
        img = Image.new("RGB", (150, 50), bg)
        ImageDraw.Draw(img).text((10, 10), "ab12", fill=ink, font_size=28)
        assert np.abs(np.subtract(ink_colour(img), ink)).max() < 40
        lined = [augment(img, random.Random(k), 0.01, lines=1.0) for k in range(6)]
        for out in lined:
            px = np.asarray(out, dtype=int)
            near_ink = (np.abs(px - ink).max(axis=2) < 40).any(axis=0)  # per column
            assert near_ink.mean() > 0.45  # the text alone covers ~a third of the columns
        again = augment(img, random.Random(2), 0.01, lines=1.0)
        assert again.tobytes() == lined[2].tobytes()
        assert augment(img, random.Random(2), 0.01, lines=0.0).tobytes() == \
            augment(img, random.Random(2), 0.01).tobytes() != again.tobytes()
    assert ink_colour(Image.new("L", (40, 20), 128)) is None  # nothing to take a colour from
    grey = Image.new("L", (90, 30), 220)
    ImageDraw.Draw(grey).rectangle((20, 10, 60, 20), fill=30)
    assert augment(grey, random.Random(0), 1.0, local=True, lines=1.0).mode == "L"


def test_colours_reorder_a_colour_images_channels():
    """augment(colours=1): the same pixels with the RGB channels in another order (each of the
    five other orders comes up); grey images stay grey and as they were; colours=0 draws what
    augment drew before the option existed."""
    img = Image.new("RGB", (60, 20), (250, 240, 230))
    ImageDraw.Draw(img).rectangle((10, 5, 30, 15), fill=(200, 30, 90))
    px = np.asarray(img)
    orders = set()
    for k in range(40):
        out = np.asarray(augment(img, random.Random(k), 0.001, colours=1.0))
        order = next(o for o in itertools.permutations(range(3))
                     if np.abs(out.astype(int) - px[..., list(o)]).max() <= 3)
        orders.add(order)
    assert orders == set(itertools.permutations(range(3))) - {(0, 1, 2)}
    assert augment(img, random.Random(5), 0.5, colours=0.0).tobytes() == \
        augment(img, random.Random(5), 0.5).tobytes()
    grey = Image.new("L", (60, 20), 220)
    ImageDraw.Draw(grey).rectangle((10, 5, 30, 15), fill=30)
    assert augment(grey, random.Random(0), 0.001, colours=1.0).tobytes() == \
        augment(grey, random.Random(0), 0.001).tobytes()


@pytest.mark.parametrize("style", ["captcha", "real"])
def test_stroke_thins_and_thickens_the_glyphs(style):
    """spec.stroke grows (+) or shrinks (-) every glyph stroke by whole pixels a side, in both
    drawers; a fraction mixes the two nearest per image; out-of-range values are refused."""
    quiet = dict(curves=0, dots=0, strikes=(0, 0), blur=(0.0, 0.0), hooks=(0, 0), jitter=(0, 0))
    base = preset(style, **SMALL, **quiet)

    def ink(stroke: float, index: int = 0) -> int:
        img = np.asarray(render(dataclasses.replace(base, stroke=stroke), 3, index)[0]
                         .convert("L"), dtype=np.float32)
        return int((np.abs(img - np.median(img)) > 60).sum())

    thin, plain, bold = ink(-1), ink(0), ink(1)
    assert thin < 0.8 * plain and bold > 1.2 * plain, (thin, plain, bold)
    mixed = [ink(-0.5, i) for i in range(8)]
    assert any(m < 0.8 * ink(0, i) for i, m in enumerate(mixed))
    assert any(m == ink(0, i) for i, m in enumerate(mixed))
    with pytest.raises(DataError, match="stroke"):
        SyntheticSpec(stroke=13)


def test_scale_draws_small_text_larger_then_resizes():
    """``scale`` k draws at k times the canvas, every pixel measure with it, and resizes to the
    spec's size: glyphs a dozen pixels high keep their counters (less ink) where the library,
    drawing them at that size, fills them in. Same labels, same size; out-of-range refused."""
    base = SyntheticSpec(style="captcha", width=90, height=30, charset="abcdeh2468", min_len=4,
                         max_len=4, font_sizes=(16,), curves=0, dots=0, strikes=(0, 0),
                         grey=True, background=(240, 250), foreground=(0, 20))
    big = dataclasses.replace(base, scale=2, curve_width=(1, 2), stroke=-0.5,
                              blur=(0.0, 0.6), specks=(4, 30)).drawn()
    assert (big.scale, big.width, big.height, big.font_sizes, big.curve_width, big.stroke,
            big.blur, big.specks) == (1, 180, 60, (32,), (2, 4), -1.0, (0.0, 1.2), (1, 8))
    assert base.drawn() is base
    scaled = dataclasses.replace(base, scale=2)

    def ink(spec: SyntheticSpec, index: int) -> tuple[int, str, tuple[int, int]]:
        img, label = render(spec, 0, index)
        return int((np.asarray(img, dtype=np.float32) < 128).sum()), label, img.size

    plain, drawn = [ink(base, i) for i in range(8)], [ink(scaled, i) for i in range(8)]
    assert [p[1:] for p in plain] == [d[1:] for d in drawn]
    assert {d[2] for d in drawn} == {(90, 30)}
    assert sum(d[0] for d in drawn) < 0.85 * sum(p[0] for p in plain)
    for bad in (0, 5):
        with pytest.raises(DataError, match="scale"):
            SyntheticSpec(scale=bad)


def test_spec_is_plain_configuration():
    spec = SyntheticSpec(charset="xy", min_len=2, max_len=2)
    assert spec.to_dict()["charset"] == "xy" and preset("real", fonts=["a.ttf"]).fonts == ("a.ttf",)


def test_spec_from_config():
    spec = spec_from_config(DataConfig(charset="xyz", min_len=3, max_len=4, width=64, height=32))
    img, label = render(spec, 0, 0)
    # The preset's own canvas; preprocessing resizes to the model input (64x32).
    assert img.size == (200, 50) and set(label) <= set("xyz") and spec.style == "real"


@pytest.mark.parametrize("style", ["captcha", "real"])
def test_specks_cut_strokes_in_the_background_colour(style):
    """Specks are drawn last: the same image with them has less ink and nothing darker."""
    clean = SyntheticSpec(style=style, charset="ABCDEFGH", min_len=5, max_len=5, curves=0,
                          dots=0, strikes=(0, 0), hooks=(0, 0), blur=(0.0, 0.0), grey=True,
                          background=(240, 250), foreground=(0, 20))
    specked = SyntheticSpec(**{**clean.to_dict(), "specks": (60, 60)})
    for i in range(3):
        a = np.asarray(render(clean, 0, i)[0]).astype(int)
        b = np.asarray(render(specked, 0, i)[0]).astype(int)
        assert (b < 128).sum() < (a < 128).sum() * 0.97, ((b < 128).sum(), (a < 128).sum())
        assert (b < a - 30).sum() < 0.002 * a.size  # lighter, never darker (but for smoothing)
    with pytest.raises(DataError, match="specks"):
        SyntheticSpec(specks=(5, 2))


@pytest.mark.parametrize("style", ["captcha", "real"])
def test_fragments_hide_parts_of_the_text_in_glyph_colours(style):
    """Fragments are solid shapes in glyph colours over the text: the same image with them
    has more ink, none of it in a colour the style lacks; ``drawn`` keeps the share of the
    image they cover."""
    green = (20, 160, 40)
    clean = SyntheticSpec(style=style, charset="ABCDEFGH", min_len=5, max_len=5, curves=0,
                          dots=0, strikes=(0, 0), hooks=(0, 0), blur=(0.0, 0.0), grey=False,
                          background=(250, 250), foreground=(0, 0), glyph_colours=(green,),
                          text_width=(0.6, 0.7) if style == "captcha" else (0.0, 0.0))
    cluttered = dataclasses.replace(clean, fragments=(30, 30))
    for i in range(3):
        a = np.asarray(render(clean, 0, i)[0]).astype(int)
        b = np.asarray(render(cluttered, 0, i)[0]).astype(int)
        assert (b.min(axis=2) < 200).sum() > (a.min(axis=2) < 200).sum() * 1.2
        if style == "captcha":  # each shape in a (jittered) glyph colour: green, never red
            assert (b[..., 1] - b[..., 0] < -40).sum() == 0
    assert dataclasses.replace(clean, scale=2, fragments=(8, 30)).drawn().fragments == (2, 8)
    with pytest.raises(DataError, match="fragments"):
        SyntheticSpec(fragments=(5, 2))


def test_bezier_curve_spans_the_text_line():
    import random

    from captcha_ml.data.synthetic import bezier_points

    for k in range(20):
        points = bezier_points(random.Random(k), (50, 150), 40)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        assert 40 <= xs[0] <= 50 and 150 <= xs[-1] <= 160
        assert xs == sorted(xs) and 0.1 * 40 <= min(ys) and max(ys) <= 0.9 * 40


@pytest.mark.parametrize("layout", [{}, {"stretch": False},
                                    {"text_width": (0.6, 0.7), "text_left": (0.1, 0.2)}])
def test_dark_glyph_colours_are_drawn_at_full_strength(layout):
    """The captcha library masks a glyph by its brightness: black ink on white came out light
    grey (darkest pixel 223 of 255). Every layout of the "captcha" drawer paints the colour."""
    for ink in [(0, 0), (140, 140)]:
        spec = SyntheticSpec(style="captcha", charset="ABCDEFGH", min_len=5, max_len=5,
                             curves=0, dots=0, blur=(0.0, 0.0), grey=True,
                             background=(250, 250), foreground=ink, **layout)
        img = np.asarray(render(spec, 0, 0)[0]).astype(int)
        text = img[np.abs(img - 250) > 24]
        assert text.size > 500 and img.min() <= ink[0] + 5, (ink, img.min())
        assert np.median(text) < ink[0] + 70, (ink, np.median(text))


def test_glyph_colours_draw_each_glyph_in_its_own_colour(tmp_path):
    """glyph_colours: the glyphs of one image take different colours of the list (each its
    own, jittered), where without it every glyph has the image's one colour; the list goes
    through a style file; malformed entries are refused."""
    red, blue = (200, 0, 0), (0, 0, 200)
    plain = SyntheticSpec(style="captcha", width=240, height=60, charset="ABDEHKNRSX",
                          min_len=6, max_len=6, font_sizes=(34,), spaces=0.0, curves=0, dots=0,
                          strikes=(0, 0), blur=(0, 0), grey=False, stretch=False,
                          palette=((250, 250, 250, 0, 160, 0),), text_width=(0.8, 0.8),
                          text_left=(0.05, 0.05))
    coloured = SyntheticSpec(**{**plain.to_dict(), "palette": plain.palette,
                                "glyph_colours": (red, blue)})

    def ink_hues(spec, i):  # per ink pixel: which channel dominates
        px = np.asarray(render(spec, 0, i)[0]).astype(int).reshape(-1, 3)
        ink = px[px.sum(axis=1) < 600]
        return {int(c) for c in np.argmax(ink, axis=1)}, len(ink)

    both = 0
    for i in range(8):
        hues, n = ink_hues(coloured, i)
        assert n > 300 and 1 not in hues  # red and blue glyphs: never the palette's green
        both += hues == {0, 2}
        assert ink_hues(plain, i)[0] == {1}  # the palette's green alone
    assert both >= 6  # six glyphs from two colours: nearly always both
    path = save_style(coloured, tmp_path / "style.yaml")
    assert SyntheticSpec(**load_style(path)).glyph_colours == (red, blue)
    with pytest.raises(DataError, match="glyph_colours entries are"):
        SyntheticSpec(glyph_colours=((1, 2),))


def test_bob_places_each_glyph_at_its_own_height():
    """bob: the glyphs of the "captcha" drawer's text box move up or down by up to that share
    of the height, their ink kept on the canvas; without it they share the line, and a style
    without it renders what it did before (no extra random draws)."""
    spec = SyntheticSpec(style="captcha", width=240, height=80, charset="acemnorsuvwxz",
                         min_len=6, max_len=6, font_sizes=(30,), spaces=0.0, curves=0, dots=0,
                         strikes=(0, 0), blur=(0, 0), grey=True, stretch=False, overlap=0.0,
                         background=(255, 255), foreground=(0, 0), text_width=(0.9, 0.9),
                         text_left=(0.05, 0.05), rotate=(0.0, 0.0))  # short letters alone

    def ink_rows(s, i):  # per column run of ink (a glyph): its top ink row
        ink = np.asarray(render(s, 0, i)[0]) < 128
        cols, tops, run = ink.any(axis=0), [], []
        for x, on in enumerate(list(cols) + [False]):
            if on:
                run.append(x)
            elif run:
                tops.append(int(np.argmax(ink[:, run].any(axis=1))))
                run = []
        return ink, tops

    bobbed = dataclasses.replace(spec, bob=0.2)
    assert render(dataclasses.replace(spec, bob=0.0), 0, 3)[0].tobytes() == \
        render(spec, 0, 3)[0].tobytes()
    spreads = []
    for i in range(6):
        _, flat = ink_rows(spec, i)
        assert max(flat) - min(flat) <= 2, flat  # one line
        ink, tops = ink_rows(bobbed, i)
        spreads.append(max(tops) - min(tops))
        assert ink[0].sum() + ink[-1].sum() < 10  # moved, never off the canvas
    assert max(spreads) >= 12 and sum(spreads) / len(spreads) >= 6, spreads
    with pytest.raises(DataError, match="bob"):
        SyntheticSpec(bob=0.7)


def test_turned_glyphs_are_not_cut():
    """Glyphs at font proportions turned by up to 60 degrees keep their ink: on the glyph's
    own canvas a descender's end was cut off (j and g kept 64-74% of their ink at 60)."""
    from captcha_ml.data.synthetic import _captcha_for, seeded_secrets

    def ink(spec, c):  # the drawer's glyph image: its opaque pixels
        with seeded_secrets(random.Random(0)):
            glyph = _captcha_for(spec)._draw_character(
                c, ImageDraw.Draw(Image.new("RGB", (1, 1))), (0, 0, 0, 255))
        return (np.asarray(glyph.getchannel("A")) > 128).sum()

    upright = SyntheticSpec(style="captcha", charset="l1jgW", font_sizes=(40,), stretch=False,
                            rotate=(0.0, 0.0))
    for angle in (30.0, 60.0, -60.0):
        turned = dataclasses.replace(upright, rotate=(angle, angle))
        for c in upright.charset:  # resampling thins a turned stroke a little, no more
            assert ink(turned, c) > 0.88 * ink(upright, c), (angle, c)


def test_universal_mixture_is_seeded_and_varied():
    """data.style=universal: each image is drawn by one of the mixture's specs, picked by its
    own seeded draw, so an image is a pure function of (seed, index); the members differ in
    drawer, glyph shape and polarity, and every font of the mix draws every symbol."""
    from captcha_ml.data import universal
    from captcha_ml.data.synthetic import spec_from_config
    from helpers import assert_fonts_draw_every_symbol

    mix = spec_from_config(DataConfig(style="universal", charset="abc123", min_len=4, max_len=8))
    assert isinstance(mix, universal.SpecMixture) and len(mix.specs) == 10
    assert {(s.style, s.stretch) for s in mix.specs} == {("captcha", True), ("captcha", False),
                                                        ("real", False)}
    assert {s.background for s in mix.specs} == {(190, 255), (0, 70)}
    assert all(s.charset == "abc123" and (s.min_len, s.max_len) == (4, 8) for s in mix.specs)
    picks = {mix.pick("s", i) for i in range(200)}
    assert len(picks) == len(mix.specs)  # every member draws
    for i in range(6):
        a, b = render(mix, "s", i), render(mix, "s", i)
        assert a[1] == b[1] and np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
        assert a[0].size == (mix.pick("s", i).width, mix.pick("s", i).height)
    assert len({render(mix, "s", i)[0].size for i in range(40)}) > 1  # several canvases
    assert_fonts_draw_every_symbol(universal.UNIVERSAL_FONTS)
    with pytest.raises(DataError, match="universal"):
        spec_from_config(DataConfig(style="no-such-style"))


def test_font_warp_warps_the_glyph_ink_in_its_own_box():
    """As wheezy.captcha warps a glyph cropped to its ink: the warped ink stays inside the
    ink's box, wherever the glyph sits on its (larger) line box, and still fills most of it;
    a blank glyph (a space) comes back as it was."""
    from captcha_ml.data.synthetic import _font_warp, _SeededSecrets

    glyph = Image.new("RGBA", (60, 80))
    ImageDraw.Draw(glyph).rectangle((20, 30, 39, 59), fill=(255, 255, 255, 255))
    rand = _SeededSecrets(random.Random(3))
    for _ in range(20):
        warped = _font_warp(glyph, (0.2, 0.3), rand)
        box = warped.getbbox()
        assert warped.size == glyph.size and box is not None
        assert 20 <= box[0] and 30 <= box[1] and box[2] <= 40 and box[3] <= 60, box
        assert (box[2] - box[0]) * (box[3] - box[1]) >= 0.4 * 20 * 30
    blank = Image.new("RGBA", (30, 80))
    assert _font_warp(blank, (0.2, 0.3), rand).tobytes() == blank.tobytes()


def _glyph_images(n: int = 6) -> list[tuple[Image.Image, str, list[tuple[float, float]]]]:
    """Captchas of "a" (black) and "b" (grey) blocks at known columns on white, 100x30."""
    shade, pieces = {"a": 0, "b": 128}, []
    for i in range(n):
        label = ("aba", "bab", "abb", "baa", "aab", "bba")[i % 6]
        img = Image.new("L", (100, 30), 255)
        draw, bounds = ImageDraw.Draw(img), []
        for k, symbol in enumerate(label):
            draw.rectangle((12 + 25 * k, 5, 30 + 25 * k, 25), fill=shade[symbol])
            bounds.append((10 + 25 * k, 35 + 25 * k))
        pieces.append((img, label, bounds))
    return pieces


def test_symbol_bounds_meet_halfway_between_aligned_symbols():
    # 10 steps over 100 columns: symbols at steps 2-3, 6 and 8.
    assert symbol_bounds([(2, 3), (6, 6), (8, 8)], 10, 100) == [(10, 50), (50, 75), (75, 95)]
    assert symbol_bounds([(4, 5)], 10, 100) == [(30, 70)]  # one symbol: a step either side
    assert symbol_bounds([(0, 0), (9, 9)], 10, 100)[0][0] == 0  # never outside the input


def test_glyph_bank_cuts_composes_and_round_trips(tmp_path):
    """Glyphs are cut at the given columns under their symbols; composed captchas have the
    bank's size, labels of its symbols and lengths, the glyphs' shades where the label says,
    the same image for the same seed; a saved bank loads back the same."""
    bank = cut(_glyph_images())
    assert bank.size == (100, 30) and bank.lengths == [3] * 6 and bank.count == 18
    assert {s: len(g) for s, g in bank.glyphs.items()} == {"a": 9, "b": 9}
    assert all(g.size == (25, 30) for gs in bank.glyphs.values() for g in gs)
    def shades(img: Image.Image) -> str:  # the middle row's runs of black (a) and grey (b)
        row = np.asarray(img)[15]
        kind = np.where(row < 64, "a", np.where(row < 200, "b", " "))
        runs = [(k, len(list(n))) for k, n in itertools.groupby(kind)]
        return "".join(k for k, n in runs if k != " " and n >= 4)  # not a block's soft edge

    for seed in range(8):
        img, label = bank.compose(random.Random(seed), warp=0.0)
        assert img.size == (100, 30) and len(label) == 3 and set(label) <= {"a", "b"}
        assert shades(img) == label  # each symbol's glyph, in the label's order
    a, b = bank.compose(random.Random("x")), bank.compose(random.Random("x"))
    assert a[1] == b[1] and a[0].tobytes() == b[0].tobytes()
    # A row inside the width (fit's crop): composed there, median colour outside.
    inside = cut(_glyph_images(), row=(10, 85))
    img, _ = inside.compose(random.Random(1))
    outside = np.concatenate([np.asarray(img)[:, :10].ravel(), np.asarray(img)[:, 85:].ravel()])
    assert len(set(outside)) == 1 and np.asarray(img)[:, 10:85].min() < 64
    inside.save(tmp_path / "bank")
    back = GlyphBank.load(tmp_path / "bank")
    assert (back.size, back.lengths, back.row) == (inside.size, inside.lengths, inside.row)
    assert [g.tobytes() for g in back.glyphs["a"]] == [g.tobytes() for g in inside.glyphs["a"]]
    again = back.compose(random.Random(2))[0]
    assert again.tobytes() == inside.compose(random.Random(2))[0].tobytes()
    bank.save(tmp_path / "bank")  # over the old one: replaced whole
    assert GlyphBank.load(tmp_path / "bank").row == (0, 100)


def test_glyph_bank_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="no glyph bank there.*captcha-ml fit"):
        GlyphBank.load(tmp_path / "nothing")
    cut(_glyph_images()).save(tmp_path / "bank")
    (tmp_path / "bank" / "00003.png").unlink()
    with pytest.raises(DataError, match="00003.png"):
        GlyphBank.load(tmp_path / "bank")
    (tmp_path / "bank" / "bank.json").write_text("{not json")
    with pytest.raises(DataError, match="bank.json is unreadable"):
        GlyphBank.load(tmp_path / "bank")
    with pytest.raises(DataError, match="at least one glyph; none was cut"):
        cut([(Image.new("L", (100, 30)), "ab", [(0, 1), (1, 2)])])  # cuts too narrow to keep
    with pytest.raises(ValueError, match="2 bounds for the 3 symbols"):
        cut([(Image.new("L", (100, 30)), "abc", [(0, 30), (30, 60)])])
    with pytest.raises(DataError, match="row"):
        GlyphBank({"a": [Image.new("L", (5, 30))]}, (100, 30), [3], (50, 120))


def test_glyph_images_are_a_function_of_seed_epoch_and_index_and_pool_alike():
    bank, pre = cut(_glyph_images()), Preprocess(height=20, width=60)
    ds = GlyphImages(bank, 4, pre, seed=1, stream="mix")
    first = [ds[i][1] for i in range(4)]
    assert first == [ds[i][1] for i in range(4)] and ds[0][0].shape == (1, 20, 60)
    ds.set_epoch(1)
    assert [ds[i][1] for i in range(4)] != first  # new captchas every epoch
    pool = Pool(GlyphImages(bank, 5, pre, seed=1, stream="mix", pixels=True), 3, pre, workers=0)
    ds.set_epoch(0)
    assert pool.labels[:4] == first and torch.equal(pool[0][0], ds[0][0])
    with pytest.raises(IndexError):
        ds[4]
