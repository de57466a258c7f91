"""The alphabet: symbol <-> token id, CTC decoding. Index 0 is the CTC blank.

The order of the symbols is the token-id map, so a charset is saved with every model and a
model file alone is enough to read captchas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

BLANK = 0


class LabelError(ValueError):
    """A label that the charset or the length limits cannot represent."""


@dataclass(frozen=True)
class Charset:
    symbols: str
    case_sensitive: bool = True
    # (min, max) label length the model was trained on; decoding keeps its texts in it. ():
    # any length (checkpoints from before it was saved).
    lengths: tuple[int, ...] = ()
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.symbols or len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"charset {self.symbols!r} must be non-empty without repeats")
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        if self.lengths and not (len(self.lengths) == 2 and 1 <= self.lengths[0] <= self.lengths[1]):
            raise ValueError(f"lengths {self.lengths}: give (min, max) with 1 <= min <= max")
        object.__setattr__(self, "_index", {c: i + 1 for i, c in enumerate(self.symbols)})

    @classmethod
    def from_labels(cls, labels: Iterable[str], case_sensitive: bool = True) -> "Charset":
        """The sorted set of symbols used by ``labels``."""
        seen = set("".join(labels if case_sensitive else (s.lower() for s in labels)))
        return cls("".join(sorted(seen)), case_sensitive)

    @property
    def num_classes(self) -> int:
        """Symbols plus the CTC blank."""
        return len(self.symbols) + 1

    def normalize(self, label: str) -> str:
        return label if self.case_sensitive else label.lower()

    def check(self, label: str) -> str | None:
        """Why ``label`` cannot be encoded, or None when it can."""
        bad = sorted({c for c in self.normalize(label) if c not in self._index})
        if not label:
            return "empty label"
        if bad:
            return f"characters {''.join(bad)!r} are not in the charset {self.symbols!r}"
        return None

    def encode(self, label: str) -> list[int]:
        problem = self.check(label)
        if problem:
            raise LabelError(f"label {label!r}: {problem}")
        return [self._index[c] for c in self.normalize(label)]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.symbols[i - 1] for i in ids if i != BLANK)

    def ctc_decode(self, log_probs: "torch.Tensor | np.ndarray") -> tuple[list[str], list[float]]:
        """CTC decoding of ``(batch, time, classes)`` log-probabilities: the most probable
        path (greedy), collapsed; where that text's length is outside ``lengths``, the most
        probable path whose text has an allowed length (`best_path_in_lengths`) instead.

        Returns the texts and a confidence per text: the product of the chosen path's
        per-frame probabilities, i.e. exp of their summed log-probabilities.
        """
        if isinstance(log_probs, torch.Tensor):
            log_probs = log_probs.detach().float().cpu().numpy()
        ids = log_probs.argmax(axis=-1)  # numpy: a few microseconds for a small batch
        best = np.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]
        confidences = np.exp(best.astype(np.float64).sum(axis=1)).tolist()
        texts = []
        for b, row in enumerate(ids.tolist()):
            text = self.decode(_collapse(row))
            if self.lengths and not self.lengths[0] <= len(text) <= self.lengths[1]:
                path, score = best_path_in_lengths(log_probs[b], *self.lengths)
                if path is not None:
                    text, confidences[b] = self.decode(_collapse(path)), float(np.exp(score))
            texts.append(text)
        return texts, confidences

    def to_dict(self) -> dict:
        return {"symbols": self.symbols, "case_sensitive": self.case_sensitive,
                "lengths": list(self.lengths)}

    @classmethod
    def from_dict(cls, d: dict) -> "Charset":
        return cls(d["symbols"], bool(d.get("case_sensitive", True)), tuple(d.get("lengths") or ()))


def _collapse(path: Sequence[int]) -> list[int]:
    """A CTC path without its repeats (blanks are dropped by ``decode``)."""
    return [t for i, t in enumerate(path) if i == 0 or t != path[i - 1]]


def best_path_in_lengths(log_probs: np.ndarray, low: int, high: int
                         ) -> tuple[list[int] | None, float]:
    """The most probable CTC path of ``(time, classes)`` log-probabilities whose collapsed
    text has ``low``..``high`` symbols, and its log-probability; (None, -inf) when T steps
    cannot hold that many. Viterbi over (symbols emitted so far, last token): a token other
    than the last and the blank adds a symbol, a repeat or a blank does not."""
    steps, classes = log_probs.shape
    lp = log_probs.astype(np.float64)
    score = np.full((high + 1, classes), -np.inf)  # [symbols so far, last token]
    score[0, BLANK] = lp[0, BLANK]
    if high:
        score[1, 1:] = lp[0, 1:]
    back_n = np.zeros((steps, high + 1, classes), dtype=np.int64)
    back_k = np.zeros((steps, high + 1, classes), dtype=np.int64)
    counts, tokens = np.arange(high + 1), np.arange(1, classes)
    for t in range(1, steps):
        new = np.full_like(score, -np.inf)
        top = np.argsort(score, axis=1)[:, ::-1][:, :2]  # each count's two best last tokens
        first, second = top[:, 0], top[:, 1]
        v1, v2 = score[counts, first], score[counts, second]
        # A blank keeps the count; it may follow any token.
        new[:, BLANK] = v1 + lp[t, BLANK]
        back_n[t, :, BLANK], back_k[t, :, BLANK] = counts, first
        # A symbol c: the same c again (count kept), or after another token (count + 1).
        stay = score[:, 1:]
        other = first[:-1, None] != tokens[None, :]
        adv = np.full_like(stay, -np.inf)
        adv[1:] = np.where(other, v1[:-1, None], v2[:-1, None])
        adv_k = np.zeros_like(stay, dtype=np.int64)
        adv_k[1:] = np.where(other, first[:-1, None], second[:-1, None])
        take = adv > stay
        new[:, 1:] = np.maximum(stay, adv) + lp[t, 1:]
        back_n[t, :, 1:] = np.where(take, counts[:, None] - 1, counts[:, None])
        back_k[t, :, 1:] = np.where(take, adv_k, tokens[None, :])
        score = new
    end = score[low:high + 1]
    if not np.isfinite(end).any():
        return None, float("-inf")
    n, k = np.unravel_index(int(np.argmax(end)), end.shape)
    n, k = int(n) + low, int(k)
    best = float(score[n, k])
    path = [k]
    for t in range(steps - 1, 0, -1):
        n, k = int(back_n[t, n, k]), int(back_k[t, n, k])
        path.append(k)
    return path[::-1], best


def ctc_align(log_probs: np.ndarray, targets: Sequence[int]) -> list[tuple[int, int]] | None:
    """Forced alignment: the most probable CTC path of ``(time, classes)`` log-probabilities
    that reads exactly ``targets``, as each symbol's (first, last) time step on it; None when
    the steps cannot hold the text (a repeated symbol needs a blank between its copies).
    Viterbi over the text with blanks around and between its symbols (2n+1 states). A model
    that misreads an image still places its symbols well: fit's pretrained model, reading
    claptcha's captchas at 0.03, put 90% of the symbols within 4 of 176 input columns of where
    the finetuned one (reading all 350 right) put them."""
    steps, n = log_probs.shape[0], len(targets)
    if not n:
        return None
    lp = log_probs.astype(np.float64)
    states = [BLANK]
    for token in targets:
        states += [int(token), BLANK]
    emit = lp[:, states]  # (time, 2n+1)
    s = np.arange(len(states))
    # A symbol state may be entered from two states back (skipping the blank between two
    # symbols) unless it repeats the symbol there.
    skip = np.zeros(len(states), dtype=bool)
    skip[3::2] = np.asarray(targets[1:]) != np.asarray(targets[:-1])
    score = np.full(len(states), -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((steps, len(states)), dtype=np.int64)
    for t in range(1, steps):
        one = np.concatenate([[-np.inf], score[:-1]])
        two = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        best = np.stack([score, one, two])
        move = best.argmax(axis=0)
        back[t] = s - move
        score = best[move, s] + emit[t]
    last = len(states) - 1
    end = last if score[last] >= score[last - 1] else last - 1
    if not np.isfinite(score[end]):
        return None
    path = [end]
    for t in range(steps - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    path.reverse()
    spans: list[tuple[int, int]] = []
    for k in range(n):
        frames = [t for t, state in enumerate(path) if state == 2 * k + 1]
        spans.append((frames[0], frames[-1]))
    return spans
