"""Torch datasets: labeled image files and on-the-fly synthetic captchas.

Both are map-style on purpose: Accelerate's sharded sampler gives each rank disjoint indices,
and ``skip_first_batches`` resumes at exactly the next batch, because item ``i`` of epoch ``e``
is a pure function of (seed, e, i) - never of worker count, rank count or iteration history.
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

from captcha_ml.data.synthetic import SyntheticSpec, render
from captcha_ml.data.transforms import Preprocess, augment, load_image


class LabeledImages(Dataset):
    """``(path, label)`` samples -> ``(tensor C,H,W, label)``; augmentation keyed by (seed, epoch, index)."""

    def __init__(self, samples: list[tuple[str, str]], preprocess: Preprocess,
                 augment: bool = False, seed: int = 0, strength: float = 1.0) -> None:
        self.samples = list(samples)
        self.preprocess = preprocess
        self.augment = augment
        self.strength = strength
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path, label = self.samples[index]
        img = load_image(path)  # raises ImageError naming the file if it broke after validation
        if self.augment:
            img = augment(img, random.Random(f"{self.seed}:{self.epoch}:{index}"), self.strength)
        return self.preprocess(img), label


class SyntheticImages(Dataset):
    """A virtual set of ``size`` captchas rendered on the fly in DataLoader workers (no disk).

    Item ``i`` of epoch ``e`` is ``render(spec, f"{seed}/{stream}/epoch{e}", i)``: every epoch
    sees new images (call ``set_epoch``; a validation set simply never does, so it stays fixed),
    and ranks never see the same image because the sampler hands them disjoint indices.
    ``stream`` keeps e.g. ``train`` and ``valid`` apart under one seed.
    """

    def __init__(self, spec: SyntheticSpec, size: int, preprocess: Preprocess, seed: int = 0,
                 stream: str = "train") -> None:
        self.spec = spec
        self.size = size
        self.preprocess = preprocess
        self.seed = seed
        self.stream = stream
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} synthetic images")
        img, label = render(self.spec, f"{self.seed}/{self.stream}/epoch{self.epoch}", index)
        return self.preprocess(img), label


class MixedImages(Dataset):
    """Several datasets end to end (e.g. real images, then synthetic ones); ``set_epoch`` reaches
    all of them, so the synthetic part is new every epoch while the real part is reshuffled."""

    def __init__(self, parts: list[Dataset]) -> None:
        self.parts = parts

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        for part in self.parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError(f"index out of range for {len(self)} images")
