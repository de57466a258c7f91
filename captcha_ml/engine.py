"""The one training loop (pretrain and finetune differ only in config) and evaluate().

The only module that touches Accelerate. Runs as a plain process or under `accelerate launch`
(several GPUs, nodes or CPU processes); only the main process writes files and talks to MLflow.
"""

from __future__ import annotations

import json
import math
import shutil
from functools import partial
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import checkpoint, metrics, tracking
from .charset import Charset
from .config import Config
from .data import datasets, glyphs, real, synthetic
from .data.transforms import Preprocess, average_views
from .model import build_model, channels_last

# train.fill_time: the step count may grow to FILL_LIMIT times the plan, once FILL_AFTER of
# the plan ran (past the default warmup, with the rate measured on real steps).
FILL_LIMIT, FILL_AFTER = 3, 0.1


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, incompatible init checkpoint, ...)."""


@dataclass
class Progress:
    """Loop position and model-selection state; saved with every resumable state."""

    step: int = 0
    total: int = 0  # the step the schedule anneals to (re-estimated under train.max_minutes)
    epoch: int = 0
    batch_in_epoch: int = 0
    best: list = field(default_factory=list)  # _score() of the best evaluation
    best_step: int = 0
    stale_evals: int = 0
    history: list = field(default_factory=list)
    start: dict = field(default_factory=dict)  # the starting weights' validation (validate_start)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass
class Data:
    charset: Charset
    preprocess: Preprocess
    train: Dataset
    valid: Dataset
    sources: dict[str, str]


def build_data(cfg: Config) -> Data:
    """Datasets for the configured sources: 'synthetic' or a labeled folder / manifest."""
    d = cfg.data
    charset = Charset(d.charset, d.case_sensitive, (d.min_len, d.max_len))
    pre = Preprocess(d.height, d.width, d.channels, crop=tuple(d.crop), tta=d.tta)

    def rendered(size: int, stream: str, pool: int | None = None) -> Dataset:
        spec = synthetic.spec_from_config(d)
        pool = d.synthetic_pool if pool is None else pool
        if pool and stream != "valid":  # validation stays one fixed set
            return datasets.SyntheticPool(spec, size, pre, pool, seed=cfg.train.seed,
                                          stream=stream, desc=f"{cfg.train.stage}: render pool")
        return datasets.SyntheticImages(spec, size, pre, seed=cfg.train.seed, stream=stream)

    def composed(size: int, pool: int) -> Dataset:  # of data.glyphs' glyphs
        bank, seed = glyphs.GlyphBank.load(d.glyphs), cfg.train.seed
        if pool:
            source = datasets.GlyphImages(bank, pool, pre, seed, "mix", d.glyph_warp,
                                          pixels=True)
            return datasets.Pool(source, size, pre, desc=f"{cfg.train.stage}: compose pool")
        return datasets.GlyphImages(bank, size, pre, seed, "mix", d.glyph_warp)

    def share_part(size: int) -> Dataset:
        """The synthetic_share part: read from data.share_from, or data.glyph_share of it
        composed of data.glyphs' glyphs and the rest rendered from data.style."""
        if d.share_from:
            return datasets.Cycled(labeled(d.share_from, False), size)
        n = round(size * d.glyph_share) if d.glyphs else 0
        pool = round(d.synthetic_pool * n / max(size, 1))
        parts = ([rendered(size - n, "mix", d.synthetic_pool - pool)] if n < size else []) + (
            [composed(n, max(pool, 1) if d.synthetic_pool else 0)] if n else [])
        return parts[0] if len(parts) == 1 else datasets.MixedImages(parts)

    def labeled(source: str, augment: bool) -> datasets.LabeledImages:
        found = real.read_labeled(source, charset=charset, min_len=d.min_len,
                                  max_len=d.max_len, skip_bad=d.skip_bad)
        # Validation reads one view even with data.tta (the test and the reader read them all).
        return datasets.LabeledImages(_normalized(found.samples, charset), pre, augment=augment,
                                      seed=cfg.train.seed, strength=d.augment_strength,
                                      local=d.augment_local, lines=d.augment_lines,
                                      colours=d.augment_colours)

    def make(source: str, size: int, train: bool) -> Dataset:
        if source == "synthetic":
            return rendered(size, "train" if train else "valid")
        return labeled(source, train and d.augment)

    train = make(d.train, d.synthetic_train_size, True)
    if d.synthetic_share:
        extra = round(len(train) * d.synthetic_share / (1 - d.synthetic_share))
        train = datasets.MixedImages([train, share_part(extra)])
    return Data(charset, pre, train, make(d.valid, d.synthetic_valid_size, False),
                {"train": d.train, "valid": d.valid})


