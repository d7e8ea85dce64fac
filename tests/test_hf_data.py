"""data.name=hf: Hugging Face datasets from a save_to_disk folder, a Parquet folder or the local Hub cache.

Every dataset here is built in memory with ``datasets`` itself; nothing is downloaded (the loader switches the
Hub off, and the datasets cache is a temporary folder).
"""

import glob
import json
import shutil
import sys

import numpy as np
import pytest

datasets = pytest.importorskip("datasets", reason="data.name=hf needs the [hf] extra (pip install -e '.[hf]')")

from kdgen.cli import main  # noqa: E402
from kdgen.config import DataConfig  # noqa: E402
from kdgen.data import load_bundle  # noqa: E402

datasets.disable_progress_bars()  # building the test data, too, without bars in the captured output

CLASSES = ["cat", "dog", "owl"]
SIZES = {"train": 40, "validation": 9, "test": 12}
# Run flags shared by the command-line cases: the loader fails (or succeeds) before anything heavy.
RUN = ["model.name=mlp", "train.epochs=1", "train.batch_size=8", "seeds=[0]", "generations.count=1",
       "tolerance.k=2", "--no-progress"]


def images(count, seed, mode="RGB", size=8):
    """``count`` PIL images whose pixels are a function of ``seed`` (so a test can compare them after loading)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(count)]


def split(count, seed, *, features=None, mode="RGB", size=8):
    """A split of ``count`` images with ClassLabel labels 0, 1, 2, 0, ... (an Image and a ClassLabel column)."""
    features = features or datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({"img": images(count, seed, mode, size), "label": [i % 3 for i in range(count)]},
                                      features=features)


def tiny_dict(**overrides):
    """train 40, validation 9, test 12 images of 8x8 RGB in three classes; ``overrides`` replace splits."""
    splits = {name: split(count, seed) for seed, (name, count) in enumerate(SIZES.items())}
    return datasets.DatasetDict({**splits, **overrides})


def write_parquet(dataset_dict, folder, hub_layout):
    """The splits as Parquet files: ``data/train-00000-of-00001.parquet`` as the Hub lays them out, or flat."""
    target = folder / "data" if hub_layout else folder
    target.mkdir(parents=True)
    for name, part in dataset_dict.items():
        part.to_parquet(str(target / (f"{name}-00000-of-00001.parquet" if hub_layout else f"{name}.parquet")))
    return folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The datasets cache (where load_dataset keeps its Arrow copies and looks up Hub ids) and huggingface_hub's
    download cache in temporary folders."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return cache


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same tiny dataset as a save_to_disk folder and as two Parquet folders."""
    root = tmp_path_factory.mktemp("hf")
    data = tiny_dict()
    data.save_to_disk(str(root / "saved"))
    return {"saved": root / "saved", "parquet-hub": write_parquet(data, root / "parquet-hub", hub_layout=True),
            "parquet-flat": write_parquet(data, root / "parquet-flat", hub_layout=False)}


def save(tmp_path, name, dataset_dict):
    """``dataset_dict`` saved to ``tmp_path/name``; the folder as a string."""
    dataset_dict.save_to_disk(str(tmp_path / name))
    return str(tmp_path / name)


@pytest.mark.parametrize("layout", ["saved", "parquet-hub", "parquet-flat"])
def test_a_bundle_loads_from_each_layout(layout, layouts):
    bundle = load_bundle(DataConfig(name="hf", root=str(layouts[layout]), val_fraction=0.25))
    assert bundle.class_names == CLASSES and bundle.channels == 3
    assert len(bundle.train) + len(bundle.val) == 40 and len(bundle.val) == 4 + 3 + 3  # 25 % of 14, 13, 13
    assert bundle.test.images.shape == (12, 3, 8, 8) and bundle.test.images.dtype.is_floating_point is False
    assert bundle.test.labels.tolist() == [i % 3 for i in range(12)]
    expected = np.stack([np.asarray(image) for image in images(12, seed=2)]).transpose(0, 3, 1, 2)
    assert np.array_equal(bundle.test.images.numpy(), expected)  # PNG round trip: the very pixels
    assert bundle.augment.translate == 1 and not bundle.augment.hflip


