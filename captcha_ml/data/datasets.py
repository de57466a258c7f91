"""Torch datasets: labeled image files, on-the-fly synthetic captchas (rendered, or composed
of a glyph bank's glyphs) and a pre-rendered pool.

Both are map-style on purpose: Accelerate's sharded sampler gives each rank disjoint indices,
and ``skip_first_batches`` resumes at exactly the next batch, because item ``i`` of epoch ``e``
is a pure function of (seed, e, i) - never of worker count, rank count or iteration history.
"""

from __future__ import annotations

import os
import random

import torch
from PIL import Image
from torch.utils.data import Dataset

from captcha_ml.data.glyphs import WARP, GlyphBank
from captcha_ml.data.synthetic import SyntheticSpec, render
from captcha_ml.data.transforms import Preprocess, augment, load_image


class LabeledImages(Dataset):
    """``(path, label)`` samples -> ``(tensor C,H,W, label)``; augmentation keyed by (seed, epoch, index).
    With ``read``, the tensor is what a reader feeds the network (views, C, H, W):
    ``Preprocess.read``, for evaluation."""

    def __init__(self, samples: list[tuple[str, str]], preprocess: Preprocess,
                 augment: bool = False, seed: int = 0, strength: float = 1.0,
                 local: bool = False, read: bool = False, lines: float = 0.0,
                 colours: float = 0.0) -> None:
        self.samples = list(samples)
        self.read = read
        self.preprocess = preprocess
        self.augment = augment
        self.strength = strength
        self.local = local
        self.lines = lines
        self.colours = colours
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
            img = augment(img, random.Random(f"{self.seed}:{self.epoch}:{index}"), self.strength,
                          self.local, self.lines, self.colours)
        return (self.preprocess.read(img) if self.read else self.preprocess(img)), label


class _PerEpoch(Dataset):
    """``size`` items per epoch, item ``i`` of epoch ``e`` a pure function of (e, i)."""

    size: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def _check(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} synthetic images")


class SyntheticImages(_PerEpoch):
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

    def render(self, index: int) -> tuple[Image.Image, str]:
        """Item ``index`` of this epoch as a PIL image and its label."""
        self._check(index)
        return render(self.spec, f"{self.seed}/{self.stream}/epoch{self.epoch}", index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        img, label = self.render(index)
        return self.preprocess(img), label


class Pool(_PerEpoch):
    """``size`` images per epoch drawn from a source's images rendered once, before training,
    in parallel processes, and kept in memory as uint8 pixels (``render_pool``).

    On a CPU, rendering in a DataLoader worker takes cores from the training step (lower4to7's
    pretraining in `fit` on 2 cores: 257 images/s that way, 427 from a pool, rendering
    included). Item ``i`` of epoch ``e`` is pool image ``(e * size + i) % pool``, and pool
    image ``j`` is the source's item ``j`` of its epoch 0: a pure function of (seed, stream,
    e, i), so resuming and sharding work as for the other sets. Each image is seen about
    ``size * epochs / pool`` times.
    """

    def __init__(self, source: Dataset, size: int, preprocess: Preprocess,
                 workers: int | None = None, desc: str = "render") -> None:
        if len(source) < 1:
            raise ValueError(f"a synthetic pool needs at least one image (got {len(source)})")
        self.size = size
        self.preprocess = preprocess
        self.pixels, self.labels = render_pool(source, preprocess, workers, desc)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        self._check(index)
        j = (self.epoch * self.size + index) % len(self.labels)
        return self.preprocess.normalize(self.pixels[j]), self.labels[j]


class SyntheticPool(Pool):
    """A pool of ``pool`` captchas of ``spec``: ``SyntheticImages``' epoch 0."""

    def __init__(self, spec: SyntheticSpec, size: int, preprocess: Preprocess, pool: int,
                 seed: int = 0, stream: str = "train", workers: int | None = None,
                 desc: str = "render") -> None:
        super().__init__(_Pixels(spec, pool, preprocess, seed, stream), size, preprocess,
                         workers, desc)


class GlyphImages(_PerEpoch):
    """A virtual set of ``size`` captchas composed of a glyph bank's glyphs
    (``GlyphBank.compose``, data.glyphs); item ``i`` of epoch ``e`` a pure function of (seed,
    stream, e, i), as ``SyntheticImages``' are. ``pixels``: items as uint8 pixels (what a
    ``Pool`` keeps)."""

    def __init__(self, bank: GlyphBank, size: int, preprocess: Preprocess, seed: int = 0,
                 stream: str = "train", warp: float = WARP, pixels: bool = False) -> None:
        self.bank, self.size, self.preprocess = bank, size, preprocess
        self.seed, self.stream, self.warp, self.pixels = seed, stream, warp, pixels

    def compose(self, index: int) -> tuple[Image.Image, str]:
        self._check(index)
        rng = random.Random(f"{self.seed}/{self.stream}/epoch{self.epoch}/{index}")
        return self.bank.compose(rng, self.warp)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        img, label = self.compose(index)
        return (self.preprocess.pixels(img) if self.pixels else self.preprocess(img)), label


class Cycled(_PerEpoch):
    """``size`` items per epoch of another dataset, in its order, cycling: item ``i`` of
    epoch ``e`` is its item ``(e * size + i) % len(images)``, as a pool cycles (the
    synthetic_share part read from a labeled folder, `data.share_from`)."""

    def __init__(self, images: Dataset, size: int) -> None:
        if not len(images):
            raise ValueError("nothing to cycle through: the dataset is empty")
        self.images, self.size = images, size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        self._check(index)
        return self.images[(self.epoch * self.size + index) % len(self.images)]


class _Pixels(SyntheticImages):
    """SyntheticImages' items as uint8 pixels (what a pool keeps)."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        img, label = self.render(index)
        return self.preprocess.pixels(img), label


def _stack(batch: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def available_cores() -> int:
    """CPU cores this process may use (a container's limit, where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def render_pool(source: Dataset, preprocess: Preprocess, workers: int | None = None,
                desc: str = "render") -> tuple[torch.Tensor, list[str]]:
    """All of ``source``'s items, (uint8 pixels, label) at its epoch 0, as one tensor (n x C
    x H x W) and the labels: rendered by ``workers`` processes (default: one per available
    core) with a progress bar."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    workers = available_cores() if workers is None else workers
    n = len(source)
    pixels = torch.empty((n, preprocess.channels, preprocess.height, preprocess.width),
                         dtype=torch.uint8)
    labels: list[str] = []
    loader = DataLoader(source, batch_size=64, num_workers=workers, collate_fn=_stack)
    with tqdm(total=n, unit="img", desc=desc) as bar:
        for images, names in loader:
            pixels[len(labels):len(labels) + len(names)] = images
            labels += names
            bar.update(len(names))
    return pixels, labels


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
