"""The data-source interface: what every source returns, and the train/val split.

A *source* turns files (or nothing, for built-in data) into :class:`SourceData`: uint8 image
tensors of shape ``(N, C, H, W)`` and int64 labels for the official train and test splits.
The training loop keeps these tensors resident on the device and augments them in batch, so
sources never normalise or convert to float (a float32 copy would be 4x the memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from kdgen.errors import DataError

# The split ``train`` in results.json evaluates at most this many training images (unaugmented).
TRAIN_EVAL_SIZE = 2000
# Independent random streams of the split seed, so the subset and the sample never shift the val split.
TRAIN_SUBSET_STREAM, TRAIN_EVAL_STREAM = 1, 2


@dataclass(frozen=True)
class AugmentSpec:
    """Batch augmentation applied on the device during training (never at evaluation).

    ``translate``: random shift of up to this many pixels in each direction, with zero padding
    (the classic "pad and random-crop"). ``hflip``: random horizontal flip, only for data where
    a mirrored image is still the same class (not digits or MNIST).
    """

    translate: int = 0
    hflip: bool = False


@dataclass
class Split:
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64 of one split."""

    images: torch.Tensor
    labels: torch.Tensor
    # Copies on other devices, kept for the run: every unit's evaluation reads every split again.
    _copies: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, init=False, repr=False,
                                                                   compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be a uint8 tensor of shape (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels on ``device``: on the CPU the split's own tensors; on an accelerator a copy made
        once and kept, where it fits (:func:`fits_on`), else the CPU tensors (then moved batch by batch)."""
        if device.type == "cpu":
            return self.images, self.labels
        key = str(device)
        if key not in self._copies:
            if not fits_on(self.images.nbytes + self.labels.nbytes, device):
                return self.images, self.labels
            self._copies[key] = (self.images.to(device), self.labels.to(device))
        return self._copies[key]


def fits_on(nbytes: int, device: torch.device, share: float = 0.25) -> bool:
    """Whether ``nbytes`` take at most ``share`` of ``device``'s free memory (a GPU's, as CUDA reports it; other
    accelerators are assumed to have room): evaluation data stays resident only where training keeps its room."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= share * free
    return True