def test_val_split_uses_the_datasets_own_split_and_keeps_all_of_train(layouts):
    bundle = load_bundle(DataConfig(name="hf", root=str(layouts["saved"]), val_split="validation"))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 9, 12)
    assert bundle.val.labels.tolist() == [i % 3 for i in range(9)]
    narrowed = load_bundle(DataConfig(name="hf", root=str(layouts["saved"]), val_split="validation", classes=[2, 0]))
    assert narrowed.class_names == ["owl", "cat"] and len(narrowed.val) == 6 and set(narrowed.val.labels.tolist()) == {0, 1}


def test_columns_are_found_by_type_or_named(tmp_path):
    plain = datasets.Features({"id": datasets.Value("int64"), "pixels": datasets.Image(), "y": datasets.Value("int32")})

    def rows(count, seed):
        return datasets.Dataset.from_dict({"id": list(range(count)), "pixels": images(count, seed),
                                           "y": [i % 4 for i in range(count)]}, features=plain)

    root = save(tmp_path, "plain", datasets.DatasetDict(train=rows(16, 0), test=rows(8, 1)))
    with pytest.raises(Exception, match=r"data\.label_column.*id \(int64\), pixels \(Image\), y \(int32\)"):
        load_bundle(DataConfig(name="hf", root=root))
    bundle = load_bundle(DataConfig(name="hf", root=root, label_column="y", val_fraction=0.25))
    assert bundle.class_names == ["0", "1", "2", "3"] and bundle.test.labels.tolist() == [0, 1, 2, 3] * 2
    explicit = load_bundle(DataConfig(name="hf", root=root, image_column="pixels", label_column="y", val_fraction=0.25))
    assert explicit.test.images.shape == (8, 3, 8, 8)


def test_greyscale_stays_one_channel_and_mixed_modes_become_rgb(tmp_path):
    grey = tiny_dict(train=split(12, 5, mode="L"), test=split(6, 6, mode="L"))
    del grey["validation"]
    bundle = load_bundle(DataConfig(name="hf", root=save(tmp_path, "grey", grey), val_fraction=0.25))
    assert bundle.channels == 1 and bundle.test.images.shape == (6, 1, 8, 8)
    mixed = datasets.DatasetDict(train=split(12, 5, mode="L"), test=split(6, 6))
    bundle = load_bundle(DataConfig(name="hf", root=save(tmp_path, "mixed", mixed), val_fraction=0.25))
    assert bundle.channels == 3
    first = bundle.train.images[0]
    assert bool((first[0] == first[1]).all() and (first[1] == first[2]).all())  # grey replicated into RGB


def test_unset_keys_leave_config_yaml_and_unit_keys_as_before():
    assert not {"image_column", "label_column", "val_split"} & set(DataConfig().model_dump())
    dumped = DataConfig(name="hf", root="x", image_column="img", val_split="validation").model_dump()
    assert dumped["image_column"] == "img" and dumped["val_split"] == "validation" and "label_column" not in dumped


