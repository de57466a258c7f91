"""The two training configs fit writes (pretrain, finetune), and OUT/fit.yaml: write, read back
after the user's edits, and re-point its paths to another run's folder."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from .. import config, files
from ..config import Config
from ..data import synthetic
from ..data.real import DataError
from .budget import FIT_DEPTH, Plan
from .sample import Inspection

# Half of the finetuning images are style-matched synthetic ones: a few hundred real images
# seen for hundreds of epochs would otherwise wash out what pretraining taught.
FINETUNE_SYNTHETIC_SHARE = 0.5
# Where the style reads the sample badly (the pretrained model reads the real valid part at
# less than GLYPHS_BELOW), that synthetic half is composed of the real train part's own glyphs
# instead (data.glyphs: cut into OUT/GLYPHS_DIR after pretraining, each warped when composed):
# fit cannot draw that style. claptcha (zero-shot 0.03; a face and a warp fit cannot draw)
# read 1000 new images at 0.909 so, against 0.894 rendered; wheezy (zero-shot 0.65-0.69; its
# glyphs overlap, so a cut holds pieces of its neighbours) at 0.926 and 0.923, against 0.957
# rendered (seed 0's fits; benchmarks/results/fit_history.md, session 33). ink drawn at 90x30
# (ink_small; zero-shot 0.33-0.37 once its small text was drawn larger, session 39) read 0.934
# and 0.917 with the half rendered against 0.912 and 0.898 composed, from the same pretrained
# models (seeds 0 and 1): the gate was 0.5 before.
GLYPHS_DIR = "glyphs"
GLYPHS_BELOW = 0.25
# Where it composes, it composes half of that half (data.glyph_share); the rest is still
# rendered from the style: a low zero-shot reading does not tell which of the two a style needs.
# kaptcha (zero-shot 0.11; its style near the sample to the universal model once fragments
# were drawn) read 1000 new images at 0.470 all composed, 0.638 all rendered and 0.585 half
# and half, from one pretrained model (seed 0, session 44); claptcha 0.927 all composed and
# 0.926 half and half (seed 0, session 44; 0.923 and 0.918 on seed 1, session 34).
FINETUNE_GLYPH_SHARE = 0.5
# Finetuning's model is its final weights (train.select=last; the schedule anneals to ~0): the
# best of 10 validations on 75 images was a mid-training peak once (alnum62: 0.891 on 1000 new
# images against 0.931 for the last weights) and never better than the last in 5 runs.
# Twice the default jitter on the real images: a few hundred of them are all fit has (wheezy:
# test 0.43 -> 0.51, one seed; captcha_images_v2 with 100 labels: 0.9708 -> 0.9792, 3 seeds),
# and local jitter on top (data.augment_local: mesh warp, specks, blur): wheezy's finetuning
# had learnt its 350 real images by heart (training loss 0.006 against 0.60 on validation);
# with it, from the same pretrained model and steps, 0.760 -> 0.793 on 1000 new images.
# Strength 3 (with local jitter) read 0.764 against 0.805 for 2, from the same start.
FINETUNE_AUGMENT_STRENGTH = 2.0
# Half of the real training images get one more wavy line in their text's colour
# (data.augment_lines): most of wheezy's misreads were glyphs its own curve crossed. From one
# pretrained wheezy model, the same 7262 finetuning steps read 1000 new images at 0.900 with
# it against 0.886 without (validation loss at the end 0.41 against 0.54).
FINETUNE_AUGMENT_LINES = 0.5
# The reader fit registers reads through test-time views (data.tta: 6x the reading compute):
# the same three models read 1000 new images of their style at 0.878 / 0.952 / 0.958 with
# them against 0.873 / 0.945 / 0.950 without (wheezy / alnum62 / lower4to7; `--no-tta` or
# Reader.load(tta=False) reads once).
FINETUNE_TTA = True
# Pretraining starts from this general model where it is installed: fit's network (FIT_DEPTH)
# trained on the universal mixture of synthetic looks (captcha_ml/data/universal.py) by
# experiments/universal.yaml (5.5 minutes on one GPU), then experiments/universal_more.yaml (65
# minutes more on a 2-core CPU; tests/test_fit.py checks the file and both configs against fit),
# so the few CPU minutes of style-matched pretraining adapt general glyph features instead of
# learning them from random weights.
UNIVERSAL_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "universal-layer2.pt"
# Pretraining is there to make the model read the user's style, so it validates on the real
# valid part (not on synthetic images), PRETRAIN_EVALS times, keeps the weights that read it
# best, and stops once PRETRAIN_PATIENCE validations in a row read it no better; finetuning,
# re-planned after pretraining, gets the time left. From the universal model some styles read
# about as well before pretraining as after it (session 22, 300 images of each style read by
# the universal model alone against fit's zero-shot after ~1900 pretraining steps: alnum62
# 0.87 / 0.89, ink 0.47 / 0.52), others not at all (wheezy 0.02 / 0.68, lower4to7 0.26 / 0.92).
PRETRAIN_EVALS, PRETRAIN_PATIENCE = 10, 3


def universal_start() -> str:
    """The universal model's path, or "" where it is missing (pretraining from scratch)."""
    return str(UNIVERSAL_WEIGHTS) if UNIVERSAL_WEIGHTS.is_file() else ""


