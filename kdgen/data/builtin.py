"""Sources that need no files: scikit-learn's digits (the embedded default) and synthetic data."""

from __future__ import annotations

import numpy as np
import torch

from kdgen.data import register
from kdgen.data.base import AugmentSpec, SourceData, Split, stratified_val_split
from kdgen.data.settings import DataConfig


DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SPLIT_SEED = 12345  # fixed forever: the test split must never move


@register("digits")
def load_digits(cfg: DataConfig) -> SourceData:
    """The 1,797 8x8 handwritten digits that ship with scikit-learn (values 0..16, scaled to 0..255).

    Digits has no official test split, so a stratified 20 % is held out with a fixed seed.
    Augmentation: 1-pixel translation, no flips (a mirrored digit is another symbol).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_val_split(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SPLIT_SEED)
    return SourceData(
        train=Split(images[train_idx], labels[train_idx]),
        test=Split(images[test_idx], labels[test_idx]),
        class_names=[str(d) for d in range(10)],
        augment=AugmentSpec(translate=1, hflip=False),
    )


@register("synthetic")
def load_synthetic(cfg: DataConfig) -> SourceData:
    """Random images of the configured shape, for tests and throughput benchmarks.

    Each class has its own mean image plus noise, so a model can learn something and accuracy
    is above chance; nothing else about it is meaningful.
    """
    generator = torch.Generator().manual_seed(cfg.split_seed)
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    prototypes = torch.rand((cfg.num_classes, *shape), generator=generator) * 255.0

    def make(count: int) -> Split:
        labels = torch.arange(count) % cfg.num_classes
        labels = labels[torch.randperm(count, generator=generator)]
        noise = torch.randn((count, *shape), generator=generator) * 60.0
        images = (prototypes[labels] + noise).clamp(0, 255).to(torch.uint8)
        return Split(images, labels)

    return SourceData(
        train=make(cfg.num_train),
        test=make(cfg.num_test),
        class_names=[f"class{i}" for i in range(cfg.num_classes)],
        augment=AugmentSpec(translate=max(1, cfg.image_size // 8), hflip=True),
    )
