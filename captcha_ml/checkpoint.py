"""Model files: weights plus everything needed to read with them (charset, preprocessing, config).

One ``.pt`` file is a complete reader. Writes go to a temporary name and are renamed, so an
interrupted save never leaves a truncated checkpoint behind a good-looking name.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .charset import Charset
from .config import ModelConfig
from .data.transforms import Preprocess
from .model import CaptchaNet, build_model

FORMAT = "captcha_ml/1"


class CheckpointError(ValueError):
    """A model file that is missing or not a captcha_ml checkpoint."""


def save(path: str | Path, model: torch.nn.Module, charset: Charset, preprocess: Preprocess,
         model_cfg: ModelConfig, extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "charset": charset.to_dict(),
        "preprocess": preprocess.to_dict(),
        "model": asdict(model_cfg),
        **(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_payload(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found; pass the best.pt or last.pt written by "
                              "`captcha-ml train`, or an MLflow URI (runs:/<run id>/checkpoints/best.pt)")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a captcha_ml checkpoint (no '{FORMAT}' format marker)")
    return payload


def load(path: str | Path) -> tuple[CaptchaNet, Charset, Preprocess, dict[str, Any]]:
    """Rebuild the network from a checkpoint; returns (model in eval mode, charset, preprocess, payload)."""
    payload = load_payload(path)
    charset = Charset.from_dict(payload["charset"])
    preprocess = Preprocess.from_dict(payload["preprocess"])
    model_cfg = ModelConfig(**{**payload["model"], "imagenet_weights": ""})
    model = build_model(model_cfg, charset.num_classes, preprocess.channels)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), charset, preprocess, payload
