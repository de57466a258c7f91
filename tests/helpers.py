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


def assert_fonts_draw_every_symbol(names) -> None:
    """Each font is found among the bundled ones and draws each of 0-9a-zA-Z as its own glyph
    (none missing, which PIL would draw as the font's empty box)."""
    import string

    from PIL import ImageFont

    from captcha_ml.data.synthetic import font_path

    symbols = string.digits + string.ascii_letters
    for name in names:
        font = ImageFont.truetype(font_path(name), 40)
        masks = {c: bytes(font.getmask(c)) for c in symbols}
        assert all(any(m) for m in masks.values()), name  # every symbol leaves ink
        assert len(set(masks.values())) == len(symbols), name  # no two alike (no .notdef boxes)
