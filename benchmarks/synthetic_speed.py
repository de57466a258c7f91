"""Synthetic captcha rendering speed (images/s) with 1 worker and with all workers.

    python benchmarks/synthetic_speed.py [--n 2000] [--style real] [--width 200 --height 50]

Rendering only (no PNG encoding, no disk): what on-the-fly training data costs.
"""

from __future__ import annotations

import argparse
import os
import time
from multiprocessing import get_context

from captcha_ml.data.synthetic import SyntheticSpec, preset, render


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images per measurement")
    parser.add_argument("--style", default="real")
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--height", type=int, default=50)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="'all workers'")
    args = parser.parse_args()
    spec = preset(args.style, width=args.width, height=args.height)
    render(spec, 0, 0)  # load fonts once before timing
    for workers in sorted({1, args.workers}):
        rate = images_per_s(spec, args.n, workers)
        print(f"style={args.style} {args.width}x{args.height} workers={workers}: {rate:.0f} images/s")


if __name__ == "__main__":
    main()
