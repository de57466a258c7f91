"""Run configuration: dataclasses, YAML loading, dotted overrides, flat dict for logging.

A config file has up to four sections (``data``, ``model``, ``train``, ``tracking``); every key
is optional and falls back to the defaults below. Overrides use dotted keys:
``train.lr=3e-4 data.height=32``. Unknown keys are an error that lists the valid ones, so a typo
never silently trains with a default. A file may start from another: ``extends: base.yaml``
(relative to the file) loads that one's keys first, so a variant holds only what it changes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import files


class ConfigError(ValueError):
    """A config file or override that cannot be used as given."""


def read_yaml(path: Path) -> dict:
    """A YAML file's mapping ({} where empty); a syntax error or another kind of document is a
    ConfigError naming the file and the place (a hand-edited config or style, often)."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: not valid YAML{at} ({getattr(e, 'problem', None) or e}); "
                          "fix the file (its indentation, a missing colon or quote)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got "
                          f"{type(raw).__name__}")
    return raw


@dataclass
class DataConfig:
    # Where training / validation images come from: "synthetic" generates them on the fly,
    # anything else is a folder of labeled images or a manifest CSV (path,label).
    train: str = "synthetic"
    valid: str = "synthetic"
    charset: str = "2345678bcdefgmnpwxy"
    case_sensitive: bool = True  # False: labels are lower-cased, the charset lists lower case
    min_len: int = 5
    max_len: int = 5
    # The one preprocessing (data.transforms) resizes every image to height x width.
    height: int = 50
    width: int = 200
    channels: int = 1
    # Before resizing, keep only this part of every image: [left, top, right, bottom] as shares
    # of its width and height (e.g. [0.1, 0, 0.9, 1]); [] keeps it whole.
    crop: list = field(default_factory=list)
    # Read every image the trained model reads (its Preprocess: the test, `evaluate`, the
    # reader) through test-time views: as is, slightly larger, slightly moved; their outputs
    # averaged (6x the reading compute). Training and its validations read one view: six
    # views of each validation image took a fit's finetuning a quarter of its time (300
    # images, 10 validations, a 2-core CPU).
    tta: bool = False
    # Synthetic data: style preset, virtual epoch sizes (images are generated per index).
    style: str = "real"
    synthetic_train_size: int = 100_000
    synthetic_valid_size: int = 10_000
    augment: bool = False
    # How hard augmentation jitters (1: up to 4 deg rotation, 6% scale, 0.15 shear, 4%/8% shift,
    # 30% contrast, 15% brightness; 2 doubles each): more for few labels or wobbly styles.
    augment_strength: float = 1.0
    # Local jitter on top (data.transforms.augment): mesh warps that bend parts of the line,
    # background-coloured specks that break strokes, slight blur (what `captcha-ml fit` uses).
    augment_local: bool = False
    # The chance that a real training image gets a wavy line in its text's colour drawn
    # across it (data.transforms.augment): glyphs seen under other curves than their own.
    augment_lines: float = 0.0
    # The chance that a real colour training image reads with its RGB channels in another order
    # (data.transforms.augment): its glyphs and noise in hues its few images do not show.
    augment_colours: float = 0.0
    # Labeled data.train only: this share of every training epoch is synthetic images of
    # data.style (few real images then do not wash out what pretraining taught); 0: real only.
    synthetic_share: float = 0.0
    # A labeled folder or manifest that the synthetic_share part is read from instead of
    # rendering data.style: images the captcha's own generator made, say. Each epoch takes the
    # next images of it in a fixed order, cycling, never augmented; "": render data.style.
    share_from: str = ""
    # A glyph bank folder (data.glyphs.GlyphBank; `captcha-ml fit` writes OUT/glyphs: the real
    # train part's glyphs, cut where the pretrained model's CTC alignment places each symbol)
    # that the synthetic_share part is composed of instead of rendering data.style: captchas
    # in the sample's own glyph shapes, each glyph warped (its corners moved by up to
    # glyph_warp of its width). "": render data.style.
    glyphs: str = ""
    glyph_warp: float = 0.4  # at most MAX_GLYPH_WARP; the evidence: data.glyphs.WARP
    # With data.glyphs: the share of the synthetic_share part composed of glyphs; the rest is
    # rendered from data.style (`captcha-ml fit` composes all of it where it composes any).
    glyph_share: float = 1.0
    # Synthetic training images (data.train=synthetic, or the synthetic_share part): 0 renders
    # each one on the fly in the DataLoader workers (new images every epoch); N > 0 renders N
    # once, in parallel, before training, and cycles through them. On a CPU, where rendering
    # takes cores from the training step, that trains 1.3-1.7x faster (benchmarks/loader_speed.py);
    # N x height x width x channels bytes stay in memory.
    synthetic_pool: int = 0
    skip_bad: bool = False
    num_workers: int = 2


