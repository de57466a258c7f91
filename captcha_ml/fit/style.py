"""Style matching: a synthetic captcha style (SyntheticSpec) derived from the sample's pixel
statistics, then calibrated by measuring renders exactly as the sample was measured."""

from __future__ import annotations

import functools
import io
import math
import statistics
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from ..data import synthetic
from ..data.synthetic import SyntheticSpec
from ..data.transforms import load_image
from .sample import Inspection

FONT_MIX = ("DroidSansMono.ttf", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf",
            "DejaVuSerif.ttf", "DejaVuSans-BoldOblique.ttf")
# STIX General regular and bold (a Times-like serif) in the mix too (session 20, one seed each,
# holdouts): ink, drawn in STIX, 0.968 -> 0.970 (zero-shot 0.15 -> 0.25); alnum62 0.930 -> 0.908
# (o->0 x10 -> x17), wheezy 0.898 -> 0.891, lower4to7 0.963 -> 0.957: dropped.
# Crop to the text only where that leaves at most this share of the image.
CROP_MAX_KEPT = 0.9
CALIBRATION_IMAGES = 24  # synthetic images measured per style-calibration round
# Glyphs are drawn at their font proportions only where those renders measure nearer the
# sample by this much (``glyph_shapes``, summed distances): where the two ways look alike the
# distances differed by 0.00-0.01 (lower4to7 0.04 / 0.04; capitals or digits drawn either way
# 0.03 / 0.02, 0.06 / 0.05); where they do not, by 0.05 or more (a lowercase test sample 0.05,
# captcha_images_v2 0.06, wheezy 0.17).
SHAPES_MARGIN = 0.03
# Background-coloured specks per 200x50 pixels on every synthetic image (not measured: for
# generality, like the curve): many generators sprinkle them (wheezy.captcha: 50 on 200x75)
# and fit's finetuning already cuts the real images' strokes so (data.augment_local), but
# pretraining had never seen a broken stroke.
SPECKS = (0, 30)
# Each glyph is drawn in its own colour (SyntheticSpec.glyph_colours) where the sample's
# glyphs differ in colour by this much: the mean RGB distance of an image's glyph colours
# (the median ink colour of each label symbol's share of the text line) from their mean, the
# median over the measured images. Styles drawn in one colour a text measured 2.9-7.8
# (lower4to7, alnum62, wheezy: anti-aliasing and the curve), ink, each glyph in its own dark
# colour, 31-33 (fit's `style:` line prints it).
GLYPH_COLOUR_SPREAD = 16.0
GLYPH_COLOURS_KEPT = 96  # glyph colours the style keeps (from the first measured images)
# A glyph's colour is measured on its share of the line's pixels this far (RGB distance) from
# the background's colour or more (``_glyph_colours``). The ink mask (half-way to the image's
# darkest ink) left pale glyphs out: kaptcha draws each glyph's channels uniformly (a mean
# channel above 150 for 31% of glyphs, median 127), and 120 of its images measured 4% above
# 150 (median 112) so, 23% (median 125) now.
GLYPH_INK_DISTANCE = 48.0
# Text under this many rows high is drawn larger and resized down (SyntheticSpec.scale, the
# smallest whole factor that draws it this high): at ink_small's 14 rows the captcha library
# filled in its glyphs' counters (an "e" a blot; strokes 6.1 px against the sample's 3.0),
# drawn at 2x they stay open. Every other development style's text is 25-45 rows high.
DRAW_TEXT_ROWS = 20
# The text line is measured (its extent, height, gaps and fill) on the ink without its parts
# one pixel thin (``_without_thin``): a few thin lines drawn across an image lift a column's
# or row's count to a glyph's, so ink drawn at 90x30 with its 3-5 lines and dots (`ink_small`)
# measured its text 0.68 of the width and 14 rows high, the same text drawn without them 0.42
# and 11 (0.46 and 11 so measured). Where that would keep under this share of an image's ink,
# its glyphs themselves are that thin, and the ink is measured whole.
SOLID_MIN_KEPT = 0.25


@functools.lru_cache(maxsize=1)
def _luma_tables() -> dict[int, tuple[int, ...]]:
    """The luminance quantisation table Pillow's JPEG encoder writes at each quality."""
    tables = {}
    for quality in range(1, 101):
        buffer = io.BytesIO()
        Image.new("L", (8, 8)).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as im:
            tables[quality] = tuple(im.quantization[0])
    return tables


