"""What a finished fit's own evidence says to do next: the test's most frequent misreads, and,
for a reader below TARGET, whether finetuning overfit its training images.

Overfitting is read from finetuning's validation history (its loss on the real valid part): the
lowest loss of the run's second half at least OVERFIT_RISE times the lowest of its first half,
so that the loss never came back near where it was early. The loss at the end says less: a
fit's often ends 10-32% above its lowest while its accuracy holds (the reader surer of its few
misreads), and the lowest point may fall just before the half by noise (claptcha seed 0,
session 34: 0.2825 at step 4372, 0.2802 at 6558 of 11016, ending at 0.3453). In 16
finetunings of sessions 34-36 (claptcha and wheezy fits and their variants, multicolor's
2000-image fit and its generator-fed ceiling) the second half's lowest was 0.59-0.99 times
the first half's. A multicolorcaptcha sample of 500 images (four digits in 44 faces, each in
its own cell; holdout 0.058) was lowest at step 1256 of 6237 (7.15) and never below 8.65
after the half (1.21 times): the reader learnt its 350 training images rather than the style;
from 2000 labeled images its loss fell to the end and the holdout read 0.186 (session 36).
"""

from __future__ import annotations

from typing import Any, Sequence

TARGET = 0.98  # test seq_acc below which the summary says what the run's evidence suggests
OVERFIT_RISE = 1.15  # second half's lowest validation loss over the first half's: overfit
MIN_VALIDATIONS = 4  # fewer say too little about the run's course


def confusion_line(test: dict[str, Any], top: int = 6) -> str:
    """The test's most frequent misread symbols, where to look or label more examples."""
    pairs = [f"{c['true']}->{c['pred']} x{c['count']}" for c in test.get("confusions", [])[:top]]
    if not pairs:
        return "test misreads: none of equal length (no symbol confusions to list)"
    return ("test misreads, true->read: " + ", ".join(pairs)
            + " (label more examples with these symbols; every misread is in the test run's "
            "test_report.json)")


def overfit(history: Sequence[dict[str, float]]) -> tuple[dict, dict, int] | None:
    """(the first half's lowest-loss validation, the second half's, the last step) where the
    second half's lowest loss is OVERFIT_RISE times the first half's or more; else None."""
    if len(history) < MIN_VALIDATIONS:
        return None
    last = history[-1]["step"]
    early = [h for h in history if h["step"] <= last / 2]
    late = [h for h in history if h["step"] > last / 2]
    if not early or not late:
        return None
    low_early = min(early, key=lambda h: h["loss"])
    low_late = min(late, key=lambda h: h["loss"])
    if low_late["loss"] >= OVERFIT_RISE * low_early["loss"]:
        return low_early, low_late, last
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
    early, late, last = found
    return [f"advice: finetuning overfit its {train_images} training images: the validation "
            f"loss was lowest at step {early['step']} of {last} ({early['loss']:.2f}) and stayed "
            f"at {late['loss']:.2f} or above in the run's second half. More labeled images of "
            f"this style can help; more steps on these did not (the reader is the weights "
            f"validated best, at step {best_step})."]
