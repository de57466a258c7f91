"""How alike to a style's sample the universal model finds several synthetic sets: the distance
`captcha-ml fit` tunes its style's noise by (`captcha_ml/fit/likeness.py`).

    python benchmarks/likeness.py --styles wheezy alnum62 lower4to7 ink

For each style, N labeled images of it (as `fit_styles.py` makes them) are the sample; then
the Fréchet distance of the universal model's layer2 features, sample against: N more images
of the style's own generator (another seed: how near the distance gets, the floor), the style
fit derives from the sample, that style tuned (what fit draws), the derived style with the
other glyph shape (stretched to the line or at font proportions, calibrated alike: fit's
pixel measures choose one, the likeness step takes the other where it is nearer by
`likeness.SHAPE_MARGIN`), and the universal mixture (the universal model's training data).
Lower is nearer.
Also prints what tuning kept and how long it took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fit_styles import CASE_INSENSITIVE, make_data

from captcha_ml import checkpoint
from captcha_ml.data import synthetic, universal
from captcha_ml.data.real import image_files
from captcha_ml.data.transforms import load_image
from captcha_ml.fit import derive_style, inspect, likeness
from captcha_ml.fit.style import other_shape, sample_stats
from captcha_ml.fit.configs import UNIVERSAL_WEIGHTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--styles", nargs="*", default=["wheezy", "alnum62", "lower4to7", "ink"])
    ap.add_argument("--images", type=int, default=likeness.IMAGES)
    ap.add_argument("--work", type=Path, default=Path("/tmp/likeness"))
    args = ap.parse_args()
    model, _, pre, _ = checkpoint.load(UNIVERSAL_WEIGHTS)
    n = args.images
    cols = ("own generator", "derived", "tuned", "other glyph shape", "universal mixture")
    print("style      " + "  ".join(f"{c:>17s}" for c in cols) + "  tuning kept (seconds)")
    for name in args.styles:
        _, sample = make_data(name, n, args.work / name / "sample", f"likeness/{name}")
        _, other = make_data(name, n, args.work / name / "other", f"likeness-other/{name}")
        if sample is None:
            continue
        insp = inspect(sample, case_sensitive=name not in CASE_INSENSITIVE)
        stats = likeness.FeatureStats(model, pre.channels, insp.size[0] / insp.size[1])
        real = stats.of([load_image(p) for p, _ in insp.samples[:n]])
        measured = sample_stats(insp)
        spec, _ = derive_style(insp, stats=measured)
        reshaped = other_shape(spec, measured)
        start = time.perf_counter()
        tuned, found, _ = likeness.tune_style(insp, spec, UNIVERSAL_WEIGHTS, images=n,
                                              other_shape=lambda: reshaped)
        seconds = time.perf_counter() - start

        def rendered(s):
            return [synthetic.render(s, "likeness-bench", i)[0] for i in range(n)]

        sets = [[load_image(p) for p in image_files(other)[:n]], rendered(spec),
                rendered(tuned), rendered(reshaped),
                rendered(universal.mixture(spec.charset, spec.min_len, spec.max_len))]
        dist = [stats.distance(real, stats.of(s)) for s in sets]
        kept = ", ".join(f"{k} {v}" for k, v in found.summary()["kept"].items()) or "nothing"
        print(f"{name:10s} " + "  ".join(f"{d:17.2f}" for d in dist) + f"  {kept} ({seconds:.0f})",
              flush=True)


if __name__ == "__main__":
    main()
