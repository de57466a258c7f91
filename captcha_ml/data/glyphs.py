"""Captchas composed of glyphs cut from labeled ones: synthetic images in a sample's own glyph
shapes (`captcha-ml fit`'s synthetic half, ``data.glyphs``).

fit's generator draws its own faces; a site whose captchas use a face or a warp it cannot draw
is read far worse (claptcha's captchas: 0.894, docs/fit.md, "Where `fit` stands"). A few
hundred labeled images hold each symbol a few dozen times, in the site's own shapes. ``cut``
takes each symbol from where a model's forced CTC alignment places it (``symbol_bounds``), so
no style needs to be known, and the model need not read the images right. ``GlyphBank.compose``
puts random symbols' glyphs side by side, each warped by a random quadrilateral and jittered,
somewhere in the columns the sample's text lies in: new captchas, with their labels.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from PIL import Image

from captcha_ml import files
from captcha_ml.config import DataConfig
from captcha_ml.data.real import DataError, read_manifest, write_manifest
from captcha_ml.data.transforms import ImageError, median_fill, load_image

# How far a glyph's corners move (a share of its width; of its height 0.6 times that). From
# one claptcha fit's pretrained model and steps, the synthetic half composed of its 350 real
# images' glyphs read the 1000-image holdout at 0.897 unwarped and 0.917 warped at 0.25,
# against 0.894 rendered from the style (session 33); at 0.4 instead of 0.25, 0.929 against
# 0.913 (seed 0) and 0.931 against 0.923 (seed 1) (session 34), and whole fits with it
# 0.926 and 0.933; at 0.5, 0.935 and 0.924 (session 35; benchmarks/results/fit_history.md).
# The value is data.glyph_warp's default (its limit: config.MAX_GLYPH_WARP).
WARP = DataConfig.glyph_warp
BANK_FILE = "bank.json"
GLYPHS_FILE = "glyphs.csv"
MIN_WIDTH = 3  # narrower cuts (a symbol squeezed by its neighbours' spans) are not kept


def symbol_bounds(spans: list[tuple[int, int]], steps: int, width: int
                  ) -> list[tuple[float, float]]:
    """Each symbol's (left, right) column in a ``width``-column input read in ``steps`` CTC
    time steps, from its (first, last) step on the aligned path (``charset.ctc_align``):
    neighbours meet halfway between the last step of one and the first of the next; the outer
    symbols reach as far out as they reach in (their centre is mid-way)."""
    col = width / steps
    centre = [(first + last + 1) / 2 * col for first, last in spans]
    cuts = [(spans[k][1] + 1 + spans[k + 1][0]) / 2 * col for k in range(len(spans) - 1)]
    if not cuts:  # one symbol: a step either side of its own
        half = (spans[0][1] - spans[0][0] + 3) / 2 * col
        edges = [centre[0] - half, centre[0] + half]
    else:
        edges = [2 * centre[0] - cuts[0], *cuts, 2 * centre[-1] - cuts[-1]]
    edges = [min(max(c, 0.0), float(width)) for c in edges]
    return list(zip(edges[:-1], edges[1:]))


@dataclass
class GlyphBank:
    """Glyph images by symbol, the size of the captchas they came from, the columns their text
    lies in, and their labels' lengths (a composed captcha draws its length from them)."""

    glyphs: dict[str, list[Image.Image]]
    size: tuple[int, int]  # (width, height)
    lengths: list[int]
    # The columns (left, right) a composed row lies in; the rest is its background colour.
    # (): the whole width. `captcha-ml fit` crops its input to where the text lies
    # (data.crop), so a row reaching the edges would lose its first and last glyphs there.
    row: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.glyphs = {s: g for s, g in sorted(self.glyphs.items()) if g}
        if not self.glyphs:
            raise DataError("a glyph bank needs at least one glyph; none was cut")
        if not self.lengths or min(self.lengths) < 1:
            raise DataError(f"a glyph bank needs label lengths of at least 1, got {self.lengths}")
        self.row = tuple(self.row) or (0, self.size[0])
        if len(self.row) != 2 or not 0 <= self.row[0] < self.row[1] <= self.size[0]:
            raise DataError(f"a glyph bank's row {list(self.row)} is not (left, right) columns "
                            f"inside its width {self.size[0]}")
        colour = any(g.mode == "RGB" for gs in self.glyphs.values() for g in gs)
        self.mode = "RGB" if colour else "L"

    @property
    def count(self) -> int:
        return sum(len(g) for g in self.glyphs.values())

    def compose(self, rng: random.Random, warp: float = WARP) -> tuple[Image.Image, str]:
        """A new captcha of the bank's size: random symbols (a length drawn from the bank's),
        each a random glyph of it warped by ``warp``, side by side in the bank's row; and its
        label."""
        symbols = list(self.glyphs)
        label = "".join(rng.choice(symbols) for _ in range(rng.choice(self.lengths)))
        width, height = self.size
        parts = [_jitter(rng.choice(self.glyphs[s]).convert(self.mode), rng, warp, height)
                 for s in label]
        row = Image.new(self.mode, (sum(p.width for p in parts), height))
        x = 0
        for part in parts:
            row.paste(part, (x, 0))
            x += part.width
        # At the glyphs' own scale, somewhere in the text's columns (squeezed where wider;
        # stretched to fill them, a short label's glyphs come out wider than the sample's).
        left, right = self.row
        if row.width > right - left:
            row = row.resize((right - left, height), Image.BILINEAR)
        img = Image.new(self.mode, (width, height), _background(row))
        img.paste(row, (left + rng.randint(0, right - left - row.width), 0))
        return img, label

    def save(self, folder: str | Path) -> Path:
        """The glyphs as PNG files, their symbols in ``glyphs.csv`` and the size and lengths
        in ``bank.json``; written beside ``folder`` and moved into its place, so a bank that
        was there stays whole until the new one is."""
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            rows, k = [], 0
            for symbol, glyphs in self.glyphs.items():
                for glyph in glyphs:
                    name = f"{k:05d}.png"
                    glyph.save(tmp / name)
                    rows.append((name, symbol))
                    k += 1
            write_manifest(tmp / GLYPHS_FILE, rows)
            files.write_text(tmp / BANK_FILE, json.dumps(
                {"size": list(self.size), "row": list(self.row), "lengths": self.lengths},
                indent=1))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "GlyphBank":
        """A bank ``save`` wrote; DataError naming the problem when it is missing or broken."""
        folder = Path(folder)
        hint = ("`captcha-ml fit` writes it (OUT/glyphs) after pretraining; run fit again, or "
                "set data.glyphs='' to render data.style instead")
        try:
            meta = json.loads((folder / BANK_FILE).read_text(encoding="utf-8"))
            size, lengths = tuple(int(v) for v in meta["size"]), [int(n) for n in meta["lengths"]]
            row = tuple(int(v) for v in meta.get("row") or ())
        except FileNotFoundError:
            raise DataError(f"data.glyphs={str(folder)!r}: no glyph bank there (no {BANK_FILE}); "
                            f"{hint}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"data.glyphs={str(folder)!r}: {BANK_FILE} is unreadable ({e}); "
                            f"{hint}") from None
        if len(size) != 2 or min(size) < 1:
            raise DataError(f"data.glyphs={str(folder)!r}: size {list(size)} in {BANK_FILE} is "
                            f"not a width and height; {hint}")
        glyphs: dict[str, list[Image.Image]] = {}
        try:
            for path, symbol in read_manifest(folder / GLYPHS_FILE).samples:
                glyphs.setdefault(symbol, []).append(load_image(path))
        except (DataError, ImageError) as e:
            raise DataError(f"data.glyphs={str(folder)!r}: {e}; {hint}") from None
        return cls(glyphs, (size[0], size[1]), lengths, row)


