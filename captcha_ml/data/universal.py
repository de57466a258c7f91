"""The ``universal`` synthetic style: a broad mixture of looks for a general starting model.

`captcha-ml fit` pretrains on one style matched to the user's sample, in a few CPU minutes.
A network that has already read many looks (every bundled font, both glyph shapes, both
drawers, dark-on-light and light-on-dark colours, light and heavy noise, several canvases)
starts that pretraining from general glyph features instead of random ones. This module only
describes the mixture; ``experiments/universal.yaml`` trains on it (``data.style: universal``).
Each image picks one member spec by its own seeded draw, so an image stays a pure function of
(seed, index), as every synthetic image is.
"""

from __future__ import annotations

import itertools

from captcha_ml.data.synthetic import SpecMixture, SyntheticSpec, font_path

# Every bundled face that draws all 62 letters and digits as distinct glyphs: captcha's
# DroidSansMono, matplotlib's DejaVu family and STIX General (tests check each).
UNIVERSAL_FONTS = (
    "DroidSansMono.ttf", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf",
    "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf")

# (drawer, glyphs stretched to the line): the captcha library's look both ways, and the
# "real" drawer (grey ramp, glyphs at font proportions).
_SHAPES = (("captcha", True), ("captcha", False), ("real", False))
# (background range, glyph range) per channel: dark on light, light on dark (the "real"
# drawer darkens its ramp with the text, so it draws dark on light only).
_POLARITIES = (((190, 255), (0, 130)), ((0, 70), (160, 255)))
# Light noise (a thin curve), heavy noise (dots, a thick curve through the text, strikes, specks).
_NOISE = (dict(dots=0, curve_width=(1, 2), strikes=(0, 0), specks=(0, 0)),
          dict(dots=30, curve_width=(2, 4), strikes=(1, 3), specks=(0, 30)))
# Canvases (width, height) and font sizes for them: wide and short to tall and square-ish.
_CANVASES = (((200, 50), (34, 38, 42)), ((160, 60), (36, 42, 48)), ((240, 70), (42, 50, 56)),
             ((120, 40), (24, 28, 32)))


def mixture(charset: str, min_len: int, max_len: int) -> SpecMixture:
    """The universal mixture for these symbols and lengths: every combination of glyph shape,
    polarity and noise level the drawers can draw (10 specs), each on one of the canvases in
    turn, with every universal font, fit's broad rotation and warp, colour images."""
    specs = []
    combos = [(shape, colours, noise) for shape, colours, noise
              in itertools.product(_SHAPES, _POLARITIES, _NOISE)
              if shape[0] == "captcha" or colours is _POLARITIES[0]]
    for i, ((drawer, stretch), (bg, fg), noise) in enumerate(combos):
        (width, height), sizes = _CANVASES[i % len(_CANVASES)]
        if drawer == "real":  # its font sizes are the glyphs' own (no stretch to the line)
            sizes = tuple(round(s * 0.75) for s in sizes)
        specs.append(SyntheticSpec(
            style=drawer, stretch=stretch, width=width, height=height, charset=charset,
            min_len=min_len, max_len=max_len,
            fonts=tuple(font_path(f) for f in UNIVERSAL_FONTS), font_sizes=sizes,
            background=bg, foreground=fg, grey=False, curves=1, blur=(0.0, 0.6),
            rotate=(-20.0, 20.0), warp=(0.05, 0.3), **noise))
    return SpecMixture(tuple(specs))
