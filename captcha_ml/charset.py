"""The alphabet: symbol <-> token id, CTC greedy decoding. Index 0 is the CTC blank.

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
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.symbols or len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"charset {self.symbols!r} must be non-empty without repeats")
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
        """Greedy CTC decoding of ``(batch, time, classes)`` log-probabilities.

        Returns the texts and a confidence per text: the product of the best path's
        per-frame probabilities, i.e. exp of the summed max log-probabilities.
        """
        if isinstance(log_probs, torch.Tensor):
            log_probs = log_probs.detach().float().cpu().numpy()
        ids = log_probs.argmax(axis=-1)  # numpy: a few microseconds for a small batch
        best = np.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]
        confidences = np.exp(best.astype(np.float64).sum(axis=1)).tolist()
        texts = []
        for row in ids.tolist():
            collapsed = [t for i, t in enumerate(row) if i == 0 or t != row[i - 1]]
            texts.append(self.decode(collapsed))
        return texts, confidences

    def to_dict(self) -> dict:
        return {"symbols": self.symbols, "case_sensitive": self.case_sensitive}

    @classmethod
    def from_dict(cls, d: dict) -> "Charset":
        return cls(d["symbols"], bool(d.get("case_sensitive", True)))
