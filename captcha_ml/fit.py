"""`captcha-ml fit`: a reader for a new captcha style from a folder of labeled examples.

inspect -> model input -> split -> style matching -> configs -> pretrain on style-matched
synthetic captchas -> zero-shot check -> finetune on the real train part -> test -> register,
under one MLflow parent run "fit" (pretrain, zero_shot, finetune, test are its child runs).
Every choice is printed and logged to the parent run. Files under OUT:

  splits/{train,valid,test}.csv  the deterministic split (content hash + seed)
  style.yaml                     the derived SyntheticSpec (editable; data.style points here)
  fit.yaml                       sections fit / pretrain / finetune: the resolved configs;
                                 edit and pass back with --config to rerun with your changes
  inspection.json, style_samples.png, pretrain/, finetune/ (checkpoints), fit_report.txt
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageFilter

from . import config
from .config import Config
from .data import real, synthetic
from .data.real import DataError
from .data.synthetic import SyntheticSpec
from .data.transforms import load_image
from .model import output_length

log = logging.getLogger(__name__)

MIN_IMAGES = 60  # 10 valid + 10 test + 40 train: below that neither training nor the test says much
RARE_COUNT = 5
SPLIT_FRAC, SPLIT_MIN = 0.15, 10
FONT_MIX = ("DroidSansMono.ttf", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf",
            "DejaVuSerif.ttf", "DejaVuSans-BoldOblique.ttf")
# Model input height caps (any 32..64 works). Pretraining, most of the training time, runs at
# <= 40 rows for CPU speed; finetuning reads the real images at up to 56 (wheezy's warped glyphs
# are ~14 rows high at 40). The network is convolutional, so the pretrained weights carry over
# (captcha_images_v2: pretraining at 40x160, finetuning at 50x200 is the default recipe).
PRETRAIN_MAX_HEIGHT, FINETUNE_MAX_HEIGHT = 40, 56
CTC_STEPS_PER_SYMBOL = 2  # the input is widened until CTC has this many steps per symbol
PRETRAIN_SHARE, FINETUNE_SHARE = 0.6, 0.4
# Half of the finetuning images are style-matched synthetic ones: a few hundred real images
# seen for hundreds of epochs would otherwise wash out what pretraining taught.
FINETUNE_SYNTHETIC_SHARE = 0.5
# Twice the default jitter on the real images: a few hundred of them are all fit has (wheezy:
# test 0.43 -> 0.51, one seed; captcha_images_v2 with 100 labels: 0.9708 -> 0.9792, 3 seeds).
FINETUNE_AUGMENT_STRENGTH = 2.0
# The whole command's wall time; the target is 20 minutes per style on a 2-core CPU, and a
# run ends within the budget, so 18 leaves a margin for a slow machine.
DEFAULT_BUDGET_MINUTES = 18.0
FINAL_RESERVE_S = 45.0  # after finetuning: test evaluation, registration, logging
CALIBRATION_IMAGES = 24  # synthetic images measured per style-calibration round
FALLBACK_IMAGES_PER_S = 60.0  # a 2-core CPU at 40x120 when idle; used when no probe runs
FIT_DEPTH = "layer3"  # model.depth of both stages (the last ResNet-18 stage kept)


# ----------------------------------------------------------------------------- 1. inspect

@dataclass
class Inspection:
    """What the labeled sample looks like, and the choices that follow from it."""

    path: str
    samples: list[tuple[str, str]]  # usable (path, label); labels normalised
    case_sensitive: bool
    charset: str
    min_len: int
    max_len: int
    size: tuple[int, int]  # (width, height) all images are treated as (median)
    sizes: dict[str, int]
    channels: int
    rare: dict[str, int]
    conflicts: list[dict[str, Any]]
    skipped: list[tuple[str, str]]
    mixed_case: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples")
        return {"images": len(self.samples), **d}


def _pixel_hash(img: Image.Image) -> str:
    rgb = img.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def _chroma(img: Image.Image) -> float:
    """Mean spread between the RGB channels (0 for grey images)."""
    if img.mode in ("L", "1", "I", "F", "LA"):
        return 0.0
    a = np.asarray(img.convert("RGB").resize((64, 24)), dtype=np.int16)
    return float((a.max(axis=2) - a.min(axis=2)).mean())


def inspect(path: str | Path, case_sensitive: bool = True, skip_bad: bool = False) -> Inspection:
    """Read and check the labeled sample; drop label-noise duplicates; derive charset, sizes."""
    data = real.read_labeled(path, skip_bad=skip_bad)
    rows = [(p, label if case_sensitive else label.lower()) for p, label in data.samples]
    groups: dict[str, list[tuple[str, str]]] = {}
    sizes: Counter = Counter()
    chroma = []
    for p, label in rows:
        img = load_image(p)
        sizes[img.size] += 1
        chroma.append(_chroma(img))
        groups.setdefault(_pixel_hash(img), []).append((p, label))
    conflicts = [{"paths": [p for p, _ in g], "labels": sorted({lab for _, lab in g})}
                 for g in groups.values() if len({lab for _, lab in g}) > 1]
    noisy = {p for c in conflicts for p in c["paths"]}
    samples = [(p, lab) for p, lab in rows if p not in noisy]
    if len(samples) < MIN_IMAGES:
        raise DataError(f"{path}: {len(samples)} usable labeled images ({len(noisy)} dropped as "
                        f"label noise, {len(data.skipped)} skipped); fit needs at least "
                        f"{MIN_IMAGES} (valid {SPLIT_MIN} + test {SPLIT_MIN} + train 40): "
                        "add labeled examples")
    counts = Counter("".join(lab for _, lab in samples))
    lengths = [len(lab) for _, lab in samples]
    width = round(statistics.median(w for (w, _), n in sizes.items() for _ in range(n)))
    height = round(statistics.median(h for (_, h), n in sizes.items() for _ in range(n)))
    return Inspection(
        str(path), samples, case_sensitive, "".join(sorted(counts)), min(lengths), max(lengths),
        (width, height), {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
        3 if statistics.median(chroma) > 8 else 1,
        {c: n for c, n in sorted(counts.items()) if n < RARE_COUNT}, conflicts, data.skipped,
        mixed_case=not case_sensitive and any(lab != lab.lower() for _, lab in data.samples))


def inspection_notes(insp: Inspection) -> list[str]:
    """The inspection as human-readable lines (warnings start with 'warning:')."""
    n = len(insp.samples)
    lens = (f"fixed {insp.min_len}" if insp.min_len == insp.max_len
            else f"{insp.min_len}..{insp.max_len}")
    notes = [f"images: {n} usable" + (f", {len(insp.skipped)} bad files skipped" if insp.skipped else ""),
             f"charset ({len(insp.charset)} symbols, "
             f"{'case-sensitive' if insp.case_sensitive else 'case-insensitive: labels lower-cased'}): "
             f"{insp.charset}",
             f"label length: {lens}",
             f"colour: {'RGB (channels 3)' if insp.channels == 3 else 'grey (channels 1)'}"]
    if len(insp.sizes) > 1:
        notes.append(f"sizes: {len(insp.sizes)} different ({', '.join(list(insp.sizes)[:4])}...); "
                     f"policy: treat all as the median size {insp.size[0]}x{insp.size[1]} "
                     "(every image is resized to the model input)")
    else:
        notes.append(f"size: all {insp.size[0]}x{insp.size[1]}")
    if insp.rare:
        notes.append(f"warning: characters seen fewer than {RARE_COUNT} times: "
                     + ", ".join(f"{c!r} x{k}" for c, k in insp.rare.items())
                     + " - the reader will be unreliable on them; label more examples with them")
    if insp.conflicts:
        dropped = sum(len(c["paths"]) for c in insp.conflicts)
        notes.append(f"warning: label noise: {len(insp.conflicts)} identical images carry "
                     f"different labels (e.g. {insp.conflicts[0]['labels']}); dropped all "
                     f"{dropped} copies from training and evaluation (see inspection.json)")
    return notes


# ----------------------------------------------------------------------------- 2. model input

def model_input(size: tuple[int, int], max_len: int, max_height: int = PRETRAIN_MAX_HEIGHT
                ) -> tuple[int, int, str]:
    """(height, width, why): height 32..max_height keeping the aspect, width a multiple of 8
    with at least max(2*max_len+1, CTC_STEPS_PER_SYMBOL*max_len) CTC steps (room for a blank
    between repeated symbols, and for each symbol's alignment)."""
    w, h = size
    height = min(max_height, max(32, h))
    width = max(8, round(w * height / h / 8) * 8)
    steps = max(2 * max_len + 1, CTC_STEPS_PER_SYMBOL * max_len)
    need = 8 * steps
    why = f"height {height} (source {h}, kept in 32..{max_height}), width {width} keeps the aspect"
    if width < need:
        width, why = need, (f"height {height}, width raised to {need} so CTC has "
                            f"{steps} time steps for at most {max_len} symbols")
    return height, width, why + f"; CTC steps {output_length(width)}"


# ----------------------------------------------------------------------------- 3. split

def split_sizes(n: int) -> tuple[int, int]:
    """(valid, test): 15% each, at least 10 each."""
    part = max(SPLIT_MIN, round(SPLIT_FRAC * n))
    return part, part


def make_split(insp: Inspection, out: Path, seed: int = 0) -> dict[str, Path]:
    valid, test = split_sizes(len(insp.samples))
    return real.split(insp.samples, out / "splits", seed=seed, test=test, valid=valid)


# ----------------------------------------------------------------------------- 4. style

def _box_mean(mask: np.ndarray, k: int) -> np.ndarray:
    """Mean of a k x k neighbourhood (integral image; edges padded with zeros)."""
    pad = np.pad(mask.astype(np.float32), k // 2 + 1)
    c = pad.cumsum(0).cumsum(1)
    h, w = mask.shape
    s = c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]
    return s / (k * k)


def _image_stats(image: str | Image.Image) -> dict[str, Any]:
    """Background / glyph colours, polarity, text height and noise measures of one image."""
    rgb = np.asarray(load_image(image).convert("RGB"), dtype=np.float32)
    lum = rgb.mean(axis=2)
    bg = float(np.median(lum))
    lo, hi = np.percentile(lum, [2, 98])
    dark_text = bg - lo >= hi - bg
    glyph = lo if dark_text else hi
    ink = np.abs(lum - bg) > 0.5 * abs(glyph - bg) if abs(glyph - bg) > 10 else lum < -1
    h, w = lum.shape
    rows = ink.mean(axis=1)
    text_rows = int((rows >= 0.3 * rows.max()).sum()) if ink.any() else h // 2
    # The text line's horizontal extent: columns holding a good share of the densest columns'
    # ink (a curve or strike crossing the whole image leaves only a few pixels per column).
    cols = ink.sum(axis=0)
    dense_min = max(2.0, 0.35 * np.percentile(cols, 90))
    dense = np.flatnonzero(cols >= dense_min) if ink.any() else []
    span = ((float(np.percentile(dense, 2)) / w, float(np.percentile(dense, 98) + 1) / w)
            if len(dense) else (0.0, 1.0))
    # Gaps in the line: the share of its columns without dense ink (spaces between glyphs).
    line = cols[int(span[0] * w):max(int(span[0] * w) + 1, int(span[1] * w))]
    gaps = float((line < dense_min).mean()) if len(dense) else 0.0
    isolated = ink & (_box_mean(ink, 7) < 0.2)
    mask = Image.fromarray(ink.astype(np.uint8) * 255)
    opened = np.asarray(mask.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))) > 0
    edge = max(1, w // 7)
    back = ~ink
    left, right = lum[:, :edge][back[:, :edge]], lum[:, -edge:][back[:, -edge:]]
    return {"dark_text": bool(dark_text), "bg": np.median(rgb[back], axis=0) if back.any() else rgb.mean((0, 1)),
            "fg": np.median(rgb[ink], axis=0) if ink.any() else rgb.min((0, 1)),
            "text_rows": text_rows, "span": span, "gaps": gaps, "dots": float(isolated.sum()) / 7.0,
            "thin": float((ink & ~opened).sum()) / max(1.0, float(ink.sum())),
            "ramp": float(np.median(right) - np.median(left)) if left.size and right.size else 0.0}


def _range(values: list[float], pad: int = 8) -> tuple[int, int]:
    lo, hi = np.percentile(values, [5, 95])
    return max(0, int(lo) - pad), min(255, int(math.ceil(hi)) + pad)


def derive_style(insp: Inspection, max_images: int = 120, seed: int = 0) -> tuple[SyntheticSpec, list[str]]:
    """A SyntheticSpec that resembles the sample, from pixel statistics; and why, as lines."""
    paths = [p for p, _ in insp.samples]
    paths = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))[:max_images]]
    stats = [_image_stats(p) for p in paths]
    dark = sum(s["dark_text"] for s in stats) >= len(stats) / 2
    stats = [s for s in stats if s["dark_text"] == dark] or stats
    bg = _range([float(v) for s in stats for v in s["bg"]])
    fg = _range([float(v) for s in stats for v in s["fg"]])
    w, h = insp.size
    text_h = statistics.median(s["text_rows"] for s in stats)
    font = min(max(10, round(text_h / 0.75)), round(1.1 * h))
    sizes = tuple(sorted({round(font * k) for k in (0.85, 1.0, 1.15)}))
    dots = round(statistics.median(s["dots"] for s in stats))
    dots = 0 if dots < 3 else min(dots, 120)
    thin = statistics.median(s["thin"] for s in stats)
    strikes = (1, 3) if thin > 0.35 else (0, 2) if thin > 0.2 else (0, 0)
    ramp = statistics.median(s["ramp"] for s in stats)
    drawer = "real" if dark and insp.channels == 1 and ramp > 20 else "captcha"
    letters = any(c.isalpha() for c in insp.charset)
    lefts = [s["span"][0] for s in stats]
    widths = [s["span"][1] - s["span"][0] for s in stats]
    text_width = tuple(round(float(v), 3) for v in np.clip(np.percentile(widths, [10, 90]), 0.1, 1))
    text_left = tuple(round(float(v), 3) for v in np.clip(np.percentile(lefts, [10, 90]), 0, 0.9))
    palette = tuple(tuple(int(round(float(c))) for c in (*s["bg"], *s["fg"])) for s in stats[:32])
    spec = SyntheticSpec(
        style=drawer, width=w, height=h, charset=insp.charset, min_len=insp.min_len,
        max_len=insp.max_len, fonts=tuple(synthetic.font_path(f) for f in FONT_MIX),
        font_sizes=sizes, background=bg, foreground=fg, dots=dots, strikes=strikes,
        blur=(0.0, 0.6), grey=insp.channels == 1,
        mixed_case=insp.mixed_case or (not insp.case_sensitive and letters),
        # Measured: colour pairs and the text line's extent ("captcha" drawer).
        palette=palette if drawer == "captcha" else (),  # "real" draws a grey ramp and ink
        text_width=text_width if drawer == "captcha" else (0.0, 0.0),
        text_left=text_left if drawer == "captcha" else (0.0, 0.0),
        # Not measured, drawn broadly for generality: a thin-to-thick curve on every image,
        # stronger per-glyph warp and rotation than the library's defaults.
        curves=1, curve_width=(1, 4), warp=(0.05, 0.3), rotate=(-20.0, 20.0))
    spec, calibration = calibrate(spec, stats)
    notes = [f"style: {'dark glyphs on light' if dark else 'light glyphs on dark'} background, "
             f"background {bg}, glyphs {fg} (5-95th percentiles over {len(stats)} images)",
             f"style: drawer {drawer!r}" + (" (left-right background ramp)" if drawer == "real" else ""),
             f"style: font sizes {sizes} from text height ~{text_h:.0f}px; fonts "
             f"{', '.join(FONT_MIX)} (a mix, for generality)",
             (f"style: {len(palette)} (background, glyph) colour pairs taken from the sample; "
              f"text line {text_width[0]:.2f}-{text_width[1]:.2f} of the width, starting at "
              f"{text_left[0]:.2f}-{text_left[1]:.2f}" if drawer == "captcha" else
              "style: grey ramp background and ink level from the ranges above"),
             f"style: noise dots {dots}, thin-stroke share {thin:.2f} -> strike lines {strikes}; "
             f"for generality every image gets one curve (width {spec.curve_width}), glyph "
             f"warp {spec.warp} and rotation {spec.rotate}; blur {spec.blur}"
             + ("; letters drawn in mixed case" if spec.mixed_case else ""), calibration]
    return spec, notes


