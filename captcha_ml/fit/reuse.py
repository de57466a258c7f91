"""Reusing an earlier pretraining: a record beside best.pt says what trained it (a fingerprint
of the settings and the style) and the checkpoint's hash, so an unchanged rerun skips it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import Config
from ..data import synthetic

PRETRAIN_RECORD = "fit_pretrain.json"  # in OUT/pretrain: what trained best.pt, and its result


def pretrain_fingerprint(pre: Config) -> str:
    """What decides the pretrained weights: the pretrain config (tracking aside), the style
    file's text, the starting checkpoint's content (the universal model), the content of the
    valid part it validates on (it picks the weights and stops early) and the package
    version."""
    from .. import __version__, tracking

    start = Path(pre.train.init_from) if pre.train.init_from else None
    start_digest = tracking.path_digest(start) if start and start.is_file() else ""
    settings = pre.to_dict()
    settings.pop("tracking")
    settings["train"].pop("output_dir")  # where, not what: a rerun into another OUT may reuse
    settings["data"].pop("style")  # the path; its text counts below
    style = Path(pre.data.style)
    style_file = synthetic.is_style_file(pre.data.style) and style.is_file()
    valid = Path(settings["data"].pop("valid"))  # the real valid part: its content counts
    valid_digest = tracking.path_digest(valid) if valid.is_file() else str(valid)
    return tracking.text_digest(json.dumps(settings, sort_keys=True)
                                + (style.read_text() if style_file else "") + start_digest
                                + valid_digest + __version__)


def write_pretrain_record(pre: Config, result: dict[str, Any], seconds: float) -> None:
    from ..tracking import path_digest

    best = Path(result["best_checkpoint"]).resolve()  # found again from any working directory
    record = {"fingerprint": pretrain_fingerprint(pre), "checkpoint_digest": path_digest(best),
              "seconds": seconds, "result": {**result, "best_checkpoint": str(best)}}
    path = Path(pre.train.output_dir) / PRETRAIN_RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(path)


def reusable_pretraining(pre: Config, folders: list[Path]) -> dict[str, Any] | None:
    """The first record in ``folders`` of an earlier pretraining with ``pre``'s fingerprint
    and an untouched best.pt, or None (then pretraining runs)."""
    from ..tracking import path_digest

    fingerprint = pretrain_fingerprint(pre)
    for folder in folders:
        try:
            record = json.loads((Path(folder) / PRETRAIN_RECORD).read_text())
            best = Path(record["result"]["best_checkpoint"])
            if (record["fingerprint"] == fingerprint and best.is_file()
                    and path_digest(best) == record["checkpoint_digest"]):
                return record
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no record, or an unreadable one
    return None
