"""Folders of image files in the ImageNet layout: ``root/train/<class>/*`` and ``root/val/<class>/*``.

The registered source decodes every image once, resizes and centre-crops it, and keeps the
result resident as uint8 (fine for small folders). :class:`ImageFolderDataset` decodes one
image per item instead, with the usual random-resized-crop training transform, for folders
too big to hold in memory.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from kdgen.data import register
from kdgen.data.base import AugmentSpec, SourceData, Split, StreamingSplit
from kdgen.data.settings import DataConfig
from kdgen.errors import ConfigError, DataError


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
# Pillow signals undecodable files in several ways; all of them mean "this file is bad".
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

Sample = tuple[Path, int]


def scan_split(folder: str | Path, class_names: Sequence[str] | None = None) -> tuple[list[Sample], list[str]]:
    """``(path, label)`` pairs of the images in ``folder/<class>/``, and the sorted class names.

    With ``class_names`` (the training classes) the folder's classes must be exactly those, and
    labels follow that order. Files with other extensions and hidden entries are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"missing image folder {folder}")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{folder} has no class folders")
    if class_names is None:
        class_names = found
    else:
        extra = [c for c in found if c not in class_names]
        if extra:
            raise DataError(f"{folder}: class folder {extra[0]} is not among the training classes")
        absent = [c for c in class_names if c not in found]
        if absent:
            raise DataError(f"{folder}: no class folder for training class {absent[0]}")
    samples: list[Sample] = []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (folder / name).iterdir()
                       if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
        if not files:
            raise DataError(f"class folder {folder / name} has no images")
        samples.extend((path, label) for path in files)
    return samples, list(class_names)


def open_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully as RGB; :class:`DataError` naming the file if Pillow cannot."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() decodes, so errors surface here, not later
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc})") from None


def to_chw(image: Image.Image) -> torch.Tensor:
    """An RGB Pillow image as a uint8 tensor ``(3, H, W)``."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def resize_center_crop(image: Image.Image, resize: int, crop: int) -> Image.Image:
    """Resize so the shorter side is ``resize``, then cut the central ``crop`` x ``crop`` square."""
    if crop > resize:
        raise ConfigError(f"data.eval_crop ({crop}) must not exceed data.eval_resize ({resize})")
    width, height = image.size
    scale = resize / min(width, height)
    # max(..., resize): rounding must never make the longer side shorter than the crop.
    new_w = resize if width <= height else max(resize, round(width * scale))
    new_h = resize if height < width else max(resize, round(height * scale))
    left, top = (new_w - crop) // 2, (new_h - crop) // 2
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR).crop((left, top, left + crop, top + crop))


def random_resized_crop(image: Image.Image, size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None
                        ) -> Image.Image:
    """A random region covering ``scale`` of the area with aspect ``ratio``, resized to ``size``.

    Draws from ``generator`` (None: torch's global one, which DataLoader seeds differently in every worker).
    After ten failed draws (very elongated images) it falls back to the central region whose
    aspect is the nearest allowed one.
    """
    width, height = image.size
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_lo, log_hi, generator=generator)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            break
    else:
        aspect = min(max(width / height, ratio[0]), ratio[1])
        w, h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
        w, h = min(w, width), min(h, height)
        left, top = (width - w) // 2, (height - h) // 2
    # resize(box=...) crops and resamples in one step, without an intermediate image.
    return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The random stream of item ``index`` in an epoch whose augmentation seed is ``seed``: its own, derived from
    both with NumPy's SeedSequence, so an item's crop and flip depend on neither the worker that decodes it, nor how
    many workers (``runtime.workers``) or processes (``runtime.parallel=data``) share the epoch."""
    entropy = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, index]
    low, high = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(low) | (int(high) << 31))


