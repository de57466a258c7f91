"""How near a fit's synthetic sets are to its sample, as `captcha-ml fit`'s likeness step
measures it (`captcha_ml/fit/likeness.py`).

    python benchmarks/fit_styles.py --work W --styles kaptcha        # first: the fit itself
    python benchmarks/likeness.py --work W --style kaptcha \\
        --variant 'plain=curves=0;specks=[0,0];dots=0' --variant 'nofrag=fragments=[0,0]'

Trains the probe reader as fit does (`configs.probe_config` on the fit's `fit.yaml`: the
universal model finetuned on the fit's real train part alone, into `W/likeness/<style>/`),
then prints the Fréchet distance between its features on the fit's real valid part and on N
images each of: the style's holdout (its own generator, another seed: how near a set gets),
the fit's style, each `--variant` (the fit's style with `key=value` changes, `;`-separated,
as `SyntheticSpec`'s keys), and the universal mixture (the universal model's training data).
Lower is nearer. `fit_variant.py --style-set` measures what a variant is worth to the reader.
"""

from __future__ import annotations

import argparse
import random
import time

import yaml
from fit_styles import benchmark_fit, enter_work, generated, refit_arguments

from captcha_ml import checkpoint, engine
from captcha_ml.data import synthetic, universal
from captcha_ml.data.real import DataError, image_files, read_manifest
from captcha_ml.data.transforms import load_image
from captcha_ml.fit import likeness
from captcha_ml.fit.configs import PROBE_STEPS, probe_config, read_fit_yaml, universal_start


def changed(style: dict, changes: str) -> synthetic.SyntheticSpec:
    """The style with ``key=value;key=value`` changes (values read as YAML)."""
    fields = dict(style)
    for change in filter(None, changes.split(";")):
        key, sep, value = change.partition("=")
        if not sep:
            raise SystemExit(f"--variant: {change!r} is not key=value")
        fields[key.strip()] = yaml.safe_load(value)
    try:
        return synthetic.SyntheticSpec(**synthetic._tuples(fields))
    except (DataError, TypeError) as e:
        raise SystemExit(f"--variant {changes!r}: {e}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    refit_arguments(ap)
    ap.add_argument("--style", required=True, choices=generated())
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=CHANGES",
                    help="A changed style to measure too, e.g. 'clean=curves=0;specks=[0,0]'.")
    ap.add_argument("--images", type=int, default=likeness.IMAGES)
    ap.add_argument("--steps", type=int, default=PROBE_STEPS, help="The probe's steps.")
    args = ap.parse_args()
    enter_work(args)
    fitted, _, _, holdout = benchmark_fit(args.work, args.style, args.holdout, args.seed)
    pre, fine = read_fit_yaml(fitted / "fit.yaml")
    cfg = probe_config(pre, fine, args.work / "likeness" / args.style, universal_start(),
                       args.steps)
    start = time.perf_counter()
    probe = engine.train(cfg)
    print(f"probe: {args.steps} steps at {cfg.data.height}x{cfg.data.width} in "
          f"{time.perf_counter() - start:.0f} s; it reads the real valid part at seq_acc "
          f"{probe['val'].get('seq_acc', 0):.4f}", flush=True)
    model, _, pre_reader, _ = checkpoint.load(probe["best_checkpoint"])
    stats = likeness.FeatureStats(model, pre_reader)
    valid = read_manifest(fitted / "splits" / "valid.csv").samples
    real = stats.of([load_image(p) for p, _ in valid])
    style = synthetic.load_style(fitted / "style.yaml")
    spec = synthetic.SyntheticSpec(**synthetic._tuples(style))
    n = args.images

    def rendered(s) -> list:
        return [synthetic.render(s, "likeness-bench", i)[0] for i in range(n)]

    held = random.Random(0).sample(image_files(holdout), min(n, len(image_files(holdout))))
    sets = {"own generator": lambda: [load_image(p) for p in held],
            "fit's style": lambda: rendered(spec)}
    for v in args.variant:
        name, _, changes = v.partition("=")
        sets[name] = lambda changes=changes: rendered(changed(style, changes))
    sets["universal mixture"] = lambda: rendered(
        universal.mixture(spec.charset, spec.min_len, spec.max_len))
    for name, images in sets.items():
        t = time.perf_counter()
        d = stats.distance(real, stats.of(images()))
        print(f"{name:20s} {d:8.2f}  ({time.perf_counter() - t:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