def _line_measures(stats: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Median text-line width and start (shares of the image width) and text height (rows)."""
    return (statistics.median(s["span"][1] - s["span"][0] for s in stats),
            statistics.median(s["span"][0] for s in stats),
            statistics.median(s["text_rows"] for s in stats))


def _text_stats(spec: SyntheticSpec, seed: str, images: int) -> list[dict[str, Any]]:
    """`_image_stats` of renders of the style without its noise: the text alone, since our own
    curves (they reach across the image) would blur the measures calibration compares."""
    quiet = replace(spec, curves=0, strikes=(0, 0), dots=0)
    return [_image_stats(synthetic.render(quiet, seed, i)[0]) for i in range(images)]


def calibrate(spec: SyntheticSpec, real_stats: list[dict[str, Any]], rounds: int = 3,
              images: int = CALIBRATION_IMAGES) -> tuple[SyntheticSpec, str]:
    """Measure rendered images exactly as the sample was measured and correct the text box and
    font sizes until the two agree: a drawer's margins, overlaps and warp make its ink narrower
    and shorter than the box and size it is given, so measured values are not drawable ones."""
    real_w, real_left, real_h = _line_measures(real_stats)
    boxed = spec.text_width[1] > 0

    def measure(s: SyntheticSpec, seed: str) -> tuple[float, float, float]:
        return _line_measures(_text_stats(s, seed, images))

    spaces = ""
    if boxed:  # the "captcha" drawer's spaces between glyphs: as many as the sample has gaps
        spec, spaces = _calibrate_spaces(spec, real_stats, images)
    for r in range(rounds):
        w, left, h = measure(spec, f"calibrate/{r}")
        grow = float(np.clip(real_h / max(h, 1.0), 0.6, 1.6))
        changes: dict[str, Any] = {"font_sizes": tuple(sorted({max(8, round(f * grow))
                                                               for f in spec.font_sizes}))}
        if boxed:
            widen = float(np.clip(real_w / max(w, 1e-3), 0.6, 1.6))
            tw = tuple(round(float(np.clip(v * widen, 0.1, 1.0)), 3) for v in spec.text_width)
            shift = real_left - left
            tl = tuple(round(float(np.clip(v + shift, 0.0, max(0.0, 1.0 - tw[1]))), 3)
                       for v in spec.text_left)
            changes.update(text_width=tw, text_left=tl)
        spec = replace(spec, **changes)
    w, left, h = measure(spec, "calibrate/check")
    line = (f"calibration: synthetic text measured like the sample after {rounds} corrections: "
            f"line width {w:.2f} (sample {real_w:.2f}), start {left:.2f} ({real_left:.2f}), "
            f"height {h:.0f}px ({real_h:.0f}) -> font sizes {spec.font_sizes}")
    if boxed:
        line += f", text box {spec.text_width} starting at {spec.text_left}; {spaces}"
    return spec, line


def _calibrate_spaces(spec: SyntheticSpec, real_stats: list[dict[str, Any]], images: int
                      ) -> tuple[SyntheticSpec, str]:
    """The chance of a space before a glyph whose renders have the sample's share of gap
    columns in the text line: the share measured without spaces and with the library's 0.5,
    interpolated (the library spaces half of its glyphs apart; many generators pack them)."""
    real = statistics.median(s["gaps"] for s in real_stats)

    def gaps(spaces: float) -> float:
        return statistics.median(s["gaps"] for s in _text_stats(replace(spec, spaces=spaces),
                                                                 "calibrate/spaces", images))

    none, half = gaps(0.0), gaps(0.5)
    spaces = 0.5 * (real - none) / (half - none) if half - none > 0.01 else 0.5
    spaces = round(float(np.clip(spaces, 0.0, 1.0)), 2)
    return (replace(spec, spaces=spaces),
            f"gaps in the line {real:.2f} (renders: {none:.2f} without spaces, {half:.2f} with "
            f"half of the glyphs spaced) -> spaces {spaces}")


def style_samples(insp: Inspection, spec: SyntheticSpec, n: int = 8) -> Image.Image:
    """Real (left column) next to synthetic (right column) images, to judge the style match."""
    w, h = insp.size
    grid = Image.new("RGB", (2 * w + 4, n * (h + 2)), "white")
    for i in range(min(n, len(insp.samples))):
        grid.paste(load_image(insp.samples[i][0]).convert("RGB").resize((w, h)), (0, i * (h + 2)))
        img, _ = synthetic.render(spec, "style-samples", i)
        grid.paste(img.convert("RGB").resize((w, h)), (w + 4, i * (h + 2)))
    return grid


# ----------------------------------------------------------------------------- 5. budget, configs

PRECISIONS = ("auto", "no", "bf16")  # fit's --precision: probe, float32, bfloat16 autocast
# bfloat16 autocast is chosen when a training step runs this much faster than in float32: CPUs
# with AMX or AVX512-BF16 run one ~2.4x faster (layer3 at 40x104: 143 -> 373 images/s), older
# CPUs slower. Weights, optimizer and CTC stay float32 (model.forward's log_softmax).
BF16_MIN_SPEEDUP = 1.3


@dataclass
class Probe:
    """Training speed on this machine at the pretraining input, and the precision chosen."""

    images_per_s: float  # at the chosen precision, rendering the synthetic images included
    precision: str  # train.mixed_precision of both stages: "no" or "bf16"
    step_images_per_s: dict[str, float]  # the training step alone, per precision measured
    why: str = ""


def _step_images_per_s(model, x, precision: str, steps: int) -> float:
    """Images/s of forward + backward + optimizer steps, after one untimed warm-up step."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(x).logsumexp(-1).mean()
        loss.backward()
        opt.step()
    return steps * x.shape[0] / (time.perf_counter() - start)


def probe_throughput(spec: SyntheticSpec, height: int, width: int, channels: int,
                     num_classes: int, precision: str = "auto", batch: int = 32,
                     steps: int = 2) -> Probe:
    """Training images/s on this machine (a few steps plus rendering), and with ``precision``
    "auto", the faster of float32 and bfloat16 autocast (by at least BF16_MIN_SPEEDUP)."""
    import torch

    from .config import ModelConfig
    from .data.transforms import Preprocess
    from .model import build_model, channels_last

    pre = Preprocess(height, width, channels)
    start = time.perf_counter()
    for i in range(8):
        pre(synthetic.render(spec, "probe", i)[0])
    render_s = (time.perf_counter() - start) / 8
    x = torch.randn(batch, channels, height, width).contiguous(memory_format=torch.channels_last)
    if precision != "auto":
        tried, why = (precision,), f"--precision {precision}"
    elif torch.cuda.is_available():  # the probe times the CPU, not the GPU that will train
        tried, why = ("no",), "a GPU: not probed (set train.mixed_precision in fit.yaml)"
    else:
        tried = ("no", "bf16")
    rates = {}
    for p in tried:
        model = channels_last(build_model(ModelConfig(depth=FIT_DEPTH), num_classes, channels))
        rates[p] = _step_images_per_s(model, x, p, steps)
    chosen = tried[0]
    if len(tried) == 2:
        speedup = rates["bf16"] / rates["no"]
        chosen = "bf16" if speedup >= BF16_MIN_SPEEDUP else "no"
        why = (f"a training step in bfloat16 autocast ran {speedup:.1f}x as fast as in float32 "
               f"on this CPU ({rates['bf16']:.0f} vs {rates['no']:.0f} images/s; chosen at "
               f">= {BF16_MIN_SPEEDUP:g}x)")
    return Probe(1.0 / (1.0 / rates[chosen] + render_s), chosen,
                 {k: round(v, 1) for k, v in rates.items()}, why)


@dataclass
class Plan:
    """How the budget is spent."""

    images_per_s: float  # at the pretraining input
    pretrain_steps: int
    finetune_steps: int
    pretrain_batch: int = 32
    finetune_batch: int = 16
    finetune_cost: float = 1.0  # time per finetuning image / per pretraining image
    precision: str = "no"  # train.mixed_precision of both stages (Probe.precision)


# The share of a training image's time that grows with its pixels (the rest: rendering and
# loading it, per-step overhead). Measured in fit runs: finetuning at ~2x the pixels ran at
# 0.58x (wheezy, 40x104 -> 56x152) and 0.65x (alnum62, 40x136 -> 56x192) pretraining's rate.
PIXEL_BOUND_SHARE = 0.7


def input_cost(pre: tuple[int, int], fine: tuple[int, int]) -> float:
    """Training time of an image at input ``fine`` relative to one at ``pre`` (height, width)."""
    return 1 + PIXEL_BOUND_SHARE * ((fine[0] * fine[1]) / (pre[0] * pre[1]) - 1)


def plan_budget(minutes: float, images_per_s: float, max_steps: int = 0,
                finetune_cost: float = 1.0) -> Plan:
    """Split the budget: a fixed reserve for startup, evaluation and logging, then 60/40."""
    train_s = max(30.0, 60 * minutes - min(120.0, 0.15 * 60 * minutes))
    plan = Plan(images_per_s, 0, 0, finetune_cost=round(finetune_cost, 3))
    plan.pretrain_steps = max(1, int(PRETRAIN_SHARE * train_s * images_per_s / plan.pretrain_batch))
    plan.finetune_steps = max(1, int(FINETUNE_SHARE * train_s * images_per_s / finetune_cost
                                     / plan.finetune_batch))
    if max_steps:
        plan.pretrain_steps = plan.finetune_steps = max_steps
    return plan


def replan_finetune(planned: int, batch: int, seconds_left: float, images_per_s: float) -> int:
    """Finetuning steps that fill the time left after pretraining, at the rate pretraining
    actually ran (the probe's estimate is rough; the caller scales it to the finetuning input);
    at least a quarter of the planned steps."""
    return max(1, planned // 4, int(seconds_left * images_per_s / batch))


def build_configs(insp: Inspection, out: Path, inputs: dict[str, tuple[int, int]], plan: Plan,
                  splits: dict[str, Path], seed: int = 0) -> tuple[Config, Config]:
    """The resolved pretrain and finetune configs; ``inputs`` maps each stage to its
    (height, width)."""
    common = [f"data.charset={insp.charset}", f"data.case_sensitive={insp.case_sensitive}",
              f"data.min_len={insp.min_len}", f"data.max_len={insp.max_len}",
              f"data.channels={insp.channels}", "data.num_workers=1", f"model.depth={FIT_DEPTH}",
              f"train.seed={seed}", f"train.mixed_precision={plan.precision}",
              "tracking.log_model=true"]

    def size(stage: str) -> list[str]:
        return [f"data.height={inputs[stage][0]}", f"data.width={inputs[stage][1]}"]

    n_pre, n_fine = plan.pretrain_steps, plan.finetune_steps
    pre = config.load(None, common + size("pretrain") + [
        "data.train=synthetic", "data.valid=synthetic", f"data.style={out / 'style.yaml'}",
        f"data.synthetic_train_size={n_pre * plan.pretrain_batch}",
        "data.synthetic_valid_size=256", "train.stage=pretrain", f"train.output_dir={out / 'pretrain'}",
        "train.epochs=1", f"train.max_steps={n_pre}", f"train.batch_size={plan.pretrain_batch}",
        "train.lr=1e-3", f"train.eval_every={max(1, n_pre // 5)}", "tracking.log_model=false"])
    fine = config.load(None, common + size("finetune") + [
        f"data.train={splits['train']}", f"data.valid={splits['valid']}", "data.augment=true",
        f"data.augment_strength={FINETUNE_AUGMENT_STRENGTH}", f"data.style={out / 'style.yaml'}",
        f"data.synthetic_share={FINETUNE_SYNTHETIC_SHARE}",
        "train.stage=finetune", f"train.output_dir={out / 'finetune'}",
        f"train.init_from={out / 'pretrain' / 'best.pt'}", f"train.max_steps={n_fine}",
        f"train.batch_size={plan.finetune_batch}", "train.lr=1e-3", "train.warmup_frac=0.05",
        f"train.eval_every={max(1, n_fine // 10)}"])
    return pre, fine


def write_fit_yaml(path: Path, fit_section: dict[str, Any], pre: Config, fine: Config) -> None:
    header = ("# captcha-ml fit: resolved settings. Edit any key and rerun with\n"
              "#   captcha-ml fit DATA --out OUT --config THIS_FILE\n"
              "# 'fit' is informational (inspection and budget); 'pretrain' and 'finetune' are\n"
              "# full training configs (see experiments/*.yaml for the keys).\n")
    body = {"fit": fit_section, "pretrain": pre.to_dict(), "finetune": fine.to_dict()}
    path.write_text(header + yaml.safe_dump(body, sort_keys=False))


def read_fit_yaml(path: str | Path) -> tuple[Config, Config]:
    """The pretrain and finetune configs of an (edited) fit.yaml, validated."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--config {p}: no such file; pass the fit.yaml a previous fit wrote")
    raw = yaml.safe_load(p.read_text()) or {}
    missing = [k for k in ("pretrain", "finetune") if not isinstance(raw.get(k), dict)]
    if missing:
        raise DataError(f"--config {p}: sections {missing} missing; pass a fit.yaml written by fit")
    configs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("pretrain", "finetune"):
            part = Path(tmp) / f"{name}.yaml"
            part.write_text(yaml.safe_dump(raw[name]))
            try:
                configs.append(config.load(part))
            except config.ConfigError as e:
                raise config.ConfigError(f"{p}, section {name}: {e}") from e
    return configs[0], configs[1]


# ----------------------------------------------------------------------------- 6. run

class _Notes:
    """Print each choice and keep it for fit_report.txt."""

    def __init__(self, say) -> None:
        self.lines: list[str] = []
        self.say = say

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self.say(line)


def _repoint(pre: Config, fine: Config, out: Path, splits: dict[str, Path]) -> None:
    """An edited fit.yaml keeps its settings; paths follow this run's OUT and split (a style
    file too: `_adopt_style` copied the one the configs named to OUT/style.yaml)."""
    pre.train.output_dir, fine.train.output_dir = str(out / "pretrain"), str(out / "finetune")
    fine.data.train, fine.data.valid = str(splits["train"]), str(splits["valid"])
    fine.train.init_from = str(out / "pretrain" / "best.pt")
    for cfg in (pre, fine):
        if synthetic.is_style_file(cfg.data.style):
            cfg.data.style = str(out / "style.yaml")


def _adopt_style(config_path: str, out: Path) -> None:
    """Rerunning an (edited) fit.yaml into another --out: bring the style file it trained on,
    so that OUT/style.yaml (kept, not re-derived) is the style both stages use."""
    pre, _ = read_fit_yaml(config_path)
    src, dst = Path(pre.data.style), out / "style.yaml"
    if synthetic.is_style_file(pre.data.style) and src.is_file() and not dst.exists():
        dst.write_text(src.read_text())


def _configs(insp: Inspection, out: Path, spec: SyntheticSpec, splits: dict[str, Path],
             budget_minutes: float, config_path: str | None, max_steps: int, seed: int,
             precision: str, note: _Notes) -> tuple[Config, Config, dict[str, Any]]:
    height, width, why = model_input(insp.size, insp.max_len)
    fine_h, fine_w, fine_why = model_input(insp.size, insp.max_len, FINETUNE_MAX_HEIGHT)
    inputs = {"pretrain": (height, width), "finetune": (fine_h, fine_w)}
    if config_path:
        pre, fine = read_fit_yaml(config_path)
        pretrained_in = pre.train.output_dir  # the run that wrote it may be reusable
        _repoint(pre, fine, out, splits)
        note(f"configs: from {config_path} (budget not applied; paths follow --out)")
        note(f"model input (from the configs): pretraining {pre.data.height}x{pre.data.width}, "
             f"finetuning {fine.data.height}x{fine.data.width} (height x width)")
        info = {"config": str(config_path), "config_pretrain_dir": pretrained_in}
        if precision != "auto":  # said on the command line: overrides the configs' own
            pre.train.mixed_precision = fine.train.mixed_precision = precision
        note(f"precision: train.mixed_precision={fine.train.mixed_precision}"
             + (" (--precision)" if precision != "auto" else " (from the configs)"))
    else:
        note(f"model input: pretraining {why}; finetuning "
             + ("the same" if (fine_h, fine_w) == (height, width) else fine_why))
        probe = (Probe(FALLBACK_IMAGES_PER_S, "no" if precision == "auto" else precision, {},
                       f"--precision {precision} (--max-steps: no probe)")
                 if max_steps else  # --max-steps decides the steps: no probe needed
                 probe_throughput(spec, height, width, insp.channels, len(insp.charset) + 1,
                                  precision))
        ips = probe.images_per_s
        plan = plan_budget(budget_minutes, ips, max_steps,
                           input_cost(inputs["pretrain"], inputs["finetune"]))
        plan.precision = probe.precision
        note(f"precision: {'bfloat16 autocast' if probe.precision == 'bf16' else 'float32'}"
             f" (train.mixed_precision={probe.precision}): {probe.why}")
        pre, fine = build_configs(insp, out, inputs, plan, splits, seed)
        note(f"budget: {budget_minutes:g} min at ~{ips:.0f} training images/s (probe) -> pretrain "
             f"{plan.pretrain_steps} steps x {plan.pretrain_batch} synthetic images, finetune "
             f"{plan.finetune_steps} steps x {plan.finetune_batch} images (real, augmented at "
             f"strength {FINETUNE_AUGMENT_STRENGTH:g}; "
             f"{FINETUNE_SYNTHETIC_SHARE:.0%} synthetic)")
        info = {"budget_minutes": budget_minutes, "probe_images_per_s": round(ips, 1),
                "probe_step_images_per_s": probe.step_images_per_s, **asdict(plan)}
    if max_steps:  # quick runs (tests, trials): few steps, one evaluation, small synthetic valid
        for cfg in (pre, fine):
            cfg.train.max_steps, cfg.train.eval_every = max_steps, max_steps
        pre.data.synthetic_valid_size = min(pre.data.synthetic_valid_size, 32)
    return pre, fine, info


def _fit_section(insp: Inspection, splits: dict[str, Path], info: dict[str, Any]) -> dict[str, Any]:
    return {"data": insp.path, "images": len(insp.samples), "charset": insp.charset,
            "case_sensitive": insp.case_sensitive, "lengths": [insp.min_len, insp.max_len],
            "source_size": list(insp.size), "channels": insp.channels,
            "splits": {k: str(v) for k, v in splits.items()}, **info}


def _log_parent(out: Path, section: dict[str, Any], insp: Inspection, spec: SyntheticSpec) -> None:
    import mlflow

    flat = {f"fit.{k}": v for k, v in section.items() if not isinstance(v, dict)}
    style = {f"style.{k}": v for k, v in spec.to_dict().items() if k != "fonts"}
    style["style.fonts"] = ",".join(Path(f).name for f in spec.fonts)
    mlflow.log_params({k: str(v)[:500] for k, v in {**flat, **style}.items()})
    mlflow.set_tags({"stage": "fit", "fit.style_drawer": spec.style,
                     "fit.warnings": str(sum(n.startswith("warning") for n in inspection_notes(insp)))})
    for name in ("fit.yaml", "style.yaml", "inspection.json", "style_samples.png"):
        mlflow.log_artifact(str(out / name))
    for path in section["splits"].values():
        mlflow.log_artifact(path, "splits")


def _eval_config(pre: Config, run_name: str) -> Config:
    return config.load(None, [f"tracking.tracking_uri={pre.tracking.tracking_uri}",
                              f"tracking.experiment={pre.tracking.experiment}",
                              f"tracking.run_name={run_name}", "data.num_workers=0"])


PRETRAIN_RECORD = "fit_pretrain.json"  # in OUT/pretrain: what trained best.pt, and its result


def pretrain_fingerprint(pre: Config) -> str:
    """What decides the pretrained weights: the pretrain config (tracking aside), the style
    file's text and the package version."""
    from . import __version__, tracking

    settings = pre.to_dict()
    settings.pop("tracking")
    settings["train"].pop("output_dir")  # where, not what: a rerun into another OUT may reuse
    settings["data"].pop("style")  # the path; its text counts below
    style = Path(pre.data.style)
    style_file = synthetic.is_style_file(pre.data.style) and style.is_file()
    return tracking.text_digest(json.dumps(settings, sort_keys=True)
                                + (style.read_text() if style_file else "") + __version__)


def _write_pretrain_record(pre: Config, result: dict[str, Any], seconds: float) -> None:
    from .tracking import path_digest

    best = Path(result["best_checkpoint"]).resolve()  # found again from any working directory
    record = {"fingerprint": pretrain_fingerprint(pre), "checkpoint_digest": path_digest(best),
              "seconds": seconds, "result": {**result, "best_checkpoint": str(best)}}
    path = Path(pre.train.output_dir) / PRETRAIN_RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(path)


def reusable_pretraining(pre: Config, folders: list[Path]) -> dict[str, Any] | None:
    """The first record in ``folders`` of an earlier pretraining with ``pre``'s fingerprint
    and an untouched best.pt, or None (then pretraining runs)."""
    from .tracking import path_digest

    fingerprint = pretrain_fingerprint(pre)
    for folder in folders:
        try:
            record = json.loads((Path(folder) / PRETRAIN_RECORD).read_text())
            best = Path(record["result"]["best_checkpoint"])
            if (record["fingerprint"] == fingerprint and best.is_file()
                    and path_digest(best) == record["checkpoint_digest"]):
                return record
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no record, or an unreadable one
    return None


def _train(pre: Config, fine: Config, splits: dict[str, Path], note: _Notes,
           deadline: float | None = None, replanned=None,
           record: dict[str, Any] | None = None) -> dict[str, Any]:
    """pretrain -> zero-shot on valid -> finetune -> test: each a child run of the active run.
    With a ``record`` (`reusable_pretraining`), its pretrained model is used instead of training.
    With a ``deadline`` (perf_counter seconds), finetuning gets the time left (`replan_finetune`)
    and ``replanned()`` is called after the finetune config changed."""
    import mlflow

    from . import engine

    times, t0 = {}, time.perf_counter()
    if record:
        pre_result, pre_seconds = record["result"], record["seconds"]
        note(f"pretrain: reusing {pre_result['best_checkpoint']} (same pretraining settings and "
             f"style as the run {pre_result['run_id']} that wrote it; --no-reuse-pretrain trains "
             f"again): synthetic valid seq_acc {pre_result['val'].get('seq_acc', 0):.4f}")
        mlflow.set_tags({"fit.pretrain_reused_from_run": str(pre_result["run_id"])})
    else:
        record_path = Path(pre.train.output_dir) / PRETRAIN_RECORD
        record_path.unlink(missing_ok=True)  # best.pt is about to change
        pre_result = engine.train(pre)
        pre_seconds = time.perf_counter() - t0
        _write_pretrain_record(pre, pre_result, pre_seconds)
        note(f"pretrain: synthetic valid seq_acc {pre_result['val'].get('seq_acc', 0):.4f} "
             f"({pre_seconds / 60:.1f} min)")
    times["pretrain"] = time.perf_counter() - t0
    zero = engine.evaluate_model(_eval_config(pre, "zero_shot"), pre_result["best_checkpoint"],
                                 str(splits["valid"]), split="valid")["metrics"]
    mlflow.log_metrics({f"zero_shot/valid_{k}": v for k, v in zero.items() if k != "count"})
    note(f"zero-shot (pretrained only) on the real valid part: seq_acc {zero['seq_acc']:.4f}, "
         f"char_acc {zero['char_acc']:.4f}")
    if deadline is not None:
        ips = pre_result["steps"] * pre.train.batch_size / max(pre_seconds, 1e-6)
        cost = input_cost((pre.data.height, pre.data.width), (fine.data.height, fine.data.width))
        left = deadline - time.perf_counter()
        planned = fine.train.max_steps
        fine.train.max_steps = replan_finetune(planned, fine.train.batch_size, left, ips / cost)
        fine.train.eval_every = max(1, fine.train.max_steps // 10)
        note(f"budget: pretraining ran at {ips:.0f} images/s"
             + (f" (finetuning's larger input: ~{ips / cost:.0f})" if cost != 1 else "")
             + f"; {left / 60:.1f} min left -> finetune {fine.train.max_steps} steps "
             f"(planned {planned})")
        mlflow.log_params({"fit.finetune_steps_replanned": fine.train.max_steps,
                           "fit.pretrain_images_per_s": round(ips, 1)})
        if replanned:
            replanned()
    t1 = time.perf_counter()
    fine_result = engine.train(fine)
    times["finetune"] = time.perf_counter() - t1
    note(f"finetune: valid seq_acc {fine_result['val'].get('seq_acc', 0):.4f} "
         f"({times['finetune'] / 60:.1f} min)")
    test = engine.evaluate_model(_eval_config(pre, "test"), fine_result["best_checkpoint"],
                                 str(splits["test"]), split="test")
    mlflow.log_metrics({f"test/{k}": v for k, v in test["metrics"].items()})
    return {"pretrain": pre_result, "zero_shot": zero, "finetune": fine_result, "test": test,
            "times": times}


def _register(fine_run_id: str, name: str, note: _Notes) -> dict[str, Any]:
    """tracking.register: a new version of the reader; alias champion if it beats the holder."""
    from . import tracking

    r = tracking.register(fine_run_id, name)
    note(f"registered {r['name']} v{r['version']} (test/seq_acc {r['score']:.4f})"
         + (f"; alias '{r['alias']}' now points to it" if r["moved"] else
            f"; alias '{r['alias']}' stays on v{r['previous']['version']}"))
    return r


def _prepare(data: str | Path, out: Path, case_sensitive: bool, skip_bad: bool,
             keep_style: bool, seed: int, note: _Notes) -> tuple[Inspection, dict[str, Path], SyntheticSpec]:
    """Steps 1, 3, 4: inspect, split, derive (or keep, with --config) the style."""
    insp = inspect(data, case_sensitive, skip_bad)
    for line in inspection_notes(insp):
        note(line)
    (out / "inspection.json").write_text(json.dumps(insp.summary(), indent=1, default=str))
    splits = make_split(insp, out, seed)
    note(f"split: {split_sizes(len(insp.samples))} (valid, test) images by content hash, seed "
         f"{seed}; rest train -> {out / 'splits'}")
    spec, style_notes = derive_style(insp, seed=seed)
    for line in style_notes:
        note(line)
    style_file = out / "style.yaml"
    if keep_style and style_file.exists():
        note(f"style: keeping {style_file} (it may hold your edits)")
    else:
        synthetic.save_style(spec, style_file, "# derived by captcha-ml fit; edit and rerun with "
                             "--config OUT/fit.yaml\n")
    spec = SyntheticSpec(**synthetic.load_style(style_file))
    style_samples(insp, spec).save(out / "style_samples.png")
    return insp, splits, spec


def run(data: str | Path, out: str | Path | None = None, case_sensitive: bool = True,
        budget_minutes: float = DEFAULT_BUDGET_MINUTES, config_path: str | None = None,
        name: str = "", max_steps: int = 0, tracking_uri: str = "", seed: int = 0,
        skip_bad: bool = False, reuse_pretrain: bool = True, precision: str = "auto",
        say=print) -> dict[str, Any]:
    """The whole fit (see the module docstring); returns metrics, run ids, files and times."""
    import mlflow

    from . import tracking

    if precision not in PRECISIONS:
        raise config.ConfigError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    start = time.perf_counter()
    out = Path(out or Path("outputs/fit") / Path(data).stem)
    out.mkdir(parents=True, exist_ok=True)
    note = _Notes(say)
    if config_path:
        _adopt_style(config_path, out)
    insp, splits, spec = _prepare(data, out, case_sensitive, skip_bad, bool(config_path), seed, note)
    pre, fine, info = _configs(insp, out, spec, splits, budget_minutes, config_path, max_steps,
                               seed, precision, note)
    for cfg in (pre, fine):
        cfg.tracking.tracking_uri = tracking_uri or cfg.tracking.tracking_uri
    folders = [out / "pretrain"] + ([Path(info["config_pretrain_dir"])]
                                    if "config_pretrain_dir" in info else [])
    record = reusable_pretraining(pre, folders) if reuse_pretrain else None
    if record:  # finetuning starts from it, wherever it is
        fine.train.init_from = record["result"]["best_checkpoint"]
    section = _fit_section(insp, splits, info)
    write_fit_yaml(out / "fit.yaml", section, pre, fine)
    tracking.check_reachable(pre.tracking.tracking_uri)
    mlflow.set_experiment(pre.tracking.experiment)
    name = name or f"captcha-{out.name}"
    # The budget holds for the whole command: finetuning gets what pretraining left of it,
    # less a reserve for the test, registration and logging.
    deadline = (start + 60 * budget_minutes - FINAL_RESERVE_S
                if "budget_minutes" in info and not max_steps else None)

    def replanned() -> None:  # fit.yaml says what ran, so a --config rerun repeats it
        section["finetune_steps_replanned"] = fine.train.max_steps
        write_fit_yaml(out / "fit.yaml", section, pre, fine)
        mlflow.log_artifact(str(out / "fit.yaml"))

    with mlflow.start_run(run_name="fit") as parent:
        _log_parent(out, section, insp, spec)
        result = _train(pre, fine, splits, note, deadline, replanned, record)
        reg = _register(result["finetune"]["run_id"], name, note)
        minutes = (time.perf_counter() - start) / 60
        mlflow.log_metric("fit/minutes", minutes)
        summary = _summary(result, reg, minutes, out, parent.info.run_id)
        for line in summary:
            note(line)
        (out / "fit_report.txt").write_text("\n".join(note.lines) + "\n")
        mlflow.log_artifact(str(out / "fit_report.txt"))
    return {"out": str(out), "parent_run_id": parent.info.run_id, "minutes": minutes,
            "test": result["test"]["metrics"], "zero_shot": result["zero_shot"],
            "registered": reg, "best_checkpoint": result["finetune"]["best_checkpoint"],
            "run_ids": {"pretrain": result["pretrain"]["run_id"],
                        "finetune": result["finetune"]["run_id"],
                        "test": result["test"].get("run_id")}, "inspection": insp.summary()}


def confusion_line(test: dict[str, Any], top: int = 6) -> str:
    """The test's most frequent misread symbols, where to look or label more examples."""
    pairs = [f"{c['true']}->{c['pred']} x{c['count']}" for c in test.get("confusions", [])[:top]]
    if not pairs:
        return "test misreads: none of equal length (no symbol confusions to list)"
    return ("test misreads, true->read: " + ", ".join(pairs)
            + " (label more examples with these symbols; every misread is in the test run's "
            "test_report.json)")


def _summary(result: dict[str, Any], reg: dict[str, Any], minutes: float, out: Path,
             parent_id: str) -> list[str]:
    t, z = result["test"]["metrics"], result["zero_shot"]
    return ["--- fit summary ---",
            f"test: seq_acc {t['seq_acc']:.4f}  char_acc {t['char_acc']:.4f}  cer {t['cer']:.4f} "
            f"({int(t['count'])} images); zero-shot valid seq_acc {z['seq_acc']:.4f}",
            confusion_line(result["test"]),
            f"time: {minutes:.1f} min (pretrain {result['times']['pretrain'] / 60:.1f}, "
            f"finetune {result['times']['finetune'] / 60:.1f})",
            f"model: {result['finetune']['best_checkpoint']}; registered "
            f"models:/{reg['name']}/{reg['version']}",
            f"MLflow parent run {parent_id}; files in {out}"]
