"""Copies of the study's IDX data sets small enough to carry to a device machine, giving the same bundles.

The training images no bundle uses (not in the val split, not in the train_per_class subset) are zeroed, so every
index, the val split, the subset and the normalisation stay what they are; zeros compress to almost nothing. The
bundles built from the copies are checked equal, tensor for tensor, to those built from the originals.

    python scripts/study/resnet-gpu/reduce_data.py OUT_DIR [--mnist-root /work/data/package/data]
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch

from kdgen.config import DataConfig
from kdgen.data import load_bundle, load_source
from kdgen.data.base import per_class_subset, stratified_val_split
from kdgen.running.transfer import ProbeData

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def used_training_images(cfg: DataConfig) -> np.ndarray:
    """Indices of the training images the bundle of ``cfg`` uses (train subset and val), as make_bundle picks them."""
    source = load_source(cfg)
    train_idx, val_idx = stratified_val_split(source.train.labels, cfg.val_fraction, cfg.split_seed)
    if cfg.train_per_class is not None:
        train_idx = train_idx[per_class_subset(source.train.labels[train_idx], cfg.train_per_class, cfg.split_seed)]
    return np.union1d(train_idx.numpy(), val_idx.numpy())


def write_reduced(source_root: Path, out_root: Path, keep: np.ndarray) -> None:
    """Gzipped copies of the four IDX files; in the training images, all but ``keep`` zeroed."""
    out_root.mkdir(parents=True, exist_ok=True)
    for path in sorted(source_root.iterdir()):
        if "-ubyte" not in path.name:
            continue
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        if path.name.startswith("train-images"):
            header, images = raw[:16], np.frombuffer(raw[16:], np.uint8).reshape(-1, 28 * 28).copy()
            unused = np.ones(len(images), bool)
            unused[keep] = False
            images[unused] = 0
            raw = header + images.tobytes()
        name = path.name if path.suffix == ".gz" else f"{path.name}.gz"
        with gzip.open(out_root / name, "wb", compresslevel=9) as handle:
            handle.write(raw)


def check_equal(cfg: DataConfig, reduced_root: Path) -> None:
    original, reduced = load_bundle(cfg), load_bundle(cfg.model_copy(update={"root": str(reduced_root)}))
    for split in ("train", "val", "test", "train_eval"):
        a, b = getattr(original, split), getattr(reduced, split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels), split
    assert original.mean == reduced.mean and original.std == reduced.std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--mnist-root", default="/work/data/package/data")
    args = parser.parse_args()
    study = DataConfig(name="fashion-mnist", val_fraction=0.1, train_per_class=500)  # the study's data
    probe = ProbeData(name="mnist", root=args.mnist_root)  # kdgen transfer's default probe data
    for cfg, folder in ((study, "fashion-mnist"), (probe, "mnist")):
        keep = used_training_images(cfg)
        write_reduced(Path(cfg.root or FASHION_ROOT), args.out / folder, keep)
        check_equal(cfg, args.out / folder)
        size = sum(p.stat().st_size for p in (args.out / folder).iterdir()) / 1e6
        print(f"{folder}: {len(keep)} training images kept, {size:.1f} MB; bundles identical")


if __name__ == "__main__":
    main()
