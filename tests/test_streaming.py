"""Image folders that stream through DataLoader workers train and evaluate end to end."""

from pathlib import Path

import numpy as np
import torch
from conftest import tiny_config
from PIL import Image

from kdgen.data import load_bundle
from kdgen.data.base import AugmentSpec, StreamingSplit
from kdgen.models import build
from kdgen.running.generations import GenerationsRunner
from kdgen.training.batches import TrainBatches, eval_batches


def make_folder(root: Path, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 2)):
        for label, name in enumerate(("ant", "bee", "cow")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(14, 30)), int(rng.integers(14, 30)))
                pixels = np.clip(rng.normal(60 + 60 * label, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_streaming_folder_trains_and_evaluates(tmp_path):
    make_folder(tmp_path)
    cfg = tiny_config(data={"name": "imagefolder", "root": str(tmp_path), "stream": True,
                            "train_crop": 12, "eval_resize": 14, "eval_crop": 12, "val_fraction": 0.2},
                      tolerance={"k": 2}, runtime={"workers": 0})
    data = load_bundle(cfg.data)
    assert isinstance(data.train, StreamingSplit) and data.train.train
    assert isinstance(data.val, StreamingSplit) and not data.val.train  # held-out data is not randomly cropped
    assert len(data.train) + len(data.val) == 18 and len(data.test) == 6
    rows = GenerationsRunner(cfg, data, lambda: build("cnn-tiny", 3, 3)).run()
    assert len([r for r in rows if r["kind"] == "single"]) == 3 * 3 * 3  # arms x generations x (train, val, test)
    assert isinstance(data.train_eval, StreamingSplit) and not data.train_eval.train  # evaluated unaugmented


def test_streaming_batches_are_uint8_and_reproducible(tmp_path):
    make_folder(tmp_path)
    cfg = tiny_config(data={"name": "imagefolder", "root": str(tmp_path), "stream": True,
                            "train_crop": 12, "eval_resize": 14, "eval_crop": 12}, runtime={"workers": 2})
    data = load_bundle(cfg.data)

    def epoch(seed):
        torch.manual_seed(seed)
        batches = TrainBatches(data.train, AugmentSpec(), 4, torch.device("cpu"), torch.Generator().manual_seed(seed), 2)
        return [(x.clone(), y.clone()) for x, y in batches]

    first, again = epoch(3), epoch(3)
    assert all(x.dtype == torch.uint8 and x.shape[1:] == (3, 12, 12) for x, _ in first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    evaluated = list(eval_batches(data.test, 4, torch.device("cpu"), 0))
    assert sum(len(y) for _, y in evaluated) == 6
