"""fit's glyph bank: the real train part's glyphs, cut where the pretrained model's forced CTC
alignment places each symbol (`data.glyphs`: they compose `data.glyph_share` of finetuning's
synthetic half).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image

from ..charset import ctc_align
from ..data.glyphs import GlyphBank, cut, symbol_bounds
from ..data.real import read_manifest
from ..data.transforms import load_image
from ..reader import Reader
from .style import side_by_side

BATCH = 64
SAMPLES_FILE = "samples.png"  # in the bank's folder: real train images beside composed ones


def cut_bank(model: str | Path, train: str | Path, out: str | Path) -> tuple[GlyphBank, str]:
    """Cut the glyphs of the labeled images in ``train`` (a manifest) where ``model`` (a
    checkpoint) aligns their labels, save the bank in ``out`` and say what was cut."""
    reader = Reader.load(model, tta=False)
    pre, charset = reader.preprocess, reader.charset
    left, _, right, _ = pre.crop or (0.0, 0.0, 1.0, 1.0)
    samples = read_manifest(train).samples
    pieces, unaligned, sizes = [], 0, {}
    for start in range(0, len(samples), BATCH):
        chunk = samples[start:start + BATCH]
        images = [load_image(path) for path, _ in chunk]
        log_probs = reader.log_probs(torch.stack([pre(img) for img in images]).numpy())
        for (_, label), img, lp in zip(chunk, images, log_probs):
            label = charset.normalize(label)
            spans = ctc_align(lp, charset.encode(label))
            if spans is None:  # more symbols than the input's steps can hold
                unaligned += 1
                continue
            w = img.width
            columns = symbol_bounds(spans, lp.shape[0], pre.width)
            pieces.append((img, label, [((left + a / pre.width * (right - left)) * w,
                                         (left + b / pre.width * (right - left)) * w)
                                        for a, b in columns]))
            sizes[img.size] = sizes.get(img.size, 0) + 1
    width = max(sizes, key=sizes.get)[0] if sizes else 1
    bank = cut(pieces, (round(left * width), round(right * width)))
    bank.save(out)
    sample_grid(bank, [img for img, _, _ in pieces[:8]]).save(Path(out) / SAMPLES_FILE)
    few = [s for s in charset.symbols if len(bank.glyphs.get(s, ())) < 3]
    line = (f"glyphs: {bank.count} glyphs of {len(bank.glyphs)} symbols cut from "
            f"{len(pieces)} of the {len(samples)} train images where the pretrained model's "
            f"CTC alignment places each symbol -> {out}"
            + (f" ({unaligned} images could not be aligned)" if unaligned else "")
            + (f" (fewer than 3 glyphs of {''.join(few)})" if few else "")
            + "; they compose data.glyph_share of finetuning's synthetic half, each warped "
            "(data.glyphs; --no-glyphs renders all of it from the style)")
    return bank, line


def sample_grid(bank: GlyphBank, real: list[Image.Image], n: int = 8) -> Image.Image:
    """Real images (left column) next to captchas composed of the bank (right column)."""
    made = [bank.compose(random.Random(f"samples/{i}"))[0] for i in range(n)]
    return side_by_side(real[:n], made, bank.size)
