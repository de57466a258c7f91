"""Shared fixtures: the real data set (read-only) and small made-up image folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

DEFAULT_REAL = Path(__file__).resolve().parents[1].parent / "shared/data/captcha_images_v2"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """The 1040-image real set; never written to. Override with CAPTCHA_ML_REAL_DATA."""
    path = Path(os.environ.get("CAPTCHA_ML_REAL_DATA", DEFAULT_REAL))
    if not path.is_dir() or not any(path.glob("*.png")):
        pytest.skip(f"real data set not found at {path}; set CAPTCHA_ML_REAL_DATA to its folder")
    return path


def write_png(path: Path, text: str, shade: int = 255) -> Path:
    """A small distinct image: ``text`` drawn on a background of ``shade``."""
    img = Image.new("L", (60, 20), shade)
    ImageDraw.Draw(img).text((2, 4), text, fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def make_images():
    """``make_images(folder, ["abc12", ...])`` writes one distinct PNG per name (stem = label)."""

    def make(folder: Path, names: list[str]) -> Path:
        for i, name in enumerate(names):
            write_png(folder / (name if "." in name else f"{name}.png"), name, 255 - i % 200)
        return folder

    return make


@pytest.fixture
def exact_kernels():
    """Tests that compare trained weights within float32 rounding: on a GPU, cuDNN's
    deterministic kernels and no TF32 convolutions (its defaults choose kernels per run and
    round convolutions to TF32: on an H200 two trainings of one config differed by up to
    0.018); the CPU is deterministic already."""
    import torch

    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True,
                                    allow_tf32=False):
        yield
