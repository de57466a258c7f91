"""Start a captcha-ml command under `accelerate launch` with the right flags for this machine.

`accelerate launch --cpu --num_processes 2` runs ONE process, and `--multi_gpu` without a GPU
starts independent rank-0 runs (DESIGN.md, traps); this module hides both.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from .config import ConfigError


def accelerate_command(num_processes: int, args: list[str], mixed_precision: str = "no",
                       num_machines: int = 1) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch ... -m captcha_ml ARGS` argv and the environment to run it with."""
    env, on_gpu = dict(os.environ), torch.cuda.is_available()
    gpus, per_machine = torch.cuda.device_count(), -(-num_processes // num_machines)
    if on_gpu and per_machine > gpus:
        # Processes beyond the GPUs fail deep inside, after the run started (seen on one H200:
        # rank 1 of 2 asked for CUDA device 1, "invalid device ordinal", at its first barrier).
        raise ConfigError(
            f"--num-processes {num_processes} needs {per_machine} GPUs on each of "
            f"{num_machines} machine(s); this one has {gpus}. Use --num-processes {gpus}, or "
            "CPU processes with CUDA_VISIBLE_DEVICES= (empty) set.")
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--num_processes", str(num_processes), "--num_machines", str(num_machines),
           "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    if num_processes > 1 or num_machines > 1:
        cmd.append("--multi_gpu")
        if not on_gpu:
            env["ACCELERATE_USE_CPU"] = "true"  # real CPU processes over gloo
    elif not on_gpu:
        cmd.append("--cpu")
    return cmd + ["-m", "captcha_ml", *args], env


def run(num_processes: int, args: list[str], mixed_precision: str = "no") -> int:
    """Run a captcha-ml command directly (one process) or through accelerate launch."""
    if num_processes <= 1:
        cmd, env = [sys.executable, "-m", "captcha_ml", *args], dict(os.environ)
    else:
        cmd, env = accelerate_command(num_processes, args, mixed_precision)
    return subprocess.call(cmd, env=env)
