"""Batches for training and evaluation, from resident tensors or from a streaming dataset.

Resident data (the common case) lives on the device as uint8 and is shuffled, sliced and
augmented there in batch: no DataLoader, no per-sample Python. Streaming data (big image
folders) goes through a ``DataLoader`` with worker processes that decode and augment per
sample; only the batch in flight is in memory.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from kdgen.augment import augment
from kdgen.data.base import AnySplit, AugmentSpec, Split

Batch = tuple[torch.Tensor, torch.Tensor]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches only (a last batch of 1 would break BatchNorm); at least one batch."""
    return max(1, num_examples // batch_size)


class TrainBatches:
    """One epoch of shuffled, augmented uint8 batches per iteration, driven by ``generator``."""

    def __init__(self, split: AnySplit, spec: AugmentSpec, batch_size: int, device: torch.device,
                 generator: torch.Generator, workers: int = 0) -> None:
        self.split = split
        self.spec = spec
        self.batch_size = min(batch_size, len(split))
        self.device = device
        self.generator = generator
        self.workers = workers
        self.steps = steps_per_epoch(len(split), batch_size)
        if isinstance(split, Split):
            # Moved once per generation, then only indexed.
            self.images = split.images.to(device)
            self.labels = split.labels.to(device)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Batch]:
        if isinstance(self.split, Split):
            order = torch.randperm(len(self.labels), generator=self.generator, device=self.generator.device)
            order = order.to(self.device)
            for step in range(self.steps):
                index = order[step * self.batch_size:(step + 1) * self.batch_size]
                yield augment(self.images[index], self.spec, self.generator), self.labels[index]
            return
        # Streaming: the loader's own CPU generator is seeded from ours, so the order and the
        # workers' augmentation seeds are reproducible.
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device))
        loader = DataLoader(self.split.dataset(), batch_size=self.batch_size, shuffle=True, drop_last=True,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(seed), persistent_workers=False)
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def eval_batches(split: AnySplit, batch_size: int, device: torch.device, workers: int = 0) -> Iterator[Batch]:
    """The split in its stored order, without augmentation."""
    if isinstance(split, Split):
        for start in range(0, len(split), batch_size):
            yield (split.images[start:start + batch_size].to(device, non_blocking=True),
                   split.labels[start:start + batch_size].to(device, non_blocking=True))
        return
    loader = DataLoader(split.for_eval().dataset(), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    for images, labels in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
