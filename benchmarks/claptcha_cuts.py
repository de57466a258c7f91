"""What claptcha's glyph morph cuts away, and what that leaves any reader to read.

    python benchmarks/claptcha_cuts.py                          # the morphs alone
    python benchmarks/claptcha_cuts.py --work W --seed K        # and W's claptcha fit's reader
    python benchmarks/claptcha_cuts.py --work W --seed K --reader W/ceiling/claptcha-30000/best.pt

claptcha (PyPI; fit_styles.py's `claptcha` style) morphs each glyph by moving the corners of
its box by up to 0.7 of its size, inwards as often as outwards, into a canvas of the box's
size: an inward corner crops the glyph. A lowercase letter's ascender or descender (ink above
the x-height or below the baseline of Aldrich, the style's face) is what tells it from another
symbol (h from n, j from i, y from u); where the morph keeps less than 10% of it (`--kept`), the
letter drawn is the other symbol's shape, and no reader can tell which was meant.

Draws the images of `--images` labels as fit_styles.py draws its claptcha holdout (the same
seeds, so with `--work` they are the holdout's own images: checked pixel for pixel), recording
for every glyph the share of its ascender or descender the morph kept (a copy of the glyph with
that part marked goes through the same morph). Prints, per letter with such a part, how often
the morph cut it; the share of images holding a cut glyph; and with `--work`, how the fit's
reader read the images with and without one and which symbols it read the cut glyphs as.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import fit_styles
from fit_styles import CLAPTCHA


def letter_parts(font) -> dict[str, str]:
    """Lowercase letters of the charset with ink above the x-height ("ascender": b d f h k t,
    i's dot) or below the baseline ("descender": g j p q y), as the face draws them."""
    top, base = font.getbbox("x")[1], font.getbbox("x")[3]
    parts = {}
    for c in CLAPTCHA["charset"]:
        if not c.islower():
            continue
        left, upper, right, lower = font.getbbox(c)
        if lower > base + 2:
            parts[c] = "descender"
        elif upper < top - 2:
            parts[c] = "ascender"
    return parts


def marked_glyph(font, c: str, part: str) -> tuple[Image.Image, int]:
    """The glyph as claptcha draws it before the morph (RGBA, its ``getsize`` box), its ink
    green and the part red; and the part's pixel count."""
    size = font.getbbox(c)[2:]
    alpha = Image.new("L", size, 0)
    ImageDraw.Draw(alpha).text((0, 0), c, font=font, fill=255)
    ink = np.array(alpha) > 127
    rows = np.arange(ink.shape[0])[:, None]
    top, base = font.getbbox("x")[1], font.getbbox("x")[3]
    mark = ink & ((rows > base + 1) if part == "descender" else (rows < top - 1))
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[ink] = (0, 255, 0, 255)
    rgba[mark] = (255, 0, 0, 255)
    return Image.fromarray(rgba, "RGBA"), int(mark.sum())


def recording_class(Claptcha: type) -> type:
    """A Claptcha that draws exactly as claptcha does (the same random draws, in the same
    order) and records in ``kept`` the share of each glyph's part its morph kept (None for a
    glyph without one)."""

    class Recording(Claptcha):
        parts: dict[str, str] | None = None  # the same face and size for every image:
        marks: dict[str, tuple[Image.Image, int]] = {}  # measured once

        def _writeText(self, image, text, pos):
            self.kept, self._pending = [], iter(text)
            if Recording.parts is None:
                Recording.parts = letter_parts(self.font)
            super()._writeText(image, text, pos)

        def _rndLetterTransform(self, image):
            c = next(self._pending)
            state = random.getstate()
            out = super()._rndLetterTransform(image)
            if c not in self.parts:
                self.kept.append(None)
                return out
            after = random.getstate()
            random.setstate(state)  # the same morph, on the marked copy
            if c not in self.marks:
                self.marks[c] = marked_glyph(self.font, c, self.parts[c])
            marked, pixels = self.marks[c]
            moved = np.array(super()._rndLetterTransform(marked))
            random.setstate(after)
            left = ((moved[..., 0] > 127) & (moved[..., 3] > 127)).sum()
            self.kept.append(left / pixels)
            return out

    return Recording


def draw_recorded(n: int, seed: str) -> list[tuple[int, str, list, Image.Image]]:
    """(index, label, kept shares, image) of fit_styles.py's claptcha images for ``seed``."""
    found = fit_styles.claptcha_class()
    if found is None:
        raise SystemExit("claptcha_cuts.py needs claptcha and multicolorcaptcha")
    cls = recording_class(found[0])
    drawn = []
    with fit_styles.pillow_getsize():
        for i, label in fit_styles.global_random_draws(n, seed, CLAPTCHA,
                                                       fit_styles.claptcha_length):
            c = fit_styles.claptcha_captcha(cls, found[1], label)
            image = c.image[1]
            drawn.append((i, label, c.kept, image))
    return drawn


def print_cuts(drawn: list, kept: float) -> set[int]:
    """Per letter with a part, how often the morph cut it; the images holding a cut glyph."""
    glyphs, cut, cut_images = Counter(), Counter(), set()
    for i, label, shares, _ in drawn:
        for c, share in zip(label, shares):
            if share is not None:
                glyphs[c] += 1
                if share < kept:
                    cut[c] += 1
                    cut_images.add(i)
    found = fit_styles.claptcha_class()
    parts = letter_parts(ImageFont.truetype(str(found[1]), CLAPTCHA["height"] - 20))
    print("letter  part       glyphs  cut  share cut")
    for c in sorted(parts):
        print(f"{c:<6}  {parts[c]:<9}  {glyphs[c]:>6}  {cut[c]:>3}  "
              f"{cut[c] / max(1, glyphs[c]):.3f}")
    print(f"images holding a cut glyph: {len(cut_images)} of {len(drawn)} "
          f"({len(cut_images) / len(drawn):.3f})")
    return cut_images


def print_reading(drawn: list, kept: float, cut_images: set[int], reader: Path,
                  held: Path) -> None:
    """How ``reader`` read the holdout ``held`` (the images of ``drawn``): with and without a
    cut glyph, and what it read the cut glyphs as."""
    for i, label, _, image in drawn[:20]:  # the recording draws the holdout's very pixels
        saved = np.array(Image.open(held / f"{label}_{i:07d}.png").convert("RGB"))
        if not np.array_equal(saved, np.array(image.convert("RGB"))):
            raise SystemExit(f"{held}: image {i} differs from claptcha's draw here (another "
                             "claptcha or Pillow version?): the holdout cannot be matched")
    report = fit_styles.read_holdout(str(reader), held)
    wrong = {int(Path(m["path"]).stem.rsplit("_", 1)[1]): m["pred"] for m in report["misread"]}
    with_cut = sum(i in cut_images for i in wrong)
    clean = len(drawn) - len(cut_images)
    print(f"reader {reader}: holdout seq acc {report['metrics']['seq_acc']:.4f}, "
          f"{len(wrong)} misread")
    print(f"  images with a cut glyph: {with_cut} of {len(cut_images)} misread (seq acc "
          f"{1 - with_cut / max(1, len(cut_images)):.4f}); without: {len(wrong) - with_cut} "
          f"of {clean} (seq acc {1 - (len(wrong) - with_cut) / max(1, clean):.4f})")
    read_as, intact_wrong, intact = Counter(), 0, 0
    for i, label, shares, _ in drawn:
        pred = wrong.get(i, label)
        for pos, (c, share) in enumerate(zip(label, shares)):
            got = pred[pos] if len(pred) == len(label) else "?"
            if share is not None and share < kept:
                read_as[f"{c}->{got}"] += 1
            elif share is not None:
                intact += 1
                intact_wrong += got != c
    print("  cut glyphs read as (true->read; ? = a misread of another length): "
          + ", ".join(f"{k} x{v}" for k, v in read_as.most_common(16)))
    print(f"  glyphs of those letters with their part kept: {intact_wrong} of {intact} misread")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000,
                    help="How many labels to draw (fit_styles.py's --holdout).")
    ap.add_argument("--seed", type=int, default=0, help="As fit_styles.py's --seed.")
    ap.add_argument("--kept", type=float, default=0.1,
                    help="A glyph whose morph kept less than this share of its part is cut.")
    ap.add_argument("--work", type=Path,
                    help="fit_styles.py's --work: read the holdout with its claptcha reader.")
    ap.add_argument("--reader", type=Path,
                    help="With --work: read it with this checkpoint instead (fit_ceiling.py's "
                         "W/ceiling/claptcha-N/best.pt, fit_variant.py's W/variant/...).")
    args = ap.parse_args()
    if args.reader:  # before enter_work moves into --work
        args.reader = args.reader.resolve()

    seed = f"holdout{args.seed}/claptcha"
    drawn = draw_recorded(args.images, seed)
    print(f"claptcha images {args.images} (seed {seed!r}), a part cut where under "
          f"{args.kept:.0%} of it is kept")
    cut_images = print_cuts(drawn, args.kept)
    if args.work is not None:
        fit_styles.enter_work(args)
        _, _, reader, held = fit_styles.benchmark_fit(args.work, "claptcha", args.images,
                                                      args.seed)
        print_reading(drawn, args.kept, cut_images, args.reader or reader, held)


if __name__ == "__main__":
    main()
