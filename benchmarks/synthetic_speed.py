"""Synthetic captcha rendering speed (images/s) with 1 worker and with all workers.

    python benchmarks/synthetic_speed.py [--n 2000] [--style real] [--width 200 --height 50]
    python benchmarks/synthetic_speed.py --config experiments/pretrain.yaml [--set train.channels_last=false]

Rendering only (no PNG encoding, no disk): what on-the-fly training data costs. With
--config, also the rate at which that config's training step consumes images (forward,
backward and AdamW on an in-memory batch) and the ratio of the two: on-the-fly generation
must stay well above consumption (target: 2x) so it never holds training back.
"""

from __future__ import annotations

import argparse
import os
import time
from multiprocessing import get_context

import torch

from captcha_ml import config as config_lib
from captcha_ml import engine
from captcha_ml.data.synthetic import SyntheticSpec, preset, render
from captcha_ml.model import channels_last


def _render_range(args: tuple[SyntheticSpec, int, int]) -> int:
    spec, start, stop = args
    for i in range(start, stop):
        render(spec, 0, i)
    return stop - start


def images_per_s(spec: SyntheticSpec, n: int, workers: int) -> float:
    """Render n images over ``workers`` processes; pool start-up is included."""
    step = max(1, n // (workers * 8))
    jobs = [(spec, k, min(k + step, n)) for k in range(0, n, step)]
    start = time.perf_counter()
    if workers == 1:
        done = sum(map(_render_range, jobs))
    else:
        with get_context().Pool(workers) as pool:
            done = sum(pool.imap_unordered(_render_range, jobs))
    return done / (time.perf_counter() - start)


def training_images_per_s(cfg: config_lib.Config, steps: int = 8) -> float:
    """Images/s consumed by optimizer steps of cfg's model on one in-memory batch."""
    data = engine.build_data(cfg)
    model = engine.build_model(cfg.model, data.charset.num_classes, cfg.data.channels).train()
    model.freeze(cfg.train.freeze)  # train.freeze: no backward below the frozen stages
    if cfg.train.channels_last:  # as the training loop does
        model = channels_last(model)
    opt = engine.make_optimizer(model, cfg)
    batch = engine.collate([data.train[i] for i in range(cfg.train.batch_size)], data.charset)
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            start = time.perf_counter()
        loss = engine.ctc_loss(model(batch["images"]), batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images per measurement")
    parser.add_argument("--style", default="real")
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--height", type=int, default=50)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="'all workers'")
    parser.add_argument("--config", help="training config whose consumption rate to compare")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="overrides of --config, e.g. train.channels_last=false")
    args = parser.parse_args()
    cfg = config_lib.load(args.config, args.overrides) if args.config else None
    if cfg:
        args.style, args.width, args.height = cfg.data.style, cfg.data.width, cfg.data.height
    spec = preset(args.style, width=args.width, height=args.height)
    render(spec, 0, 0)  # load fonts once before timing
    rates = {}
    for workers in sorted({1, args.workers}):
        rates[workers] = images_per_s(spec, args.n, workers)
        print(f"style={args.style} {args.width}x{args.height} workers={workers}: "
              f"{rates[workers]:.0f} images/s")
    if cfg:
        torch.set_num_threads(os.cpu_count() or 1)
        consumed = training_images_per_s(cfg)
        print(f"training step ({args.config}, batch {cfg.train.batch_size}, "
              f"{torch.get_num_threads()} threads): {consumed:.0f} images/s")
        for workers, rate in rates.items():
            print(f"generation / consumption, {workers} worker(s): {rate / consumed:.1f}x")


if __name__ == "__main__":
    main()