class ImageFolderDataset(Dataset):
    """Decodes one image per item into a uint8 ``(3, H, W)`` tensor, for streaming big folders.

    ``train=True``: random-resized crop to ``train_crop`` (scale 0.08..1, aspect 3/4..4/3) and a
    random horizontal flip. ``train=False``: shorter side to ``eval_resize``, centre crop
    ``eval_crop``. Normalisation is left to the device, as for resident data.

    ``seed`` (set per epoch by the training batches, :meth:`reseed`): each item draws its crop and flip from its
    own stream, :func:`sample_generator` of (seed, index), so an epoch's images are the same whichever worker decodes
    them. None: torch's global generator (DataLoader seeds it per worker: results then depend on the worker count).
    """

    seed: int | None = None

    def __init__(self, samples: Sequence[Sample], train: bool, train_crop: int = 224,
                 eval_resize: int = 256, eval_crop: int = 224) -> None:
        self.samples = list(samples)
        self.train = train
        self.train_crop = train_crop
        self.eval_resize = eval_resize
        self.eval_crop = eval_crop

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, train: bool,
                    class_names: Sequence[str] | None = None) -> "ImageFolderDataset":
        """The dataset over ``cfg.root/<split>``, with crop sizes from the data config."""
        if cfg.root is None:
            raise DataError("data source imagefolder needs data.root: the folder holding train/ and val/")
        samples, _ = scan_split(Path(cfg.root).expanduser() / split, class_names)
        return cls(samples, train, cfg.train_crop, cfg.eval_resize, cfg.eval_crop)

    def __len__(self) -> int:
        return len(self.samples)

    def reseed(self, seed: int) -> None:
        """Draw the next pass's augmentation from per-item streams of ``seed`` (see the class)."""
        self.seed = seed

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = open_rgb(path)
        if self.train:
            generator = sample_generator(self.seed, index) if self.seed is not None else None
            image = random_resized_crop(image, self.train_crop, generator=generator)
            if float(torch.rand(1, generator=generator)) < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image = resize_center_crop(image, self.eval_resize, self.eval_crop)
        return to_chw(image), label


def _resident(samples: list[Sample], resize: int, crop: int) -> Split:
    """Decode, resize and centre-crop every image into one uint8 tensor."""
    images = torch.empty((len(samples), 3, crop, crop), dtype=torch.uint8)

    def fill(index: int) -> None:
        images[index] = to_chw(resize_center_crop(open_rgb(samples[index][0]), resize, crop))

    # Pillow releases the GIL while decoding and resampling, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(fill, range(len(samples))):
            pass  # iterating re-raises the first worker error (e.g. an unreadable image)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return Split(images, labels)


# Above this many bytes of decoded uint8 images, folders stream instead of staying resident.
RESIDENT_LIMIT_BYTES = 2 * 1024**3
# ImageNet's channel statistics: streaming folders cannot afford a pass to compute their own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _DatasetMaker:
    """Picklable ``(samples, train) -> ImageFolderDataset`` with the configured sizes (for workers)."""

    def __init__(self, train_crop: int, eval_resize: int, eval_crop: int) -> None:
        self.sizes = (train_crop, eval_resize, eval_crop)

    def __call__(self, samples: Sequence[Sample], train: bool) -> ImageFolderDataset:
        return ImageFolderDataset(samples, train, *self.sizes)


@register("imagefolder")
def load_imagefolder(cfg: DataConfig) -> SourceData:
    """Images of ``root/train`` (training) and ``root/val`` (the test split), ImageNet layout.

    Small folders are decoded once (resize to ``data.eval_resize``, centre crop ``data.eval_crop``)
    and kept resident as uint8, with batch augmentation (translation by an eighth of the crop,
    flips). Big folders (more than 2 GiB decoded, or ``data.stream: true``) stream through
    DataLoader workers with random-resized crops of ``data.train_crop`` and flips for training.
    Class names are the sorted training folder names; the val folders must be the same classes.
    """
    if cfg.root is None:
        raise DataError("data source imagefolder needs data.root: the folder holding train/ and val/")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    train_samples, class_names = scan_split(root / "train")
    val_samples, _ = scan_split(root / "val", class_names)
    decoded_bytes = (len(train_samples) + len(val_samples)) * 3 * cfg.eval_crop**2
    if cfg.stream or (cfg.stream is None and decoded_bytes > RESIDENT_LIMIT_BYTES):
        make = _DatasetMaker(cfg.train_crop, cfg.eval_resize, cfg.eval_crop)
        return SourceData(train=StreamingSplit(train_samples, make, train=True),
                          test=StreamingSplit(val_samples, make, train=False), class_names=class_names,
                          augment=AugmentSpec(), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return SourceData(
        train=_resident(train_samples, cfg.eval_resize, cfg.eval_crop),
        test=_resident(val_samples, cfg.eval_resize, cfg.eval_crop),
        class_names=class_names,
        augment=AugmentSpec(translate=cfg.eval_crop // 8, hflip=True),
    )
