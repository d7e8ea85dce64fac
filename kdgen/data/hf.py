"""Hugging Face ``datasets`` the user already has on this machine: ``data.name: hf`` (the ``[hf]`` extra).

``data.root`` is one of three things, tried in this order:

1. a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (it holds ``dataset_dict.json``
   or ``state.json``): read with ``datasets.load_from_disk``;
2. any other folder, e.g. Parquet or Arrow files named by split as the Hub lays them out (``train-*.parquet``,
   ``data/test-00000-of-00001.parquet``, a README.md with ``configs``): read with ``datasets.load_dataset(folder)``,
   which infers the splits from the file names (``datasets`` keeps an Arrow copy in its cache, as it always does);
3. a Hub id (``fashion_mnist``, ``user/name``) already on this machine: the copy ``datasets.load_dataset``
   prepared when it fetched it, else the files ``hf download --repo-type dataset`` put in the Hub cache; read in
   offline mode, so a run never downloads anything.

Splits: the dataset's ``train`` is kdgen's train (val is ``data.val_fraction`` of it, held out as for every
source, unless ``data.val_split`` names the dataset's own split to use as val) and its ``test`` is kdgen's test.
Images are decoded once with Pillow and kept resident as uint8 ``(N, C, H, W)``: one channel when every image
is greyscale (mode ``L`` or ``1``), else RGB (greyscale images replicated, alpha dropped). Every image must have
the same size; this source does not resize or stream (use ``data.name: imagefolder`` for that).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from kdgen.data import register
from kdgen.data.base import AugmentSpec, SourceData, Split
from kdgen.data.settings import DataConfig
from kdgen.errors import DataError


# A Hub id: "name" or "owner/name" (letters, digits, "-", "_", "."), as the Hub allows them.
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# Images handed to the decoding threads at a time: bounds the encoded bytes held at once.
_IMAGES_PER_BATCH = 256
# Greyscale modes kept as one channel ("1" is bilevel black and white); everything else becomes RGB.
_GREY_MODES = ("L", "1")
# The switches of offline mode, as environment variables and as the module constants read from them at import.
_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# Pillow signals undecodable bytes in several ways; all of them mean "this image is bad".
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# load_dataset's own builders, in case datasets stops exporting its list (see _packaged_builders).
_KNOWN_BUILDERS = {"arrow", "audiofolder", "cache", "csv", "imagefolder", "json", "pandas", "parquet", "sql",
                   "text", "videofolder", "webdataset", "xml"}


def require_datasets() -> ModuleType:
    """The ``datasets`` module, or :class:`DataError` saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise DataError("data.name=hf needs the datasets package: pip install 'kdgen[hf]'") from None
    return datasets


