"""Sequence metrics as plain functions over lists of predicted and true texts."""

from __future__ import annotations

from collections import Counter
from typing import Sequence


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def summary(preds: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """seq_acc (exact match), char_acc (position-wise over the longer text), cer (edits / chars)."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
    if not targets:
        return {"seq_acc": 0.0, "char_acc": 0.0, "cer": 0.0, "count": 0.0}
    exact = sum(p == t for p, t in zip(preds, targets))
    same = sum(sum(a == b for a, b in zip(p, t)) for p, t in zip(preds, targets))
    slots = sum(max(len(p), len(t)) for p, t in zip(preds, targets))
    edits = sum(edit_distance(p, t) for p, t in zip(preds, targets))
    chars = sum(len(t) for t in targets)
    return {"seq_acc": exact / len(targets), "char_acc": same / max(slots, 1),
            "cer": edits / max(chars, 1), "count": float(len(targets))}


def per_position_accuracy(preds: Sequence[str], targets: Sequence[str]) -> list[float]:
    """Accuracy at each position of the true text (position i counts texts longer than i)."""
    hits: Counter[int] = Counter()
    seen: Counter[int] = Counter()
    for p, t in zip(preds, targets):
        for i, c in enumerate(t):
            seen[i] += 1
            hits[i] += i < len(p) and p[i] == c
    return [hits[i] / seen[i] for i in range(len(seen))]


def confusions(preds: Sequence[str], targets: Sequence[str]) -> Counter[tuple[str, str]]:
    """(true, predicted) symbol pairs at the same position, for equal-length misreads."""
    pairs: Counter[tuple[str, str]] = Counter()
    for p, t in zip(preds, targets):
        if p != t and len(p) == len(t):
            pairs.update((a, b) for a, b in zip(t, p) if a != b)
    return pairs