def jpeg_quality(paths: list[str]) -> tuple[int, int]:
    """The sample's JPEG quality and how many of ``paths`` are JPEGs: each JPEG's quality is
    the one whose standard luminance table (libjpeg's, scaled as its encoders scale it) is
    nearest the file's own; the median over the JPEGs, 0 where under half the files are."""
    qualities = []
    for path in paths:
        with Image.open(path) as im:
            table = im.quantization.get(0) if im.format == "JPEG" else None
        if table is not None:
            qualities.append(min(_luma_tables().items(), key=lambda qt: sum(
                abs(a - b) for a, b in zip(qt[1], table)))[0])
    jpegs = len(qualities)
    return (round(statistics.median(qualities)) if 2 * jpegs >= len(paths) > 0 else 0), jpegs


def _box_mean(mask: np.ndarray, k: int) -> np.ndarray:
    """Mean of a k x k neighbourhood (integral image; edges padded with zeros)."""
    pad = np.pad(mask.astype(np.float32), k // 2 + 1)
    c = pad.cumsum(0).cumsum(1)
    h, w = mask.shape
    s = c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]
    return s / (k * k)


def _without_thin(ink: np.ndarray) -> np.ndarray:
    """The ink mask opened by a 2x2 square: what is one pixel thin (a hairline, a dot, a
    glyph's anti-aliased fringe) goes, strokes 2 or more pixels thick stay as they were."""
    core = ink[:-1, :-1] & ink[1:, :-1] & ink[:-1, 1:] & ink[1:, 1:]
    out = np.zeros_like(ink)
    out[:-1, :-1] |= core
    out[1:, :-1] |= core
    out[:-1, 1:] |= core
    out[1:, 1:] |= core
    return out