# data.glyph_warp's limit: a glyph's left corners move right by up to glyph_warp of its
# width and its right corners left by as much, so beyond half its width they can cross and
# mirror it.
MAX_GLYPH_WARP = 0.5


@dataclass
class ModelConfig:
    depth: str = "layer3"  # "layer2", "layer3" or "layer4": how much of ResNet-18 to keep
    head: str = "linear"  # "linear" or "lstm" (a bidirectional LSTM before the classifier)
    hidden: int = 256
    dropout: float = 0.1
    imagenet_weights: str = ""  # local file with torchvision resnet18 weights; never downloaded


# train.freeze's values: the network's first stages it keeps fixed ("": none).
FREEZE_STAGES = ("", "stem", "layer1")


@dataclass
class TrainConfig:
    stage: str = "pretrain"
    output_dir: str = "outputs/pretrain"
    init_from: str = ""  # checkpoint path or MLflow model URI to start from
    seed: int = 0
    epochs: int = 10
    max_steps: int = 0  # 0: epochs decide; otherwise stop after this many optimizer steps
    # A wall-time limit for the stage, counted from its start (data, pools and model built;
    # from the restart on --resume); 0: none. The step count is re-estimated from the rate so
    # far at every log line (never above the planned one), so the schedule still anneals to
    # its end: training stops with its LR run down by the limit on a machine slower than
    # planned (`captcha-ml fit` sets it for finetuning: the time its budget leaves).
    max_minutes: float = 0.0
    # Under max_minutes: a run faster than planned gets more steps too (up to 3x max_steps:
    # engine.FILL_LIMIT), re-estimated the same way, so the whole time is used. A plan made
    # from a dozen timed steps can be far too low when the machine was busy for a moment (a
    # wheezy fit timed finetuning at 47 images/s during another job, planned 2039 steps and
    # finished with 4.7 of its 11.8 minutes unused). `captcha-ml fit` sets it for finetuning.
    fill_time: bool = False
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "onecycle"  # "onecycle", "cosine" or "constant" (all with linear warmup)
    warmup_frac: float = 0.1
    grad_clip: float = 5.0
    # Validation, checkpoints and the logged model use an exponential moving average of the
    # weights (buffers included) with this decay per optimizer step; 0: the raw weights.
    ema_decay: float = 0.0
    grad_accum: int = 1
    mixed_precision: str = "no"  # "no", "fp16", "bf16"
    # Convolutions in NHWC layout: ~1.2x faster training steps on a CPU with oneDNN (and the
    # layout tensor cores prefer); the weights saved are the same, only their memory order.
    channels_last: bool = True
    # "stem" or "layer1": keep the network's first stages as init_from left them (weights and
    # batch-norm statistics; model.CaptchaNet.freeze); "": train everything. Cheaper steps,
    # but the first stages must adapt to real images: fit's wheezy finetuning frozen to layer1
    # ran 5840 steps in its 11.3 minutes where it ran 3826 unfrozen, and read its holdout at
    # 0.868 against 0.934 (session 23), so fit does not freeze.
    freeze: str = ""
    eval_every: int = 0  # optimizer steps between evaluations; 0: once per epoch
    save_every: int = 0  # optimizer steps between resumable states; 0: at each evaluation
    early_stop_patience: int = 0  # evaluations without improvement before stopping; 0: off
    # Validate the starting weights (init_from's) before the first step: logged as val/* at
    # step 0 and returned as the result's "start", a baseline for what training added; not a
    # candidate for best.pt. fit's pretraining uses it: style-matched pretraining lifted the
    # universal model's reading of wheezy's real valid part from 0.17 to 0.77, ink_small's
    # from 0.27 to 0.29 (session 43).
    validate_start: bool = False
    # Which validated weights become the run's model (best.pt, the logged model, the result):
    # "best" score, or "last": with a schedule that anneals the learning rate to ~0 the final
    # weights are the converged model, while the best score on a small validation set can be a
    # noisy mid-training peak (fit's finetuning on 75 images: alnum62 picked step 3340 of 6689,
    # 0.891 on 1000 new images, where the last weights read 0.931).
    select: str = "best"
    log_every: int = 10


