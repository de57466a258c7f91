"""How far `captcha-ml fit`'s finetuning is from what its budget allows: the same finetuning
with unlimited real images of the style.

    python benchmarks/fit_styles.py --work W --styles wheezy      # first: the fit itself
    nice -n 10 python benchmarks/fit_ceiling.py --work W --styles wheezy

For each development style that `fit_styles.py` fitted in --work (its `fit/<style>/`: the
resolved fit.yaml and the pretrained model), finetuning runs again from the same pretrained
model with the same input, schedule, precision, steps and time limit, but on --oracle-images new
images from the style's own generator (the ground truth fit has to guess from 500 examples)
instead of the 350-image train part and its half of synthetic captchas; no augmentation, since
no image comes round often. Then both readers read `fit_styles.py`'s holdout. The gap is what
more, or better matched, data could buy in this budget. Where the oracle itself stays below
0.98, the training compute (model and minutes), not the data, keeps fit from the target on this
machine. `v2` has no generator and is not offered; the others' are `fit_styles.py`'s.

Prints: style, oracle images, finetuning steps run (fit's / the oracle's, of the steps fit
planned: the time limit can stop either sooner) and minutes, holdout seq acc of fit's reader
and of the oracle's, the oracle's char acc; then the misreads of both, as `fit_styles.py`
prints them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from captcha_ml import checkpoint, engine, report
from captcha_ml.data import synthetic
from fit_styles import (benchmark_fit, enter_work, generated, make_data, misread_line,
                        read_holdout, refit_arguments, styles)


def oracle_folder(name: str, n: int, folder: Path, seed: str) -> Path:
    """n new labeled images from the style's own generator (all cores for captcha_ml's)."""
    if name in styles():
        return synthetic.generate(folder, n, styles()[name], seed=seed).parent
    made = make_data(name, n, folder, seed)[1]
    if made is None:
        raise SystemExit(f"{name}'s generator is not installed (fit_styles.py says how)")
    return made


def ceiling(name: str, args: argparse.Namespace) -> tuple[list, list[str]]:
    fitted, fine, fit_reader, holdout = benchmark_fit(args.work, name, args.holdout, args.seed)
    fit_held = read_holdout(str(fit_reader), holdout)
    # One folder per count: a folder holds every image it was ever given, and training reads
    # them all (the first n of a larger count's images are the same: one seed, by index).
    oracle = oracle_folder(name, args.oracle_images,
                           args.work / "oracle" / f"{name}-{args.oracle_images}",
                           f"oracle{args.seed}/{name}")
    d = fine.data
    d.train, d.synthetic_share, d.synthetic_pool, d.glyphs = str(oracle), 0.0, 0, ""
    d.augment, d.augment_local, d.augment_lines = False, False, 0.0
    fine.train.output_dir = str(args.work / "ceiling" / f"{name}-{args.oracle_images}")
    fine.train.init_from = str(fitted / "pretrain" / "best.pt")
    fine.tracking.log_model = False
    start = time.perf_counter()
    result = engine.train(fine)
    minutes = (time.perf_counter() - start) / 60
    held = read_holdout(result["best_checkpoint"], holdout)
    fit_ran = checkpoint.load_payload(fit_reader)["step"]  # select: last, so the steps run
    row = [name, args.oracle_images, f"{fit_ran} / {result['steps']} of {fine.train.max_steps}",
           f"{fine.train.max_minutes:.1f} / {minutes:.1f}",
           f"{fit_held['metrics']['seq_acc']:.4f}", f"{held['metrics']['seq_acc']:.4f}",
           f"{held['metrics']['char_acc']:.4f}"]
    return row, [misread_line(f"{name} fit", fit_held), misread_line(f"{name} oracle", held)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    refit_arguments(ap)
    ap.add_argument("--styles", nargs="*", default=["wheezy", "alnum62", "lower4to7"],
                    choices=generated())
    ap.add_argument("--oracle-images", type=int, default=60_000)
    args = ap.parse_args()
    enter_work(args)
    rows, misreads = [], []
    for name in args.styles:
        row, lines = ceiling(name, args)
        rows.append(row)
        misreads += lines
        print(report.table(rows, ["style", "oracle images",
                                  "finetune steps run (fit / oracle of planned)",
                                  "finetune minutes (fit limit / oracle)", "fit holdout seq acc",
                                  "oracle holdout seq acc", "oracle char acc"]), flush=True)
        print("\n".join(misreads), flush=True)


if __name__ == "__main__":
    main()
