"""Synthetic captchas: seeded rendering, resumable parallel writer, on-the-fly datasets."""

from __future__ import annotations

import secrets
from pathlib import Path

import captcha.image
import pytest
import torch

from captcha_ml.data.datasets import LabeledImages, SyntheticImages
from captcha_ml.data.real import DataError, read_manifest
from captcha_ml.config import DataConfig
from captcha_ml.data.synthetic import SyntheticSpec, generate, preset, render, spec_from_config
from captcha_ml.data.transforms import ImageError, Preprocess

SMALL = dict(width=80, height=24, font_sizes=(16, 18))


@pytest.mark.parametrize("style", ["real", "captcha"])
def test_render_is_pure_and_restores_secrets(style):
    spec = preset(style, **SMALL)
    a, la = render(spec, 7, 3)
    b, lb = render(spec, 7, 3)
    assert la == lb and a.tobytes() == b.tobytes() and a.size == (80, 24)
    assert render(spec, 7, 4)[0].tobytes() != a.tobytes()
    assert render(spec, 8, 3)[0].tobytes() != a.tobytes()
    assert captcha.image.secrets is secrets
    assert a.mode == ("L" if spec.grey else "RGB")


def test_spec_lengths_and_charset():
    spec = preset("real", charset="ab", min_len=2, max_len=4, **SMALL)
    labels = [render(spec, 0, i)[1] for i in range(30)]
    assert set("".join(labels)) <= set("ab") and {len(x) for x in labels} == {2, 3, 4}
    with pytest.raises(DataError, match="unknown synthetic style"):
        preset("fancy")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generate_workers_and_resume(tmp_path):
    spec = preset("real", charset="ab", min_len=1, max_len=2, **SMALL)  # labels repeat
    one = generate(tmp_path / "one", 12, spec, seed=5, workers=1, chunk=4)
    two = generate(tmp_path / "two", 12, spec, seed=5, workers=2, chunk=4)
    assert _files(one.parent) == _files(two.parent)
    rows = read_manifest(one).samples
    assert len(rows) == 12 and len({lbl for _, lbl in rows}) < 12  # repeated labels kept apart
    # Interrupt: lose some files, leave a stale temp file and no manifest; rerun finishes.
    pngs = sorted(two.parent.glob("*.png"))
    for p in pngs[::3]:
        p.unlink()
    (two.parent / f".{pngs[1].name}.tmp-999").write_bytes(b"partial")
    two.unlink()
    generate(tmp_path / "two", 12, spec, seed=5, workers=2, chunk=4)
    assert _files(one.parent) == _files(two.parent)


def test_generate_refuses_other_seed_in_same_folder(tmp_path):
    spec = preset("captcha", **SMALL)
    generate(tmp_path / "g", 2, spec, seed=0, workers=1)
    with pytest.raises(DataError, match="another spec or seed"):
        generate(tmp_path / "g", 2, spec, seed=1, workers=1)


def test_synthetic_dataset_epochs_and_indices():
    spec = preset("real", **SMALL)
    pre = Preprocess(height=24, width=80)
    ds = SyntheticImages(spec, size=4, preprocess=pre, seed=0)
    x0, l0 = ds[0]
    assert x0.shape == (1, 24, 80) and len(l0) == 5
    assert torch.equal(SyntheticImages(spec, 4, pre, seed=0)[0][0], x0)
    assert not torch.equal(ds[1][0], x0)
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], x0)
    assert not torch.equal(SyntheticImages(spec, 4, pre, seed=0, stream="valid")[0][0], x0)
    with pytest.raises(IndexError):
        ds[4]


def test_labeled_images_augment_and_broken_file(tmp_path, make_images):
    folder = make_images(tmp_path / "imgs", ["abc12", "bcd23"])
    samples = [(str(p), p.stem) for p in sorted(folder.glob("*.png"))]
    pre = Preprocess(height=20, width=60)
    plain = LabeledImages(samples, pre)
    aug = LabeledImages(samples, pre, augment=True, seed=1)
    assert plain[0][1] == "abc12" and plain[0][0].shape == (1, 20, 60)
    first = aug[0][0]
    assert torch.equal(LabeledImages(samples, pre, augment=True, seed=1)[0][0], first)
    aug.set_epoch(1)
    assert not torch.equal(aug[0][0], first)
    Path(samples[1][0]).write_bytes(b"not a png")
    with pytest.raises(ImageError, match="bcd23.png"):
        plain[1]


def test_spec_is_plain_configuration():
    spec = SyntheticSpec(charset="xy", min_len=2, max_len=2)
    assert spec.to_dict()["charset"] == "xy" and preset("real", fonts=["a.ttf"]).fonts == ("a.ttf",)


def test_spec_from_config():
    spec = spec_from_config(DataConfig(charset="xyz", min_len=3, max_len=4, width=64, height=32))
    img, label = render(spec, 0, 0)
    assert img.size == (64, 32) and set(label) <= set("xyz") and spec.style == "real"