def _load_errors(datasets: ModuleType) -> tuple[type[BaseException], ...]:
    """What ``datasets`` raises for data it cannot open: missing or malformed files, a dataset that needs a
    loading script or a config name, a cache miss in offline mode."""
    import pyarrow

    return OSError, ValueError, RuntimeError, datasets.exceptions.DatasetsError, pyarrow.ArrowException


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (the command line prints user errors as one line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def offline_and_quiet(datasets: ModuleType) -> Iterator[None]:
    """Run ``datasets`` with the Hub switched off and without progress bars or info logs, then restore both.

    ``datasets`` and ``huggingface_hub`` read HF_HUB_OFFLINE once, at import, into module constants, so setting
    the environment variable now would not be seen: the constants are patched (and the variables set, for any
    code that reads them later) for the duration of the call.
    """
    import huggingface_hub.constants as hub_constants

    # Only the flags this version has (datasets 2.x had HF_DATASETS_OFFLINE alone).
    flags = {(module, name): getattr(module, name) for module in (datasets.config, hub_constants)
             for name in _OFFLINE_FLAGS if hasattr(module, name)}
    saved_env = {name: os.environ.get(name) for name in _OFFLINE_FLAGS}
    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    for module, name in flags:
        setattr(module, name, True)
    os.environ.update({name: "1" for name in _OFFLINE_FLAGS})
    datasets.disable_progress_bars()  # the command line's stderr carries one line per problem, not bars
    datasets.logging.set_verbosity_error()  # e.g. "Using the latest cached version..." on every cache hit
    try:
        yield
    finally:
        for (module, name), value in flags.items():
            setattr(module, name, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if bars_were_on:
            datasets.enable_progress_bars()
        datasets.logging.set_verbosity(verbosity)


def open_splits(datasets: ModuleType, root: str) -> dict[str, Any]:
    """``{split name: datasets.Dataset}`` of ``root``: a save_to_disk folder, a folder of data files, or a Hub
    id in the local cache (see the module docstring), read with the Hub switched off. Raises
    :class:`DataError` with one line otherwise."""
    folder = Path(root).expanduser()
    with offline_and_quiet(datasets):
        if folder.is_dir():
            loaded = _open_folder(datasets, folder)
        elif folder.exists():
            raise DataError(f"data.root {root}: is a file; give the folder that holds the dataset's files")
        elif root in _packaged_builders():
            raise DataError(f"data.root {root}: no such folder ({root!r} names a datasets builder, not a dataset)")
        elif HUB_ID.match(root):
            loaded = _open_cached_hub_id(datasets, root)
        else:
            raise DataError(f"data.root {root}: no such folder (nor a Hub id like name or owner/name)")
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    raise DataError(f"data.root {root}: one Dataset without splits; kdgen needs a DatasetDict with train and test "
                    f"splits (save one with DatasetDict(train=..., test=...).save_to_disk(folder))")


def _packaged_builders() -> set[str]:
    """Names ``load_dataset`` reads as its own builders ("parquet", "csv", "imagefolder", ...), never as Hub ids:
    ``load_dataset("parquet")`` would read the files of the working directory."""
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:
        return set(_KNOWN_BUILDERS)
    return set(_PACKAGED_DATASETS_MODULES) | _KNOWN_BUILDERS


def _open_folder(datasets: ModuleType, folder: Path) -> Any:
    """A save_to_disk folder through ``load_from_disk``; any other folder through ``load_dataset``."""
    written_by_save_to_disk = any((folder / name).is_file() for name in (
        datasets.config.DATASETDICT_JSON_FILENAME, datasets.config.DATASET_STATE_JSON_FILENAME))
    try:
        if written_by_save_to_disk:
            return datasets.load_from_disk(str(folder))
        # An absolute path: load_dataset reads a bare "parquet" or "csv" as its own builder, not as a folder.
        return datasets.load_dataset(str(folder.resolve()))
    except _load_errors(datasets) as exc:
        raise DataError(f"data.root {folder}: datasets cannot read it ({_one_line(exc)})") from None


def _open_cached_hub_id(datasets: ModuleType, hub_id: str) -> Any:
    """The Hub dataset ``hub_id`` from this machine alone (offline mode is on: nothing is fetched): the copy
    ``datasets.load_dataset`` prepared when it fetched it, else the files ``huggingface_hub`` downloaded
    (``hf download --repo-type dataset``), read as a folder."""
    try:
        return datasets.load_dataset(hub_id)
    except _load_errors(datasets) as exc:
        # Offline, a miss is "couldn't reach the Hub"; a hit that cannot be read (two cached configs, say) is not.
        if not isinstance(exc, (ConnectionError, datasets.exceptions.DatasetNotFoundError)):
            raise DataError(f"data.root {hub_id}: datasets cannot read the cached copy ({_one_line(exc)})") from None
    snapshot = _hub_snapshot(hub_id)
    if snapshot is not None:
        return _open_folder(datasets, snapshot)
    raise DataError(f"data.root {hub_id}: no such folder, and not in the local Hugging Face cache "
                    f"({datasets.config.HF_DATASETS_CACHE}); fetch it once, online, with python -c "
                    f"\"import datasets; datasets.load_dataset('{hub_id}')\" (into the same cache), then run again")


def _hub_snapshot(hub_id: str) -> Path | None:
    """The folder of ``hub_id``'s files in huggingface_hub's own cache, if they were downloaded; else None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, repo_type="dataset", local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError is a FileNotFoundError; a bad id a ValueError
        return None


def split_roles(available: Sequence[str], val_split: str | None, where: str) -> dict[str, str]:
    """``{"train": ..., "test": ..., "val": ...}``: which of the dataset's splits plays each kdgen role ("val"
    only when ``data.val_split`` is set). Raises :class:`DataError` naming the splits the dataset has."""
    have = ", ".join(available) or "none"
    if val_split in ("train", "test"):
        raise DataError(f"data.val_split={val_split} is already kdgen's {val_split} split; name another split "
                        f"of the dataset ({have})")
    if val_split is not None and val_split not in available:
        raise DataError(f"{where}: data.val_split={val_split}: no such split; the dataset has: {have}")
    for name in ("train", "test"):
        if name not in available:
            raise DataError(f"{where}: no {name!r} split (kdgen's {name} split); the dataset has: {have}")
    return {"train": "train", "test": "test"} | ({"val": val_split} if val_split is not None else {})


def _kind(feature: Any) -> str:
    """A column's type as a reader knows it: ``int64``, ``string`` for plain values, else ``Image``,
    ``ClassLabel``, ``List``..."""
    return str(feature.dtype) if type(feature).__name__ == "Value" else type(feature).__name__


def _describe_columns(features: Any) -> str:
    """``name (type), ...`` for error messages."""
    return ", ".join(f"{name} ({_kind(feature)})" for name, feature in features.items())


def pick_column(features: Any, wanted: str | None, feature_type: type, key: str, where: str) -> str:
    """The column ``wanted`` (checked to exist), else the one column whose feature is ``feature_type``.

    Raises :class:`DataError` listing the columns when ``wanted`` is not one, or when no column or several
    columns have that feature (then ``key`` must name one).
    """
    if wanted is not None:
        if wanted not in features:
            raise DataError(f"{where}: {key}={wanted} is not a column; columns: {_describe_columns(features)}")
        return wanted
    found = [name for name, feature in features.items() if isinstance(feature, feature_type)]
    if len(found) == 1:
        return found[0]
    what = "no column" if not found else f"{len(found)} columns ({', '.join(found)})"
    raise DataError(f"{where}: {what} of type {feature_type.__name__}; set {key} to one of: "
                    f"{_describe_columns(features)}")


def labels_of(datasets: ModuleType, split: Any, column: str, where: str) -> np.ndarray:
    """The class ids of ``column`` as int64; :class:`DataError` unless they are non-negative integers."""
    feature = split.features[column]
    is_integer = isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and re.fullmatch(r"u?int\d+", feature.dtype) is not None)
    if not is_integer:
        raise DataError(f"{where}: labels in column {column!r} are {_kind(feature)}, not integer class ids; "
                        f"set data.label_column, or encode them with "
                        f"Dataset.class_encode_column({column!r})")
    labels = np.asarray(split.with_format("numpy")[column], dtype=np.int64)
    if len(labels) and labels.min() < 0:
        raise DataError(f"{where}: column {column!r} has label {int(labels.min())}, not a class id "
                        f"(unlabelled rows? kdgen needs a label on every image)")
    return labels


def class_names_of(datasets: ModuleType, splits: dict[str, Any], column: str,
                   labels: dict[str, np.ndarray], where: str) -> list[str]:
    """The ClassLabel's names (the same in every split used), else ``"0".."K-1"`` with K = largest id + 1."""
    features = {role: split.features[column] for role, split in splits.items()}
    if isinstance(features["train"], datasets.ClassLabel):
        names = list(features["train"].names)
        for role, feature in features.items():
            if not isinstance(feature, datasets.ClassLabel) or list(feature.names) != names:
                raise DataError(f"{where}: the {role} split's classes in column {column!r} differ from train's")
        for role, ids in labels.items():
            if len(ids) and ids.max() >= len(names):
                raise DataError(f"{where}: {role} label {int(ids.max())} is not one of the {len(names)} classes")
        return names
    largest = max(int(ids.max()) for ids in labels.values() if len(ids))
    return [str(i) for i in range(largest + 1)]


def _to_array(image: Any) -> np.ndarray:
    """A decoded Pillow image as uint8 ``(H, W)`` (greyscale) or ``(H, W, 3)`` (anything else, as RGB)."""
    # np.array copies: torch.from_numpy warns on the read-only buffer np.asarray would share with Pillow.
    return np.array(image.convert("L" if image.mode in _GREY_MODES else "RGB"), dtype=np.uint8)


def decode_images(datasets: ModuleType, split: Any, column: str, where: str) -> list[np.ndarray]:
    """Every image of ``column``, decoded by ``datasets``' Image feature (bytes or a path) in threads.

    A column that is not an Image feature is cast to one first (``datasets`` reads paths and bytes that way).
    Raises :class:`DataError` naming the row that does not decode.
    """
    feature = split.features[column]
    decoder = datasets.Image(mode=feature.mode) if isinstance(feature, datasets.Image) else datasets.Image()
    try:
        # decode=False hands over the stored bytes/path, so the decoding can run in threads (Pillow frees the GIL).
        encoded = split.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    except _load_errors(datasets) + (TypeError,) as exc:
        raise DataError(f"{where}: column {column!r} does not hold images ({_one_line(exc)}); set "
                        f"data.image_column; columns: {_describe_columns(split.features)}") from None

    def decode(row_and_value: tuple[int, Any]) -> np.ndarray:
        row, value = row_and_value
        if value is None:
            raise DataError(f"{where}: row {row} of column {column!r} has no image")
        try:
            return _to_array(decoder.decode_example(value))
        except _DECODE_ERRORS as exc:
            raise DataError(f"{where}: row {row} of column {column!r} does not decode as an image "
                            f"({type(exc).__name__}: {_one_line(exc)})") from None

    arrays: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for batch in encoded.iter(batch_size=_IMAGES_PER_BATCH):
            values = batch[column]
            arrays.extend(pool.map(decode, enumerate(values, start=len(arrays))))
    return arrays


def stack_images(arrays_by_role: dict[str, list[np.ndarray]], where: str) -> dict[str, torch.Tensor]:
    """One uint8 ``(N, C, H, W)`` tensor per role. C is 1 when every image of every role is greyscale, else 3
    (greyscale images replicated, as Pillow's RGB conversion does); all images must share one size."""
    first = next(arrays[0] for arrays in arrays_by_role.values() if arrays)
    size = first.shape[:2]
    channels = 3 if any(a.ndim == 3 for arrays in arrays_by_role.values() for a in arrays) else 1
    stacked = {}
    for role, arrays in arrays_by_role.items():
        images = torch.empty((len(arrays), channels, *size), dtype=torch.uint8)
        for row, array in enumerate(arrays):
            if array.shape[:2] != size:
                raise DataError(f"{where}: images differ in size ({size[1]}x{size[0]} and {array.shape[1]}x"
                                f"{array.shape[0]} at {role} row {row}); data.name=hf keeps images resident at "
                                f"one size: resize them first (e.g. Dataset.map), or use data.name=imagefolder")
            chw = torch.from_numpy(array).unsqueeze(0) if array.ndim == 2 else torch.from_numpy(array).permute(2, 0, 1)
            images[row] = chw.expand(channels, -1, -1)
        stacked[role] = images
    return stacked


@register("hf")
def load_hf(cfg: DataConfig) -> SourceData:
    """A Hugging Face dataset from ``data.root``: a save_to_disk folder, a folder of Parquet/Arrow files, or a
    Hub id already in the local cache (never downloaded here); the ``[hf]`` extra.

    Splits: the dataset's ``train`` is train (``data.val_fraction`` of it held out as val, unless
    ``data.val_split`` names the dataset's split to use as val) and its ``test`` is test. Columns: the one
    ``datasets.Image`` column and the one ``ClassLabel`` column, unless ``data.image_column`` /
    ``data.label_column`` name them. Class names come from the ClassLabel, else are "0".."K-1". Images stay
    resident as uint8 (one size for all; no streaming). Augmentation: translation by an eighth of the image
    side, no flips (the source cannot know whether a mirrored image keeps its class: ``data.augment.hflip``).
    """
    datasets = require_datasets()
    with offline_and_quiet(datasets):  # decoding too: an image stored as a URL must not be fetched
        return _load(datasets, cfg)


def _load(datasets: ModuleType, cfg: DataConfig) -> SourceData:
    """:func:`load_hf` with the Hub switched off."""
    if cfg.root is None:
        raise DataError("data source hf needs data.root: a folder written by save_to_disk, a folder of "
                        "Parquet/Arrow files, or a Hub id (name or owner/name) in the local Hugging Face cache")
    if cfg.stream:
        raise DataError("data.stream: data.name=hf keeps images resident and does not stream; unset data.stream")
    where = f"hf {cfg.root}"
    available = open_splits(datasets, cfg.root)
    roles = split_roles(list(available), cfg.val_split, where)
    splits = {role: available[name] for role, name in roles.items()}
    features = splits["train"].features
    image_column = pick_column(features, cfg.image_column, datasets.Image, "data.image_column", where)
    label_column = pick_column(features, cfg.label_column, datasets.ClassLabel, "data.label_column", where)
    if image_column == label_column:
        raise DataError(f"{where}: data.image_column and data.label_column are both {image_column!r}")
    for role, split in splits.items():
        missing = [c for c in (image_column, label_column) if c not in split.features]
        if missing:
            raise DataError(f"{where}: the {roles[role]} split has no column {missing[0]!r}; columns: "
                            f"{_describe_columns(split.features)}")
    labels = {role: labels_of(datasets, split, label_column, f"{where} ({roles[role]})")
              for role, split in splits.items()}
    if not len(labels["train"]):
        raise DataError(f"{where}: the train split is empty")
    class_names = class_names_of(datasets, splits, label_column, labels, where)
    images = stack_images({role: decode_images(datasets, split, image_column, f"{where} ({roles[role]})")
                           for role, split in splits.items()}, where)
    resident = {role: Split(images[role], torch.from_numpy(labels[role])) for role in splits}
    return SourceData(train=resident["train"], test=resident["test"], val=resident.get("val"),
                      class_names=class_names,
                      augment=AugmentSpec(translate=max(1, images["train"].shape[-1] // 8), hflip=False))
