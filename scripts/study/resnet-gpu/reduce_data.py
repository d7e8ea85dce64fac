"""Write copies of IDX datasets where the training images no bundle uses are zeroed (same indices, tiny gz),
then check the bundles built from them equal the originals tensor for tensor."""
import gzip, shutil, sys
from pathlib import Path
import numpy as np, torch
from kdgen.config import DataConfig
from kdgen.running.transfer import ProbeData
from kdgen.data import load_bundle
from kdgen.data.base import stratified_val_split, per_class_subset
from kdgen.data.idx import read_idx

def used(cfg):
    from kdgen.data import load_source
    src = load_source(cfg)
    train_idx, val_idx = stratified_val_split(src.train.labels, cfg.val_fraction, cfg.split_seed)
    if cfg.train_per_class is not None:
        train_idx = train_idx[per_class_subset(src.train.labels[train_idx], cfg.train_per_class, cfg.split_seed)]
    return np.union1d(train_idx.numpy(), val_idx.numpy())

def write(orig_root, new_root, keep):
    new_root.mkdir(parents=True, exist_ok=True)
    for f in Path(orig_root).iterdir():
        if f.name.startswith("train-images"):
            raw = gzip.open(f).read() if f.suffix == ".gz" else f.read_bytes()
            header, body = raw[:16], np.frombuffer(raw[16:], np.uint8).reshape(-1, 28 * 28).copy()
            mask = np.ones(len(body), bool); mask[keep] = False
            body[mask] = 0
            name = f.name if f.suffix == ".gz" else f.name + ".gz"
            with gzip.open(new_root / name, "wb", compresslevel=9) as out:
                out.write(header + body.tobytes())
        elif f.name.endswith("-ubyte") or f.name.endswith("-ubyte.gz"):
            if f.suffix == ".gz": shutil.copy(f, new_root / f.name)
            else:
                with gzip.open(new_root / (f.name + ".gz"), "wb", compresslevel=9) as out: out.write(f.read_bytes())

def same(a, b):
    for split in ("train", "val", "test", "train_eval"):
        x, y = getattr(a, split), getattr(b, split)
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels), split
    assert a.mean == b.mean and a.std == b.std

out = Path(sys.argv[1])
fm = DataConfig(name="fashion-mnist", val_fraction=0.1, train_per_class=500)
mn = ProbeData(name="mnist", root="/work/data/package/data")
for cfg, sub in ((fm, "fashion-mnist"), (mn, "mnist")):
    keep = used(cfg)
    orig = cfg.root or "/usr/share/datasets/fashion-mnist"
    write(orig, out / sub, keep)
    same(load_bundle(cfg), load_bundle(cfg.model_copy(update={"root": str(out / sub)})))
    print(sub, len(keep), "images kept; bundles identical")