@dataclass
class StreamingSplit:
    """A split decoded on the fly, for data too big to keep resident (e.g. ImageNet folders).

    ``samples`` are items whose second element is the label (``(path, label)``);
    ``make_dataset(samples, train)`` builds a ``torch.utils.data.Dataset`` that yields
    ``(uint8 CHW tensor, label)``, with random training transforms when ``train`` is true and the
    deterministic evaluation transform otherwise.
    """

    samples: Sequence[Any]
    make_dataset: Callable[[Sequence[Any], bool], Any]
    train: bool = True

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([sample[1] for sample in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, index: torch.Tensor) -> "StreamingSplit":
        return StreamingSplit([self.samples[i] for i in index.tolist()], self.make_dataset, self.train)

    def for_eval(self) -> "StreamingSplit":
        return StreamingSplit(self.samples, self.make_dataset, train=False)

    def dataset(self, seed: int | None = None) -> Any:
        """The dataset over the samples. ``seed`` (a training epoch's): a dataset with a ``reseed(seed)`` method
        draws each item's augmentation from a stream of (seed, item index), whatever worker decodes it."""
        dataset = self.make_dataset(self.samples, self.train)
        if seed is not None and hasattr(dataset, "reseed"):
            dataset.reseed(seed)
        return dataset


AnySplit = Union[Split, StreamingSplit]


@dataclass
class SourceData:
    """What a data source returns: the official train and test splits and their description.

    ``mean``/``std`` are per-channel, in [0, 1] units; when ``None`` they are computed from the
    training split. ``augment`` is the source's recommended training augmentation.
    """

    train: AnySplit
    test: AnySplit
    class_names: list[str]
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # Semantic groups of classes (lists of class indices, e.g. CIFAR-100's coarse labels), for the
    # "semantic" secondary-information metric; None where the source has no such grouping.
    class_groups: list[list[int]] | None = None
    # The source's own validation split (e.g. a Hugging Face dataset's "validation"), used as val instead of
    # holding out part of train; None: make_bundle holds out val_fraction of train, as for every built-in source.
    val: AnySplit | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check_labels(self, where: str) -> None:
        """Raise :class:`DataError` if any label lies outside ``[0, num_classes)``."""
        splits = (("train", self.train), ("val", self.val), ("test", self.test))
        for name, split in ((name, split) for name, split in splits if split is not None):
            labels = split.labels
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise DataError(f"{where}: {name} labels outside 0..{self.num_classes - 1}")


@dataclass
class DataBundle:
    """Train/val/test splits ready for training, with normalisation and augmentation settings."""

    train: AnySplit
    val: AnySplit
    test: AnySplit
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec
    # A fixed, unaugmented sample of the training split, evaluated like val and test so a reader
    # sees whether a model converged (train top-1, train NLL). None: the API user gave none.
    train_eval: AnySplit | None = None
    class_groups: list[list[int]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return len(self.mean)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 images, computed in chunks (no float copy)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), 4096):
        chunk = images[start:start + 4096].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += (chunk * chunk).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def stratified_val_split(labels: torch.Tensor, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train_idx, val_idx)`` holding out ``val_fraction`` of every class.

    Deterministic in ``split_seed`` alone, so every seed and arm of a run sees the same split.
    """
    rng = np.random.default_rng(split_seed)
    labels_np = labels.cpu().numpy()
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for cls in np.unique(labels_np):
        members = np.flatnonzero(labels_np == cls)
        rng.shuffle(members)
        n_val = int(round(len(members) * val_fraction))
        if val_fraction > 0 and len(members) > 1:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    train = np.sort(np.concatenate(train_idx))
    val = np.sort(np.concatenate(val_idx))
    return torch.from_numpy(train), torch.from_numpy(val)


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``per_class`` examples of every class, drawn with ``seed`` alone.

    Raises :class:`DataError` when a class has fewer examples than asked for: a silently
    unbalanced "per class" subset would be a different experiment from the one configured.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, TRAIN_SUBSET_STREAM]))
    labels_np = labels.cpu().numpy()
    chosen = []
    for cls in np.unique(labels_np):
        members = np.flatnonzero(labels_np == cls)
        if len(members) < per_class:
            raise DataError(f"data.train_per_class: {per_class} is more than the {len(members)} training images "
                            f"of class {int(cls)} (after the val split)")
        chosen.append(rng.permutation(members)[:per_class])
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def make_bundle(source: SourceData, val_fraction: float, split_seed: int = 0, *, train_per_class: int | None = None,
                train_eval_size: int = TRAIN_EVAL_SIZE) -> DataBundle:
    """Hold out a stratified validation split from the training data and fix normalisation.

    ``train_per_class`` keeps a fixed stratified subset of that many training images per class
    (after the val split, so val is the same with or without it), the same for every seed and arm.
    ``train_eval_size`` caps the fixed unaugmented training sample evaluated as split ``train``.
    A source with its own val split (``source.val``) keeps all of train, and ``val_fraction`` is not used.
    """
    if source.val is not None:
        train_idx, val = torch.arange(len(source.train)), source.val
    else:
        train_idx, val_idx = stratified_val_split(source.train.labels, val_fraction, split_seed)
        val = source.train.subset(val_idx)
    if train_per_class is not None:
        train_idx = train_idx[per_class_subset(source.train.labels[train_idx], train_per_class, split_seed)]
    train = source.train.subset(train_idx)
    if isinstance(val, StreamingSplit):
        val = val.for_eval()  # held-out images get the evaluation transform, not random crops
    if source.mean is not None and source.std is not None:
        mean, std = source.mean, source.std
    elif isinstance(train, StreamingSplit):
        raise DataError("a streaming data source must give its normalisation constants (mean, std)")
    else:
        mean, std = channel_stats(train.images)
    return DataBundle(train=train, val=val, test=source.test, class_names=list(source.class_names),
                      mean=tuple(mean), std=tuple(std), augment=source.augment,
                      train_eval=train_sample(train, train_eval_size, split_seed), class_groups=source.class_groups)


def select_classes(source: SourceData, classes: list[int], where: str) -> SourceData:
    """``source`` with only the images of ``classes`` (its class indices), relabelled 0..n-1 in that order;
    class names and groups follow. Resident splits only."""
    if max(classes) >= source.num_classes:
        raise DataError(f"{where}: data.classes {classes} names a class above {source.num_classes - 1}")
    remap = torch.full((source.num_classes,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    splits: dict[str, Split] = {}
    for name, split in (("train", source.train), ("val", source.val), ("test", source.test)):
        if split is None:
            continue
        if not isinstance(split, Split):
            raise DataError(f"{where}: data.classes works on resident data, not on a streamed {name} split")
        keep = remap[split.labels] >= 0
        splits[name] = Split(split.images[keep], remap[split.labels[keep]])
    groups = None
    if source.class_groups is not None:
        groups = [[int(remap[c]) for c in group if remap[c] >= 0] for group in source.class_groups]
        groups = [group for group in groups if group] or None
    return SourceData(train=splits["train"], test=splits["test"], class_names=[source.class_names[c] for c in classes],
                      augment=source.augment, mean=source.mean, std=source.std, class_groups=groups, val=splits.get("val"))


def train_sample(train: AnySplit, size: int, seed: int) -> AnySplit:
    """A fixed sample of at most ``size`` training examples, in evaluation form (no augmentation)."""
    if len(train) > size:
        rng = np.random.default_rng(np.random.SeedSequence([seed, TRAIN_EVAL_STREAM]))
        train = train.subset(torch.from_numpy(np.sort(rng.choice(len(train), size, replace=False))))
    return train.for_eval() if isinstance(train, StreamingSplit) else train


# A loader takes the data config (kdgen.data.settings.DataConfig) and returns SourceData.
SourceLoader = Callable[..., SourceData]
