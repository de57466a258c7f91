"""Font matching: where one bundled face clearly draws the sample's glyphs, the synthetic
images lean on it.

The style derived from the sample's pixels draws its glyphs in a mix of faces
(`style.FONT_MIX`), for generality. But look-alikes are told apart by details of a face, and
a mix teaches boundaries the sample's face does not have: alnum62 (DejaVu Serif, glyphs
stretched to the line) read its holdout at 0.955 after fit, misreading o as 0 18 times (never
0 as o), while the same finetuning on 60,000 images of its own generator read 0.992 without
one such misread (session 22, `benchmarks/fit_ceiling.py`).

How a face is matched: the universal model (fit's general starting model) reads the sample, and
images of the derived style drawn in each candidate face alone; every glyph it reads gives the
feature vector at its peak time step. A face's score is the mean cosine similarity of the
sample's glyphs to the mean vector of the same symbol in that face's images. Where the best
score leads the other faces' mean score by MATCH_LEAD, the best face draws MATCH_SHARE of the
glyphs and the mix the rest; otherwise the mix stays as it is (a face nobody bundled, or one
the derived style draws too unlike the sample to compare). The lead over the field, not over
the runner-up: a sample's face often has a near twin among the candidates (DejaVu Sans Mono
and Droid Sans Mono; DejaVu Serif and STIX), which shrinks the runner-up margin by chance.

A user who knows the faces their site draws in names them instead (`captcha-ml fit --fonts`):
`usable_fonts` checks that each file loads and holds a glyph for every symbol the style
draws, and `use_given_fonts` lets them draw MATCH_SHARE or more of the glyphs, as a matched face
would, in place of the comparison.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..data import synthetic
from ..data.real import DataError
from ..data.synthetic import SyntheticSpec
from ..data.transforms import load_image
from ..data.universal import UNIVERSAL_FONTS
from .sample import Inspection

# The best face's lead over the other 12 faces' mean score, 100 sample images and 60 renders per
# face (the fits of sessions 27-29, docs/fit.md, "Where `fit` stands"): styles drawn in one face
# with stretched glyphs: alnum62 (DejaVu Serif; seeds 0 and 1) 0.035 and 0.029, lower4to7
# (DejaVu Sans Mono) 0.028 and 0.031, captcha_images_v2 (the captcha library's Droid Sans Mono)
# 0.030, each ranked first every time; other drawers, whose derived style draws unlike them:
# wheezy (DejaVu Sans Bold and Serif, warped) 0.011-0.012, ink (STIX bold and DejaVu Sans Mono
# Bold) 0.010. A lead of 0.02 takes every clear match and leaves the rest to the mix. (The
# runner-up margin this replaced, 0.008, missed alnum62 at 0.0074 on seed 1, whose reader then
# read o as 0 24 times in 1000, and lower4to7 at 0.0066.)
MATCH_LEAD = 0.02
MATCH_SHARE = 0.5  # of the glyphs drawn in the matched face
MATCH_SAMPLES, MATCH_RENDERS = 100, 60  # sample images read; images rendered per face


@dataclass
class FontMatch:
    """Each candidate face's score (best first), and the face chosen ("" where none is)."""

    scores: list[tuple[str, float]]
    chosen: str = ""

    @property
    def lead(self) -> float:
        """The best score less the mean of the others'."""
        rest = [score for _, score in self.scores[1:]]
        return self.scores[0][1] - sum(rest) / len(rest) if rest else 0.0

    def summary(self) -> dict:
        return {"chosen": self.chosen or "none", "lead": round(self.lead, 4),
                "scores": {name: round(score, 4) for name, score in self.scores}}


def _glyphs(reader, images, labels: list[str], case_sensitive: bool
            ) -> list[tuple[str, np.ndarray]]:
    """(symbol, unit feature vector) at the peak step of every symbol the model reads there
    that the image's label holds (a read symbol absent from the label is skipped)."""
    import torch

    model, charset, pre = reader
    x = torch.stack([pre(img) for img in images])
    with torch.no_grad():
        feats = model.columns(x)  # (B, T, C)
        log_probs = model.classifier(feats).log_softmax(dim=-1)
    best = log_probs.argmax(dim=-1)
    out = []
    for b, label in enumerate(labels):
        label = label if case_sensitive else label.lower()
        path, t = best[b].tolist(), 0
        while t < len(path):
            k, start = path[t], t
            while t < len(path) and path[t] == k:
                t += 1
            sym = charset.symbols[k - 1] if k else ""
            if k and (sym if case_sensitive else sym.lower()) in label:
                peak = start + int(log_probs[b, start:t, k].argmax())
                v = feats[b, peak].numpy()
                out.append((sym if case_sensitive else sym.lower(), v / np.linalg.norm(v)))
    return out


