"""File-backed data sources: IDX (MNIST, Fashion-MNIST), CIFAR pickles, and image folders.

Every test writes small files in the exact on-disk format to tmp_path and loads them through
``kdgen.data.load_source``, so the format readers and the registry are exercised together.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdgen.config import DataConfig
from kdgen.data import load_source
from kdgen.data.cifar import load_cifar100, restricted_loads
from kdgen.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT
from kdgen.data.imagefolder import ImageFolderDataset, random_resized_crop, scan_split
from kdgen.errors import DataError

RNG = np.random.default_rng(0)

# ---------------------------------------------------------------- IDX


def write_idx(path: Path, array: np.ndarray, gz: bool = False, type_code: int = 0x08) -> Path:
    """An IDX file with a real header: 00 00 type ndims, big-endian uint32 dims, then the bytes."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist(root: Path, gz: bool, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, array in arrays.items():
        write_idx(root / (f"{name}.gz" if gz else name), array, gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = make_mnist(tmp_path, gz)
    source = load_source(DataConfig(name="mnist", root=str(tmp_path)))
    assert source.train.images.shape == (20, 1, 28, 28) and source.test.images.shape == (10, 1, 28, 28)
    assert source.train.images.dtype == torch.uint8 and source.train.labels.dtype == torch.int64
    assert np.array_equal(source.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(source.test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(source.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert source.class_names == [str(d) for d in range(10)]
    assert source.augment.translate == 2 and not source.augment.hflip


def test_fashion_mnist_from_root_gzip_detected_by_content(tmp_path: Path) -> None:
    # Gzipped content without the .gz suffix: detection must go by the magic bytes.
    arrays = make_mnist(tmp_path, gz=False)
    for name, array in arrays.items():
        write_idx(tmp_path / name, array, gz=True)
    source = load_source(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    assert np.array_equal(source.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert source.class_names == FASHION_MNIST_CLASSES and source.augment.hflip


def test_mnist_needs_root() -> None:
    with pytest.raises(DataError, match="data.root"):
        load_source(DataConfig(name="mnist"))


def test_idx_missing_file(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_source(DataConfig(name="mnist", root=str(tmp_path)))


# (how the training-images file is damaged, whether it is then gzipped, expected message)
IDX_CORRUPTIONS = {
    "truncated": (lambda raw: raw[:-3], False, "truncated: header declares 20x28x28"),
    "truncated-gzipped": (lambda raw: raw[:-3], True, "truncated: header declares"),
    "trailing-bytes": (lambda raw: raw + b"\0", False, "1 trailing bytes"),
    "wrong-magic": (lambda raw: b"\x89PNG" + raw[4:], False, "not an IDX file"),
    "float32-type": (lambda raw: raw[:2] + b"\x0d" + raw[3:], False, r"IDX element type 0x0d \(float32\) is not supported"),
    "broken-gzip": (lambda raw: gzip.compress(raw)[:-20], False, "corrupt or truncated gzip"),
}


@pytest.mark.parametrize("case", IDX_CORRUPTIONS)
def test_idx_corrupt_file(tmp_path: Path, case: str) -> None:
    damage, gz, message = IDX_CORRUPTIONS[case]
    make_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = damage(path.read_bytes())
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=f"train-images-idx3-ubyte: {message}"):
        load_source(DataConfig(name="mnist", root=str(tmp_path)))


def test_idx_label_outside_class_range(tmp_path: Path) -> None:
    arrays = make_mnist(tmp_path, gz=False)
    labels = arrays["train-labels-idx1-ubyte"].copy()
    labels[3] = 10
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: label 10 outside 0..9"):
        load_source(DataConfig(name="mnist", root=str(tmp_path)))


def test_idx_count_mismatch(tmp_path: Path) -> None:
    arrays = make_mnist(tmp_path, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", arrays["t10k-labels-idx1-ubyte"][:-1], gz=True)
    with pytest.raises(DataError, match="9 labels but t10k-images-idx3-ubyte.gz has 10 images"):
        load_source(DataConfig(name="mnist", root=str(tmp_path)))


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="Fashion-MNIST package not installed")
def test_real_fashion_mnist() -> None:
    source = load_source(DataConfig(name="fashion-mnist"))
    assert source.train.images.shape == (60000, 1, 28, 28)
    assert source.test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(source.train.labels, minlength=10), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(source.test.labels, minlength=10), torch.full((10,), 1000))


# ---------------------------------------------------------------- CIFAR


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes and ASCII text as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as in the real files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_ascii_text(self, obj: str) -> None:
        self.save_py2_str(obj.encode("ascii"))  # numpy's dtype spec "u1" and byte order "|"

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_ascii_text


def dumps(obj: object, py2: bool = False) -> bytes:
    if not py2:
        return pickle.dumps(obj, protocol=2)
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    # The originals were written by numpy 1.x, which spells the module numpy.core.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar10_members(n: int = 3, py2: bool = False) -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    """Pickles of the real CIFAR-10 member names; returns them and the train data/labels written."""
    data = RNG.integers(0, 256, (5 * n + n, 3072), dtype=np.uint8)
    labels = np.arange(len(data)) % 10
    members = {}
    for i in range(5):
        rows = slice(i * n, (i + 1) * n)
        members[f"data_batch_{i + 1}"] = dumps({b"batch_label": b"training batch", b"labels": labels[rows].tolist(),
                                                b"data": data[rows], b"filenames": [b"a.png"] * n}, py2)
    members["test_batch"] = dumps({b"labels": labels[5 * n:].tolist(), b"data": data[5 * n:]}, py2)
    members["batches.meta"] = dumps({b"label_names": [f"c{i}".encode() for i in range(10)],
                                     b"num_cases_per_batch": n, b"num_vis": 3072}, py2)
    return members, data, labels


def write_tar(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def write_folder(path: Path, members: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    for name, blob in members.items():
        (path / name).write_bytes(blob)
    return path


@pytest.mark.parametrize("layout", ["archive-in-root", "root-is-archive", "folder-in-root", "root-is-folder", "py2"])
def test_cifar10_round_trip(tmp_path: Path, layout: str) -> None:
    members, data, labels = cifar10_members(py2=layout == "py2")
    root = tmp_path
    if layout in ("archive-in-root", "py2"):
        write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    elif layout == "root-is-archive":
        root = write_tar(tmp_path / "downloaded.tgz", "cifar-10-batches-py", members)
    elif layout == "folder-in-root":
        write_folder(tmp_path / "cifar-10-batches-py", members)
    else:
        root = write_folder(tmp_path / "elsewhere", members)
    source = load_source(DataConfig(name="cifar10", root=str(root)))
    assert source.train.images.shape == (15, 3, 32, 32) and source.test.images.shape == (3, 3, 32, 32)
    assert source.train.images.dtype == torch.uint8
    images = torch.cat([source.train.images, source.test.images]).numpy()
    # Channel layout: byte c*1024 + y*32 + x is channel c (R, G, B), row y, column x.
    for i, c, y, x in [(0, 0, 0, 0), (4, 1, 5, 31), (16, 2, 31, 7)]:
        assert images[i, c, y, x] == data[i, c * 1024 + y * 32 + x]
    assert np.array_equal(images.reshape(len(images), -1), data)
    assert np.array_equal(torch.cat([source.train.labels, source.test.labels]).numpy(), labels)
    assert source.class_names == [f"c{i}" for i in range(10)]
    assert source.mean == (0.4914, 0.4822, 0.4465) and source.augment.translate == 4


def cifar100_members(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = RNG.integers(0, 256, (6, 3072), dtype=np.uint8)
    fine, coarse = np.array([0, 99, 42, 7, 7, 1]), np.array([0, 19, 3, 4, 4, 1])
    members = {
        "train": dumps({b"data": data[:4], b"fine_labels": fine[:4].tolist(), b"coarse_labels": coarse[:4].tolist()}),
        "test": dumps({b"data": data[4:], b"fine_labels": fine[4:].tolist(), b"coarse_labels": coarse[4:].tolist()}),
        "meta": dumps({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                       b"coarse_label_names": [f"k{i}".encode() for i in range(20)]}),
    }
    write_tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", members)
    return data, fine, coarse


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    data, fine, coarse = cifar100_members(tmp_path)
    source = load_source(DataConfig(name="cifar100", root=str(tmp_path)))
    assert source.num_classes == 100 and source.class_names[99] == "f99"
    assert np.array_equal(source.train.images.numpy().reshape(4, -1), data[:4])
    assert np.array_equal(source.train.labels.numpy(), fine[:4])
    coarse_source = load_cifar100(str(tmp_path), label_kind="coarse")
    assert coarse_source.num_classes == 20 and coarse_source.class_names[19] == "k19"
    assert np.array_equal(coarse_source.test.labels.numpy(), coarse[4:])


def test_cifar_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_source(DataConfig(name="cifar10", root=str(tmp_path)))


def test_cifar_missing_member(tmp_path: Path) -> None:
    members, _, _ = cifar10_members()
    del members["data_batch_4"]
    write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="no member cifar-10-batches-py/data_batch_4"):
        load_source(DataConfig(name="cifar10", root=str(tmp_path)))


@pytest.mark.parametrize("bad, message", [
    ([1, 2, 3], "expected a pickled dict"),
    ({b"data": np.zeros((3, 3072), np.uint8)}, "lacks key.*labels"),
    ({b"data": np.zeros((3, 1024), np.uint8), b"labels": [0, 1, 2]}, "shape"),
    ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 10, 2]}, "label 10 outside 0..9"),
    ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, "3 images but labels"),
])
def test_cifar_malformed_batch(tmp_path: Path, bad: object, message: str) -> None:
    members, _, _ = cifar10_members()
    members["data_batch_2"] = dumps(bad)
    folder = write_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=f"data_batch_2: .*{message}"):
        load_source(DataConfig(name="cifar10", root=str(folder)))


class _Payload:
    """Unpickling this calls ``func(*args)``: the classic pickle code-execution attack."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


@pytest.mark.parametrize("attack", ["os.system", "open"])
def test_cifar_forbidden_global_runs_nothing(tmp_path: Path, attack: str) -> None:
    marker = tmp_path / "pwned"
    payload = _Payload(os.system, f"touch {marker}") if attack == "os.system" else _Payload(open, str(marker), "w")
    members, _, _ = cifar10_members()
    members["data_batch_1"] = dumps({b"data": payload, b"labels": [0]})
    write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="data_batch_1: refusing to unpickle.*forbidden global"):
        load_source(DataConfig(name="cifar10", root=str(tmp_path)))
    assert not marker.exists()


def test_restricted_unpickler_refuses_object_arrays() -> None:
    # Object arrays would carry arbitrary objects; only plain numeric arrays are rebuilt.
    with pytest.raises(DataError, match="where: not a readable CIFAR pickle"):
        restricted_loads(pickle.dumps(np.array([1, None], dtype=object), protocol=2), "where")
    assert restricted_loads(pickle.dumps(np.arange(4, dtype=">i4"), protocol=2), "w").tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------- image folders


def save_image(path: Path, size: tuple[int, int], seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def make_folder(root: Path) -> dict[str, np.ndarray]:
    saved = {
        "train/cat/a.png": save_image(root / "train/cat/a.png", (16, 16), 1),
        "train/cat/b.jpg": save_image(root / "train/cat/b.jpg", (40, 24), 2),
        "train/dog/c.PNG": save_image(root / "train/dog/c.PNG", (20, 30), 3),
        "val/cat/d.jpeg": save_image(root / "val/cat/d.jpeg", (17, 33), 4),
        "val/dog/e.png": save_image(root / "val/dog/e.png", (16, 16), 5),
    }
    (root / "train/dog/notes.txt").write_text("not an image, ignored")
    return saved


def folder_config(root: Path) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), train_crop=12, eval_resize=16, eval_crop=16)


def test_imagefolder_resident(tmp_path: Path) -> None:
    saved = make_folder(tmp_path)
    source = load_source(folder_config(tmp_path))
    assert source.class_names == ["cat", "dog"]
    assert source.train.images.shape == (3, 3, 16, 16) and source.test.images.shape == (2, 3, 16, 16)
    assert source.train.images.dtype == torch.uint8
    assert source.train.labels.tolist() == [0, 0, 1] and source.test.labels.tolist() == [0, 1]
    # A PNG already at the target size passes through unchanged (lossless, no resampling).
    assert np.array_equal(source.train.images[0].permute(1, 2, 0).numpy(), saved["train/cat/a.png"])
    assert source.augment.translate == 2 and source.augment.hflip


def test_imagefolder_dataset_transforms(tmp_path: Path) -> None:
    make_folder(tmp_path)
    cfg = folder_config(tmp_path)
    resident = load_source(cfg)
    evaluation = ImageFolderDataset.from_config(cfg, "val", train=False)
    assert len(evaluation) == 2
    for i in range(2):
        image, label = evaluation[i]
        assert torch.equal(image, resident.test.images[i]) and label == resident.test.labels[i]
    training = ImageFolderDataset.from_config(cfg, "train", train=True)
    torch.manual_seed(0)
    first = [training[i][0] for i in range(3)]
    torch.manual_seed(0)
    assert all(torch.equal(a, training[i][0]) for i, a in enumerate(first))  # seeded = reproducible
    assert all(a.shape == (3, 12, 12) and a.dtype == torch.uint8 for a in first)
    torch.manual_seed(1)
    assert len({training[0][0].numpy().tobytes() for _ in range(8)}) > 1  # crops really are random


def test_random_resized_crop_elongated_image() -> None:
    strip = Image.fromarray(np.zeros((2, 200, 3), np.uint8))  # 200x2: no draw fits, fallback path
    assert random_resized_crop(strip, 10).size == (10, 10)


def test_imagefolder_unreadable_image(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "train/dog/broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg"):
        load_source(folder_config(tmp_path))


def test_imagefolder_empty_class_folder(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "train/bird").mkdir()
    with pytest.raises(DataError, match=r"class folder .*bird has no images"):
        load_source(folder_config(tmp_path))


def test_imagefolder_val_class_not_in_train(tmp_path: Path) -> None:
    make_folder(tmp_path)
    save_image(tmp_path / "val/fish/f.png", (16, 16), 6)
    with pytest.raises(DataError, match="class folder fish is not among the training classes"):
        load_source(folder_config(tmp_path))


def test_imagefolder_missing_val(tmp_path: Path) -> None:
    save_image(tmp_path / "train/cat/a.png", (16, 16), 1)
    with pytest.raises(DataError, match="missing image folder .*val"):
        load_source(folder_config(tmp_path))
    assert scan_split(tmp_path / "train")[1] == ["cat"]