def _image_stats(image: str | Image.Image, length: int = 0) -> dict[str, Any]:
    """Background / glyph colours, polarity, text height and noise measures of one image;
    with its label's ``length``, also each symbol's colour (``_glyph_colours``)."""
    rgb = np.asarray(load_image(image).convert("RGB"), dtype=np.float32)
    lum = rgb.mean(axis=2)
    bg = float(np.median(lum))
    lo, hi = np.percentile(lum, [2, 98])
    dark_text = bg - lo >= hi - bg
    glyph = lo if dark_text else hi
    ink = np.abs(lum - bg) > 0.5 * abs(glyph - bg) if abs(glyph - bg) > 10 else lum < -1
    h, w = lum.shape
    solid = _without_thin(ink)
    shape = solid if solid.sum() >= SOLID_MIN_KEPT * ink.sum() else ink  # the text line's
    rows = shape.mean(axis=1)
    text_rows = int((rows >= 0.3 * rows.max()).sum()) if shape.any() else h // 2
    # The text line's horizontal extent: columns holding a good share of the densest columns'
    # ink (a curve or strike crossing the whole image leaves only a few pixels per column).
    cols = shape.sum(axis=0)
    dense_min = max(2.0, 0.35 * np.percentile(cols, 90))
    dense = np.flatnonzero(cols >= dense_min) if shape.any() else []
    span = ((float(np.percentile(dense, 2)) / w, float(np.percentile(dense, 98) + 1) / w)
            if len(dense) else (0.0, 1.0))
    # Gaps in the line: the share of its columns without dense ink (spaces between glyphs).
    x0, x1 = int(span[0] * w), max(int(span[0] * w) + 1, int(span[1] * w))
    gaps = float((cols[x0:x1] < dense_min).mean()) if len(dense) else 0.0
    stroke = _median_run(ink[:, x0:x1])  # stroke thickness, in the text line
    # The text line's vertical extent: rows of the ink in its columns (2nd-98th percentiles,
    # so a curve's few pixels above or below the glyphs count little).
    ys = np.nonzero(shape[:, x0:x1])[0]
    rows_span = ((float(np.percentile(ys, 2)) / h, float(np.percentile(ys, 98) + 1) / h)
                 if ys.size else (0.0, 1.0))
    isolated = ink & (_box_mean(ink, 7) < 0.2)
    mask = Image.fromarray(ink.astype(np.uint8) * 255)
    opened = np.asarray(mask.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))) > 0
    edge = max(1, w // 7)
    back = ~ink
    left, right = lum[:, :edge][back[:, :edge]], lum[:, -edge:][back[:, -edge:]]
    bg_rgb = np.median(rgb[back], axis=0) if back.any() else rgb.mean((0, 1))
    glyphs = (_glyph_colours(rgb, np.linalg.norm(rgb - bg_rgb, axis=2), (x0, x1), length)
              if length > 1 and len(dense) else [])
    return {"glyph_rgb": glyphs, "colour_spread": _spread(glyphs),
            "dark_text": bool(dark_text),
            "bg": bg_rgb,
            "fg": np.median(rgb[ink], axis=0) if ink.any() else rgb.min((0, 1)),
            "text_rows": text_rows, "text_share": text_rows / h, "span": span,
            "rows_span": rows_span, "found": len(dense) > 0,
            "gaps": gaps, "stroke": stroke,
            # The dense rows' share of the text's height: glyphs stretched to the line fill it,
            # lowercase letters at font proportions leave ascender and descender rows sparse.
            "fill": text_rows / max(1.0, (rows_span[1] - rows_span[0]) * h),
            "dots": float(isolated.sum()) / 7.0,
            "thin": float((ink & ~opened).sum()) / max(1.0, float(ink.sum())),
            "ramp": float(np.median(right) - np.median(left)) if left.size and right.size else 0.0}


def _glyph_colours(rgb: np.ndarray, away: np.ndarray, line: tuple[int, int], length: int
                   ) -> list[tuple[int, int, int]]:
    """The colour of each of ``length`` equal parts of the text line's columns (a symbol's
    share, roughly): the median of its pixels GLYPH_INK_DISTANCE or more from the background
    colour (``away``: RGB distances) and at least half as far as the median of those, so a
    pale glyph is measured by its own core, not left out, and anti-aliased edges, a
    neighbour's edge or a curve's pixels count little. Parts with fewer than 10 such pixels
    are left out."""
    x0, x1 = line
    out = []
    for k in range(length):
        a, b = x0 + (x1 - x0) * k // length, x0 + (x1 - x0) * (k + 1) // length
        part = away[:, a:b]
        far = part[part > GLYPH_INK_DISTANCE]
        if far.size < 10:
            continue
        core = part >= max(GLYPH_INK_DISTANCE, 0.5 * float(np.median(far)))
        if core.sum() >= 10:
            out.append(tuple(int(round(float(v))) for v in np.median(rgb[:, a:b][core], axis=0)))
    return out


def _spread(colours: list[tuple[int, int, int]]) -> float | None:
    """The mean RGB distance of colours from their mean (None for fewer than two)."""
    if len(colours) < 2:
        return None
    c = np.asarray(colours, dtype=np.float64)
    return float(np.linalg.norm(c - c.mean(axis=0), axis=1).mean())


def _median_run(ink: np.ndarray) -> float:
    """Stroke thickness: the median length of the horizontal ink runs of 2+ pixels (most
    cross a glyph's upright strokes; single-pixel specks and edges are left out)."""
    edges = np.diff(np.pad(ink.astype(np.int8), ((0, 0), (1, 1))), axis=1).ravel()
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    runs = runs[runs >= 2]
    return float(np.median(runs)) if runs.size else 0.0


def _range(values: list[float], pad: int = 8) -> tuple[int, int]:
    lo, hi = np.percentile(values, [5, 95])
    return max(0, int(lo) - pad), min(255, int(math.ceil(hi)) + pad)


def sample_stats(insp: Inspection, max_images: int = 120, seed: int = 0) -> list[dict[str, Any]]:
    """`_image_stats` of up to ``max_images`` sample images (a seeded choice), each with its
    label's length."""
    chosen = np.random.default_rng(seed).permutation(len(insp.samples))[:max_images]
    return [{**_image_stats(insp.samples[i][0], len(insp.samples[i][1])),
             "length": len(insp.samples[i][1])} for i in chosen]


def symbol_share(stats: list[dict[str, Any]]) -> float:
    """The share of the image width one symbol takes where symbols are narrowest: the 10th
    percentile of text-line width / label length (what decides how many CTC steps fall on
    each symbol; long labels squeezed into the same line need them most)."""
    shares = sorted((s["span"][1] - s["span"][0]) / max(1, s["length"]) for s in stats)
    return float(shares[int(0.1 * (len(shares) - 1))])


@dataclass(frozen=True)
class TextLayout:
    """Where the sample's text lies: ``crop`` (a Preprocess crop; () for the whole image),
    ``symbol_share`` (one symbol's share of the whole image's width), ``text_share`` (the
    text's dense rows' share of the image's height, median) and ``why``."""
    crop: tuple[float, ...] = ()
    symbol_share: float = 0.0
    why: str = ""
    text_share: float = 0.0

    def cropped(self, size: tuple[int, int]) -> tuple[tuple[int, int], float]:
        """The (width, height) the crop leaves of an image of ``size``, and the symbol's share
        of that width."""
        if not self.crop:
            return size, self.symbol_share
        left, top, right, bottom = self.crop
        return ((max(1, round(size[0] * (right - left))), max(1, round(size[1] * (bottom - top)))),
                self.symbol_share / (right - left))


def text_layout(stats: list[dict[str, Any]]) -> TextLayout:
    """The part of the image every measured text line lies in, with margins (half a symbol's
    width at the sides, a quarter of the text height above and below), as a crop; none when it
    would keep nearly all of the image. The model's input then spends its pixels on glyphs,
    not on empty margins. Images whose text was not found (too faint) do not count."""
    share = symbol_share(stats)
    text = statistics.median(s["text_share"] for s in stats)
    stats = [s for s in stats if s["found"]] or stats
    height = statistics.median(s["rows_span"][1] - s["rows_span"][0] for s in stats)
    mx, my = share / 2, height / 4
    box = (max(0.0, min(s["span"][0] for s in stats) - mx),
           max(0.0, min(s["rows_span"][0] for s in stats) - my),
           min(1.0, max(s["span"][1] for s in stats) + mx),
           min(1.0, max(s["rows_span"][1] for s in stats) + my))
    box = tuple(round(v, 3) for v in box)
    kept = (box[2] - box[0]) * (box[3] - box[1])
    where = (f"text in x {box[0]:.2f}-{box[2]:.2f}, y {box[1]:.2f}-{box[3]:.2f} of the image "
             f"over {len(stats)} images, margins included")
    if kept > CROP_MAX_KEPT:
        return TextLayout((), share, f"crop: none ({where}: {kept:.0%} of it)", text_share=text)
    return TextLayout(box, share, f"crop: data.crop={list(box)}, {kept:.0%} of the image "
                                  f"({where})", text_share=text)


def derive_style(insp: Inspection, max_images: int = 120, seed: int = 0,
                 stats: list[dict[str, Any]] | None = None, match_stroke: bool = False
                 ) -> tuple[SyntheticSpec, list[str]]:
    """A SyntheticSpec that resembles the sample, from pixel statistics (``sample_stats``,
    measured here unless given); and why, as lines. ``match_stroke``: see ``calibrate``."""
    stats = sample_stats(insp, max_images, seed) if stats is None else stats
    dark = sum(s["dark_text"] for s in stats) >= len(stats) / 2
    stats = [s for s in stats if s["dark_text"] == dark] or stats
    bg = _range([float(v) for s in stats for v in s["bg"]])
    fg = _range([float(v) for s in stats for v in s["fg"]])
    w, h = insp.size
    text_h = statistics.median(s["text_rows"] for s in stats)
    font = min(max(10, round(text_h / 0.75)), round(1.1 * h))
    scale = min(synthetic.MAX_SCALE, math.ceil(DRAW_TEXT_ROWS / max(text_h, 1.0)))
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
    spreads = [s["colour_spread"] for s in stats if s["colour_spread"] is not None]
    spread = statistics.median(spreads) if spreads else 0.0
    glyph_colours = (tuple(c for s in stats for c in s["glyph_rgb"])[:GLYPH_COLOURS_KEPT]
                     if drawer == "captcha" and spread >= GLYPH_COLOUR_SPREAD else ())
    files = [path for path, _ in insp.samples[:max_images]]
    quality, jpegs = jpeg_quality(files)
    spec = SyntheticSpec(
        style=drawer, width=w, height=h, charset=insp.charset, min_len=insp.min_len,
        max_len=insp.max_len, fonts=tuple(synthetic.font_path(f) for f in FONT_MIX),
        font_sizes=sizes, background=bg, foreground=fg, dots=dots, strikes=strikes,
        blur=(0.0, 0.6), grey=insp.channels == 1,
        mixed_case=insp.mixed_case or (not insp.case_sensitive and letters),
        # Measured: colour pairs and the text line's extent ("captcha" drawer).
        palette=palette if drawer == "captcha" else (),  # "real" draws a grey ramp and ink
        glyph_colours=glyph_colours,
        text_width=text_width if drawer == "captcha" else (0.0, 0.0),
        text_left=text_left if drawer == "captcha" else (0.0, 0.0),
        # Not measured, drawn broadly for generality: a thin-to-thick curve on every image,
        # stronger per-glyph warp and rotation than the library's defaults, background specks.
        curves=1, curve_width=(1, 4), warp=(0.05, 0.3), rotate=(-20.0, 20.0), specks=SPECKS,
        scale=scale, jpeg=quality)
    spec, shapes, calibration = glyph_shapes(spec, stats, match_stroke=match_stroke)
    notes = [f"style: {'dark glyphs on light' if dark else 'light glyphs on dark'} background, "
             f"background {bg}, glyphs {fg} (5-95th percentiles over {len(stats)} images)",
             f"style: drawer {drawer!r}"
             + (" (left-right background ramp)" if drawer == "real" else ""),
             f"style: font sizes {sizes} from text height ~{text_h:.0f}px; fonts "
             f"{', '.join(FONT_MIX)} (a mix, for generality)",
             *([f"style: drawn at {scale}x ({scale * w}x{scale * h}) and resized to {w}x{h}: "
                f"the text, ~{text_h:.0f} rows high, is under {DRAW_TEXT_ROWS} "
                f"(DRAW_TEXT_ROWS)"] if scale > 1 else []),
             (f"style: {len(palette)} (background, glyph) colour pairs taken from the sample; "
              f"text line {text_width[0]:.2f}-{text_width[1]:.2f} of the width, starting at "
              f"{text_left[0]:.2f}-{text_left[1]:.2f}" if drawer == "captcha" else
              "style: grey ramp background and ink level from the ranges above"),
             (f"style: each glyph in its own colour ({len(glyph_colours)} glyph colours taken "
              f"from the sample; an image's glyph colours differ by {spread:.1f}, >= "
              f"{GLYPH_COLOUR_SPREAD:g})" if glyph_colours else
              f"style: one glyph colour an image (an image's glyph colours differ by "
              f"{spread:.1f}, < {GLYPH_COLOUR_SPREAD:g}"
              + (")" if drawer == "captcha" else "; the 'real' drawer draws one ink)")),
             f"style: noise dots {dots}, thin-stroke share {thin:.2f} -> strike lines {strikes}; "
             f"for generality every image gets one curve (width {spec.curve_width}), glyph "
             f"warp {spec.warp} and rotation {spec.rotate}, {spec.specks[0]}-{spec.specks[1]} "
             f"background specks per 200x50 pixels; "
             + (f"blur {spec.blur}" if drawer == "real" else
                "smoothed (the 'captcha' drawer's filter; it does not read blur)")
             + ("; letters drawn in mixed case" if spec.mixed_case else ""),
             (f"style: {jpegs} of {len(files)} sample images are JPEGs"
              + (f" of quality ~{quality}: every render is encoded so" if quality else
                 ": renders stay lossless")),
             *([shapes] if shapes else []), calibration]
    return spec, notes


def glyph_shapes(spec: SyntheticSpec, real_stats: list[dict[str, Any]],
                 images: int = 2 * CALIBRATION_IMAGES, match_stroke: bool = False
                 ) -> tuple[SyntheticSpec, str, str]:
    """Glyphs stretched to the line (the captcha library's look: each glyph warped to its
    font's line box, so a lowercase "c" as tall as a "C" and capitals tall and narrow) or at
    their font's proportions (most other generators). Each way is calibrated (``calibrate``)
    and measured on whole renders, noise included, as the sample's images are, on what tells
    the two apart: where lowercase letters get drawn, the dense-row share of the text height
    (``fill``: short lowercase letters leave rows sparse); where the captcha drawer fits the
    text to a measured line width (its text box), the share of gap columns in the line
    (``gaps``: narrow glyphs spread to the line's width leave gaps a packed sample lacks).
    Font proportions are kept where their renders are nearer the sample by SHAPES_MARGIN
    (distances summed); where neither measure applies, glyphs stay stretched, unmeasured.

    Measured: wheezy.captcha (capitals and digits, packed): gaps 0.16, renders 0.36 stretched
    and 0.19 at font proportions; pretrained 1200 steps on each way's style, a model read 1000
    wheezy images zero-shot at 0.174 at font proportions against 0.132 stretched (its line
    stretched too, as before spreading). captcha_images_v2's "real" drawer places glyphs on
    its own pitch, and there gaps mislead (fill and gaps summed: 0.16 stretched, 0.15 at font
    proportions, while models pretrained each way read 0.51 and 0.97); fill alone: 0.11
    against 0.05.

    The likeness step (`likeness.tune_style`, with a universal model) may take the other
    shape (``other_shape``) where the model finds its renders far nearer the sample: lines of
    rotated, jittered glyphs at font proportions (ink's) measure like stretched glyphs here.

    Returns the spec, the choice's note ("" when not measured) and the calibration's note."""
    keys = [k for k, tells in (("fill", any(c.islower() for c in spec.charset) or spec.mixed_case),
                               ("gaps", spec.style == "captcha" and spec.text_width[1] > 0))
            if tells]
    if not keys:
        chosen, calibration = calibrate(spec, real_stats, match_stroke=match_stroke)
        return chosen, "", calibration
    real = {k: statistics.median(s[k] for s in real_stats) for k in keys}
    tried = {}
    for stretch in (True, False):
        cand, note = calibrate(replace(spec, stretch=stretch), real_stats,
                               match_stroke=match_stroke)
        got = {k: statistics.median(r[k] for r in _render_stats(cand, "calibrate/shapes", images))
               for k in keys}
        tried[stretch] = (sum(abs(got[k] - real[k]) for k in keys), cand, note, got)
    stretch = tried[False][0] > tried[True][0] - SHAPES_MARGIN

    def measures(got: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in got.items())

    return (tried[stretch][1],
            f"style: glyphs "
            f"{'stretched to the line' if stretch else 'at their font proportions (not warped)'}"
            f" (sample: {measures(real)}; calibrated renders stretched "
            f"{measures(tried[True][3])}, at font proportions {measures(tried[False][3])})",
            tried[stretch][2])


def other_shape(spec: SyntheticSpec, real_stats: list[dict[str, Any]],
                match_stroke: bool = False) -> SyntheticSpec:
    """The spec with the glyph shape ``glyph_shapes`` did not choose, calibrated to the sample
    alike (the likeness step compares the two; ``likeness.SHAPE_MARGIN``)."""
    return calibrate(replace(spec, stretch=not spec.stretch), real_stats,
                     match_stroke=match_stroke)[0]


def _line_measures(stats: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Median text-line width and start (shares of the image width) and text height (rows)."""
    return (statistics.median(s["span"][1] - s["span"][0] for s in stats),
            statistics.median(s["span"][0] for s in stats),
            statistics.median(s["text_rows"] for s in stats))


def _mean_stroke(stats: list[dict[str, Any]]) -> float:
    """Mean of the images' median stroke runs: whole-pixel runs make a median of medians
    jump."""
    return statistics.mean(s["stroke"] for s in stats)


def _render_stats(spec: SyntheticSpec, seed: str, images: int) -> list[dict[str, Any]]:
    """`_image_stats` of whole renders of the style, noise included, as the sample's images
    are measured."""
    return [_image_stats(synthetic.render(spec, seed, i)[0]) for i in range(images)]


def _text_stats(spec: SyntheticSpec, seed: str, images: int) -> list[dict[str, Any]]:
    """`_image_stats` of renders of the style without its noise: the text alone, since our own
    curves (they reach across the image) would blur the measures calibration compares."""
    return _render_stats(replace(spec, curves=0, strikes=(0, 0), dots=0, specks=(0, 0),
                                 fragments=(0, 0)), seed, images)


def calibrate(spec: SyntheticSpec, real_stats: list[dict[str, Any]], rounds: int = 3,
              images: int = CALIBRATION_IMAGES, match_stroke: bool = False
              ) -> tuple[SyntheticSpec, str]:
    """Measure rendered images exactly as the sample was measured and correct the text box,
    font sizes and stroke thickness until the two agree: a drawer's margins, overlaps and warp
    make its ink narrower and shorter than the box and size it is given, and the library's
    stretched glyphs bolder than the font, so measured values are not drawable ones.

    Strokes are always measured; ``match_stroke`` also changes them (one change for the whole
    font mix: it lifted wheezy's zero-shot accuracy 0.27 -> 0.47 but thinned alnum62's one
    regular serif below the sample, 0.91 -> 0.65), so it is off unless asked for."""
    real_w, real_left, real_h = _line_measures(real_stats)
    real_stroke = _mean_stroke(real_stats)
    boxed = spec.text_width[1] > 0

    def measure(s: SyntheticSpec, seed: str) -> tuple[float, float, float]:
        return _line_measures(_text_stats(s, seed, images))

    def stroke_of(s: SyntheticSpec, seed: str) -> float:
        """Measured on the text without our noise: a glyph thinned to runs under 2 pixels
        drops out of the measure, and on whole renders our curves' runs then remained, so
        thinning measured thicker (ink_small drawn at 2x: 4.8, 3.6, 5.0 px at 0, -0.5 and
        -1.2 a side), and the correction ran away (-1.21; the text alone measures 4.1, 2.9,
        2.0 there: -0.38, 2.8 px against the sample's 3.0)."""
        return _mean_stroke(_text_stats(s, seed, 2 * images))

    spaces = ""
    if boxed:  # the "captcha" drawer's spaces between glyphs: as many as the sample has gaps
        spec, spaces = _calibrate_spaces(spec, real_stats, images)

    def resize(spec: SyntheticSpec, seed: str) -> SyntheticSpec:
        w, left, h = measure(spec, seed)
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
        return replace(spec, **changes)

    def restroke(spec: SyntheticSpec) -> SyntheticSpec:
        # One pixel more on each side of a stroke makes its runs two pixels longer; the same
        # images every round (and twice as many), so a correction is not noise.
        stroke = spec.stroke + (real_stroke - stroke_of(spec, "calibrate/stroke")) / 2
        return replace(spec, stroke=round(float(np.clip(stroke, -2.0, 2.5)), 2))

    for r in range(rounds):
        spec = resize(spec, f"calibrate/{r}")
    if match_stroke:  # the strokes at the right size; thinning shortens glyphs: resize again
        for _ in range(2):
            spec = restroke(spec)
        spec = resize(spec, f"calibrate/{rounds}")
    # One set of text renders for the check: the line measures read its first ``images``
    # (what measure() renders for this seed), the strokes all of them (stroke_of's).
    check = _text_stats(spec, "calibrate/check", 2 * images)
    w, left, h = _line_measures(check[:images])
    stroke = _mean_stroke(check)
    line = (f"calibration: synthetic text measured like the sample after "
            f"{rounds + 3 * match_stroke} corrections: "
            f"line width {w:.2f} (sample {real_w:.2f}), start {left:.2f} ({real_left:.2f}), "
            f"height {h:.0f}px ({real_h:.0f}), strokes {stroke:.1f}px ({real_stroke:.1f}) -> "
            f"font sizes {spec.font_sizes}, "
            + (f"stroke change {spec.stroke:+.2f}px a side" if match_stroke else
               "strokes not changed (--match-stroke)"))
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
    n = min(n, len(insp.samples))
    return side_by_side([load_image(path) for path, _ in insp.samples[:n]],
                        [synthetic.render(spec, "style-samples", i)[0] for i in range(n)],
                        insp.size)


def side_by_side(left: list[Image.Image], right: list[Image.Image], size: tuple[int, int]
                 ) -> Image.Image:
    """Two columns of images, each resized to ``size``: real ones beside made ones."""
    w, h = size
    grid = Image.new("RGB", (2 * w + 4, max(len(left), len(right)) * (h + 2)), "white")
    for x, column in ((0, left), (w + 4, right)):
        for i, img in enumerate(column):
            grid.paste(img.convert("RGB").resize((w, h)), (x, i * (h + 2)))
    return grid
