"""Tiny configs and small real-data manifests for training tests."""

from __future__ import annotations

import csv
from pathlib import Path

from captcha_ml import config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"


def tiny_config(tmp_path: Path, *overrides: str) -> config.Config:
    """The smoke config, writing under tmp_path and tracking to a sqlite file there."""
    return config.load(SMOKE, [f"train.output_dir={tmp_path / 'out'}",
                               f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                               *overrides])


def write_manifests(real_dir: Path, out: Path, sizes=(("train", 24), ("valid", 15), ("test", 10))):
    """Small train/valid/test manifests over distinct real images (first files by name)."""
    files = sorted(real_dir.glob("*.png"))
    out.mkdir(parents=True, exist_ok=True)
    start, paths = 0, {}
    for name, n in sizes:
        paths[name] = out / f"{name}.csv"
        with open(paths[name], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows([str(p), p.stem] for p in files[start:start + n])
        start += n
    return paths


BLOCK_SYMBOLS = "0123"


def block_image(label: str, left: int = 20, pitch: int = 30, size: int = 20,
                width: int = 160, height: int = 20):
    """A 'captcha' a reader can be faked for: symbol k of the label is a solid block of
    columns [left + k * pitch, left + k * pitch + size), grey 40 + 50 * its index in
    BLOCK_SYMBOLS, on white."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    for k, symbol in enumerate(label):
        x = left + k * pitch
        draw.rectangle((x, 0, x + size - 1, height - 1), fill=40 + 50 * BLOCK_SYMBOLS.index(symbol))
    return img


def block_symbols(img) -> str:
    """The label block_image drew, read off the middle row: a symbol per block (a run of 3+
    pixels of one block grey, between white gaps; a resized image's blended edges skipped)."""
    import itertools

    import numpy as np

    kinds = []
    for value in np.asarray(img.convert("L"))[img.height // 2].tolist():
        k = round((value - 40) / 50)
        if value > 230:
            kinds.append("gap")
        elif 0 <= k < len(BLOCK_SYMBOLS) and abs(value - 40 - 50 * k) <= 8:
            kinds.append(BLOCK_SYMBOLS[k])
    runs = [kind for kind, run in itertools.groupby(kinds) if len(list(run)) >= 3]
    return "".join(kind for kind, _ in itertools.groupby(runs) if kind != "gap")