def build_configs(insp: Inspection, out: Path, inputs: dict[str, tuple[int, int]], plan: Plan,
                  splits: dict[str, Path], seed: int = 0, crop: tuple[float, ...] = (),
                  init: str = "", glyphs: bool = True) -> tuple[Config, Config]:
    """The resolved pretrain and finetune configs; ``inputs`` maps each stage to its
    (height, width); ``crop`` (data.crop) is the part of the images both stages read;
    ``init`` the checkpoint pretraining starts from ("": random weights); ``glyphs``:
    finetuning's synthetic half is composed of the glyph bank fit cuts into OUT/glyphs after
    pretraining (data.glyphs), not rendered from the style."""
    common = [f"data.charset={insp.charset}", f"data.case_sensitive={insp.case_sensitive}",
              f"data.min_len={insp.min_len}", f"data.max_len={insp.max_len}",
              f"data.channels={insp.channels}", f"data.num_workers={plan.loader_workers}",
              f"data.crop={','.join(map(str, crop))}",
              f"model.depth={FIT_DEPTH}",
              f"train.seed={seed}", f"train.mixed_precision={plan.precision}",
              "tracking.log_model=true"]

    def size(stage: str) -> list[str]:
        return [f"data.height={inputs[stage][0]}", f"data.width={inputs[stage][1]}"]

    n_pre, n_fine = plan.pretrain_steps, plan.finetune_steps
    pre = config.load(None, common + size("pretrain") + [
        "data.train=synthetic", f"data.valid={splits['valid']}", f"data.style={out / 'style.yaml'}",
        f"data.synthetic_train_size={n_pre * plan.pretrain_batch}",
        f"data.synthetic_pool={plan.pretrain_pool}",
        "train.stage=pretrain", f"train.output_dir={out / 'pretrain'}",
        "train.epochs=1", f"train.max_steps={n_pre}", f"train.max_minutes={plan.pretrain_minutes}",
        # and grows to it where the probe timed too low (a busy moment: planned at 71
        # images/s, lower4to7's pretraining ran at 166 and would have ended 3 minutes early)
        f"train.fill_time={bool(plan.pretrain_minutes)}",
        f"train.batch_size={plan.pretrain_batch}",
        "train.lr=1e-3", f"train.eval_every={max(1, n_pre // PRETRAIN_EVALS)}",
        f"train.early_stop_patience={PRETRAIN_PATIENCE}", "train.validate_start=true",
        "tracking.log_model=false",
        *([f"train.init_from={init}"] if init else [])])
    fine = config.load(None, common + size("finetune") + [
        f"data.train={splits['train']}", f"data.valid={splits['valid']}", "data.augment=true",
        f"data.augment_strength={FINETUNE_AUGMENT_STRENGTH}", "data.augment_local=true",
        f"data.augment_lines={FINETUNE_AUGMENT_LINES}",
        f"data.tta={FINETUNE_TTA}",
        f"data.style={out / 'style.yaml'}",
        f"data.synthetic_share={FINETUNE_SYNTHETIC_SHARE}", f"data.synthetic_pool={plan.finetune_pool}",
        f"data.glyphs={out / GLYPHS_DIR if glyphs else ''}",
        f"data.glyph_share={FINETUNE_GLYPH_SHARE}",
        "train.stage=finetune", f"train.output_dir={out / 'finetune'}",
        f"train.init_from={out / 'pretrain' / 'best.pt'}", f"train.max_steps={n_fine}",
        f"train.batch_size={plan.finetune_batch}", "train.lr=1e-3", "train.warmup_frac=0.05",
        "train.select=last",
        f"train.eval_every={max(1, n_fine // 10)}"])
    return pre, fine


