"""Batches for training and evaluation, from resident tensors or from a streaming dataset.

Resident data (the common case) lives on the device as uint8 and is shuffled, sliced and
augmented there in batch: no DataLoader, no per-sample Python. Streaming data (big image
folders) goes through a ``DataLoader`` with worker processes that decode and augment per
sample; only the batch in flight is in memory.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from kdgen.data.base import AnySplit, AugmentSpec, Split
from kdgen.errors import ConfigError
from kdgen.training.augment import augment

Batch = tuple[torch.Tensor, torch.Tensor]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches only (a last batch of 1 would break BatchNorm); at least one batch."""
    return max(1, num_examples // batch_size)


def check_share(batch_size: int, parts: int) -> None:
    """A global batch must split into ``parts`` equal shares (one per data-parallel process)."""
    if batch_size % parts:
        raise ConfigError(f"runtime.parallel=data: a batch of {batch_size} does not split evenly over {parts} "
                          f"processes; make train.batch_size a multiple of {parts}")


class TrainBatches:
    """One epoch of shuffled, augmented uint8 batches per iteration, driven by ``generator``."""

    def __init__(self, split: AnySplit, spec: AugmentSpec, batch_size: int, device: torch.device,
                 generator: torch.Generator, workers: int = 0, share: tuple[int, int] = (0, 1)) -> None:
        self.split = split
        self.spec = spec
        self.batch_size = min(batch_size, len(split))
        self.device = device
        self.generator = generator
        self.workers = workers
        self.steps = steps_per_epoch(len(split), batch_size)
        # (index, count): yield only share ``index`` of ``count`` equal parts of every global batch
        # (runtime.parallel=data: one part per process; the global batches stay those of one process).
        self.share = share
        check_share(self.batch_size, share[1])
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
                # The whole global batch is augmented (the same random draws as one process), then shared.
                images = augment(self.images[index], self.spec, self.generator)
                yield self._mine(images), self._mine(self.labels[index])
            return
        # Streaming: the loader's own CPU generator is seeded from ours, so the order is reproducible, and so is
        # the augmentation: each item draws from its own stream of (this seed, its index), whichever worker decodes
        # it (kdgen.data.imagefolder), so runtime.workers changes no result. The batch sampler is the one
        # DataLoader builds for shuffle=True; each process decodes only its share of every batch.
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device))
        dataset = self.split.dataset(seed)
        loader_generator = torch.Generator().manual_seed(seed)
        global_batches = BatchSampler(RandomSampler(dataset, generator=loader_generator), self.batch_size, drop_last=True)
        loader = DataLoader(dataset, batch_sampler=_Share(global_batches, *self.share), num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", generator=loader_generator, persistent_workers=False)
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


    def _mine(self, batch: torch.Tensor) -> torch.Tensor:
        index, count = self.share
        size = len(batch) // count
        return batch[index * size:(index + 1) * size] if count > 1 else batch


class _Share:
    """Share ``index`` of ``count`` equal parts of every batch of a batch sampler."""

    def __init__(self, batches: BatchSampler, index: int, count: int) -> None:
        self.batches, self.index, self.count = batches, index, count

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            size = len(batch) // self.count
            yield batch[self.index * size:(self.index + 1) * size]


def eval_batches(split: AnySplit, batch_size: int, device: torch.device, workers: int = 0) -> Iterator[Batch]:
    """The split in its stored order, without augmentation."""
    if isinstance(split, Split):
        images, labels = split.on(device)  # resident on the device for the whole run where it fits
        for start in range(0, len(split), batch_size):
            yield (images[start:start + batch_size].to(device, non_blocking=True),
                   labels[start:start + batch_size].to(device, non_blocking=True))
        return
    loader = DataLoader(split.for_eval().dataset(), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    for images, labels in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