def _normalized(samples: list[tuple[str, str]], charset: Charset) -> list[tuple[str, str]]:
    """Labels as the charset reads them (lower case for a case-insensitive charset)."""
    return [(path, charset.normalize(label)) for path, label in samples]


def collate(batch: list[tuple], charset: Charset) -> dict[str, Any]:
    """(image, label[, index]) items -> images, CTC targets, labels (and ids)."""
    images = torch.stack([item[0] for item in batch])
    labels = [item[1] for item in batch]
    encoded = [charset.encode(label) for label in labels]
    out = {"images": images, "targets": torch.tensor([i for e in encoded for i in e]),
           "target_lengths": torch.tensor([len(e) for e in encoded]), "labels": labels}
    if len(batch[0]) > 2:
        out["ids"] = torch.tensor([item[2] for item in batch])
    return out


def ctc_loss(log_probs: torch.Tensor, batch: dict[str, Any], reduction: str = "mean") -> torch.Tensor:
    """CTC loss of (B, T, C) float32 log-probabilities against the batch's encoded labels."""
    b, t, _ = log_probs.shape
    input_lengths = torch.full((b,), t, dtype=torch.long)
    return nn.functional.ctc_loss(log_probs.transpose(0, 1), batch["targets"], input_lengths,
                                  batch["target_lengths"], blank=0, reduction=reduction,
                                  zero_infinity=True)


def make_loader(ds: Dataset, cfg: Config, charset: Charset, train: bool) -> DataLoader:
    workers = cfg.data.num_workers
    return DataLoader(ds, batch_size=cfg.train.batch_size if train else cfg.train.eval_batch_size,
                      shuffle=train, num_workers=workers, drop_last=False,
                      collate_fn=partial(collate, charset=charset), persistent_workers=False,
                      prefetch_factor=4 if workers else None)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; weight decay on weights of convolutions and linear maps, not on biases and norms."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr)