def cut(pieces: Iterable[tuple[Image.Image, str, list[tuple[float, float]]]],
        row: tuple[int, ...] = ()) -> GlyphBank:
    """A bank from labeled images and each symbol's (left, right) columns in the image's own
    pixels: full-height strips, named by the label's symbols; the size most of the images
    have, and ``row`` (GlyphBank.row). Cuts narrower than MIN_WIDTH pixels are left out."""
    glyphs: dict[str, list[Image.Image]] = {}
    sizes: dict[tuple[int, int], int] = {}
    lengths = []
    for img, label, bounds in pieces:
        if len(bounds) != len(label):
            raise ValueError(f"{len(bounds)} bounds for the {len(label)} symbols of {label!r}")
        sizes[img.size] = sizes.get(img.size, 0) + 1
        lengths.append(len(label))
        for symbol, (left, right) in zip(label, bounds):
            x0, x1 = round(left), round(right)
            if x1 - x0 >= MIN_WIDTH:
                glyphs.setdefault(symbol, []).append(img.crop((x0, 0, x1, img.height)))
    if not sizes:
        raise DataError("no images to cut glyphs from")
    return GlyphBank(glyphs, max(sizes, key=sizes.get), sorted(lengths), row)


def _jitter(glyph: Image.Image, rng: random.Random, warp: float, height: int) -> Image.Image:
    """``glyph`` at ``height`` rows, its corners moved by up to ``warp`` of its width (0.6 of
    that of its height), turned a little, and 0.9-1.1 times as wide; uncovered pixels take
    the colour of the glyph's top and bottom edges (its background)."""
    if glyph.height != height:
        glyph = glyph.resize((max(1, round(glyph.width * height / glyph.height)), height),
                             Image.BILINEAR)
    fill = _background(glyph)
    w, h = glyph.size
    if warp:
        jx, jy = warp * w, 0.6 * warp * h
        quad = [rng.uniform(-jx, jx), rng.uniform(-jy, jy),
                rng.uniform(-jx, jx), h + rng.uniform(-jy, jy),
                w + rng.uniform(-jx, jx), h + rng.uniform(-jy, jy),
                w + rng.uniform(-jx, jx), rng.uniform(-jy, jy)]
        glyph = glyph.transform((w, h), Image.QUAD, quad, Image.BILINEAR, fillcolor=fill)
    glyph = glyph.rotate(rng.uniform(-8, 8), resample=Image.BILINEAR, fillcolor=fill,
                         translate=(0, rng.uniform(-0.06, 0.06) * h))
    scale = rng.uniform(0.9, 1.1)
    return glyph.resize((max(MIN_WIDTH, round(w * scale)), h), Image.BILINEAR)


def _background(img: Image.Image) -> int | tuple[int, ...]:
    """The median colour of an image's top and bottom rows: a strip of a captcha's text
    line is mostly glyph in the middle, mostly background at its edges."""
    w, h = img.size
    edges = Image.new(img.mode, (w, 2))
    edges.paste(img.crop((0, 0, w, 1)), (0, 0))
    edges.paste(img.crop((0, h - 1, w, h)), (0, 1))
    return median_fill(edges)
