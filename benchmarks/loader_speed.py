"""Training images/s of a fit stage by how its images reach the model: synthetic images rendered
on the fly or from a pool, with or without a DataLoader worker process.

    python benchmarks/loader_speed.py OUT/fit.yaml                   # both stages
    python benchmarks/loader_speed.py OUT/fit.yaml --stage finetune --steps 40

Takes the pretrain / finetune configs of a fit.yaml (a `captcha-ml fit` run's resolved
settings: its data, input size, precision) and times `--steps` training steps of each variant
(fit.budget.config_images_per_s: the engine's own datasets and loader, real images loaded and
augmented, a 64-image pool). On a CPU a loader process competes with the training step's
threads for the cores; fit uses a pool and no worker there. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy

from captcha_ml import report
from captcha_ml.fit import budget, read_fit_yaml

VARIANTS = {  # name: (data.num_workers, pool)
    "on the fly, 1 worker": (1, False),
    "on the fly, no worker": (0, False),
    "pool, 1 worker": (1, True),
    "pool, no worker (fit on a CPU)": (0, True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fit_yaml")
    ap.add_argument("--stage", choices=["pretrain", "finetune", "both"], default="both")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    pre, fine = read_fit_yaml(args.fit_yaml)
    stages = {"pretrain": pre, "finetune": fine}
    rows = []
    for name, cfg in stages.items():
        if args.stage not in (name, "both"):
            continue
        if name == "finetune" and not cfg.data.synthetic_share:
            print("finetune: no synthetic share, the pool variants equal the others")
        for variant, (workers, pool) in VARIANTS.items():
            c = copy.deepcopy(cfg)
            c.data.num_workers = workers
            c.data.synthetic_pool = 64 if pool else 0
            rate = budget.config_images_per_s(c, args.steps)
            rows.append([name, f"{c.data.height}x{c.data.width}", c.train.batch_size,
                         c.train.mixed_precision, variant, f"{rate:.0f}"])
            print(report.table(rows, ["stage", "input", "batch", "precision", "images from",
                                      "training images/s"]), flush=True)


if __name__ == "__main__":
    main()