def make_scheduler(opt: torch.optim.Optimizer, cfg: Config, progress: Progress):
    """Linear warmup to train.lr, then one-cycle (cosine to ~0), cosine, or constant, over
    ``progress.total`` steps (read at every step: a time limit may move it)."""
    warmup = max(1, int(cfg.train.warmup_frac * progress.total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.train.schedule == "constant":
            return 1.0
        done = min(1.0, (step - warmup) / max(1, progress.total - warmup))
        floor = 1e-3 if cfg.train.schedule == "onecycle" else 1e-2
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, accelerator: Accelerator, charset: Charset,
             with_ids: bool = False) -> tuple:
    """Read every image once across all ranks; returns metrics, predictions, labels (and ids).
    Batches of (batch, views, C, H, W) images are read through their views, averaged."""
    model.eval()
    preds, labels, ids, losses = [], [], [], []
    for batch in loader:
        images = batch["images"]
        if images.ndim == 5:  # (batch, views, C, H, W): Preprocess.read's test-time views
            log_probs = average_views(model(images.flatten(0, 1)), images.shape[1])
        else:
            log_probs = model(images)
        texts, _ = charset.ctc_decode(log_probs)
        loss = ctc_loss(log_probs, batch, reduction="none")
        preds += accelerator.gather_for_metrics(texts)
        labels += accelerator.gather_for_metrics(batch["labels"])
        if with_ids:
            ids += accelerator.gather_for_metrics(batch["ids"].tolist())
        losses.append(accelerator.gather_for_metrics(loss.detach()).float().cpu())
    model.train()
    result = metrics.summary(preds, labels)
    result["loss"] = float(torch.cat(losses).mean()) if losses else float("nan")
    return (result, preds, labels, ids) if with_ids else (result, preds, labels)


def init_weights(model: nn.Module, uri: str, charset: Charset) -> dict[str, str]:
    """Start from a checkpoint or MLflow model. Another charset keeps the classifier rows of
    the symbols both have (and the blank's), the rest start afresh; a colour network starts a
    grey one with its first filters summed over RGB (the same response to a grey image)."""
    path = tracking.download_checkpoint(uri)
    payload = checkpoint.load_payload(path)
    state = dict(payload["state_dict"])
    mine = model.state_dict()
    theirs = payload["charset"]["symbols"]
    same_charset = theirs == charset.symbols
    if not same_charset:
        state.update(_classifier_rows(state, mine, theirs, charset.symbols))
    first = "features.0.weight"  # the first convolution's filters: (out, channels, 7, 7)
    if first in state and first in mine and (state[first].shape[1], mine[first].shape[1]) == (3, 1):
        state[first] = state[first].sum(dim=1, keepdim=True)
    clash = [k for k, v in state.items() if k in mine and mine[k].shape != v.shape]
    if clash or set(state) ^ set(mine):  # another depth or head: keys missing or extra
        raise TrainingError(f"{uri}: its network does not match model.* and data.channels of "
                            f"this config (model there: {payload['model']}, channels "
                            f"{payload['preprocess'].get('channels')}); use the same "
                            "model.depth/head, or another train.init_from")
    model.load_state_dict(state, strict=False)
    shared = sum(c in theirs for c in charset.symbols)
    return {"init_from": uri, "init_run_id": payload.get("run_id", ""),
            "init_same_charset": str(same_charset),
            "init_shared_symbols": f"{shared}/{len(charset.symbols)}"}


def _classifier_rows(state: dict, mine: dict, theirs: str, symbols: str) -> dict:
    """The classifier for ``symbols`` from one trained on ``theirs``: row 0 (the CTC blank)
    and each shared symbol's row copied, the others as this model initialised them. Another
    feature width (another depth) is left as it is, for the shape check to refuse."""
    out = {}
    for key in ("classifier.weight", "classifier.bias"):
        if key not in state or key not in mine or state[key].shape[1:] != mine[key].shape[1:]:
            continue
        rows = mine[key].clone()
        rows[0] = state[key][0]
        for i, c in enumerate(symbols):
            if c in theirs:
                rows[i + 1] = state[key][theirs.index(c) + 1]
        out[key] = rows
    return out


@dataclass
class Loop:
    """What the training loop works on, prepared by Accelerate."""

    cfg: Config
    accelerator: Accelerator
    data: Data
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    train_dl: DataLoader
    valid_dl: DataLoader
    planned: int  # train.max_steps, or the epochs' steps
    progress: Progress
    tracker: tracking.Tracker | None
    out: Path
    ema: AveragedModel | None = None
    started: float = 0.0  # perf_counter when train() began (train.max_minutes counts from it)

    def weights(self) -> nn.Module:
        """The network that is validated and saved: the weight average if on, else the model."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)


def new_accelerator(**kwargs: Any) -> Accelerator:
    """An Accelerator with these settings, also when one with others ran in this process before.

    Accelerate keeps its settings in process-wide singletons; a second run in the same
    process (a notebook, a test session) with another precision would be refused. The
    process-group state (PartialState) is kept, so this is safe under `accelerate launch`.
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(**kwargs)


def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Train (pretrain or finetune, by config) and return the best validation metrics and files."""
    t, started = cfg.train, time.perf_counter()
    accelerator = new_accelerator(
        mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=t.seed))
    tracking.check_reachable(cfg.tracking.tracking_uri)  # every rank, before any work
    out = Path(t.output_dir)
    state_dir = out / "state"
    if resume and not (state_dir / "progress.json").is_file():
        raise TrainingError(f"--resume: no saved state in {state_dir}; run without --resume "
                            "to start, or point train.output_dir at the interrupted run")
    tracker = None
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        tracker = tracking.Tracker(cfg, run_id=_previous_run(state_dir) if resume else None)
    try:
        loop = _prepare(cfg, accelerator, tracker, out, started)
        if resume:
            _load_state(loop, state_dir)
        result = _run(loop)
    except BaseException as e:
        if tracker:
            tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    if tracker:
        tracker.end()
    accelerator.end_training()
    return result


def _prepare(cfg: Config, accelerator: Accelerator, tracker, out: Path, started: float) -> Loop:
    t = cfg.train
    set_seed(t.seed)  # same initial weights on every rank
    data = build_data(cfg)
    model = build_model(cfg.model, data.charset.num_classes, cfg.data.channels)
    init_tags = init_weights(model, t.init_from, data.charset) if t.init_from else {}
    model.freeze(t.freeze)
    if t.channels_last:
        model = channels_last(model)
    opt = make_optimizer(model, cfg)
    train_dl = make_loader(data.train, cfg, data.charset, train=True)
    valid_dl = make_loader(data.valid, cfg, data.charset, train=False)
    model, opt, train_dl, valid_dl = accelerator.prepare(model, opt, train_dl, valid_dl)
    total = t.max_steps or t.epochs * math.ceil(len(train_dl) / t.grad_accum)
    progress = Progress(total=total)
    # The scheduler is stepped by us once per optimizer step (not prepared: Accelerate would
    # step it once per process).
    sched = make_scheduler(opt, cfg, progress)
    accelerator.register_for_checkpointing(sched)
    ema = None
    if t.ema_decay:
        # Parameters stay in sync across ranks, so every rank averages the same weights;
        # BatchNorm statistics are taken from rank 0 before each validation (_sync_ema_buffers).
        ema = AveragedModel(accelerator.unwrap_model(model), use_buffers=True,
                            avg_fn=partial(_ema_step, decay=t.ema_decay))
        accelerator.register_for_checkpointing(ema)
    if tracker:
        _log_start(tracker, cfg, data, init_tags, total, out)
    return Loop(cfg, accelerator, data, model, opt, sched, train_dl, valid_dl, total, progress,
                tracker, out, ema, started)


def _ema_step(average: torch.Tensor, current: torch.Tensor, count: torch.Tensor,
              decay: float) -> torch.Tensor:
    """One moving-average update; the decay ramps up over the first updates, so the average
    does not hold on to the starting weights (1 - decay of the weight goes to each new step)."""
    d = min(decay, (1 + float(count)) / (10 + float(count)))
    return average + (current - average) * (1 - d)


def _sync_ema_buffers(loop: Loop) -> None:
    """Each rank updates BatchNorm statistics from its own batches; use rank 0's everywhere."""
    if loop.ema is not None and loop.accelerator.num_processes > 1:
        for buffer in loop.ema.module.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _run(loop: Loop) -> dict[str, Any]:
    cfg, acc, p = loop.cfg, loop.accelerator, loop.progress
    bar = tqdm(total=p.total, initial=p.step, desc=cfg.train.stage, unit="step",
               disable=not acc.is_local_main_process, dynamic_ncols=True)
    window = _Window()
    last_eval, stop = -1, False
    first_step, loop_start = p.step, time.perf_counter()
    if cfg.train.validate_start and p.step == 0:
        _validate_start(loop)
    loop.model.train()
    while p.step < p.total and not stop:
        loop.data.train.set_epoch(p.epoch)
        loop.train_dl.set_epoch(p.epoch)
        batches = (acc.skip_first_batches(loop.train_dl, p.batch_in_epoch)
                   if p.batch_in_epoch else loop.train_dl)
        for batch in batches:
            if not _train_batch(loop, batch, window):
                continue  # accumulating gradients: no optimizer step yet
            bar.update(1)
            if p.step % cfg.train.log_every == 0 or p.step == p.total:
                bar.set_postfix(_log_train(loop, window))
                if cfg.train.max_minutes:
                    bar.total = _fit_to_time(loop, p.step - first_step, loop_start)
            if cfg.train.eval_every and p.step % cfg.train.eval_every == 0:
                stop, last_eval = _validate(loop), p.step
            if _save_due(cfg, p.step, last_eval):
                _save_state(loop)
            if p.step >= p.total or stop:
                break
        else:
            p.epoch, p.batch_in_epoch = p.epoch + 1, 0
            if not cfg.train.eval_every and p.step < p.total:
                stop, last_eval = _validate(loop), p.step
                _save_state(loop)
    bar.close()
    if stop and acc.is_main_process:
        tqdm.write(f"train.early_stop_patience={cfg.train.early_stop_patience}: stopped at step "
                   f"{p.step} of {p.total}, no better validation since step {p.best_step}")
    elif p.total < loop.planned and acc.is_main_process:
        tqdm.write(f"train.max_minutes={cfg.train.max_minutes:g}: stopped after {p.step} of the "
                   f"planned {loop.planned} steps, the schedule run down by then")
    elif p.total > loop.planned and acc.is_main_process:
        tqdm.write(f"train.fill_time: ran {p.step} steps where {loop.planned} were planned, to "
                   f"fill train.max_minutes={cfg.train.max_minutes:g} (faster than timed)")
    if last_eval != p.step:
        _validate(loop)
        _save_state(loop)
    return {**_finish(loop), "stopped_early": stop}


def _fit_to_time(loop: Loop, steps_done: int, loop_start: float) -> int:
    """Under train.max_minutes: the steps that fit in the time left at the rate of this
    run's steps so far (validation included), never above the planned count (with
    train.fill_time: FILL_LIMIT times it, and only once FILL_AFTER of the plan ran, when the
    rate is known); the same on every process (the slowest one's clock decides). Returns
    the new progress.total."""
    acc, p, t = loop.accelerator, loop.progress, loop.cfg.train
    now = time.perf_counter()
    clocks = torch.tensor([now - loop.started, now - loop_start], device=acc.device)
    spent, looped = (float(v) for v in acc.gather(clocks).reshape(-1, 2).max(dim=0).values)
    left = 60 * t.max_minutes - spent
    ceiling = loop.planned
    if t.fill_time and p.step >= FILL_AFTER * loop.planned:
        ceiling = FILL_LIMIT * loop.planned
    p.total = max(p.step, min(ceiling, p.step + int(left * steps_done / max(looped, 1e-6))))
    return p.total


def _save_due(cfg: Config, step: int, last_eval: int) -> bool:
    every = cfg.train.save_every
    return step % every == 0 if every else last_eval == step


def _train_batch(loop: Loop, batch: dict[str, Any], window: "_Window") -> bool:
    """Forward/backward one batch; returns True when an optimizer step was taken."""
    acc, p, t = loop.accelerator, loop.progress, loop.cfg.train
    # Dropout noise is a pure function of (seed, position, rank): a resumed run draws the same.
    torch.manual_seed(hash((t.seed, p.epoch, p.batch_in_epoch, acc.process_index)) % 2**62)
    with acc.accumulate(loop.model):
        with acc.autocast():
            log_probs = loop.model(batch["images"])
        loss = ctc_loss(log_probs, batch)
        acc.backward(loss)
        if acc.sync_gradients and t.grad_clip:
            acc.clip_grad_norm_(loop.model.parameters(), t.grad_clip)
        loop.opt.step()
        loop.opt.zero_grad(set_to_none=True)
    p.batch_in_epoch += 1
    window.add(loss.detach(), len(batch["labels"]))
    if not acc.sync_gradients:
        return False
    loop.sched.step()
    if loop.ema is not None:
        loop.ema.update_parameters(acc.unwrap_model(loop.model))
    p.step += 1
    _check_finite(loop, loss)
    return True


def _check_finite(loop: Loop, loss: torch.Tensor) -> None:
    acc = loop.accelerator
    bad = torch.tensor(0.0 if torch.isfinite(loss).item() else 1.0, device=acc.device)
    if acc.reduce(bad, "sum").item() > 0:
        raise TrainingError(
            f"loss is not finite at step {loop.progress.step} (epoch {loop.progress.epoch}); "
            f"training stopped. The last good files are kept: {loop.out / 'best.pt'}, "
            f"{loop.out / 'last.pt'} and the resumable state {loop.out / 'state'}. "
            "Lower train.lr, keep train.grad_clip > 0, or set train.mixed_precision=no")


class _Window:
    """Running loss and throughput between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.batches, self.images, self.start = 0.0, 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss += float(loss)
        self.batches += 1
        self.images += images


def _log_train(loop: Loop, window: _Window) -> dict[str, str]:
    acc = loop.accelerator
    loss = acc.reduce(torch.tensor(window.loss / max(1, window.batches), device=acc.device), "mean")
    elapsed = time.perf_counter() - window.start
    values = {"train/loss": float(loss), "train/lr": float(loop.sched.get_last_lr()[0]),
              "train/images_per_s": window.images * acc.num_processes / max(elapsed, 1e-9),
              "train/epoch": float(loop.progress.epoch)}
    window.reset()
    if loop.tracker:
        loop.tracker.log_metrics(values, step=loop.progress.step)
    return {"loss": f"{values['train/loss']:.4f}", "img/s": f"{values['train/images_per_s']:.1f}"}


def _score(result: dict[str, float]) -> list[float]:
    """Model selection key on validation only: sequence accuracy, then lower CER, then loss."""
    return [result["seq_acc"], -result["cer"], -result["loss"]]


def _validate(loop: Loop) -> bool:
    """Evaluate on the validation set, keep best/last checkpoints (best.pt: the run's model,
    by train.select); True to stop early."""
    acc, p, cfg = loop.accelerator, loop.progress, loop.cfg
    _sync_ema_buffers(loop)
    result, preds, labels = evaluate(loop.model if loop.ema is None else loop.ema.module,
                                     loop.valid_dl, acc, loop.data.charset)
    improved = not p.best or _score(result) > p.best
    if improved:
        p.best, p.stale_evals = _score(result), 0
    else:
        p.stale_evals += 1
    keep = improved or cfg.train.select == "last"  # these weights become the run's model
    if keep:
        p.best_step = p.step
    p.history.append({"step": p.step, **{k: round(v, 6) for k, v in result.items()}})
    if acc.is_main_process:
        extra = {"step": p.step, "val": result, "run_id": loop.tracker.run_id if loop.tracker else ""}
        model = loop.weights()
        checkpoint.save(loop.out / "last.pt", model, loop.data.charset, loop.data.preprocess,
                        cfg.model, extra)
        if keep:
            checkpoint.save(loop.out / "best.pt", model, loop.data.charset,
                            loop.data.preprocess, cfg.model, extra)
        if loop.tracker:
            loop.tracker.log_metrics({f"val/{k}": v for k, v in result.items() if k != "count"},
                                     step=p.step)
            tqdm.write(f"step {p.step}: val seq_acc {result['seq_acc']:.4f} cer "
                       f"{result['cer']:.4f} loss {result['loss']:.4f}"
                       f"{' (best)' if improved else ''}")
    patience = cfg.train.early_stop_patience
    return bool(patience and p.stale_evals >= patience)


def _validate_start(loop: Loop) -> None:
    """train.validate_start: the starting weights on the validation set, logged at step 0 and
    kept as progress.start; they are no candidate for best.pt (the run's model is trained)."""
    acc, p = loop.accelerator, loop.progress
    result, _, _ = evaluate(loop.model, loop.valid_dl, acc, loop.data.charset)
    p.start = {"step": 0, **{k: round(v, 6) for k, v in result.items()}}
    if acc.is_main_process and loop.tracker:
        loop.tracker.log_metrics({f"val/{k}": v for k, v in result.items() if k != "count"},
                                 step=0)
        tqdm.write(f"step 0 (the starting weights): val seq_acc {result['seq_acc']:.4f} cer "
                   f"{result['cer']:.4f} loss {result['loss']:.4f}")


def _save_state(loop: Loop) -> None:
    """Resumable state (model, optimizer, scheduler, loop position), replaced atomically."""
    acc, state = loop.accelerator, loop.out / "state"
    tmp = loop.out / "state.tmp"
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        info = {**loop.progress.state_dict(), "run_id": loop.tracker.run_id if loop.tracker else ""}
        (tmp / "progress.json").write_text(json.dumps(info, indent=1))
        old = loop.out / "state.old"
        if state.exists():
            state.rename(old)
        tmp.rename(state)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _load_state(loop: Loop, state: Path) -> None:
    saved_ema = (state / "custom_checkpoint_1.pkl").is_file()  # 0 is the scheduler
    if saved_ema != (loop.ema is not None):
        raise TrainingError(f"--resume: {state} was saved with train.ema_decay "
                            f"{'on' if saved_ema else 'off (0)'}; resume with the same setting")
    loop.accelerator.load_state(str(state))
    loop.progress.load_state_dict(
        {k: v for k, v in json.loads((state / "progress.json").read_text()).items()
         if k != "run_id"})
    if loop.accelerator.is_main_process:
        tqdm.write(f"resumed from {state} at step {loop.progress.step} "
                   f"(epoch {loop.progress.epoch}, batch {loop.progress.batch_in_epoch})")


def _previous_run(state: Path) -> str | None:
    try:
        return json.loads((state / "progress.json").read_text()).get("run_id") or None
    except (OSError, ValueError):
        return None


def _log_start(tracker: tracking.Tracker, cfg: Config, data: Data, init_tags: dict[str, str],
               total: int, out: Path) -> None:
    tracker.log_params({**cfg.flat(), "total_steps": total})
    tags = dict(init_tags)
    if init_tags.get("init_run_id"):
        tags["pretrain_run_id"] = init_tags["init_run_id"]
    tracker.set_tags(tags)
    tracker.log_dict(cfg.to_dict(), "config.yaml")
    tracker.log_dict(data.charset.to_dict(), "charset.json")
    sources = [("training", data.sources["train"]), ("validation", data.sources["valid"])]
    if cfg.data.synthetic_share:  # the synthetic part of a mixed epoch
        sources.append(("training", cfg.data.share_from or "synthetic"))
    for context, source in sources:
        if source == "synthetic":
            style = Path(cfg.data.style)
            # A style file is identified by its contents, a preset by its name.
            spec = style.read_text() if style.is_file() else cfg.data.style
            digest = tracking.text_digest(f"{spec}:{cfg.train.seed}:{context}:{cfg.data.charset}")
            tracker.log_dataset(f"synthetic-{style.stem}-{context}", "", digest, context)
        else:
            tracker.log_dataset(Path(source).name, str(Path(source).resolve()),
                                tracking.path_digest(source), context)


def _finish(loop: Loop) -> dict[str, Any]:
    """Log the best checkpoint, sample predictions and the model; summarise the run."""
    acc, p = loop.accelerator, loop.progress
    best = loop.out / "best.pt"
    result = {"best_checkpoint": str(best), "best_step": p.best_step, "steps": p.step,
              "val": next((h for h in p.history if h["step"] == p.best_step), {}),
              "history": list(p.history), "start": dict(p.start),
              "run_id": loop.tracker.run_id if loop.tracker else None}
    acc.wait_for_everyone()
    if loop.tracker:
        model, charset, pre, _ = checkpoint.load(best)
        loop.tracker.log_file(best, "checkpoints")
        loop.tracker.log_metrics({f"best/val_{k}": v for k, v in result["val"].items()
                                  if k not in ("step", "count")}, step=p.step)
        loop.tracker.log_image(_sample_grid(model, charset, pre, loop.data.valid), "samples.png")
        if loop.cfg.tracking.log_model:
            example = torch.stack([_one_view(loop.data.valid[i][0]) for i in range(2)]).numpy()
            result["model_uri"] = loop.tracker.log_model(model, best, example)
            result["reader_uri"] = loop.tracker.log_reader(best)
            loop.tracker.set_tags({"model_uri": result["model_uri"],
                                   "reader_uri": result["reader_uri"]})
    return result


def _one_view(x: torch.Tensor) -> torch.Tensor:
    """A validation item as the network takes it: of test-time views (views, C, H, W), the
    first (the image as it is)."""
    return x[0] if x.ndim == 4 else x


def _sample_grid(model: nn.Module, charset: Charset, pre: Preprocess, ds: Dataset, n: int = 16):
    """A picture of the first n validation images with their predicted and true texts."""
    from PIL import Image, ImageDraw

    n = min(n, len(ds))
    items = [ds[i] for i in range(n)]
    items = [(_one_view(x), y) for x, y in items]
    with torch.no_grad():
        texts, _ = charset.ctc_decode(model(torch.stack([x for x, _ in items])))
    cols, cell_h = 4, pre.height + 14
    grid = Image.new("RGB", (cols * pre.width, math.ceil(n / cols) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, ((x, label), text) in enumerate(zip(items, texts)):
        img = ((x * pre.std + pre.mean).clamp(0, 1) * 255).byte().permute(1, 2, 0).squeeze(-1)
        pos = ((i % cols) * pre.width, (i // cols) * cell_h)
        grid.paste(Image.fromarray(img.numpy()), pos)
        colour = (0, 128, 0) if text == label else (200, 0, 0)
        draw.text((pos[0] + 2, pos[1] + pre.height), f"{text} / {label}", fill=colour)
    return grid


class _Indexed(Dataset):
    """Adds the item index, so evaluation can name the files it misread."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return (*self.ds[i], i)


def evaluate_model(cfg: Config, model_uri: str, data_path: str, split: str = "test",
                   log: bool = True, tta: bool | None = None) -> dict[str, Any]:
    """Read a labeled folder or manifest with a trained model; full report, logged to MLflow.
    ``tta``: with (True) or without (False) test-time views; None: as the model says."""
    accelerator = new_accelerator()
    tracking.check_reachable(cfg.tracking.tracking_uri)
    with accelerator.main_process_first():
        path = tracking.download_checkpoint(model_uri)
    model, charset, pre, payload = checkpoint.load(path)
    labeled = real.read_labeled(data_path, charset=charset, skip_bad=cfg.data.skip_bad)
    samples = _normalized(labeled.samples, charset)
    pre = pre if tta is None else replace(pre, tta=tta)
    ds = datasets.LabeledImages(samples, pre, read=True)
    loader = make_loader(_Indexed(ds), cfg, charset, train=False)
    model, loader = accelerator.prepare(model, loader)
    result, preds, labels, ids = evaluate(model, loader, accelerator, charset, with_ids=True)
    report = {"model": model_uri, "data": str(data_path), "split": split, "tta": pre.tta,
              "metrics": result,
              "per_position": metrics.per_position_accuracy(preds, labels),
              "confusions": [{"true": t, "pred": p, "count": n}
                             for (t, p), n in metrics.confusions(preds, labels).most_common(20)],
              "misread": [{"path": samples[i][0], "label": y, "pred": p}
                          for i, y, p in zip(ids, labels, preds) if y != p],
              "skipped": [{"path": p, "reason": r} for p, r in labeled.skipped]}
    if accelerator.is_main_process and log:
        report["run_id"] = _log_evaluation(cfg, report, payload)
    return report


def _log_evaluation(cfg: Config, report: dict[str, Any], payload: dict[str, Any]) -> str:
    cfg.train.stage = "evaluate"
    tracker = tracking.Tracker(cfg)
    try:
        tracker.log_params({"model_uri": report["model"], "eval.data": report["data"],
                            "eval.split": report["split"], "eval.tta": report["tta"]})
        tracker.set_tags({"evaluated_run_id": payload.get("run_id", "")})
        tracker.log_dataset(Path(report["data"]).name, str(Path(report["data"]).resolve()),
                            tracking.path_digest(report["data"]), report["split"])
        split = report["split"]
        values = {f"{split}/{k}": v for k, v in report["metrics"].items()}
        values.update({f"{split}/pos{i}_acc": v for i, v in enumerate(report["per_position"])})
        tracker.log_metrics(values, step=0)
        tracker.log_dict(report, f"{split}_report.json")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return tracker.run_id