def write_fit_yaml(path: Path, fit_section: dict[str, Any], pre: Config, fine: Config) -> None:
    header = ("# captcha-ml fit: resolved settings. Edit any key and rerun with\n"
              "#   captcha-ml fit DATA --out OUT --config THIS_FILE\n"
              "# 'fit' is informational (inspection and budget); 'pretrain' and 'finetune' are\n"
              "# full training configs (see experiments/*.yaml for the keys).\n")
    body = {"fit": fit_section, "pretrain": pre.to_dict(), "finetune": fine.to_dict()}
    files.write_text(path, header + yaml.safe_dump(body, sort_keys=False))


def read_fit_yaml(path: str | Path) -> tuple[Config, Config]:
    """The pretrain and finetune configs of an (edited) fit.yaml, validated."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--config {p}: no such file; pass the fit.yaml a previous fit wrote")
    raw = config.read_yaml(p)
    missing = [k for k in ("pretrain", "finetune") if not isinstance(raw.get(k), dict)]
    if missing:
        raise DataError(f"--config {p}: sections {missing} missing; pass a fit.yaml written by fit")
    configs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("pretrain", "finetune"):
            part = Path(tmp) / f"{name}.yaml"
            part.write_text(yaml.safe_dump(raw[name]))
            try:
                configs.append(config.load(part))
            except config.ConfigError as e:
                raise config.ConfigError(f"{p}, section {name}: {e}") from e
    return configs[0], configs[1]


def repoint(pre: Config, fine: Config, out: Path, splits: dict[str, Path]) -> None:
    """An edited fit.yaml keeps its settings; paths follow this run's OUT and split (a style
    file too: `adopt_style` copied the one the configs named to OUT/style.yaml)."""
    pre.train.output_dir, fine.train.output_dir = str(out / "pretrain"), str(out / "finetune")
    fine.data.train, fine.data.valid = str(splits["train"]), str(splits["valid"])
    if pre.data.valid != "synthetic":  # pretraining validates on the real valid part too
        pre.data.valid = str(splits["valid"])
    fine.train.init_from = str(out / "pretrain" / "best.pt")
    if fine.data.glyphs:  # fit cuts the bank again into this OUT
        fine.data.glyphs = str(out / GLYPHS_DIR)
    for cfg in (pre, fine):
        if synthetic.is_style_file(cfg.data.style):
            cfg.data.style = str(out / "style.yaml")


def adopt_style(config_path: str, out: Path) -> None:
    """Rerunning an (edited) fit.yaml into another --out: bring the style file it trained on,
    so that OUT/style.yaml (kept, not re-derived) is the style both stages use."""
    pre, _ = read_fit_yaml(config_path)
    src, dst = Path(pre.data.style), out / "style.yaml"
    if synthetic.is_style_file(pre.data.style) and src.is_file() and not dst.exists():
        files.write_text(dst, src.read_text())


def override_precision(pre: Config, fine: Config, precision: str) -> str:
    """A --config rerun keeps its configs' train.mixed_precision unless --precision names one
    (not "auto"), which then sets both; returns the line fit prints."""
    if precision != "auto":
        pre.train.mixed_precision = fine.train.mixed_precision = precision
    return (f"precision: train.mixed_precision={fine.train.mixed_precision} ("
            + ("--precision)" if precision != "auto" else "from the configs)"))
