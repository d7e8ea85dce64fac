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


def test_streamed_augmentation_does_not_depend_on_the_workers_or_the_processes(tmp_path):
    """runtime.workers is not in a unit's key: an epoch's random crops and flips are the same with 0, 1 or 3 loader
    workers, and two data-parallel shares put together are the one-process batch (per-item streams)."""
    make_folder(tmp_path)
    cfg = tiny_config(data={"name": "imagefolder", "root": str(tmp_path), "stream": True,
                            "train_crop": 12, "eval_resize": 14, "eval_crop": 12})
    data = load_bundle(cfg.data)

    def epochs(workers, share=(0, 1)):
        torch.manual_seed(100 + workers)  # the global generator must not matter either
        batches = TrainBatches(data.train, AugmentSpec(), 4, torch.device("cpu"), torch.Generator().manual_seed(5),
                               workers, share)
        return [(x.clone(), y.clone()) for _ in range(2) for x, y in batches]

    alone = epochs(0)
    assert len(alone) >= 4 and not torch.equal(alone[0][0], alone[len(alone) // 2][0])  # epochs differ
    for workers in (1, 3):
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(alone, epochs(workers)))
    halves = zip(epochs(0, (0, 2)), epochs(2, (1, 2)))
    assert all(torch.equal(a[0], torch.cat([h0[0], h1[0]])) for a, (h0, h1) in zip(alone, halves))