def rank_fonts(insp: Inspection, spec: SyntheticSpec, model_path: str | Path, seed: int = 0,
               samples: int = MATCH_SAMPLES, renders: int = MATCH_RENDERS,
               faces: tuple[str, ...] = UNIVERSAL_FONTS) -> FontMatch:
    """Each face's score against the sample (see the module docstring), best first."""
    from .. import checkpoint

    model, charset, pre, _ = checkpoint.load(model_path)
    reader = (model.eval(), charset, pre)
    chosen = random.Random(seed).sample(insp.samples, min(samples, len(insp.samples)))
    real = _glyphs(reader, [load_image(p) for p, _ in chosen], [lab for _, lab in chosen],
                   insp.case_sensitive)
    scores = []
    for face in faces:
        drawn = replace(spec, fonts=(synthetic.font_path(face),))
        items = [synthetic.render(drawn, f"fonts{seed}", i) for i in range(renders)]
        protos: dict[str, list[np.ndarray]] = {}
        for sym, v in _glyphs(reader, [im for im, _ in items], [lab for _, lab in items],
                              insp.case_sensitive):
            protos.setdefault(sym, []).append(v)
        means = {s: np.mean(vs, axis=0) for s, vs in protos.items()}
        sims = [float(v @ means[s]) / float(np.linalg.norm(means[s])) for s, v in real
                if s in means]
        scores.append((face, float(np.mean(sims)) if sims else 0.0))
    scores.sort(key=lambda fs: -fs[1])
    return FontMatch(scores)


FONT_SUFFIXES = (".ttf", ".otf", ".ttc")


def given_fonts(paths: list[str | Path] | tuple[str | Path, ...]) -> tuple[Path, ...]:
    """The font files PATHS name (a file, or a folder searched for FONT_SUFFIXES at any depth,
    sorted), each once. Raises DataError, naming the path and the fix, for a path that does
    not exist or a folder without fonts: fit checks this before any work."""
    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            inside = sorted(f for f in path.rglob("*") if f.suffix.lower() in FONT_SUFFIXES
                            and f.is_file())
            if not inside:
                raise DataError(f"--fonts {given}: the folder holds no font files "
                                f"({', '.join(FONT_SUFFIXES)}); give font files or their folder")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"--fonts {given}: no such file or folder; give a font file "
                            f"({', '.join(FONT_SUFFIXES)}) or a folder of them")
    return tuple(dict.fromkeys(p.resolve() for p in found))


def usable_fonts(files: tuple[Path, ...], symbols: str) -> tuple[tuple[str, ...], list[str]]:
    """The FILES that load and hold a glyph for every one of SYMBOLS (as paths), and a line
    for each file skipped, saying why. Raises DataError where none is usable."""
    from fontTools.ttLib import TTFont
    from PIL import ImageFont

    usable, skipped = [], []
    for path in files:
        try:
            ImageFont.truetype(str(path), 20)
            with TTFont(str(path), fontNumber=0, lazy=True) as face:
                cmap = face.getBestCmap() or {}
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, and said so
            skipped.append(f"{path}: not a font PIL and fontTools can read "
                           f"({type(e).__name__}: {e})")
            continue
        missing = "".join(c for c in dict.fromkeys(symbols) if ord(c) not in cmap)
        if missing:
            skipped.append(f"{path}: no glyph for {missing!r}")
            continue
        usable.append(str(path))
    if not usable:
        raise DataError(f"--fonts: none of the {len(files)} font files given draws every symbol "
                        f"the synthetic captchas need ({symbols!r}): {'; '.join(skipped)}; give "
                        "faces that do, or leave --fonts out to use fit's own")
    return tuple(usable), [f"fonts: skipping {line}" for line in skipped]


def use_given_fonts(spec: SyntheticSpec, faces: tuple[str, ...]) -> tuple[SyntheticSpec, str]:
    """The spec with FACES drawing MATCH_SHARE or more of its glyphs (each face equally), the
    derived mix the rest, and the line fit prints."""
    spec, share = _lean_on(spec, faces)
    named = ", ".join(Path(f).name for f in faces[:6]) + (
        f" and {len(faces) - 6} more" if len(faces) > 6 else "")
    return spec, (f"fonts: yours ({named}) draw {share:.0%} of the glyphs, the mix the rest "
                  "(--fonts; no faces compared)")


def _lean_on(spec: SyntheticSpec, faces: tuple[str, ...]) -> tuple[SyntheticSpec, float]:
    """The spec with FACES (each equally) drawing MATCH_SHARE or more of its glyphs after the
    derived mix, and the share they draw (the mix may hold one of them too)."""
    mix = spec.font_files
    weight = max(1, round(len(mix) * MATCH_SHARE / (1 - MATCH_SHARE) / len(faces)))
    fonts = mix + tuple(face for face in faces for _ in range(weight))
    return replace(spec, fonts=fonts), sum(f in faces for f in fonts) / len(fonts)


def match_fonts(insp: Inspection, spec: SyntheticSpec, model_path: str | Path | None,
                seed: int = 0, lead: float = MATCH_LEAD, **kwargs
                ) -> tuple[SyntheticSpec, FontMatch | None, str]:
    """The spec with at least MATCH_SHARE of its glyphs in the matched face where one is
    clearly best (else as it was), the ranking (None without a model), and the line fit
    prints."""
    if not model_path or not Path(model_path).is_file():
        return spec, None, "fonts: not matched (no universal model to compare faces with)"
    found = rank_fonts(insp, spec, model_path, seed, **kwargs)
    (best, score), (second, runner_up) = found.scores[0], found.scores[1]
    compared = (f"{best} {score:.3f}, runner-up {second} {runner_up:.3f} (lead over the "
                f"{len(found.scores) - 1} others' mean {found.lead:.3f}; needs {lead:g})")
    if found.lead < lead:
        return spec, found, f"fonts: the mix kept, no face clearly matches the sample: {compared}"
    found.chosen = best
    spec, share = _lean_on(spec, (synthetic.font_path(best),))
    return spec, found, (
        f"fonts: {best} draws {share:.0%} of the glyphs, the mix the rest: it matches the "
        f"sample's glyphs best, {compared}")
