"""The budget: model input sizes, a probe of this machine's training speed and precision, and
the split of the wall-time budget into pretraining and finetuning steps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

from ..config import Config
from ..data.synthetic import SyntheticSpec
from ..model import output_length

FIT_DEPTH = "layer2"  # model.depth of both stages (the last ResNet-18 stage kept)
# layer2 (0.7M parameters) rather than layer3 (2.8M): in a fixed wall-time budget on a CPU the
# smaller network takes 1.6-2.3x the steps, which paid more than the capacity. Whole fits,
# 1000-image holdouts, layer2 vs layer3 on one VM: wheezy 0.897 vs 0.845, alnum62 (62 symbols)
# 0.943 vs 0.946, lower4to7 0.963 vs 0.964 (session 16, bfloat16, 1.6-1.7x the steps); wheezy
# 0.859 vs 0.739 on session 15's float32 VM (2.3x). Tables: docs/fit.md.
# The head stays linear (model.head): with a bidirectional LSTM in both stages, wheezy's fit
# probed 262 images/s against ~320, its 2402 pretraining steps reached synthetic validation
# 0.695 (linear: 0.965 after 2891) and zero-shot 0.053 (linear: 0.33).
# Model input height caps. Pretraining, most of the training time, runs at <= 40 rows for CPU
# speed; finetuning reads the real images at up to 72 (the network is convolutional, so the
# pretrained weights carry over). Finetuning wheezy (200x75) at 72x192 instead of 56x152 from
# one pretrained model read 0.830 of 1000 new images against 0.800, in 5400 steps and 9.5
# minutes against 8877 and 11.9: its warped glyphs are ~26 rows high, 19 at 56 and 14 at 40.
# Pretraining at 72 rows as well did not pay: a whole wheezy fit so (72x160, 2492 pretraining
# steps instead of ~4600) read its holdout at 0.886 against 0.890 (synthetic validation 0.98
# against 0.93, zero-shot 0.23 against 0.25).
PRETRAIN_MAX_HEIGHT, FINETUNE_MAX_HEIGHT = 40, 72
# Finetuning reads the sample's text at least this many rows high: the development styles'
# text measures 24-45 rows at their finetuning height, and ink drawn at 90x30 (`ink_small`,
# text ~11 of 30 rows; 14 before its lines were left out of the measure, style.SOLID_MIN_KEPT)
# read its holdout at 0.789 finetuned at 32x184 and at 0.910 at 48x280 in the same time
# (session 37). From one pretrained model, in the same minutes, it read 0.872 at 47x272, 0.912
# at 60x344 and 0.885 at 72x416 (4171 steps against 9267; session 38): 17, 22 and 26 rows of
# its text as measured now (22, 28 and 34 as measured then; benchmarks/results/fit_history.md).
FINETUNE_TEXT_ROWS = 22
# The input is widened until CTC has this many steps per symbol of the text line (measured:
# its width / label length), and per symbol of the whole width: two identical symbols in a row
# need a blank step between them. lower4to7 (7 symbols in 57% of 120 pixels, 1.2 steps a
# symbol): 37 of its 79 misreads of 1000 holdout images had the wrong length, 13 of them one
# of a doubled letter dropped, others a double merged (nn read as m, vv as w). With 2 steps
# for the median symbol (40x128), 25 of its 41 misreads were 7-letter labels (whose symbols
# are the narrowest: a longer label fills the same line), 12 of them of the wrong length;
# 2.5 steps for the narrowest tenth (style.symbol_share; 40x192) read its holdout at 0.967
# against 0.953 (7-letter misreads 16, wrong lengths 11 of 33; with data.augment_lines on).
CTC_STEPS_PER_SYMBOL = 2.5
MAX_WIDEN = 2.0  # at most this many times the width that keeps the aspect
# Most of the time goes to finetuning (half of its images are synthetic too): 35/65 read the
# 1000-image holdouts at least as well as 60/40 (wheezy 0.724 vs 0.704, alnum62 0.949 vs 0.930,
# lower4to7 0.903 vs 0.902; bfloat16, one seed, docs/fit.md). From the universal model,
# with pretraining validated on the real valid part, 20/80 read them at least as well as 35/65
# (session 23, one seed each, the 35/65 figures alnum62's, lower4to7's and ink's of session 22:
# wheezy 0.940 vs 0.934, alnum62 0.977 vs 0.971, lower4to7 0.978 vs 0.976, ink 0.980 vs
# 0.980): the style-matched pretraining's best comes early (at step 508 of wheezy's, 279 of
# lower4to7's, 111 of alnum62's), and finetuning on the real images pays more per minute.
PRETRAIN_SHARE, FINETUNE_SHARE = 0.2, 0.8
# The whole command's wall time; the target is 20 minutes per style on a 2-core CPU, and a
# run ends within the budget, so 18 leaves a margin for a slow machine.
DEFAULT_BUDGET_MINUTES = 18.0
FINAL_RESERVE_S = 45.0  # after finetuning: test evaluation, registration, logging
FALLBACK_IMAGES_PER_S = 60.0  # a 2-core CPU at 40x120 when idle; used when no probe runs
# Synthetic training images are rendered into a pool before each stage, by one process per
# core, and each is trained on POOL_REUSE times (data.synthetic_pool). Rendering in a DataLoader
# worker took cores from the training step: lower4to7's pretraining (40x120, bfloat16) ran at
# 257 images/s that way and at 427 from a pool, rendering included. Reused 4 times,
# pretraining overfitted its pool (training loss per symbol 0.11 against about 0.28 on new
# images; 0.29 and 0.32 without a pool), so twice: by the render rate ~10% fewer images a
# second than 4 times, twice as many different ones. At most POOL_MAX_IMAGES (72x240 RGB:
# 3.1 GB).
POOL_REUSE, POOL_MAX_IMAGES = 2, 60_000


def model_input(size: tuple[int, int], max_len: int, max_height: int = PRETRAIN_MAX_HEIGHT,
                symbol_share: float = 0.0, text_rows: float = 0.0, min_text_rows: int = 0
                ) -> tuple[int, int, str]:
    """(height, width, why): height 32..max_height keeping the aspect, width a multiple of 8
    with at least max(2*max_len+1, CTC_STEPS_PER_SYMBOL*max_len) CTC steps (room for a blank
    between repeated symbols, and for each symbol's alignment) and, where the sample's symbols
    take ``symbol_share`` of the width each, CTC_STEPS_PER_SYMBOL steps per symbol in the
    text line (at most MAX_WIDEN x the aspect's width). Where the sample's text, ``text_rows``
    high in the source, would be under ``min_text_rows`` rows at that height, both grow by
    the factor that gives it those rows (the height still at most max_height)."""
    w, h = size
    height = min(max_height, max(32, h))
    width = max(8, round(w * height / h / 8) * 8)
    steps = max(2 * max_len + 1, math.ceil(CTC_STEPS_PER_SYMBOL * max_len))
    reason = f"{steps} time steps for at most {max_len} symbols"
    if symbol_share > 0:
        in_line = min(math.ceil(CTC_STEPS_PER_SYMBOL / symbol_share), int(MAX_WIDEN * width) // 8)
        if in_line > steps:
            steps, reason = in_line, (f"{in_line} time steps: {CTC_STEPS_PER_SYMBOL} per symbol, "
                                      f"each {symbol_share:.0%} of the width")
    need = 8 * steps
    why = f"height {height} (source {h}, kept in 32..{max_height}), width {width} keeps the aspect"
    if width < need:
        width, why = need, f"height {height}, width raised to {need} so CTC has {reason}"
    rows = text_rows * height / h
    grow = min(min_text_rows / rows, max_height / height) if 0 < rows < min_text_rows else 1.0
    if grow > 1.0:
        before = f"{height}x{width}"
        height, width = round(height * grow), math.ceil(width * grow / 8) * 8
        why += (f"; then {height}x{width}, not {before}: the text, ~{text_rows:.0f} "
                f"of the source's {h} rows, gets {rows * grow:.0f} rows, not {rows:.0f} "
                f"(at least {min_text_rows}, FINETUNE_TEXT_ROWS)")
    return height, width, why + f"; CTC steps {output_length(width)}"


PRECISIONS = ("auto", "no", "bf16")  # fit's --precision: probe, float32, bfloat16 autocast
# bfloat16 autocast is chosen when a training step runs this much faster than in float32: CPUs
# with AMX run one 2.0-2.4x faster (the probe on wheezy's 40x104 input: 285 -> 574 images/s);
# where it is not faster, float32 stays. Weights, optimizer and CTC stay float32 (the model's
# log_softmax).
BF16_MIN_SPEEDUP = 1.3


@dataclass
class Probe:
    """Training speed on this machine at the pretraining input, and the precision chosen."""

    images_per_s: float  # training as fit does: batches from a pool of rendered images
    precision: str  # train.mixed_precision of both stages: "no" or "bf16"
    step_images_per_s: dict[str, float]  # the training step alone, per precision measured
    why: str = ""
    render_s: float = 0.0  # seconds one process takes to render one image of the style


def loader_workers() -> int:
    """data.num_workers of both stages: none on a CPU, where with a pool a loader process
    neither helps nor hurts (lower4to7 at 40x168, `benchmarks/loader_speed.py`: 351 vs 356
    images/s pretraining, 263 vs 267 finetuning) and would be forked again every epoch of a
    few hundred real images; two to feed a GPU."""
    return 2 if train_device().type == "cuda" else 0


def train_device():
    """The device fit's training runs on (Accelerate's choice on one process): the GPU when
    there is one, so the probe times the GPU that will train, not the CPU beside it."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _images_per_s(model, batches: Iterator, precision: str, steps: int) -> float:
    """Images/s of ``steps`` training steps (forward, backward, optimizer) on the next
    ``batches`` on train_device(), after two untimed warm-up steps."""
    import torch

    device = train_device()
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = 0
    for i in range(steps + 2):
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, images = time.perf_counter(), 0
        x = next(batches).to(device).contiguous(memory_format=torch.channels_last)
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(x).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        images += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def _pool_batches(spec: SyntheticSpec, height: int, width: int, channels: int,
                  batch: int, pool: int = 64) -> tuple[Iterator, float]:
    """Shuffled batches from a small pool of the style (rendered here, in this process), as
    fit's training gets them, and the seconds rendering took per image."""
    import itertools

    from torch.utils.data import DataLoader

    from ..data.datasets import SyntheticPool
    from ..data.transforms import Preprocess

    start = time.perf_counter()
    images = SyntheticPool(spec, 10_000, Preprocess(height, width, channels), pool,
                           stream="probe", workers=0, desc="probe: render")
    render_s = (time.perf_counter() - start) / pool
    loader = DataLoader(images, batch_size=batch, shuffle=True, num_workers=0)
    return (x for _ in itertools.count() for x, _ in loader), render_s


def config_images_per_s(cfg: Config, steps: int = 12) -> float:
    """Training images/s of ``cfg`` as engine.train runs it (its data, input size, precision),
    timed over a few steps: finetuning loads and augments real images besides its synthetic
    ones, a cost no pixel count predicts (lower4to7: 0.83x pretraining's rate at
    the same input, where 1x was planned, and finetuning overran by 1.3 minutes)."""
    import copy
    import itertools

    from .. import engine
    from ..model import build_model, channels_last

    cfg = copy.deepcopy(cfg)  # a small pool: the timing must not render the stage's whole pool
    cfg.data.synthetic_pool = min(cfg.data.synthetic_pool, 64)
    data = engine.build_data(cfg)
    model = build_model(cfg.model, data.charset.num_classes, cfg.data.channels)
    model = channels_last(model.freeze(cfg.train.freeze))
    loader = engine.make_loader(data.train, cfg, data.charset, train=True)
    batches = (b["images"] for _ in itertools.count() for b in loader)  # a small set repeats
    try:
        return _images_per_s(model, batches, cfg.train.mixed_precision, steps)
    finally:
        batches.close()  # stops the DataLoader worker


def probe_throughput(spec: SyntheticSpec, height: int, width: int, channels: int,
                     num_classes: int, precision: str = "auto", batch: int = 32,
                     steps: int = 12) -> Probe:
    """Training images/s on this machine, measured as fit trains (batches from a pool of
    rendered images), and the time to render one; with ``precision`` "auto", first the faster
    of float32 and bfloat16 autocast on a fixed batch (bfloat16 when at least
    BF16_MIN_SPEEDUP x faster)."""
    import itertools

    import torch

    from ..config import ModelConfig
    from ..model import build_model, channels_last

    def model():
        return channels_last(build_model(ModelConfig(depth=FIT_DEPTH), num_classes, channels))

    if precision != "auto":
        tried, why = (precision,), f"--precision {precision}"
    else:
        tried = ("no", "bf16")
    rates, chosen = {}, tried[0]
    if len(tried) == 2:
        x = torch.randn(batch, channels, height, width)
        rates = {p: _images_per_s(model(), itertools.repeat(x), p, 3) for p in tried}
        speedup = rates["bf16"] / rates["no"]
        chosen = "bf16" if speedup >= BF16_MIN_SPEEDUP else "no"
        on = "GPU" if train_device().type == "cuda" else "CPU"
        why = (f"a training step in bfloat16 autocast ran {speedup:.1f}x as fast as in float32 "
               f"on this {on} ({rates['bf16']:.0f} vs {rates['no']:.0f} images/s; chosen at "
               f">= {BF16_MIN_SPEEDUP:g}x)")
    batches, render_s = _pool_batches(spec, height, width, channels, batch)
    images_per_s = _images_per_s(model(), batches, chosen, steps)
    return Probe(images_per_s, chosen, {k: round(v, 1) for k, v in rates.items()}, why,
                 render_s)


@dataclass
class Plan:
    """How the budget is spent."""

    images_per_s: float  # at the pretraining input
    pretrain_steps: int
    finetune_steps: int
    pretrain_batch: int = 32
    finetune_batch: int = 16
    finetune_cost: float = 1.0  # time per finetuning image / per pretraining image
    precision: str = "no"  # train.mixed_precision of both stages (Probe.precision)
    pretrain_pool: int = 1  # data.synthetic_pool of each stage (images rendered up front)
    finetune_pool: int = 1
    loader_workers: int = 0  # data.num_workers of both stages
    pretrain_minutes: float = 0.0  # pretraining's share of the budget: its train.max_minutes


# The share of a training image's time that grows with its pixels (the rest: rendering and
# loading it, per-step overhead). Measured in fit runs: finetuning at ~2x the pixels ran at
# 0.58x (wheezy, 40x104 -> 56x152) and 0.65x (alnum62, 40x136 -> 56x192) pretraining's rate.
PIXEL_BOUND_SHARE = 0.7


def input_cost(pre: tuple[int, int], fine: tuple[int, int]) -> float:
    """Training time of an image at input ``fine`` relative to one at ``pre`` (height, width)."""
    return 1 + PIXEL_BOUND_SHARE * ((fine[0] * fine[1]) / (pre[0] * pre[1]) - 1)


def pooled_steps(seconds: float, images_per_s: float, batch: int, synthetic_share: float,
                 render_s: float, cores: int) -> tuple[int, int]:
    """(steps, pool): the training steps that fill ``seconds`` together with rendering their
    pool first (``cores`` processes, ``render_s`` seconds per image each), and the pool's size:
    the stage's synthetic images (``synthetic_share`` of each batch) / POOL_REUSE, at most
    POOL_MAX_IMAGES."""
    render_per_image = synthetic_share * render_s / (POOL_REUSE * max(1, cores))
    images = max(0.0, seconds) / (1 / images_per_s + render_per_image)
    steps = max(1, int(images / batch))
    return steps, pool_size(steps, batch, synthetic_share)


def pool_size(steps: int, batch: int, synthetic_share: float) -> int:
    """Images to render for ``steps`` steps: each synthetic image used POOL_REUSE times."""
    return max(1, min(POOL_MAX_IMAGES, math.ceil(steps * batch * synthetic_share / POOL_REUSE)))


def plan_budget(minutes: float, images_per_s: float, max_steps: int = 0,
                finetune_cost: float = 1.0, render_s: float = 0.0, cores: int = 1,
                finetune_share: float = 0.5) -> Plan:
    """Split the budget: a fixed reserve for startup, evaluation and logging, then
    PRETRAIN_SHARE / FINETUNE_SHARE, each stage's share paying for rendering its pool
    (``finetune_share``: the synthetic share of finetuning's batches)."""
    train_s = max(30.0, 60 * minutes - min(120.0, 0.15 * 60 * minutes))
    # Pretraining is held to its share by a time limit too: planned at the probe's rate, it
    # ran at 237 images/s where 330 were probed (captcha_images_v2: 6.8 minutes of a planned
    # 5.6), and finetuning, which decides the accuracy, got the rest.
    pretrain_s = PRETRAIN_SHARE * train_s
    plan = Plan(images_per_s, 0, 0, finetune_cost=round(finetune_cost, 3),
                pretrain_minutes=0.0 if max_steps else round(pretrain_s / 60, 3))
    plan.pretrain_steps, plan.pretrain_pool = pooled_steps(
        pretrain_s, images_per_s, plan.pretrain_batch, 1.0, render_s, cores)
    plan.finetune_steps, plan.finetune_pool = pooled_steps(
        FINETUNE_SHARE * train_s, images_per_s / finetune_cost, plan.finetune_batch,
        finetune_share, render_s, cores)
    if max_steps:
        plan.pretrain_steps = plan.finetune_steps = max_steps
        plan.pretrain_pool = pool_size(max_steps, plan.pretrain_batch, 1.0)
        plan.finetune_pool = pool_size(max_steps, plan.finetune_batch, finetune_share)
    return plan


def replan_finetune(planned: int, batch: int, seconds_left: float, images_per_s: float,
                    synthetic_share: float = 0.0, render_s: float = 0.0, cores: int = 1
                    ) -> tuple[int, int]:
    """(steps, pool) of finetuning that fill the time left after pretraining at the rate timed
    on the finetuning data, rendering its pool included; at least a quarter of the planned
    steps."""
    steps, _ = pooled_steps(seconds_left, images_per_s, batch, synthetic_share, render_s, cores)
    steps = max(1, planned // 4, steps)
    return steps, pool_size(steps, batch, synthetic_share)
