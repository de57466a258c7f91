"""New labeled images from real ones: a run of symbols cut out of one training image and put in
place of a run of another's (``data.splice``).

A few hundred labeled images hold each symbol a few dozen times, always beside the same
neighbours; spliced images show real glyphs in new company, with the label to match. Where each
symbol lies comes from the model being trained (``symbol_bounds`` of its forced CTC alignment,
computed by the engine), so no style needs to be known.
"""

from __future__ import annotations

import random

from PIL import Image

# A splice that would change the image's width by more than this share is not made (the
# result is resized back to the original width, which would squeeze or stretch the glyphs).
MAX_STRETCH = 0.15


def symbol_bounds(spans: list[tuple[int, int]], steps: int, width: int
                  ) -> list[tuple[float, float]]:
    """Each symbol's (left, right) column in a ``width``-column input read in ``steps`` CTC
    time steps, from its (first, last) step on the aligned path: neighbours meet halfway
    between the last step of one and the first of the next; the outer symbols reach as far
    out as they reach in (their centre is mid-way)."""
    col = width / steps
    centre = [(first + last + 1) / 2 * col for first, last in spans]
    cuts = [(spans[k][1] + 1 + spans[k + 1][0]) / 2 * col for k in range(len(spans) - 1)]
    if not cuts:  # one symbol: a step either side of its own
        half = (spans[0][1] - spans[0][0] + 3) / 2 * col
        cuts_in = [centre[0] - half, centre[0] + half]
    else:
        cuts_in = [2 * centre[0] - cuts[0], *cuts, 2 * centre[-1] - cuts[-1]]
    edges = [min(max(c, 0.0), float(width)) for c in cuts_in]
    return list(zip(edges[:-1], edges[1:]))


def splice(a: Image.Image, a_label: str, a_bounds: list[tuple[float, float]],
           b: Image.Image, b_label: str, b_bounds: list[tuple[float, float]],
           rng: random.Random) -> tuple[Image.Image, str] | None:
    """``a`` with a run of 1 to half its symbols replaced by as many of ``b``'s (bounds in
    each image's own pixels), resized back to ``a``'s size, and its label; None where the cut
    would change the width by more than MAX_STRETCH."""
    n, m = len(a_label), len(b_label)
    k = rng.randint(1, max(1, min(n, m) // 2))
    i, j = rng.randint(0, n - k), rng.randint(0, m - k)
    mode = "L" if a.mode == b.mode == "L" else "RGB"  # palette, 16-bit, ...: as Preprocess reads them
    a, b = a.convert(mode), b.convert(mode)
    scale = a.height / b.height
    if b.height != a.height:
        b = b.resize((max(1, round(b.width * scale)), a.height), Image.BILINEAR)
    al, ar = round(a_bounds[i][0]), round(a_bounds[i + k - 1][1])
    bl, br = round(b_bounds[j][0] * scale), round(b_bounds[j + k - 1][1] * scale)
    if ar <= al or br <= bl:
        return None
    width = a.width - (ar - al) + (br - bl)
    if abs(width / a.width - 1) > MAX_STRETCH:
        return None
    out = Image.new(a.mode, (width, a.height))
    out.paste(a.crop((0, 0, al, a.height)), (0, 0))
    out.paste(b.crop((bl, 0, br, a.height)), (al, 0))
    out.paste(a.crop((ar, 0, a.width, a.height)), (al + br - bl, 0))
    if width != a.width:
        out = out.resize(a.size, Image.BILINEAR)
    return out, a_label[:i] + b_label[j:j + k] + a_label[i + k:]
