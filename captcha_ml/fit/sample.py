"""The labeled sample: read and check it (charset, lengths, sizes, colour, label noise), and
split it into train / valid / test."""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import real
from ..data.real import DataError
from ..data.transforms import load_image

MIN_IMAGES = 60  # 10 valid + 10 test + 40 train: below that neither training nor the test says much
RARE_COUNT = 5
SPLIT_FRAC, SPLIT_MIN = 0.15, 10


@dataclass
class Inspection:
    """What the labeled sample looks like, and the choices that follow from it."""

    path: str
    samples: list[tuple[str, str]]  # usable (path, label); labels normalised
    case_sensitive: bool
    charset: str
    min_len: int
    max_len: int
    size: tuple[int, int]  # (width, height) all images are treated as (median)
    sizes: dict[str, int]
    channels: int
    rare: dict[str, int]
    conflicts: list[dict[str, Any]]
    skipped: list[tuple[str, str]]
    mixed_case: bool = False
    notes: list[str] = field(default_factory=list)
    # Distinct images among the samples (copies of one image with one label count once: the
    # split keeps them together, so they fill one place in a part).
    distinct: int = 0

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples")
        return {"images": len(self.samples), **d}


def _pixel_hash(img: Image.Image) -> str:
    rgb = img.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def _chroma(img: Image.Image) -> float:
    """Mean spread between the RGB channels (0 for grey images)."""
    if img.mode in ("L", "1", "I", "F", "LA"):
        return 0.0
    a = np.asarray(img.convert("RGB").resize((64, 24)), dtype=np.int16)
    return float((a.max(axis=2) - a.min(axis=2)).mean())


def inspect(path: str | Path, case_sensitive: bool = True, skip_bad: bool = False) -> Inspection:
    """Read and check the labeled sample; drop label-noise duplicates; derive charset, sizes."""
    data = real.read_labeled(path, skip_bad=skip_bad)
    rows = [(p, label if case_sensitive else label.lower()) for p, label in data.samples]
    groups: dict[str, list[tuple[str, str]]] = {}
    sizes: Counter = Counter()
    chroma = []
    for p, label in rows:
        img = load_image(p)
        sizes[img.size] += 1
        chroma.append(_chroma(img))
        groups.setdefault(_pixel_hash(img), []).append((p, label))
    conflicts = [{"paths": [p for p, _ in g], "labels": sorted({lab for _, lab in g})}
                 for g in groups.values() if len({lab for _, lab in g}) > 1]
    noisy = {p for c in conflicts for p in c["paths"]}
    samples = [(p, lab) for p, lab in rows if p not in noisy]
    distinct = len(groups) - len(conflicts)
    if distinct < MIN_IMAGES:
        copies = len(samples) - distinct
        raise DataError(f"{path}: {distinct} usable distinct labeled images ({len(noisy)} dropped "
                        f"as label noise, {len(data.skipped)} skipped"
                        + (f", {copies} more are copies of them" if copies else "")
                        + f"); fit needs at least {MIN_IMAGES} (valid {SPLIT_MIN} + test "
                        f"{SPLIT_MIN} + train 40): add labeled examples")
    counts = Counter("".join(lab for _, lab in samples))
    lengths = [len(lab) for _, lab in samples]
    width = round(statistics.median(w for (w, _), n in sizes.items() for _ in range(n)))
    height = round(statistics.median(h for (_, h), n in sizes.items() for _ in range(n)))
    return Inspection(
        str(path), samples, case_sensitive, "".join(sorted(counts)), min(lengths), max(lengths),
        (width, height), {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
        3 if statistics.median(chroma) > 8 else 1,
        {c: n for c, n in sorted(counts.items()) if n < RARE_COUNT}, conflicts, data.skipped,
        mixed_case=not case_sensitive and any(lab != lab.lower() for _, lab in data.samples),
        distinct=distinct)


def inspection_notes(insp: Inspection) -> list[str]:
    """The inspection as human-readable lines (warnings start with 'warning:')."""
    n = len(insp.samples)
    lens = (f"fixed {insp.min_len}" if insp.min_len == insp.max_len
            else f"{insp.min_len}..{insp.max_len}")
    notes = [f"images: {n} usable" + (f", {len(insp.skipped)} bad files skipped" if insp.skipped else ""),
             f"charset ({len(insp.charset)} symbols, "
             f"{'case-sensitive' if insp.case_sensitive else 'case-insensitive: labels lower-cased'}): "
             f"{insp.charset}",
             f"label length: {lens}",
             f"colour: {'RGB (channels 3)' if insp.channels == 3 else 'grey (channels 1)'}"]
    if len(insp.sizes) > 1:
        notes.append(f"sizes: {len(insp.sizes)} different ({', '.join(list(insp.sizes)[:4])}...); "
                     f"policy: treat all as the median size {insp.size[0]}x{insp.size[1]} "
                     "(every image is resized to the model input)")
    else:
        notes.append(f"size: all {insp.size[0]}x{insp.size[1]}")
    if insp.rare:
        notes.append(f"warning: characters seen fewer than {RARE_COUNT} times: "
                     + ", ".join(f"{c!r} x{k}" for c, k in insp.rare.items())
                     + " - the reader will be unreliable on them; label more examples with them")
    spaced = [lab for _, lab in insp.samples if any(c.isspace() for c in lab)]
    if spaced:
        notes.append(f"warning: spaces in {len(spaced)} of the labels (e.g. {spaced[0]!r}): the space "
                     "is a symbol of the charset then; if the file names are not the labels, "
                     "rename the files or give the labels in a manifest (path,label)")
    if insp.conflicts:
        dropped = sum(len(c["paths"]) for c in insp.conflicts)
        notes.append(f"warning: label noise: {len(insp.conflicts)} identical images carry "
                     f"different labels (e.g. {insp.conflicts[0]['labels']}); dropped all "
                     f"{dropped} copies from training and evaluation (see inspection.json)")
    return notes


def split_sizes(n: int) -> tuple[int, int]:
    """(valid, test): 15% each, at least 10 each."""
    part = max(SPLIT_MIN, round(SPLIT_FRAC * n))
    return part, part


def make_split(insp: Inspection, out: Path, seed: int = 0) -> dict[str, Path]:
    valid, test = split_sizes(insp.distinct or len(insp.samples))
    # By pixels, as inspect finds duplicates: a re-saved copy stays in its original's part.
    return real.split(insp.samples, out / "splits", seed=seed, test=test, valid=valid,
                      content=lambda p: _pixel_hash(load_image(p)))
