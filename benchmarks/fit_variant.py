"""One change to `captcha-ml fit`'s finetuning, measured: the same finetuning again from the
same pretrained model, with config overrides, and both readers on the style's holdout.

    python benchmarks/fit_styles.py --work W --styles wheezy      # first: the fit itself
    python benchmarks/fit_variant.py --work W --style wheezy --name frozen \\
        --set train.freeze=layer1 --same-time --set train.max_steps=7000
    python benchmarks/fit_variant.py --work W --style wheezy --name train-valid --train-valid
    python benchmarks/fit_variant.py --work W --style lower4to7 --name twins --style-set repeat=0.15

The fit's finetune section of `W/fit/<style>/fit.yaml` runs again from its pretrained model
(`W/fit/<style>/pretrain/best.pt`) with the overrides (`--set`, as `captcha-ml train`'s),
for the steps fit's finetuning ran (the default: a change in what a step does, compared
step for step) or, with `--same-time`, for fit's finetuning time limit (a change in what a
step costs: the steps shrink to the time, from a plan of 3x fit's steps or `--set
train.max_steps=N`; the schedule still anneals by then). `v2` has no holdout generator here.
`--train-valid` trains on the train and valid parts together (425 of 500 images instead of 350;
the test part stays out). `--style-set key=value` changes the fit's style file
(`W/fit/<style>/style.yaml`, keys as `SyntheticSpec`'s) for finetuning's synthetic images; the
pretrained model stays the one fit's style trained (where fit composed that half of its glyph
bank, `data.glyphs`, the variant renders it from the changed style instead). `--generator-half`
draws finetuning's synthetic half from the style's own generator instead (as many images as
fit's finetuning pool, rendered once into `W/oracle/` and read through `data.share_from`): what
a perfect likeness would be worth to the reader, with the same 350 real images, augmentation and
steps. Prints the steps and minutes, the holdout seq acc of fit's reader and of the variant's,
then both misread lines as `fit_styles.py` prints them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from captcha_ml import checkpoint, config, engine, report
from captcha_ml.data import real, synthetic
from captcha_ml.data.real import DataError
from fit_ceiling import oracle_folder
from fit_styles import (benchmark_fit, enter_work, generated, misread_line, read_holdout,
                        refit_arguments)


def variant(args: argparse.Namespace) -> tuple[list, list[str]]:
    name = args.style
    fitted, fine, fit_reader, holdout = benchmark_fit(args.work, name, args.holdout, args.seed)
    fit_ran = checkpoint.load_payload(fit_reader)["step"]  # select: last, so the steps run
    out = args.work / "variant" / f"{name}-{args.name}"
    out.mkdir(parents=True, exist_ok=True)
    t = fine.train
    t.output_dir, t.init_from = str(out), str(fitted / "pretrain" / "best.pt")
    t.fill_time, fine.tracking.log_model = False, False
    if args.same_time:  # the steps shrink to fit's time limit
        t.max_steps = 3 * fit_ran
    else:
        t.max_steps, t.max_minutes = fit_ran, 0.0
    if args.train_valid:
        rows = [r for part in ("train", "valid")
                for r in real.read_manifest(fitted / "splits" / f"{part}.csv").samples]
        fine.data.train = str(real.write_manifest(out / "train_valid.csv", rows))
    if args.style_set:  # rendered from the changed style, not composed of glyphs
        fine.data.style = str(changed_style(fitted / "style.yaml", args.style_set, out))
        fine.data.glyphs = ""
    if args.generator_half:
        fine.data.glyphs = ""
        n = fine.data.synthetic_pool
        fine.data.share_from = str(oracle_folder(name, n, args.work / "oracle" / f"{name}-{n}",
                                                 f"oracle{args.seed}/{name}"))
    fine.save(out / "finetune.yaml")
    fine = config.load(out / "finetune.yaml", args.set)  # what ran, overrides applied
    fine.save(out / "finetune.yaml")
    start = time.perf_counter()
    result = engine.train(fine)
    minutes = (time.perf_counter() - start) / 60
    fit_held = read_holdout(str(fit_reader), holdout)
    held = read_holdout(result["best_checkpoint"], holdout)
    changes = (args.set + [f"style {change}" for change in args.style_set]
               + ["--same-time"] * args.same_time + ["--train-valid"] * args.train_valid
               + ["--generator-half"] * args.generator_half)
    row = [name, args.name, " ".join(changes) or "-",
           f"{fit_ran} / {result['steps']}", f"{minutes:.1f}",
           f"{fit_held['metrics']['seq_acc']:.4f}", f"{held['metrics']['seq_acc']:.4f}"]
    return row, [misread_line(f"{name} fit", fit_held),
                 misread_line(f"{name} {args.name}", held)]


def changed_style(path: Path, changes: list[str], out: Path) -> Path:
    """A copy of a style file in ``out`` with ``key=value`` changes (values read as YAML),
    checked by loading it as the drawer would."""
    style = yaml.safe_load(path.read_text())
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep:
            raise SystemExit(f"--style-set {change!r}: use key=value, e.g. repeat=0.15")
        style[key.strip()] = yaml.safe_load(value)
    changed = out / "style.yaml"
    changed.write_text(yaml.safe_dump(style, sort_keys=False))
    try:
        synthetic.SyntheticSpec(**synthetic.load_style(changed))
    except (DataError, TypeError) as e:
        raise SystemExit(f"--style-set: {e}") from None
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    refit_arguments(ap)
    ap.add_argument("--style", required=True, choices=generated())
    ap.add_argument("--name", required=True, help="The variant's folder: WORK/variant/STYLE-NAME.")
    ap.add_argument("--set", action="append", default=[],
                    help="A finetune config override, e.g. train.lr=2e-3 (repeatable).")
    ap.add_argument("--style-set", action="append", default=[],
                    help="A change to the fit's style file for finetuning's synthetic images, "
                         "e.g. repeat=0.15 (repeatable).")
    ap.add_argument("--same-time", action="store_true",
                    help="Run for fit's finetuning time limit, not for its steps.")
    ap.add_argument("--generator-half", action="store_true",
                    help="Finetuning's synthetic half from the style's own generator.")
    ap.add_argument("--train-valid", action="store_true",
                    help="Finetune on the train and valid parts together.")
    args = ap.parse_args()
    enter_work(args)
    row, lines = variant(args)
    print(report.table([row], ["style", "variant", "changes", "finetune steps (fit / variant)",
                               "variant minutes", "fit holdout seq acc",
                               "variant holdout seq acc"]), flush=True)
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
