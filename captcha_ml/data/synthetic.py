"""Synthetic captchas from the ``captcha`` library: seeded rendering, style presets, parallel writer.

captcha's ``ImageCaptcha`` draws with the ``secrets`` module, which cannot be seeded. We extend
it rather than replace it: ``seeded_secrets`` swaps ``captcha.image.secrets`` for a shim backed
by a seeded ``random.Random`` while one image is drawn, so an image and its label are a pure
function of (spec, seed, index): the same on any machine (with the same Pillow/FreeType) and
for any worker count. The swap is per process and not thread-safe; DataLoader and Pool
workers are processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import captcha.image as captcha_image
from captcha.image import ImageCaptcha
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from captcha_ml import files
from captcha_ml.config import DataConfig, read_yaml
from captcha_ml.data.real import DataError, write_manifest
from captcha_ml.data.transforms import wave_points

CAPTCHA_FONT = os.path.join(captcha_image.DATA_DIR, "DroidSansMono.ttf")
STYLES = ("captcha", "real")
MAX_SCALE = 4  # SyntheticSpec.scale: drawn at most this many times the canvas size


def dejavu_bold_oblique() -> str:
    """DejaVuSans-BoldOblique from matplotlib's fonts (DejaVu license ships there), else captcha's."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-BoldOblique.ttf"
        return str(path) if path.is_file() else CAPTCHA_FONT
    except ImportError:
        return CAPTCHA_FONT


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that decides how synthetic captchas look. Colour ranges are inclusive 0..255."""

    style: str = "real"
    width: int = 200
    height: int = 50
    charset: str = "2345678bcdefgmnpwxy"
    min_len: int = 5
    max_len: int = 5
    fonts: tuple[str, ...] = ()  # empty: the style's default font
    font_sizes: tuple[int, ...] = (34, 36, 38)
    background: tuple[int, int] = (180, 255)  # "real": gradient from the low to the high end
    foreground: tuple[int, int] = (0, 40)
    dots: int = 0
    curves: int = 1
    strikes: tuple[int, int] = (1, 2)  # min, max dark lines drawn across the text
    # Gaussian blur radius range; (0, 0): none. The "real" drawer's: "captcha" smooths each
    # image with PIL's SMOOTH filter instead.
    blur: tuple[float, float] = (0.3, 0.7)
    grey: bool = True
    mixed_case: bool = False  # draw each letter in random case; the label keeps the charset's case
    rotate: tuple[float, float] = (-12.0, 12.0)  # per-glyph rotation range, degrees
    warp: tuple[float, float] = (0.05, 0.15)  # per-glyph perspective warp, fraction of glyph size
    jitter: tuple[int, int] = (0, 0)  # extra copies of the text, each shifted by up to 1 pixel
    stretch: bool = True  # glyphs stretched to the line height (captcha's look); False: font
    # shapes (lowercase letters short; `captcha-ml fit` chooses by measuring the sample)
    hooks: tuple[int, int] = (0, 0)  # short dark strokes at the start of the text ("real" drawer)
    overlap: float = 0.25  # neighbours may overlap by up to this share of the mean glyph width
    bob: float = 0.0  # "captcha" drawer's text box (``text_width``): each glyph moved up or down
    # by up to this share of the canvas height (its ink kept inside), as generators that place
    # every glyph at its own height draw; 0: glyphs share the line
    pitch: tuple[float, float] = (0.0, 0.0)  # "real" drawer: glyphs centred on a fixed pitch of
    # this share of the font size, so wide glyphs ("m", "w") overlap their neighbours as in
    # captcha_images_v2; (0, 0): placed by their own widths, as the captcha library does
    repeat: float = 0.0  # chance that a symbol repeats the previous one (touching twins: CTC's
    # hardest case, since only a blank frame between them keeps them apart)
    squeeze: tuple[float, float] = (1.0, 1.0)  # stretch off: per-glyph width
    # scale (condensed or wide lettering, so glyphs are told apart by shape, not only width)
    slant: tuple[float, float] = (0.0, 0.0)  # and per-glyph shear (positive leans right)
    font_warp: tuple[float, float] = (0.0, 0.0)  # and per-glyph perspective warp: each corner
    # moved by up to this share of the glyph's width and height, drawn from the range, as
    # wheezy.captcha and the library (stretched glyphs: ``warp``) draw it; (0, 0): none
    # Measured from a sample by `captcha-ml fit` (the defaults keep the drawers' own look):
    palette: tuple[tuple[int, ...], ...] = ()  # (bg R, G, B, glyph R, G, B) pairs seen in the
    # sample; when set, each image takes one (jittered) instead of the background/foreground ranges
    glyph_colours: tuple[tuple[int, ...], ...] = ()  # (R, G, B) glyph colours seen in the
    # sample: where set, each glyph of the "captcha" drawer's text box (``text_width``) takes
    # one of them (jittered), as generators that colour every glyph apart draw; (): one colour
    # an image (the palette's, or the foreground range's)
    text_width: tuple[float, float] = (0.0, 0.0)  # "captcha" drawer: the text line's width as a
    # share of the canvas width; (0, 0): the text fills the canvas, as the library draws it
    text_left: tuple[float, float] = (0.0, 0.0)  # and where the line starts (share of the width)
    curve_width: tuple[int, int] = (1, 1)  # noise curves: stroke width range; above 1, half
    # of them are smooth Bezier curves through the text line (end to end, as many generators
    # draw them to cross glyphs), a quarter waves across the whole width, a quarter arcs
    spaces: float = 0.5  # "captcha" drawer: chance of a space before each glyph (the library's
    # own habit; generators that pack glyphs tightly have none)
    stroke: float = 0.0  # pixels added (+) or taken (-) on each side of every glyph stroke
    # (a fraction mixes the two nearest whole numbers, per image): the captcha library's
    # stretched glyphs come out bolder than many generators' (measured by `captcha-ml fit`)
    specks: tuple[int, int] = (0, 0)  # count range, per 200x50 pixels, of small squares in the
    # background's colour drawn over text and curves (salt noise that cuts strokes)
    fragments: tuple[int, int] = (0, 0)  # count range, per 200x50 pixels, of solid shapes
    # (boxes, ellipses, short thick lines) in glyph colours drawn over the text: the opaque
    # clutter some generators scatter on their captchas (kaptcha's "chips")
    scale: int = 1  # drawn at this many times width x height, every pixel measure above with
    # it (``drawn``), then resized to width x height: the captcha library's glyphs drawn only a
    # dozen pixels high fill in (its ink mask doubles anti-aliased edges), where a generator
    # drawing its font at that size keeps them open; `captcha-ml fit` sets it for small text
    jpeg: int = 0  # JPEG quality (1-100) each render is encoded at and decoded from, as a
    # site serving JPEG captchas blurs colour edges into 8x8 blocks; 0: none (`captcha-ml fit`
    # sets the sample's quality where its images are JPEGs)

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise DataError(f"unknown synthetic style {self.style!r}; use one of {', '.join(STYLES)}")
        if not self.charset or not 1 <= self.min_len <= self.max_len:
            raise DataError(f"synthetic spec needs a charset and 1 <= min_len <= max_len "
                            f"(got {self.charset!r}, {self.min_len}, {self.max_len})")
        if not 0 <= self.bob <= 0.5:
            raise DataError(f"synthetic spec: bob is a share of the canvas height in [0, 0.5] "
                            f"(got {self.bob})")
        if not (0 <= self.overlap < 1 and 0 <= self.repeat < 1 and 0 <= self.spaces <= 1):
            raise DataError(f"synthetic spec: overlap and repeat must be in [0, 1), spaces in "
                            f"[0, 1] (got {self.overlap}, {self.repeat}, {self.spaces})")
        if not 0 <= self.jpeg <= 100:
            raise DataError(f"synthetic spec: jpeg is a JPEG quality in [1, 100], or 0 for none "
                            f"(got {self.jpeg})")
        if not 1 <= self.scale <= MAX_SCALE:
            raise DataError(f"synthetic spec: scale must be a whole number in [1, {MAX_SCALE}] "
                            f"(got {self.scale})")
        # 3 pixels a side, times the largest scale (``drawn`` multiplies the stroke too).
        if not -3 * MAX_SCALE <= self.stroke <= 3 * MAX_SCALE:
            raise DataError(f"synthetic spec: stroke must be in [{-3 * MAX_SCALE}, "
                            f"{3 * MAX_SCALE}] pixels (got {self.stroke})")
        if any(len(p) != 6 for p in self.palette):
            raise DataError("synthetic spec: palette entries are (bg R, G, B, glyph R, G, B), "
                            f"six values each (got {list(self.palette)[:2]}...)")
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.glyph_colours):
            raise DataError("synthetic spec: glyph_colours entries are (R, G, B), three values "
                            f"in 0..255 each (got {list(self.glyph_colours)[:2]}...)")
        ranges = {"text_width": (self.text_width, 0, 1), "text_left": (self.text_left, 0, 1),
                  "curve_width": (self.curve_width, 1, 64), "squeeze": (self.squeeze, 0.05, 10),
                  "specks": (self.specks, 0, 400), "font_warp": (self.font_warp, 0, 0.5),
                  "fragments": (self.fragments, 0, 200)}
        for name, ((lo, hi), low, high) in ranges.items():
            if not low <= lo <= hi <= high:
                raise DataError(f"synthetic spec: {name} must be a range (low, high) within "
                                f"[{low}, {high}] (got {(lo, hi)})")

    @property
    def font_files(self) -> tuple[str, ...]:
        if self.fonts:
            return tuple(font_path(f) for f in self.fonts)
        return (dejavu_bold_oblique(),) if self.style == "real" else (CAPTCHA_FONT,)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def drawn(self) -> SyntheticSpec:
        """The spec its drawer draws: at ``scale`` times the canvas, with the font sizes, curve
        widths, stroke change and blur radius scaled alike, and the specks' and fragments'
        counts per 200x50 pixels divided by the scale squared (their sides grow with the height
        already, so the share of the image they cover stays). Other counts and shares stay;
        the library's noise dots and the strike lines keep their drawn widths (thinner in the
        output)."""
        k = self.scale
        if k == 1:
            return self
        return dataclasses.replace(
            self, scale=1, width=self.width * k, height=self.height * k,
            font_sizes=tuple(f * k for f in self.font_sizes),
            curve_width=tuple(c * k for c in self.curve_width), stroke=self.stroke * k,
            blur=tuple(b * k for b in self.blur),
            specks=tuple(round(n / k**2) for n in self.specks),
            fragments=tuple(round(n / k**2) for n in self.fragments))


_PRESETS: dict[str, dict] = {
    # The library's own look: colour glyphs on a light background, dots and a curve.
    "captcha": dict(style="captcha", font_sizes=(42, 50, 56), background=(238, 255),
                    foreground=(10, 200), dots=30, curves=1, strikes=(0, 0), blur=(0, 0), grey=False),
    # Resembles captcha_images_v2: grey gradient, upright regular sans glyphs with fuzzy
    # (re-drawn, shifted) edges, one dark strike-through line, slight blur.
    "real": dict(style="real", fonts=("DejaVuSans.ttf",), font_sizes=(32, 34, 36),
                 rotate=(-6.0, 6.0), jitter=(0, 1), stretch=False, overlap=0.02, strikes=(1, 1),
                 hooks=(1, 2), curves=0, blur=(0.0, 0.4)),
    # An earlier, coarser imitation: bold oblique glyphs, 1-2 strikes (kept for comparison).
    "oblique": dict(style="real", overlap=0.3),
}


def preset(name: str, **overrides) -> SyntheticSpec:
    """A named spec (``captcha`` or ``real``) with any fields overridden."""
    if name not in _PRESETS:
        raise DataError(f"unknown synthetic style {name!r}; use one of {', '.join(_PRESETS)} "
                        "(or universal, a mixture of looks, as data.style)")
    return SyntheticSpec(**{**_PRESETS[name], **_tuples(overrides)})


def _tuples(fields: dict) -> dict:
    """YAML lists as the tuples a (hashable, frozen) SyntheticSpec holds; palette rows too."""
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    for key in ("palette", "glyph_colours"):
        if key in out:
            out[key] = tuple(tuple(int(c) for c in row) for row in out[key])
    return out


def spec_from_config(data: DataConfig, **overrides) -> SyntheticSpec | SpecMixture:
    """The style of a DataConfig (preset name or style YAML) with its charset and lengths.

    Presets and style files keep their own canvas (the size their font sizes belong to: 200x50
    for the presets, the sample's native size for a style file); preprocessing then resizes
    every image to the model input (data.width x data.height), as it does the real ones.
    """
    text = {"charset": data.charset, "min_len": data.min_len, "max_len": data.max_len}
    if data.style == "universal":
        from captcha_ml.data.universal import mixture

        return mixture(**text)
    if is_style_file(data.style):
        return SyntheticSpec(**{**load_style(data.style), **text, **overrides})
    return preset(data.style, **{**text, **overrides})


def is_style_file(style: str) -> bool:
    return style.endswith((".yaml", ".yml"))


def font_path(name: str) -> str:
    """A font file by path, or by file name among captcha's and matplotlib's bundled fonts."""
    if os.path.isfile(name):
        return name
    dirs = [captcha_image.DATA_DIR]
    with contextlib.suppress(ImportError):
        import matplotlib

        dirs.append(os.path.join(matplotlib.get_data_path(), "fonts", "ttf"))
    for folder in dirs:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise DataError(f"font {name!r} not found as a path nor in {', '.join(dirs)}; "
                    "give a .ttf path or a bundled name such as DejaVuSans.ttf")


def load_style(path: str | Path) -> dict:
    """SyntheticSpec fields from a style YAML (written by save_style / captcha-ml fit)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"style file {p} does not exist; give data.style as a preset "
                        f"({', '.join(_PRESETS)}, universal) or the path of a style YAML")
    raw = read_yaml(p)
    known = {f.name for f in dataclasses.fields(SyntheticSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DataError(f"{p}: unknown style keys {unknown}; valid keys: {', '.join(sorted(known))}")
    fields = _tuples(raw)
    fields["fonts"] = tuple(font_path(f) for f in fields.get("fonts", ()))
    return fields


def _font_name(path: str) -> str:
    """The bare file name of a bundled font (portable across machines), else the path."""
    try:
        return os.path.basename(path) if font_path(os.path.basename(path)) == path else path
    except DataError:
        return path


def save_style(spec: SyntheticSpec, path: str | Path, header: str = "") -> Path:
    """Write a spec as an editable style YAML (fonts by file name when bundled)."""
    import yaml

    d = spec.to_dict()
    d["fonts"] = [_font_name(f) for f in spec.fonts]
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    d["palette"] = [list(row) for row in spec.palette]
    d["glyph_colours"] = [list(row) for row in spec.glyph_colours]
    return files.write_text(path, header + yaml.safe_dump(d, sort_keys=False))


# ----------------------------------------------------------------------------- seeding

class _SeededSecrets:
    """The part of ``secrets`` that captcha uses, drawn from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq):
        return self._rng.choice(seq)


@contextlib.contextmanager
def seeded_secrets(rng: random.Random) -> Iterator[None]:
    """Make captcha.image draw its randomness from ``rng`` inside the block."""
    saved = captcha_image.secrets
    captcha_image.secrets = _SeededSecrets(rng)
    try:
        yield
    finally:
        captcha_image.secrets = saved


def item_rng(seed: int | str, index: int) -> random.Random:
    """A generator that depends only on (seed, index), via sha256: stable across machines."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


# ----------------------------------------------------------------------------- styles

class SpecCaptcha(ImageCaptcha):
    """ImageCaptcha configured from a SyntheticSpec; ``draw`` uses the spec's colours and noise."""

    def __init__(self, spec: SyntheticSpec) -> None:
        super().__init__(spec.width, spec.height, list(spec.font_files), tuple(spec.font_sizes))
        self.spec = spec
        self.character_rotate = tuple(spec.rotate)
        self.word_offset_dx = spec.overlap
        self.word_space_probability = 1.0 - spec.spaces  # the library's name, inverted
        self.character_warp_dx = self.character_warp_dy = tuple(spec.warp)

    def _draw_character(self, c: str, draw: ImageDraw.ImageDraw, color) -> Image.Image:
        """With ``stretch`` off: the glyph at its font proportions on the font's full line box
        (so glyphs share a baseline and lowercase letters stay short), rotated, cropped to its
        ink columns; on: the library's glyph, stretched to the line. Not warped: the library's
        perspective warp on these (wheezy's derived style, 1200 pretraining steps) read 1000
        wheezy images zero-shot at 0.084 against 0.174 without it (synthetic validation 0.89
        against 0.96)."""
        if self.spec.stretch:
            return super()._draw_character(c, draw, color)
        rand = captcha_image.secrets  # the seeded shim while ``render`` draws
        font = rand.choice(self.truefonts)
        ascent, descent = font.getmetrics()
        right = int(draw.textbbox((0, 0), c, font=font)[2])
        im = Image.new("RGBA", (right + 8, ascent + descent + 4))
        ImageDraw.Draw(im).text((4, 2), c, font=font, fill=color)
        im = _squeeze_slant(im, self.spec, rand)
        im = _font_warp(im, self.spec.font_warp, rand)
        lo, hi = self.character_rotate
        angle = lo + rand.randbits(32) / 2**32 * (hi - lo)
        im = _turnable(im, angle).rotate(angle, Image.BILINEAR)
        box = im.getbbox() or (0, 0, im.width, im.height)
        return im.crop((box[0], 0, box[2], im.height))

    def draw(self, chars: str, rng: random.Random) -> Image.Image:
        s = self.spec
        bg, fg = _colours(s, rng)
        # An alpha that drawing on RGB ignores, still drawn so the later random draws of
        # every render stay where they were.
        fg = fg + (rng.randint(220, 255),)
        # The library masks each glyph by its brightness, so a dark glyph colour came out
        # faint (glyph colours 0-20 on white: darkest pixel 223 of 255): the text is drawn
        # white on black, as the "real" drawer does, and that coverage paints the colour.
        white, black = (255, 255, 255, 255), (0, 0, 0)
        tint = None  # each glyph's own colour (glyph_colours), else fg everywhere
        if s.text_width[1] > 0:
            cover, span, tint = self._text_line(chars, white, black, rng)
        else:
            cover, span = self.create_captcha_image(chars, white, black), (0, s.width)
        im = Image.composite(tint if tint is not None else Image.new("RGB", cover.size, fg[:3]),
                             Image.new("RGB", cover.size, bg), cover.convert("L"))
        im = _restroke(im, bg, fg[:3], _stroke_pixels(s, rng))
        if s.dots:
            self.create_noise_dots(im, fg, number=s.dots)
        for _ in range(s.curves):
            _curve(self, im, rng, fg, span)
        if s.strikes[1] > 0:
            _strike(im, rng, rng.randint(*s.strikes), fg[:3])
        if s.fragments[1] > 0:
            _fragments(im, rng, s.fragments, lambda: _jittered(rng.choice(s.glyph_colours), rng)
                       if s.glyph_colours else fg[:3])
        if s.specks[1] > 0:
            _specks(im, rng, s.specks, lambda x, y: bg)
        return im.filter(ImageFilter.SMOOTH)


    def _text_line(self, chars: str, fg: tuple, bg: tuple, rng: random.Random
                   ) -> tuple[Image.Image, tuple[int, int], Image.Image | None]:
        """The text's ink made to span ``text_width`` of the canvas, starting at ``text_left``
        (the library would leave a text narrower than its box left-aligned in it, so the box
        alone does not set how wide the text comes out). A line narrower than its box is
        spread (wider gaps between the glyphs), not stretched: stretching widened wheezy's
        glyphs 1.36x (median) and their strokes with them; a wider line is squeezed, as the
        library squeezes a text wider than its canvas. Returns the canvas, the text's (left,
        right) columns and, with ``glyph_colours``, a canvas of each glyph's colour where its
        ink lies (a later glyph over an earlier one where they overlap), else None."""
        s = self.spec
        box = max(8, int(rng.uniform(*s.text_width) * s.width))
        glyphs, steps = self._glyph_row(chars, fg)
        # Drawn only where set, so a style without it renders what it rendered before.
        drops = [round(rng.uniform(-s.bob, s.bob) * self._height) for _ in glyphs] \
            if s.bob > 0 else None
        text = self._paste_row(glyphs, steps, bg, drops=drops)
        ink = _ink_mask(text, bg).getbbox()
        inked = [g.getbbox() is not None for g in glyphs]  # spaces are blank glyphs
        if ink and ink[2] - ink[0] < box and sum(inked) > 1:
            extra = (box - (ink[2] - ink[0])) / (sum(inked) - 1)
            added, spread = 0.0, []
            for has_ink, step in zip(inked, steps):
                spread.append(step + round(added))
                added += extra if has_ink else 0.0
            text, steps = self._paste_row(glyphs, spread, bg, drops=drops), spread
            ink = _ink_mask(text, bg).getbbox()
        tint = None
        if s.glyph_colours:  # one more draw per glyph, only for styles that have them
            colours = [_jittered(rng.choice(s.glyph_colours), rng) for _ in glyphs]
            tint = self._paste_row(glyphs, steps, bg, colours, drops)
        left = max(0, min(int(rng.uniform(*s.text_left) * s.width), s.width - box))

        def place(row: Image.Image) -> Image.Image:  # the ink's columns into the box
            if ink:
                row = row.crop((ink[0], 0, ink[2], row.height))
            canvas = Image.new("RGB", (s.width, s.height), bg)
            canvas.paste(row.resize((box, s.height), Image.BILINEAR), (left, 0))
            return canvas

        return place(text), (left, left + box), None if tint is None else place(tint)

    def _glyph_row(self, chars: str, color) -> tuple[list[Image.Image], list[int]]:
        """The library's glyph images (a space before some, at ``spaces``' rate) and where each
        starts, as its ``create_captcha_image`` places them (same random draws, same order)."""
        rand = captcha_image.secrets  # the seeded shim while ``render`` draws
        draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        glyphs = []
        for c in chars:
            if rand.randbits(32) / 2**32 > self.word_space_probability:
                glyphs.append(self._draw_character(" ", draw, color))
            glyphs.append(self._draw_character(c, draw, color))
        average = int(sum(g.width for g in glyphs) / len(chars))
        offset, steps = int(average * 0.1), []
        for g in glyphs:
            steps.append(offset)
            offset += g.width - rand.randbelow(int(self.word_offset_dx * average) + 1)
        return glyphs, steps

    def _paste_row(self, glyphs: list[Image.Image], starts: list[int], bg: tuple,
                   colours: list[tuple[int, ...]] | None = None,
                   drops: list[int] | None = None) -> Image.Image:
        """The glyphs pasted at their starts on a background as wide as they need, centred on
        the line or, with ``drops``, moved down (up where negative) by them as far as their ink
        stays on the canvas; with ``colours``, each glyph's ink filled with its colour
        instead."""
        width = max(s + g.width for g, s in zip(glyphs, starts)) + 1
        image = Image.new("RGB", (max(width, self._width), self._height), bg)
        for i, (g, x) in enumerate(zip(glyphs, starts)):
            mask = g.convert("L").point(self.lookup_table)  # the library's ink mask
            fill = g if colours is None else Image.new("RGB", g.size, colours[i])
            y = (self._height - g.height) // 2
            ink = mask.getbbox() if drops and drops[i] else None
            if ink:  # the ink's rows [y + top, y + bottom) kept in [0, height)
                lo, hi = -ink[1], self._height - ink[3]
                y = min(max(y + drops[i], lo), hi) if lo <= hi else y
            image.paste(fill, (x, y), mask)
        return image


def _turnable(im: Image.Image, angle: float) -> Image.Image:
    """The glyph's canvas padded alike on opposite sides to the box it fills turned by
    ``angle`` degrees, so turning it about its centre cuts nothing: on the glyph's own canvas
    (a few pixels wider than its advance) a turn of 30 degrees cut a descender's end, 60 left
    stubs. Padding by whole pixels alike moves the centre with the glyph, so a glyph the turn
    did not cut comes out the same pixels, at the same height on the line (pasted centred)."""
    w, h = im.size
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    pad_x = max(0, math.ceil((w * cos + h * sin - w) / 2))
    pad_y = max(0, math.ceil((w * sin + h * cos - h) / 2))
    if not pad_x and not pad_y:
        return im
    canvas = Image.new(im.mode, (w + 2 * pad_x, h + 2 * pad_y))
    canvas.paste(im, (pad_x, pad_y))
    return canvas


def _jittered(colour: tuple[int, ...], rng: random.Random) -> tuple[int, ...]:
    """A measured colour, its brightness shifted a little and each channel by +-3."""
    shift = rng.randint(-12, 12)
    return tuple(min(255, max(0, c + shift + rng.randint(-3, 3))) for c in colour)


def _colours(s: SyntheticSpec, rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Background and glyph colour: a jittered palette pair, else drawn from the ranges."""
    if s.palette:
        row = rng.choice(s.palette)
        # One brightness shift for each colour and a small tint: independent channel jitter
        # would turn a grey-beige background pink or green, which no sample image shows.
        shift = rng.randint(-12, 12), rng.randint(-12, 12)
        near = tuple(min(255, max(0, c + shift[i // 3] + rng.randint(-3, 3)))
                     for i, c in enumerate(row))
        return near[:3], near[3:]
    bg = tuple(rng.randint(*s.background) for _ in range(3))
    return bg, tuple(rng.randint(*s.foreground) for _ in range(3))


def _curve(drawer: ImageCaptcha, im: Image.Image, rng: random.Random, colour: tuple,
           span: tuple[int, int]) -> None:
    """A noise curve: the library's thin arc, or (with a curve_width above 1) a smooth Bezier
    curve through the text line ``span`` (its left and right columns; half of the curves), a
    wave through random heights across the whole width or a thick arc, as other generators
    draw them. Arcs and whole-width waves often pass above or below the glyphs; the Bezier
    curve crosses them (wheezy.captcha's curve does, and most of fit's wheezy misreads were
    glyphs under it)."""
    lo, hi = drawer.spec.curve_width
    if hi <= 1:
        drawer.create_noise_curve(im, colour)
        return
    w, h = im.size
    width = rng.randint(lo, hi)
    draw = ImageDraw.Draw(im)
    kind = rng.random()
    if kind < 0.5:
        draw.line(bezier_points(rng, span, h), fill=colour, width=width, joint="curve")
    elif kind < 0.75:
        draw.line(wave_points(rng, 0, w, h), fill=colour, width=width, joint="curve")
    else:
        x0, y0 = rng.randint(0, w // 5), rng.randint(0, h // 2)
        box = (x0, y0, rng.randint(w * 4 // 5, w), rng.randint(y0 + h // 4, h + h // 2))
        draw.arc(box, rng.randint(150, 200), rng.randint(320, 390), fill=colour, width=width)


def bezier_points(rng: random.Random, span: tuple[int, int], h: int) -> list[tuple[float, float]]:
    """A Bezier curve over the text line: 4-6 control points evenly spaced from a little
    before its left end to a little past its right end, at random heights in the middle 80%
    of ``h`` (the curve keeps near their mean, so it runs through the glyphs); a point every
    2 pixels."""
    left, right = span
    reach = 0.1 * (right - left)
    x0, x1 = left - rng.uniform(0, reach), right + rng.uniform(0, reach)
    n = rng.randint(4, 6)
    control = [(x0 + (x1 - x0) * i / (n - 1), rng.uniform(0.1, 0.9) * h) for i in range(n)]
    steps = max(2, int((x1 - x0) / 2))
    binomial = [math.comb(n - 1, i) for i in range(n)]
    points = []
    for k in range(steps + 1):
        t = k / steps
        weights = [binomial[i] * t**i * (1 - t) ** (n - 1 - i) for i in range(n)]
        points.append((sum(wt * p[0] for wt, p in zip(weights, control)),
                       sum(wt * p[1] for wt, p in zip(weights, control))))
    return points


def _per_area(rng: random.Random, count: tuple[int, int], w: int, h: int) -> int:
    """How many of a noise element a w x h image gets: drawn from ``count``, a range per
    200x50 pixels, scaled to the image's area."""
    scale = w * h / (200 * 50)
    return rng.randint(round(count[0] * scale), round(count[1] * scale))


def _specks(im: Image.Image, rng: random.Random, count: tuple[int, int], colour_at) -> None:
    """``count`` (a range, per 200x50 pixels) small squares, 1-2 x h/30 pixels wide, each in
    ``colour_at(x, y)``: the background's colour there, so they cut strokes and curves."""
    w, h = im.size
    draw = ImageDraw.Draw(im)
    side = max(1, round(h / 30))
    for _ in range(_per_area(rng, count, w, h)):
        x, y, size = rng.randrange(w), rng.randrange(h), side * rng.randint(1, 2)
        draw.rectangle((x, y, x + size - 1, y + size - 1), fill=colour_at(x, y))


def _fragments(im: Image.Image, rng: random.Random, count: tuple[int, int], colour) -> None:
    """``count`` (a range, per 200x50 pixels) solid shapes anywhere on the image, a third
    each: boxes and ellipses 0.05-0.3 of the height on a side, and lines 0.2-0.8 of the height
    long and 0.05-0.1 of it thick at any angle; each in ``colour()``. Drawn over the text,
    they hide parts of glyphs as the clutter of generators such as kaptcha does."""
    w, h = im.size
    draw = ImageDraw.Draw(im)
    for _ in range(_per_area(rng, count, w, h)):
        x, y, kind, fill = rng.uniform(0, w), rng.uniform(0, h), rng.randrange(3), colour()
        if kind == 2:
            length, angle = rng.uniform(0.2, 0.8) * h, rng.uniform(0, 2 * math.pi)
            draw.line((x, y, x + length * math.cos(angle), y + length * math.sin(angle)),
                      fill=fill, width=max(1, round(rng.uniform(0.05, 0.1) * h)))
        else:
            box = (x, y, x + rng.uniform(0.05, 0.3) * h, y + rng.uniform(0.05, 0.3) * h)
            (draw.rectangle if kind == 0 else draw.ellipse)(box, fill=fill)


class RealCaptcha(SpecCaptcha):
    """The look of captcha_images_v2: text on the left 3/4 over a horizontal grey gradient."""

    character_offset_dy = (0, 3)

    def __init__(self, spec: SyntheticSpec) -> None:
        super().__init__(spec)
        self.word_space_probability = 1.0  # never insert spaces: glyphs touch and overlap
        self._text_width = int(spec.width * 0.68)  # the library fills this box, then we place it

    def create_captcha_image(self, chars: str, color, background) -> Image.Image:
        """With a ``pitch``: glyph centres on a fixed pitch (wide glyphs overlap neighbours);
        otherwise the library's placement by glyph widths."""
        lo, hi = self.spec.pitch
        if hi <= 0:
            return super().create_captcha_image(chars, color, background)
        rand = captcha_image.secrets  # the seeded shim while ``render`` draws
        draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        glyphs = [self._draw_character(c, draw, color) for c in chars]
        size = sum(self._font_sizes) / len(self._font_sizes)
        step = size * (lo + rand.randbits(32) / 2**32 * (hi - lo))
        widest = max(g.width for g in glyphs)
        width = int(step * len(chars) + widest) + 2
        image = Image.new("RGB", (max(width, self._width), self._height), background)
        for i, g in enumerate(glyphs):
            centre = step * (i + 0.5) + widest / 2 + rand.randbelow(3) - 1
            mask = g.convert("L").point(self.lookup_table)  # the library's ink mask
            image.paste(g, (int(centre - g.width / 2), (self._height - g.height) // 2), mask)
        return image.resize((self._width, self._height)) if width > self._width else image

    def draw(self, chars: str, rng: random.Random) -> Image.Image:
        s, (w, h) = self.spec, (self.spec.width, self.spec.height)
        ink = rng.randint(*s.foreground)
        full, self._width = self._width, self._text_width
        try:
            # The library masks glyphs by their brightness: draw white on black, then invert.
            text = self.create_captcha_image(chars, (255, 255, 255, 255), (0, 0, 0))
        finally:
            self._width = full
        text = _restroke(text, (0, 0, 0), (255, 255, 255), _stroke_pixels(s, rng))
        text = _jitter(text, rng, rng.randint(*s.jitter))
        text = text.point(lambda v: 255 - (255 - ink) * v // 255)
        canvas = Image.new("RGB", (w, h), (255, 255, 255))
        # Natural glyph boxes already hold the descender room and side bearings.
        top, left = (h // 10, 0.08) if s.stretch else (0, 0.05)
        x, y = rng.randint(int(left * w), int((left + 0.08) * w)), top + rng.randint(-h // 16, h // 16)
        canvas.paste(text, (x, y))
        ramp = _gradient(w, h, rng, s.background)
        out = ImageChops.darker(ramp, canvas)
        for _ in range(s.curves):
            _curve(self, out, rng, (ink, ink, ink), (x, min(w, x + text.width)))
        _strike(out, rng, rng.randint(*s.strikes), ink)
        _hooks(out, rng, rng.randint(*s.hooks), ink, x)
        if s.dots:
            self.create_noise_dots(out, (ink, ink, ink), width=1, number=s.dots)
        if s.fragments[1] > 0:
            _fragments(out, rng, s.fragments, lambda: (ink, ink, ink))
        if s.specks[1] > 0:
            _specks(out, rng, s.specks, lambda px, py: ramp.getpixel((px, py)))
        radius = rng.uniform(*s.blur)
        return out.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else out


def _ink_mask(text: Image.Image, bg: tuple) -> Image.Image:
    """255 where the text differs from its plain background colour by more than 24, else 0."""
    diff = ImageChops.difference(text, Image.new(text.mode, text.size, bg)).convert("L")
    return diff.point(lambda v: 255 if v > 24 else 0)


def _stroke_pixels(spec: SyntheticSpec, rng: random.Random) -> int:
    """This image's whole-pixel stroke change: floor or ceil of spec.stroke, in proportion
    (no draw from rng when it is a whole number, so older specs render as they did)."""
    low = math.floor(spec.stroke)
    frac = spec.stroke - low
    return low + (1 if frac and rng.random() < frac else 0)


def _restroke(text: Image.Image, bg: tuple, fg: tuple, pixels: int) -> Image.Image:
    """Glyph strokes ``pixels`` thicker (> 0) or thinner (< 0) on each side: the ink mask
    (where the text differs from its plain background) grown or shrunk, then recomposed."""
    if pixels == 0:
        return text
    plain = Image.new(text.mode, text.size, bg)
    ink = _ink_mask(text, bg)
    size = 2 * abs(pixels) + 1
    if pixels < 0:
        return Image.composite(text, plain, ink.filter(ImageFilter.MinFilter(size)))
    return Image.composite(Image.new(text.mode, text.size, fg), text,
                           ink.filter(ImageFilter.MaxFilter(size)))


def _squeeze_slant(im: Image.Image, spec: SyntheticSpec, rand) -> Image.Image:
    """Scale a glyph's width and shear it, by amounts drawn from the spec's ranges."""
    (s_lo, s_hi), (k_lo, k_hi) = spec.squeeze, spec.slant
    if (s_lo, s_hi) != (1.0, 1.0):
        f = s_lo + rand.randbits(32) / 2**32 * (s_hi - s_lo)
        im = im.resize((max(1, round(im.width * f)), im.height), Image.BILINEAR)
    if (k_lo, k_hi) != (0.0, 0.0):
        k = k_lo + rand.randbits(32) / 2**32 * (k_hi - k_lo)
        h = im.height
        # Output (x, y) reads input (x + k*y - shift, y): the top leans right for k > 0.
        im = im.transform((im.width + int(abs(k) * h) + 1, h), Image.AFFINE,
                          (1, k, -k * h if k > 0 else 0, 0, 1, 0), Image.BILINEAR)
    return im


def _font_warp(im: Image.Image, share: tuple[float, float], rand) -> Image.Image:
    """A glyph's perspective warp (the library's and wheezy.captcha's quad transform): the
    corners of the source quad move by up to a share, drawn from ``share``, of the glyph's
    ink box (as wheezy.captcha crops each glyph before warping it), and the warped ink goes
    back where it was in ``im``, the glyph on its font's line box (so glyphs keep a common
    baseline)."""
    if share[1] <= 0:
        return im
    box = im.getbbox()
    if box is None:  # a space: nothing to warp
        return im
    out = Image.new(im.mode, im.size)
    out.paste(_quad_warp(im.crop(box), share, rand), box[:2])
    return out


def _quad_warp(im: Image.Image, share: tuple[float, float], rand) -> Image.Image:
    """wheezy.captcha's warp: corners moved by up to a share of the image's size (``share``
    drawn from the range), the result squeezed back to the image's size."""
    f = share[0] + rand.randbits(32) / 2**32 * (share[1] - share[0])
    dx, dy = f * im.width, f * im.height
    x1, y1, x2, y2 = (int((2 * rand.randbits(32) / 2**32 - 1) * d) for d in (dx, dy, dx, dy))
    w2, h2 = im.width + abs(x1) + abs(x2), im.height + abs(y1) + abs(y2)
    canvas = Image.new(im.mode, (w2, h2))
    canvas.paste(im, (abs(x1), abs(y1)))
    return canvas.transform(im.size, Image.QUAD, (x1, y1, -x1, h2 - y2, w2 + x2, h2 + y2,
                                                  w2 - x2, -y1), Image.BILINEAR)


def _jitter(text: Image.Image, rng: random.Random, copies: int) -> Image.Image:
    """Overlay shifted copies of white-on-black text: the fuzzy, re-drawn edges of the real set."""
    out = text
    for _ in range(copies):
        dx, dy = rng.choice(((-1, 0), (1, 0), (0, -1), (0, 1), (1, 1), (-1, -1), (1, -1), (-1, 1)))
        out = ImageChops.lighter(out, ImageChops.offset(text, dx, dy))
    return out


def _gradient(w: int, h: int, rng: random.Random, levels: tuple[int, int]) -> Image.Image:
    """Left-to-right grey ramp from about the low level to about the high level."""
    lo = rng.randint(levels[0], min(levels[0] + 20, levels[1]))
    hi = rng.randint(max(levels[1] - 10, lo), levels[1])
    row = Image.linear_gradient("L").rotate(90).resize((w, 1))  # 0 at left -> 255 at right
    ramp = row.point(lambda v: lo + (hi - lo) * v // 255).resize((w, h))
    return ramp.convert("RGB")


def _strike(im: Image.Image, rng: random.Random, count: int, ink: int | tuple) -> None:
    """Dark lines from the left edge across the text, like the real set's strike-throughs."""
    w, h = im.size
    draw = ImageDraw.Draw(im)
    for _ in range(count):
        x0, y0 = rng.randint(0, w // 6), rng.randint(0, h // 2)
        x1, y1 = rng.randint(w * 3 // 4, w - 5), rng.randint(h // 3, h * 4 // 5)
        fill = ink if isinstance(ink, tuple) else (ink, ink, ink)
        draw.line((x0, y0, x1, y1), fill=fill, width=rng.choice((2, 2, 3)))


def _hooks(im: Image.Image, rng: random.Random, count: int, ink: int, x: int) -> None:
    """Short strokes or arcs over the first glyph, like the real set's marks at the text start."""
    w, h = im.size
    draw = ImageDraw.Draw(im)
    for _ in range(count):
        x0, y0 = x + rng.randint(-w // 20, w // 14), rng.randint(0, h // 3)
        x1, y1 = x0 + rng.randint(-w // 25, w // 12), y0 + rng.randint(h // 6, h // 2)
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=(ink,) * 3, width=rng.choice((2, 3)))
        else:
            box = (min(x0, x1), y0, max(x0, x1) + 6, y1)
            draw.arc(box, rng.randint(90, 200), rng.randint(250, 360), fill=(ink,) * 3,
                     width=rng.choice((2, 3)))


@dataclass(frozen=True)
class SpecMixture:
    """Several specs (``data.style: universal``, ``universal.mixture``); item ``index`` is
    drawn by ``specs[k]``, k a seeded choice."""

    specs: tuple[SyntheticSpec, ...]

    def pick(self, seed: int | str, index: int) -> SyntheticSpec:
        return self.specs[item_rng(f"{seed}/pick", index).randrange(len(self.specs))]


@functools.lru_cache(maxsize=16)  # a universal mixture has 10 specs
def _captcha_for(spec: SyntheticSpec) -> SpecCaptcha:
    """One drawer per spec and process (fonts load once), drawing at the spec's scale."""
    drawn = spec.drawn()
    return (RealCaptcha if drawn.style == "real" else SpecCaptcha)(drawn)


def render(spec: SyntheticSpec | SpecMixture, seed: int | str, index: int
           ) -> tuple[Image.Image, str]:
    """Image and label of item ``index``: a pure function of (spec, seed, index); a mixture
    of specs first picks the member that draws it."""
    if isinstance(spec, SpecMixture):
        spec = spec.pick(seed, index)
    rng = item_rng(seed, index)
    label = ""
    for _ in range(rng.randint(spec.min_len, spec.max_len)):
        twin = label and spec.repeat > 0 and rng.random() < spec.repeat
        label += label[-1] if twin else rng.choice(spec.charset)
    text = "".join(c.swapcase() if rng.random() < 0.5 else c for c in label) if spec.mixed_case \
        else label
    with seeded_secrets(rng):
        im = _captcha_for(spec).draw(text, rng)
    if im.size != (spec.width, spec.height):  # drawn larger (``scale``): each output pixel
        # the mean of the pixels it covers, as a font rasteriser's anti-aliasing
        im = im.resize((spec.width, spec.height), Image.BOX if spec.scale > 1 else Image.BILINEAR)
    im = im.convert("L") if spec.grey else im.convert("RGB")
    return (jpeg_round_trip(im, spec.jpeg) if spec.jpeg else im), label


def jpeg_round_trip(im: Image.Image, quality: int) -> Image.Image:
    """The image as a JPEG of this quality decodes (Pillow's encoder, as most sites' servers
    save them: 4:2:0 chroma subsampling below quality 95)."""
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert(im.mode)


# ----------------------------------------------------------------------------- writer

_DONE = re.compile(r"^(?P<label>[^_.]+)_(?P<index>\d{7})\.png$")


def _write_chunk(args: tuple[SyntheticSpec, str, str, list[int]]) -> list[tuple[int, str, str]]:
    """Render and write some indices; each file appears atomically (temp + os.replace)."""
    spec, seed, out_dir, indices = args
    rows = []
    for i in indices:
        im, label = render(spec, seed, i)
        name = f"{label}_{i:07d}.png"
        tmp = os.path.join(out_dir, f".{name}.tmp-{os.getpid()}")
        im.save(tmp, format="PNG")
        os.replace(tmp, os.path.join(out_dir, name))
        rows.append((i, name, label))
    return rows


def _scan(out: Path, n: int) -> dict[int, tuple[str, str]]:
    """Finished files (index -> name, label) and removal of stale temp files."""
    done = {}
    for p in out.iterdir():
        if p.name.startswith(".") and ".tmp-" in p.name:
            p.unlink(missing_ok=True)
        elif (m := _DONE.match(p.name)) and int(m["index"]) < n:
            done[int(m["index"])] = (p.name, m["label"])
    return done


def _check_meta(out: Path, meta: dict) -> None:
    """Refuse to mix images of another spec or seed into an existing folder."""
    path = out / "generate.json"
    if path.exists():
        old = json.loads(path.read_text())
        # Fields added to SyntheticSpec since that folder was written render as before at their
        # defaults, so a spec without them is the same spec.
        defaults = json.loads(json.dumps(SyntheticSpec().to_dict()))
        old["spec"] = {**defaults, **old.get("spec", {})}
        if {k: old.get(k) for k in ("spec", "seed")} != {k: meta[k] for k in ("spec", "seed")}:
            raise DataError(f"{out} holds images made with another spec or seed (see {path}); "
                            "choose another --out or delete the folder")
    tmp = out / f".generate.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path)


def generate(out_dir: str | Path, n: int, spec: SyntheticSpec, seed: int | str = 0,
             workers: int | None = None, chunk: int = 64) -> Path:
    """Write ``n`` images ``<label>_<index>.png`` and ``labels.csv``; a rerun resumes.

    Indices whose final files exist are skipped, stale temp files are removed, and the result
    is byte-identical to an uninterrupted run for any worker count.
    """
    from multiprocessing import get_context

    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_meta(out, {"spec": json.loads(json.dumps(spec.to_dict())), "seed": str(seed), "n": n})
    done = _scan(out, n)
    todo = [i for i in range(n) if i not in done]
    jobs = [(spec, str(seed), str(out), todo[k:k + chunk]) for k in range(0, len(todo), chunk)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    pool = get_context().Pool(workers) if workers > 1 else None
    results = pool.imap_unordered(_write_chunk, jobs) if pool else map(_write_chunk, jobs)
    try:
        with tqdm(total=n, initial=n - len(todo), unit="img", desc=f"generate {out.name}") as bar:
            for rows in results:
                done.update({i: (name, label) for i, name, label in rows})
                bar.update(len(rows))
    finally:
        if pool:
            pool.close()
            pool.join()
    return write_manifest(out / "labels.csv", [done[i] for i in range(n)])


def generate_sets(out_dir: str | Path, train: int, valid: int, spec: SyntheticSpec,
                  seed: int = 0, workers: int | None = None) -> dict[str, Path]:
    """``train/`` and ``valid/`` under ``out_dir``, from disjoint seed streams (what the CLI runs)."""
    out = Path(out_dir)
    sets = {"train": train, "valid": valid}
    return {name: generate(out / name, n, spec, f"{seed}/{name}", workers)
            for name, n in sets.items() if n > 0}