@dataclass
class TrackingConfig:
    tracking_uri: str = ""  # empty: MLflow's default (MLFLOW_TRACKING_URI or sqlite:///mlflow.db)
    experiment: str = "captcha_ml"
    run_name: str = ""
    log_model: bool = True
    registered_model: str = ""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.001, ...}``: the resolved config as MLflow params."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def save(self, path: str | Path) -> None:
        files.write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def check_crop(crop: Iterable[float]) -> tuple[float, ...]:
    """A (left, top, right, bottom) crop as floats, or ValueError saying what is wrong."""
    values = tuple(float(v) for v in crop)
    if len(values) != 4:
        raise ValueError(f"crop {list(crop)}: give 4 shares (left, top, right, bottom), e.g. "
                         "0.1,0,0.9,1, or none to keep the whole image")
    left, top, right, bottom = values
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise ValueError(f"crop {list(values)}: need 0 <= left < right <= 1 and "
                         "0 <= top < bottom <= 1 (shares of the image's width and height)")
    return values


_SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                  "tracking": TrackingConfig}


def valid_keys() -> list[str]:
    return sorted(Config().flat())


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert a YAML or command-line value to the type of the field's default."""
    kind = type(default)
    plain = kind is not list and not (kind is int and isinstance(value, bool))
    if isinstance(value, kind) and plain:
        return value
    try:
        if kind is list:  # numbers: a YAML list, or "a,b,c" on the command line ("", none: [])
            if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
                return []
            return [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off", ""):
                return False
            raise ValueError
        if kind is int:
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError
            return int(as_float)
        if kind is float:
            return float(value)
        if kind is str:
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        pass
    expected = "a list of numbers" if kind is list else kind.__name__
    raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def _set(cfg: Config, key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    sec = getattr(cfg, section, None) if section in _SECTION_TYPES else None
    if sec is None or not name or not hasattr(sec, name):
        raise ConfigError(f"unknown config key {key!r}; valid keys are: {', '.join(valid_keys())}")
    setattr(sec, name, _coerce(key, value, getattr(sec, name)))


# Where an item holds several overrides (MLproject passes them as one string): whitespace
# before the next "section.key=", so a value may hold spaces ("data.train=/my data/x.csv").
_NEXT_OVERRIDE = re.compile(r"\s+(?=[A-Za-z_]\w*\.\w+=)")


def parse_overrides(items: Iterable[str]) -> list[tuple[str, str]]:
    """``["train.lr=1e-3", ...]`` -> ``[("train.lr", "1e-3"), ...]``; an item may hold several,
    separated by whitespace (``"train.lr=1e-3 train.epochs=2"``); blank items are ignored."""
    pairs = []
    for item in items:
        for token in _NEXT_OVERRIDE.split(item.strip()) if item.strip() else []:
            key, sep, value = token.partition("=")
            if not sep:
                raise ConfigError(f"override {token!r} is not of the form section.key=value")
            pairs.append((key.strip(), value.strip()))
    return pairs


def _apply_file(cfg: Config, p: Path, chain: tuple[Path, ...] = ()) -> None:
    """A config file's keys onto ``cfg``: first those of the file its ``extends`` names (a path
    relative to the file; it may extend another), then its own sections."""
    if not p.is_file():
        named = f" (named by {chain[-1]}'s 'extends')" if chain else ""
        raise ConfigError(f"config file {p} does not exist{named}; see experiments/ for examples")
    if p.resolve() in chain:
        loop = " -> ".join(map(str, (*chain, p.resolve())))
        raise ConfigError(f"{p}: 'extends' loops back to it ({loop}); remove one of them")
    raw = read_yaml(p)
    base = raw.pop("extends", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{p}: 'extends' must be one config file's path, got {base!r}")
        _apply_file(cfg, p.parent / base, (*chain, p.resolve()))
    for section, values in raw.items():
        if section not in _SECTION_TYPES or not isinstance(values, dict):
            raise ConfigError(f"{p}: unknown section {section!r}; valid sections: "
                              f"{', '.join(_SECTION_TYPES)} (and 'extends: BASE.yaml')")
        for name, value in values.items():
            _set(cfg, f"{section}.{name}", value)


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- YAML file (after the file it ``extends``, if any) <- overrides; validated."""
    cfg = Config()
    if path:
        _apply_file(cfg, Path(path))
    for key, value in parse_overrides(overrides):
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    d, m, t = cfg.data, cfg.model, cfg.train
    problems = []
    if not 1 <= d.min_len <= d.max_len:
        problems.append(f"data.min_len={d.min_len} and data.max_len={d.max_len}: "
                        "need 1 <= min <= max")
    if d.channels not in (1, 3):
        problems.append(f"data.channels={d.channels}: use 1 (grey) or 3 (RGB)")
    if d.height < 16 or d.width < 16:
        problems.append(f"data.height x data.width = {d.height}x{d.width}: both must be >= 16")
    if d.crop:
        try:
            check_crop(d.crop)
        except ValueError as e:
            problems.append(f"data.crop: {e}")
    if len(set(d.charset)) != len(d.charset) or not d.charset:
        problems.append(f"data.charset={d.charset!r}: must be non-empty without repeated symbols")
    if not 0 < d.augment_strength <= 4:
        problems.append(f"data.augment_strength={d.augment_strength}: use a value in (0, 4]")
    if not 0 <= d.augment_lines <= 1:
        problems.append(f"data.augment_lines={d.augment_lines}: a chance, use a value in [0, 1]")
    if not 0 <= d.augment_colours <= 1:
        problems.append(f"data.augment_colours={d.augment_colours}: a chance, use a value in "
                        "[0, 1]")
    if d.synthetic_pool < 0:
        problems.append(f"data.synthetic_pool={d.synthetic_pool}: use 0 (render on the fly) or "
                        "the number of images to render once, e.g. 20000")
    if not 0 <= d.synthetic_share < 1:
        problems.append(f"data.synthetic_share={d.synthetic_share}: use a share in [0, 1)")
    elif d.synthetic_share and d.train == "synthetic":
        problems.append("data.synthetic_share mixes synthetic images into labeled training "
                        "data; with data.train=synthetic set it to 0")
    if d.share_from and not d.synthetic_share:
        problems.append(f"data.share_from={d.share_from!r} is the synthetic_share part's "
                        "source, and data.synthetic_share is 0: set a share, e.g. 0.5, or "
                        "leave share_from empty")
    if d.glyphs and not d.synthetic_share:
        problems.append(f"data.glyphs={d.glyphs!r} is the synthetic_share part's source, and "
                        "data.synthetic_share is 0: set a share, e.g. 0.5, or leave glyphs "
                        "empty")
    if d.glyphs and d.share_from:
        problems.append(f"data.glyphs={d.glyphs!r} and data.share_from={d.share_from!r} are "
                        "both sources of the synthetic_share part: leave one empty")
    if not 0 <= d.glyph_share <= 1:
        problems.append(f"data.glyph_share={d.glyph_share}: a share, use a value in [0, 1]")
    if not 0 <= d.glyph_warp <= MAX_GLYPH_WARP:
        problems.append(f"data.glyph_warp={d.glyph_warp}: use a share of a glyph's width in "
                        f"[0, {MAX_GLYPH_WARP:g}] (beyond {MAX_GLYPH_WARP:g} its corners can "
                        f"cross and mirror it), e.g. {DataConfig.glyph_warp:g}")
    if m.depth not in ("layer2", "layer3", "layer4"):
        problems.append(f"model.depth={m.depth!r}: use layer2, layer3 or layer4")
    if m.head not in ("linear", "lstm"):
        problems.append(f"model.head={m.head!r}: use linear or lstm")
    if t.select not in ("best", "last"):
        problems.append(f"train.select={t.select!r}: use best or last")
    if t.freeze not in FREEZE_STAGES:
        problems.append(f"train.freeze={t.freeze!r}: use stem, layer1 or an empty value (none)")
    if t.schedule not in ("onecycle", "cosine", "constant"):
        problems.append(f"train.schedule={t.schedule!r}: use onecycle, cosine or constant")
    if t.mixed_precision not in ("no", "fp16", "bf16"):
        problems.append(f"train.mixed_precision={t.mixed_precision!r}: use no, fp16 or bf16")
    if t.batch_size < 1 or t.grad_accum < 1 or t.lr <= 0:
        problems.append("train.batch_size, train.grad_accum must be >= 1 and train.lr > 0")
    if not 0 <= t.ema_decay < 1:
        problems.append(f"train.ema_decay={t.ema_decay}: use 0 (off) or a decay in (0, 1), "
                        "e.g. 0.99")
    if t.epochs < 1 and t.max_steps < 1:
        problems.append("set train.epochs or train.max_steps to at least 1")
    if t.max_minutes < 0:
        problems.append(f"train.max_minutes={t.max_minutes}: use 0 (no limit) or minutes > 0")
    if t.fill_time and not (t.max_minutes and t.max_steps):
        problems.append("train.fill_time=true fills train.max_minutes from a train.max_steps "
                        "plan: set both (or fill_time=false)")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
