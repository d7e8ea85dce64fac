"""CIFAR-10 and CIFAR-100 from the official "python version" (pickled batches).

The batches are pickles, and unpickling an untrusted file can run arbitrary code. They are
therefore read with :class:`RestrictedUnpickler`, which resolves no global except stand-ins
for the handful of names a pickled numpy array needs; those stand-ins rebuild the array from
its raw bytes themselves, so no numpy ``__setstate__`` ever sees attacker-controlled state.
"""

from __future__ import annotations

import io
import math
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from kdgen.data import register
from kdgen.data.base import AugmentSpec, SourceData, Split
from kdgen.data.settings import DataConfig
from kdgen.errors import DataError


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR_AUGMENT = AugmentSpec(translate=4, hflip=True)
IMAGE_BYTES = 3 * 32 * 32


class _ArrayStub:
    """Stands in for ``ndarray`` during unpickling; ``BUILD`` hands it the array's state."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy's state: (version, shape, dtype, is_fortran, raw bytes).
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("unexpected ndarray state")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise pickle.UnpicklingError("bad ndarray shape")
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, bytes):
            raise pickle.UnpicklingError("ndarray is not of a plain numeric type")
        resolved = dtype.resolve()
        if len(raw) != math.prod(shape) * resolved.itemsize:  # exact: no int64 overflow
            raise pickle.UnpicklingError("ndarray data size does not match its shape")
        flat = np.frombuffer(raw, dtype=resolved).copy()
        self.array = flat.reshape(shape, order="F" if fortran else "C")


class _DtypeStub:
    """Stands in for ``numpy.dtype``: only plain numeric types, with an optional byte order."""

    dtype: np.dtype | None = None  # stays None if a pickle bypasses __init__ (NEWOBJ)
    order = "|"

    def __init__(self, spec: Any, *_flags: Any) -> None:
        spec = spec.decode("ascii") if isinstance(spec, bytes) else spec
        if not isinstance(spec, str):
            raise pickle.UnpicklingError("dtype spec is not a string")
        try:
            dtype = np.dtype(spec)
        except TypeError:
            raise pickle.UnpicklingError(f"unknown dtype {spec!r}") from None
        if dtype.kind not in "biuf" or dtype.hasobject or dtype.fields is not None:
            raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain numeric type")
        self.dtype = dtype
        self.order = "|"

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, ...): only the byte order may be set.
        if not (isinstance(state, tuple) and len(state) >= 5) or any(s is not None for s in state[2:5]):
            raise pickle.UnpicklingError("structured dtypes are not allowed")
        order = state[1].decode("ascii") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("bad dtype byte order")
        self.order = order

    def resolve(self) -> np.dtype:
        if self.dtype is None:
            raise pickle.UnpicklingError("dtype without a type")
        return self.dtype if self.order in ("|", "=") else self.dtype.newbyteorder(self.order)


class _NdarrayMarker:
    """What ``numpy.ndarray`` resolves to: only an argument to ``_reconstruct``, never instantiable
    (else ``NEWOBJ`` could make a real array and hand numpy's ``__setstate__`` crafted state)."""

    def __new__(cls, *_args: Any, **_kwargs: Any) -> "_NdarrayMarker":
        raise pickle.UnpicklingError("numpy.ndarray may only appear inside _reconstruct")


def _reconstruct(subtype: Any, _shape: Any, _typecode: Any) -> _ArrayStub:
    if subtype is not _NdarrayMarker:
        raise pickle.UnpicklingError("only plain ndarrays are allowed")
    return _ArrayStub()


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    # Python 3 writes ``bytes`` at protocol 2 as _codecs.encode(str, "latin1"): a bytes literal
    # in disguise. Any other use of the function is refused.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed as a latin1 bytes literal")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1.x (the original files)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2.x
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _latin1_bytes,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals needed for numpy arrays of numbers."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None


def _unstub(value: Any) -> Any:
    """Replace array stand-ins by their arrays, throughout dicts, lists and tuples."""
    if isinstance(value, _ArrayStub):
        if value.array is None:
            raise pickle.UnpicklingError("ndarray without data")
        return value.array
    if isinstance(value, dict):
        return {k: _unstub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unstub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_unstub(v) for v in value)
    if isinstance(value, _DtypeStub):
        raise pickle.UnpicklingError("bare dtype objects are not allowed")
    return value


def restricted_loads(data: bytes, where: str) -> Any:
    """Unpickle ``data`` (read with ``encoding="bytes"``) without importing anything.

    ``where`` names the file in the :class:`DataError` raised for a forbidden global or an
    unreadable pickle.
    """
    try:
        return _unstub(RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load())
    except ForbiddenGlobal as exc:
        raise DataError(f"{where}: refusing to unpickle: it imports the forbidden global {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from None


class _Files:
    """The members of one CIFAR release, from an extracted folder or straight from the tar.gz."""

    def __init__(self, root: str | None, folder: str, archive: str, probe: str) -> None:
        if root is None:
            raise DataError(f"this data source needs data.root: the folder holding {archive} or {folder}/")
        path = Path(root).expanduser()
        self.folder: Path | None = None
        self.archive: Path | None = None
        if path.is_file():
            self.archive = path
        elif (path / folder).is_dir():
            self.folder = path / folder
        elif (path / archive).is_file():
            self.archive = path / archive
        elif (path / probe).is_file():  # data.root is the extracted folder itself
            self.folder = path
        else:
            raise DataError(f"no CIFAR data at {path}: expected {path / archive} or the folder {path / folder}/")
        self.prefix = folder
        self._members: dict[str, bytes] | None = None

    def read(self, names: list[str]) -> dict[str, tuple[bytes, str]]:
        """Contents and display name (for errors) of each member file named in ``names``."""
        if self.folder is not None:
            out = {}
            for name in names:
                file = self.folder / name
                if not file.is_file():
                    raise DataError(f"missing CIFAR file {file}")
                try:
                    out[name] = (file.read_bytes(), str(file))
                except OSError as exc:
                    raise DataError(f"{file}: cannot read ({exc.strerror or exc})") from None
            return out
        return self._read_archive(names)

    def _read_archive(self, names: list[str]) -> dict[str, tuple[bytes, str]]:
        assert self.archive is not None
        wanted = {f"{self.prefix}/{name}": name for name in names}
        found: dict[str, bytes] = {}
        try:
            # One sequential pass: seeking backwards in a gzip stream would decompress it again.
            with tarfile.open(self.archive, mode="r:*") as tar:
                for member in tar:
                    key = member.name[2:] if member.name.startswith("./") else member.name
                    if key in wanted and member.isfile():
                        handle = tar.extractfile(member)
                        if handle is not None:
                            found[wanted[key]] = handle.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{self.archive}: not a readable tar.gz archive ({exc})") from None
        for member, name in wanted.items():
            if name not in found:
                raise DataError(f"{self.archive}: archive has no member {member}")
        return {name: (found[name], f"{self.archive}:{self.prefix}/{name}") for name in names}


def _as_dict(obj: Any, keys: list[bytes], where: str) -> dict[bytes, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    missing = [k.decode() for k in keys if k not in obj]
    if missing:
        raise DataError(f"{where}: pickled dict lacks key(s) {', '.join(missing)}")
    return obj


def _batch(blob: bytes, where: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` and labels of one pickled batch, validated."""
    batch = _as_dict(restricted_loads(blob, where), [b"data", label_key], where)
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{where}: data must be a uint8 array of shape (N, {IMAGE_BYTES}), found {shape}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: {label_key.decode()} is not a list of integers") from None
    if labels.shape != (len(data),):
        raise DataError(f"{where}: {len(data)} images but {label_key.decode()} of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.max() if labels.max() >= num_classes else labels.min())
        raise DataError(f"{where}: label {bad} outside 0..{num_classes - 1}")
    # Each row is the R plane, then G, then B, each 32x32 row-major: exactly (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels


def _names(blob: bytes, where: str, key: bytes, count: int) -> list[str]:
    meta = _as_dict(restricted_loads(blob, where), [key], where)
    names = meta[key]
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{where}: {key.decode()} must be a list of {count} names")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def _split(batches: list[tuple[np.ndarray, np.ndarray]]) -> Split:
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))


def load_cifar10(root: str | None) -> SourceData:
    """CIFAR-10 (50,000 + 10,000 32x32 colour images, 10 classes) from the folder or archive at ``root``.

    ``root`` may hold ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``, or be either one.
    """
    files = _Files(root, "cifar-10-batches-py", "cifar-10-python.tar.gz", "batches.meta")
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    blobs = files.read([*train_names, "test_batch", "batches.meta"])
    classes = _names(*blobs["batches.meta"], b"label_names", 10)
    train = _split([_batch(*blobs[name], b"labels", 10) for name in train_names])
    test = _split([_batch(*blobs["test_batch"], b"labels", 10)])
    return SourceData(train=train, test=test, class_names=classes, augment=CIFAR_AUGMENT,
                      mean=CIFAR10_MEAN, std=CIFAR10_STD)


def load_cifar100(root: str | None, label_kind: Literal["fine", "coarse"] = "fine") -> SourceData:
    """CIFAR-100 from the folder or archive at ``root``, with its 100 fine or 20 coarse labels.

    ``root`` may hold ``cifar-100-python.tar.gz`` or ``cifar-100-python/``, or be either one.
    """
    if label_kind not in ("fine", "coarse"):
        raise ValueError(f"label_kind must be 'fine' or 'coarse', not {label_kind!r}")
    count = 100 if label_kind == "fine" else 20
    files = _Files(root, "cifar-100-python", "cifar-100-python.tar.gz", "meta")
    blobs = files.read(["train", "test", "meta"])
    classes = _names(*blobs["meta"], f"{label_kind}_label_names".encode(), count)
    label_key = f"{label_kind}_labels".encode()
    train = _split([_batch(*blobs["train"], label_key, count)])
    test = _split([_batch(*blobs["test"], label_key, count)])
    groups = _coarse_groups(*blobs["train"]) if label_kind == "fine" else None
    return SourceData(train=train, test=test, class_names=classes, augment=CIFAR_AUGMENT,
                      mean=CIFAR100_MEAN, std=CIFAR100_STD, class_groups=groups)


def _coarse_groups(blob: bytes, where: str) -> list[list[int]] | None:
    """The 20 superclasses as groups of fine labels, read off the training batch's (fine, coarse) pairs.

    None when the file carries no usable ``coarse_labels`` (the semantic metric is then not reported).
    """
    batch = restricted_loads(blob, where)
    if not isinstance(batch, dict) or b"coarse_labels" not in batch or b"fine_labels" not in batch:
        return None
    try:
        fine = np.asarray(batch[b"fine_labels"], dtype=np.int64)
        coarse = np.asarray(batch[b"coarse_labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return None
    if fine.shape != coarse.shape:
        return None
    groups: dict[int, set[int]] = {}
    for f, c in set(zip(fine.tolist(), coarse.tolist())):
        groups.setdefault(c, set()).add(f)
    members = [f for g in groups.values() for f in g]
    if len(members) != len(set(members)):  # a fine class in two superclasses: not a grouping
        return None
    return [sorted(g) for _, g in sorted(groups.items())]


@register("cifar10")
def load_cifar10_source(cfg: DataConfig) -> SourceData:
    """CIFAR-10 from ``data.root``; augmentation 4-pixel translation and horizontal flips."""
    return load_cifar10(cfg.root)


@register("cifar100")
def load_cifar100_source(cfg: DataConfig) -> SourceData:
    """CIFAR-100 with its 100 fine labels from ``data.root`` (coarse labels: :func:`load_cifar100`)."""
    return load_cifar100(cfg.root, "fine")
