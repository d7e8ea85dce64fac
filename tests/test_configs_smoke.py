"""Every shipped config (configs/**/*.yaml) validates and runs end to end, on tiny synthetic data.

The recipes under configs/paper/ need CIFAR-100 or ImageNet, which a test cannot assume, so each run
swaps the data for the synthetic source and shrinks the schedule (one epoch, one seed, the tolerant arm,
patriarch + one student). Everything else (model, optimizer, LR schedule, precision, tolerance and
distillation settings) is the file's own, so a misspelt key, an unknown model or a K above the class
count fails here rather than on a GPU hours later. The runs are in-process: faster than a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from kdgen.cli import main
from kdgen.config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))

# Class counts for the smoke runs. CIFAR-100 recipes get their real 100 classes. ImageNet recipes get
# 100 too, not 1000: the stratified val split needs two images of a class to hold one out, so 1000
# classes would mean 2000 synthetic images and a run ten times slower, while 100 classes already
# exercise a wide head and TSD's K against a many-class output. Other sources keep synthetic's 10.
SMOKE_CLASSES = {"cifar100": 100, "imagefolder": 100}


def _config_id(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR))


def _data_name(path: Path) -> str | None:
    return (yaml.safe_load(path.read_text(encoding="utf-8")).get("data") or {}).get("name")


IMAGEFOLDER_CONFIGS = [p for p in CONFIGS if _data_name(p) == "imagefolder"]


@pytest.fixture(autouse=True)
def _one_thread():
    # One intra-op thread. On a 2-core machine shared with other jobs, two OpenMP threads wait on each
    # other at every barrier: a ResNet-20 training step took 3.7 s with two threads and 0.04 s with one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_configs_are_found():
    names = {_config_id(p) for p in CONFIGS}
    assert "fashion-mnist.yaml" in names
    assert {"paper/cifar100-resnet20.yaml", "paper/cifar100-densenet-bc-100.yaml",
            "paper/imagenet-resnet50.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_config_validates_as_written(config):
    """Every key and value of the file, unchanged, passes the pydantic schema."""
    cfg = load_config(config)
    assert cfg.seeds and cfg.generations.count >= 1
    # A shipped recipe never forces a precision: bf16 is emulated, ~10x slower (docs/guide/speed.md), on CPUs
    # without AVX512-BF16/AMX, and auto picks it wherever it is native.
    assert cfg.runtime.precision == "auto"


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_config_runs_on_synthetic_data(config, tmp_path):
    source = yaml.safe_load(config.read_text(encoding="utf-8"))
    classes = SMOKE_CLASSES.get(source.get("data", {}).get("name"), 10)
    # Two images per class with 100 classes, so the stratified val split is not empty; 48 otherwise.
    num_train = max(48, 2 * classes)
    out = tmp_path / "run"
    code = main(["run", "--config", str(config), "--out", str(out), "--no-progress",
                 "data.name=synthetic", f"data.num_train={num_train}", "data.num_test=16",
                 f"data.num_classes={classes}", "train.epochs=1", "train.batch_size=16",
                 "generations.count=1", "generations.arms=[tolerant]", "seeds=[0]", "data.train_per_class=null"])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["complete"] is True
    singles = {(r["generation"], r["split"]) for r in results["rows"] if r["kind"] == "single"}
    assert singles == {(g, split) for g in (0, 1) for split in ("train", "val", "test")}
    # The recipe's own settings survived the smoke overrides (precision and device may be resolved at run time).
    resolved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    kept = {"model": None, "tolerance": None, "distill": None,
            "train": {"epochs", "batch_size"}, "runtime": {"precision", "device"}}
    for section, overridden in kept.items():
        for key, value in (source.get(section) or {}).items():
            if (not overridden or key not in overridden) and value != "auto":  # auto is resolved at run time
                assert resolved[section][key] == value, f"{section}.{key}"


def _tiny_image_folder(root: Path, classes: int = 6, train_per_class: int = 3) -> None:
    """``root/train/<class>/`` and ``root/val/<class>/`` with a few small JPEGs and PNGs of varied sizes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", 1)):
        for label in range(classes):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = int(rng.integers(36, 60)), int(rng.integers(36, 60))
                pixels = np.clip(rng.normal(30 + 35 * label, 40, (height, width, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


@pytest.mark.slow
@pytest.mark.parametrize("config", IMAGEFOLDER_CONFIGS, ids=_config_id)
def test_imagefolder_config_runs_on_a_tiny_folder(config, tmp_path):
    """The ImageNet recipes' own data path (a class-folder tree, streamed as the recipe says), at 32 px."""
    _tiny_image_folder(tmp_path / "images")
    out = tmp_path / "run"
    code = main(["run", "--config", str(config), "--out", str(out), "--no-progress",
                 f"data.root={tmp_path / 'images'}", "runtime.workers=0", "data.train_crop=32",
                 "data.eval_resize=36", "data.eval_crop=32", "train.epochs=1", "train.batch_size=6",
                 "generations.count=1", "generations.arms=[tolerant]"])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    test_rows = [r for r in results["rows"] if r["kind"] == "single" and r["split"] == "test"]
    assert len(test_rows) == 2 * len(yaml.safe_load(config.read_text(encoding="utf-8"))["seeds"])