def fake_hub_cache(cache, source_folder, hub_id):
    """Put a Parquet dataset into ``cache`` where ``load_dataset(hub_id)`` would have left it after a download
    (``<owner>___<name>/default/<version>/<hash>/<name>-<split>.arrow``), without the network."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, name = hub_id.split("/")
    files = {part: sorted(glob.glob(str(source_folder / "data" / f"{part}-*.parquet"))) for part in SIZES}
    builder = Parquet(cache_dir=str(cache / "staging"), dataset_name=name, hash="0123abcd",
                      data_files=DataFilesDict.from_patterns(files, base_path=str(source_folder)))
    builder.download_and_prepare()
    (cache / f"{owner}___{name}").mkdir(parents=True)
    shutil.move(glob.glob(str(cache / "staging" / name / "*"))[0], str(cache / f"{owner}___{name}" / "default"))


def test_a_hub_id_in_the_local_cache_loads_offline(layouts, private_cache):
    fake_hub_cache(private_cache, layouts["parquet-hub"], "someone/tiny_pets")
    offline_before = datasets.config.HF_HUB_OFFLINE
    bundle = load_bundle(DataConfig(name="hf", root="someone/tiny_pets", val_split="validation"))
    assert bundle.class_names == CLASSES and (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 9, 12)
    assert datasets.config.HF_HUB_OFFLINE == offline_before  # offline only for the load


def test_a_hub_id_downloaded_with_hf_download_loads_from_the_hub_cache(layouts, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub-cache" / "datasets--someone--tiny_pets"  # huggingface_hub's layout for a dataset repo
    shutil.copytree(layouts["parquet-hub"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    bundle = load_bundle(DataConfig(name="hf", root="someone/tiny_pets", val_fraction=0.25))
    assert bundle.class_names == CLASSES and len(bundle.test) == 12


@pytest.fixture(scope="module")
def bad_roots(tmp_path_factory):
    """``{name: folder}`` of datasets that are wrong in one way each (and one that is right)."""
    root = tmp_path_factory.mktemp("bad")
    typed = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    garbage = datasets.Dataset.from_dict({"img": [{"bytes": b"not an image", "path": None}] * 3, "label": [0, 1, 2]},
                                         features=typed)
    words = datasets.Dataset.from_dict({"img": images(6, 0), "label": ["a", "b", "c"] * 2})
    unlabelled = split(6, 1).map(lambda row: {"label": -1})  # ClassLabel's "no label", as in ImageNet's test split
    two_images = datasets.Dataset.from_dict({"a": images(6, 0), "b": images(6, 1), "label": [0, 1, 2] * 2},
                                            features=datasets.Features({"a": datasets.Image(), "b": datasets.Image(),
                                                                        "label": datasets.ClassLabel(names=CLASSES)}))
    made = {
        "good": tiny_dict(),
        "no_test": datasets.DatasetDict(train=split(6, 0), validation=split(6, 1)),
        "undecodable": datasets.DatasetDict(train=split(6, 0), test=garbage),
        "words": datasets.DatasetDict(train=words, test=words),
        "unlabelled": datasets.DatasetDict(train=split(6, 0), test=unlabelled),
        "two_images": datasets.DatasetDict(train=two_images, test=two_images),
        "sizes": datasets.DatasetDict(train=split(6, 0), test=split(6, 1, size=10)),
        "single": split(6, 0),
    }
    return {name: save(root, name, data) for name, data in made.items()} | {"nowhere": str(root / "nowhere" / "x")}


# case: (data.root as a bad_roots name or a Hub id, further keys, what the one line must say)
BAD_INPUTS = {
    "no such folder": ("nowhere", [], "no such folder"),
    "id not in cache": ("nobody/no_such_dataset", [], "not in the local Hugging Face cache; fetch it once"),
    "no such column": ("good", ["data.image_column=picture"], "data.image_column=picture is not a column"),
    "labels not class ids": ("words", ["data.label_column=label"], "not integer class ids"),
    "negative labels": ("unlabelled", [], "not a class id"),
    "does not decode": ("undecodable", [], "does not decode"),
    "missing test split": ("no_test", [], "no 'test' split (kdgen's test split); the dataset has: train, validation"),
    "missing val split": ("good", ["data.val_split=dev"], "data.val_split=dev: no such split"),
    "two image columns": ("two_images", [], "set data.image_column"),
    "sizes differ": ("sizes", [], "differ in size"),
    "no splits": ("single", [], "without splits"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_each_bad_input_is_one_line_and_exit_2(case, bad_roots, tmp_path, monkeypatch, capsys):
    root, keys, named = BAD_INPUTS[case]
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--out", str(tmp_path / "out"), "data.name=hf", f"data.root={bad_roots.get(root, root)}",
                 *keys, *RUN])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert named in lines[0].replace(f" ({datasets.config.HF_DATASETS_CACHE})", ""), lines[0]


def test_without_the_datasets_package_the_line_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    code = main(["run", "--out", str(tmp_path / "out"), "data.name=hf", f"data.root={tmp_path}", *RUN])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'kdgen[hf]'" in err[0]


def test_a_tiny_run_on_hf_data_finishes(layouts, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), "data.name=hf", f"data.root={layouts['parquet-hub']}",
                 "data.val_split=validation", "generations.arms=[strict,tolerant]", *RUN])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {row["split"] for row in rows} == {"train", "val", "test"}
    assert {row["arm"] for row in rows} == {"strict", "tolerant"}
