"""What a finished fit's own evidence says to do next: the test's most frequent misreads, and,
for a reader below TARGET, whether finetuning overfit its training images.

Overfitting is read from finetuning's validation history (its loss on the real valid part):
lowest in the first half of the run and at least OVERFIT_RISE times higher at its end. Healthy
fits end within 8% of their lowest loss, late in the run (claptcha, sessions 34-35: ended at
0.279 and 0.266, lowest 0.279 and 0.263; wheezy: 0.229, lowest 0.213); a multicolorcaptcha
sample (four digits in 44 faces, each in its own cell) was lowest at step 1256 of 6237 (7.15)
and ended at 9.12 (session 36). There the reader learnt its training images rather than the
style: more labeled images can help, more training on the same ones made it worse.
"""

from __future__ import annotations

from typing import Any, Sequence

TARGET = 0.98  # test seq_acc below which the summary says what the run's evidence suggests
OVERFIT_RISE = 1.15  # end-of-run validation loss over its lowest: overfit at this or more
MIN_VALIDATIONS = 4  # fewer say too little about the run's course


def confusion_line(test: dict[str, Any], top: int = 6) -> str:
    """The test's most frequent misread symbols, where to look or label more examples."""
    pairs = [f"{c['true']}->{c['pred']} x{c['count']}" for c in test.get("confusions", [])[:top]]
    if not pairs:
        return "test misreads: none of equal length (no symbol confusions to list)"
    return ("test misreads, true->read: " + ", ".join(pairs)
            + " (label more examples with these symbols; every misread is in the test run's "
            "test_report.json)")


def overfit(history: Sequence[dict[str, float]]) -> tuple[dict, dict] | None:
    """(the lowest-loss validation, the last one) where the validation loss bottomed out in
    the first half of the run and ended OVERFIT_RISE times as high or more; else None."""
    checks = [h for h in history if "loss" in h and "step" in h]
    if len(checks) < MIN_VALIDATIONS:
        return None
    lowest = min(checks, key=lambda h: h["loss"])
    last = checks[-1]
    if lowest["step"] <= last["step"] / 2 and last["loss"] >= OVERFIT_RISE * lowest["loss"]:
        return lowest, last
    return None


def advice(test_seq_acc: float, history: Sequence[dict[str, float]], train_images: int,
           best_step: int) -> list[str]:
    """Lines for the fit summary: empty at or above TARGET, or where the run shows nothing to
    act on."""
    if test_seq_acc >= TARGET:
        return []
    found = overfit(history)
    if found is None:
        return []
    lowest, last = found
    return [f"advice: finetuning overfit its {train_images} training images: the validation "
            f"loss was lowest at step {lowest['step']} of {last['step']} ({lowest['loss']:.2f}) "
            f"and ended at {last['loss']:.2f}: more labeled images of this style can help, "
            f"more training on these made it worse (the reader is the weights validated best, "
            f"at step {best_step})."]
