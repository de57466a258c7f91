"""The machine a benchmark ran on, with a speed figure, so wall times from different machines
can be compared: training time scales with the float32 matrix-product rate measured here (the
development VMs of this project have measured 140 to 510 GFLOP/s on their 2 cores)."""

from __future__ import annotations

import platform
import time

import torch


def matmul_gflops(n: int = 1024, trials: int = 5, reps: int = 10) -> float:
    """Best of several timings of reps n x n float32 matrix products, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * reps / best / 1e9


def describe() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"float32 matmul {matmul_gflops():.0f} GFLOP/s")
