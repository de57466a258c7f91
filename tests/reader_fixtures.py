"""A tiny reader trained for a few steps on real images, shared by the reader and serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from captcha_ml import engine
from helpers import tiny_config, write_manifests

REAL_CHARSET = "2345678bcdefgmnpwxy"
CROP = (0.02, 0.0, 0.98, 1.0)  # travels in the checkpoint, the MLflow model and ONNX metadata


@pytest.fixture(scope="session")
def trained(tmp_path_factory, real_dir) -> dict:
    """engine.train result (best_checkpoint, run_id, reader_uri, ...) plus tmp and test files."""
    tmp = tmp_path_factory.mktemp("reader")
    m = write_manifests(real_dir, tmp / "splits", (("train", 16), ("valid", 8), ("test", 8)))
    result = engine.train(tiny_config(tmp, f"data.train={m['train']}", f"data.valid={m['valid']}",
                                      f"data.charset={REAL_CHARSET}", "data.min_len=5",
                                      "data.max_len=5", "train.max_steps=4",
                                      f"data.crop={','.join(map(str, CROP))}"))
    files = [Path(line.split(",")[0]) for line in m["test"].read_text().splitlines()[1:]]
    return {**result, "tmp": tmp, "test_files": files,
            "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"}
