"""Test-split accuracy and wall time of the default recipe, its ablations and the label curve.

    python benchmarks/accuracy.py --seeds 0 1 2 --scratch-seeds 0    # the README's main table
    python benchmarks/accuracy.py --seeds 0 1 2 --labels 50 100 200 --finetune-steps 500 \
        --out benchmarks/results/curve.json                               # label-count curve
    python benchmarks/accuracy.py --seeds 0 1 2 --labels 100 --finetune-steps 500 \
        --scratch-seeds --finetune-set train.ema_decay=0.99               # a finetuning variant
    python benchmarks/accuracy.py --styles captcha --seeds 0 --labels     # zero-shot per style
    python benchmarks/accuracy.py --styles experiments/styles/real_twins.yaml --seeds 0 \
        --scratch-seeds                                                   # a style ablation

Recipes (all from experiments/, overridden only where said):
  pretrain+finetune  experiments/pretrain.yaml, then experiments/finetune.yaml from its best.pt
  finetune only      experiments/finetune.yaml from scratch (no init), same steps, its own
                     peak learning rate (--scratch-lr, default 1e-3), real images only
                     (data.synthetic_share=0)
  pretrain only      the pretrained model reading the real test split zero-shot
The label curve finetunes on the first N images of a seeded shuffle of train.csv, with the same
number of optimizer steps for every N. Model selection uses valid.csv; test.csv is read only by
the final evaluation. Results go to benchmarks/results/accuracy.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import statistics
import time
from pathlib import Path


from captcha_ml import config, engine
from machine import describe
from captcha_ml.data import synthetic

ROOT = Path(__file__).resolve().parents[1]


def subset(train_csv: Path, n: int | None, seed: int, out: Path) -> Path:
    """The first n rows of a seeded shuffle of the manifest (all rows when n is None)."""
    with open(train_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if n is None:
        return train_csv
    random.Random(seed).shuffle(rows)
    path = out / f"train_{n}_seed{seed}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label"])
        w.writeheader()
        w.writerows(rows[:n])
    return path


def run_stage(name: str, overrides: list[str], work: Path, uri: str) -> tuple[dict, float]:
    cfg = config.load(ROOT / "experiments" / f"{name}.yaml",
                      [f"tracking.tracking_uri={uri}", "tracking.experiment=benchmark_accuracy",
                       "tracking.log_model=false", *overrides])
    start = time.perf_counter()
    result = engine.train(cfg)
    return result, time.perf_counter() - start


def pretrain_key(overrides: list[str]) -> str:
    """What decides the pretrained model: the config, the overrides and the images the
    generator draws (a digest of a few renders, so edits that keep the images keep the key)."""
    cfg = config.load(ROOT / "experiments" / "pretrain.yaml", overrides)
    spec = synthetic.spec_from_config(cfg.data)
    digest = hashlib.sha256()
    for i in range(16):
        digest.update(synthetic.render(spec, "cache-key", i)[0].tobytes())
    return "\n".join([(ROOT / "experiments" / "pretrain.yaml").read_text(), *overrides,
                      digest.hexdigest()])


def pretrain(seed: int, style: str, work: Path, uri: str, recipe_overrides: list[str]
             ) -> tuple[dict, float]:
    """The pretrained model of (seed, style), reused from an earlier run in the same --work
    folder when experiments/pretrain.yaml, the overrides and the synthetic generator are
    unchanged (its wall time is the one measured then)."""
    overrides = [*recipe_overrides, f"train.seed={seed}", f"data.style={style}",
                 f"train.output_dir={work / 'pretrain'}"]
    recipe = pretrain_key(overrides)
    cache = work / "pretrain_result.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved["recipe"] == recipe and Path(saved["result"]["best_checkpoint"]).is_file():
            print(f"reusing {saved['result']['best_checkpoint']} "
                  f"({saved['seconds'] / 60:.1f} min when trained)", flush=True)
            return saved["result"], saved["seconds"]
    result, seconds = run_stage("pretrain", overrides, work, uri)
    keep = {k: v for k, v in result.items() if isinstance(v, (str, int, float, type(None)))}
    cache.write_text(json.dumps({"recipe": recipe, "result": keep, "seconds": seconds}))
    return result, seconds


def test_metrics(checkpoint: str, test_csv: Path, uri: str) -> dict:
    cfg = config.load(ROOT / "experiments" / "evaluate.yaml",
                      [f"tracking.tracking_uri={uri}", "tracking.experiment=benchmark_accuracy"])
    return engine.evaluate_model(cfg, checkpoint, str(test_csv), log=False)["metrics"]


def one_seed(seed: int, labels: list[str], style: str, args, uri: str) -> list[dict]:
    work = args.work / f"{Path(style).stem}_seed{seed}"  # a preset name or a style YAML
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    pre, pre_time = pretrain(seed, style, work, uri, args.overrides)
    zero = test_metrics(pre["best_checkpoint"], args.splits / "test.csv", uri)
    zero_valid = test_metrics(pre["best_checkpoint"], args.splits / "valid.csv", uri)
    rows.append({"recipe": "pretrain only", "style": style, "labels": 0, "seed": seed,
                 "minutes": pre_time / 60, "valid_seq_acc": zero_valid["seq_acc"], **zero})
    for n in labels:
        count = None if n == "all" else int(n)
        train_csv = subset(args.splits / "train.csv", count, seed, work)
        data = [*args.overrides, f"data.train={train_csv}",
                f"data.valid={args.splits / 'valid.csv'}", f"train.seed={seed}",
                f"train.max_steps={args.finetune_steps}",
                # The same number of validations for every N (not one per epoch of N images).
                f"train.eval_every={-(-args.finetune_steps // args.evals)}",
                f"data.style={style}",  # what data.synthetic_share mixes in
                *args.finetune_overrides]
        for recipe, init in (("pretrain+finetune", pre["best_checkpoint"]), ("finetune only", "")):
            if recipe == "finetune only" and seed not in args.scratch_seeds:
                continue
            out = work / f"{recipe.replace(' ', '_').replace('+', '_')}_{n}"
            # From scratch, the network has everything to learn: it gets its own learning rate,
            # and sees real images only (synthetic ones would be pretraining by another name).
            lr = [] if init else [f"train.lr={args.scratch_lr}", "data.synthetic_share=0"]
            ft, ft_time = run_stage("finetune", data + lr + [f"train.init_from={init}",
                                                             f"train.output_dir={out}"], work, uri)
            minutes = (ft_time + (pre_time if init else 0)) / 60
            rows.append({"recipe": recipe, "style": style, "labels": count or 520, "seed": seed,
                         "minutes": minutes, **test_metrics(ft["best_checkpoint"],
                                                            args.splits / "test.csv", uri)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["style"], r["labels"]), []).append(r)
    lines = ["| recipe | style | real labels | seeds | test seq acc mean (worst) | char acc | CER "
             "| minutes per seed |", "|---|---|---|---|---|---|---|---|"]
    for (recipe, style, n), rs in groups.items():
        acc = [r["seq_acc"] for r in rs]
        lines.append(f"| {recipe} | {style} | {n} | {len(rs)} | {statistics.mean(acc):.4f} "
                     f"({min(acc):.4f}) | {statistics.mean(r['char_acc'] for r in rs):.4f} | "
                     f"{statistics.mean(r['cer'] for r in rs):.4f} | "
                     f"{statistics.mean(r['minutes'] for r in rs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--labels", nargs="*", default=["all"],
                   help="real training images: N or all; none: pretrain and zero-shot only")
    p.add_argument("--styles", nargs="+", default=["real"])
    p.add_argument("--splits", type=Path, default=ROOT / "data" / "splits")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "benchmark_accuracy")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="same for every label count (default: the recipe's own steps on all of "
                        "train.csv, epochs x batches)")
    p.add_argument("--scratch-seeds", type=int, nargs="*", default=None,
                   help="seeds that also run the finetune-only baseline (default: all seeds)")
    p.add_argument("--scratch-lr", type=float, default=1e-3,
                   help="peak learning rate of the finetune-only baseline (the recipe's own lr "
                        "is for starting from a pretrained model)")
    p.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config overrides for both stages, e.g. model.depth=layer2 data.height=40")
    p.add_argument("--finetune-set", nargs="*", default=[], dest="finetune_overrides",
                   metavar="KEY=VALUE", help="config overrides for the finetune stages only "
                   "(the pretrained model is reused), e.g. train.lr=3e-4")
    p.add_argument("--evals", type=int, default=40,
                   help="validations per finetune run (default 40: once per epoch of the recipe)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy.json")
    args = p.parse_args()
    if args.evals < 1:
        p.error("--evals must be at least 1")
    if args.scratch_seeds is None:
        args.scratch_seeds = args.seeds
    if args.finetune_steps is None:
        fine = config.load(ROOT / "experiments" / "finetune.yaml",
                           [*args.overrides, *args.finetune_overrides])
        with open(args.splits / "train.csv", newline="") as f:
            n_train = sum(1 for _ in csv.DictReader(f))
        share = fine.data.synthetic_share  # an epoch holds that share of synthetic images more
        n_epoch = n_train + round(n_train * share / (1 - share))
        args.finetune_steps = fine.train.epochs * -(-n_epoch // fine.train.batch_size)
    uri = f"sqlite:///{args.work / 'mlflow.db'}"
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [r for style in args.styles for seed in args.seeds
            for r in one_seed(seed, args.labels, style, args, uri)]
    machine = describe()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"\nmachine: {machine}\n" + table(rows))


if __name__ == "__main__":
    main()
