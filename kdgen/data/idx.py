"""IDX files (the format of MNIST and Fashion-MNIST), plain or gzipped.

An IDX file is a 4-byte magic ``00 00 <type> <ndims>``, then ``ndims`` big-endian uint32
dimensions, then the payload in row-major order. Only unsigned bytes (type 0x08) occur in the
datasets served here, so that is the only type accepted.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from kdgen.data import register
from kdgen.data.base import AugmentSpec, SourceData, Split
from kdgen.data.settings import DataConfig
from kdgen.errors import DataError


GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE = 0x08
# The other types the format defines; named so the error says "unsupported", not "corrupt".
_OTHER_IDX_TYPES = {0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Garment families, for the "semantic" metric: tops, footwear, and two classes with no relative.
FASHION_MNIST_GROUPS = [[0, 2, 3, 4, 6], [5, 7, 9], [1], [8]]
MNIST_CLASSES = [str(d) for d in range(10)]

# (split, images file, labels file), named as the official distribution names them.
MNIST_FILES = (("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes into an array of the shape its header declares.

    Gzip compression is detected from the content (magic ``1f 8b``), not from the file name,
    since mirrors ship both spellings. Raises :class:`DataError` naming the file when it is
    missing, not IDX, of another element type, or when the payload is shorter or longer than
    the header says.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None

    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero0, zero1, type_code, ndims = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or ndims == 0:
        raise DataError(f"{path}: not an IDX file (magic {raw[:4].hex(' ')}, expected 00 00 08 <ndims>)")
    if type_code != IDX_UBYTE:
        if type_code in _OTHER_IDX_TYPES:
            raise DataError(f"{path}: IDX element type 0x{type_code:02x} ({_OTHER_IDX_TYPES[type_code]}) "
                            f"is not supported; only unsigned bytes (0x08)")
        raise DataError(f"{path}: not an IDX file (unknown element type 0x{type_code:02x})")

    header_len = 4 + 4 * ndims
    if len(raw) < header_len:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} of {header_len} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndims, offset=4))
    # math.prod is exact: a crafted header must not overflow into a matching size.
    expected = math.prod(dims)  # one byte per element for type 0x08
    payload = len(raw) - header_len
    if payload < expected:
        raise DataError(f"{path}: truncated: header declares {'x'.join(map(str, dims))} = {expected} bytes "
                        f"of data, file has {payload}")
    if payload > expected:
        raise DataError(f"{path}: {payload - expected} trailing bytes after the {expected} bytes of data "
                        f"the header declares")
    # Copy so the array owns writable memory (torch.from_numpy warns on read-only buffers).
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def _find_file(root: Path, name: str) -> Path:
    """The file ``name`` or ``name.gz`` in ``root``; either may hold either encoding."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing data file: expected {root / name} or {root / name}.gz")


def _load_split(root: Path, images_name: str, labels_name: str, num_classes: int) -> Split:
    images_path = _find_file(root, images_name)
    labels_path = _find_file(root, labels_name)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected images of shape (N, H, W), header says {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels of shape (N,), header says {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels but {images_path.name} has {len(images)} images")
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} outside 0..{num_classes - 1}")
    return Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def load_idx_dataset(root: str | Path, class_names: list[str], augment: AugmentSpec) -> SourceData:
    """Load the four MNIST-layout IDX files (gzipped or not) from ``root``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    splits = {split: _load_split(root, images, labels, len(class_names)) for split, images, labels in MNIST_FILES}
    return SourceData(train=splits["train"], test=splits["test"], class_names=list(class_names), augment=augment)


@register("fashion-mnist")
def load_fashion_mnist(cfg: DataConfig) -> SourceData:
    """Fashion-MNIST: 60,000 + 10,000 28x28 grey images of 10 clothing classes.

    Read from ``data.root`` or, when unset, from the Debian package's folder. Augmentation:
    2-pixel translation and horizontal flips (a mirrored shirt is still a shirt).
    """
    root = cfg.root if cfg.root is not None else FASHION_MNIST_ROOT
    source = load_idx_dataset(root, FASHION_MNIST_CLASSES, AugmentSpec(translate=2, hflip=True))
    source.class_groups = FASHION_MNIST_GROUPS
    return source


@register("mnist")
def load_mnist(cfg: DataConfig) -> SourceData:
    """MNIST handwritten digits from the four IDX files in ``data.root``.

    Augmentation: 2-pixel translation, no flips (a mirrored digit is another symbol).
    """
    if cfg.root is None:
        raise DataError("data source mnist needs data.root: the folder holding train-images-idx3-ubyte(.gz) "
                        "and the other three IDX files")
    return load_idx_dataset(cfg.root, MNIST_CLASSES, AugmentSpec(translate=2, hflip=False))
