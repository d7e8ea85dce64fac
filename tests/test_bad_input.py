"""A battery of user mistakes: each exits 2 with one line naming the problem, no traceback, nothing changed."""

import gzip
import hashlib
import json
import pickle
import struct
from pathlib import Path

import pytest
import yaml

from kdgen.cli import main

TINY = ["data.name=synthetic", "data.num_train=64", "data.num_test=16", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=1", "train.batch_size=16", "seeds=[0]",
        "generations.count=1", "tolerance.k=2", "--no-progress"]


class Payload:
    """Unpickling this creates the file ``pwned`` (a stand-in for arbitrary code)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def make_files(root: Path) -> dict[str, list[str]]:
    """Set up the files each case needs; returns extra CLI args by case name."""
    (root / "empty.yaml").write_text("")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "broken.yaml").write_text("train: {epochs: [\n")
    (root / "evil.yaml").write_text("seeds: !!python/object/apply:os.system ['touch pwned']\n")
    (root / "typo.yaml").write_text("train:\n  epcohs: 3\n")
    (root / "a_file").write_text("i am a file")
    (root / "busy").mkdir()
    (root / "busy" / "keep.txt").write_text("keep")
    (root / "empty_dir").mkdir()
    idx = root / "fmnist"
    idx.mkdir()
    images = struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 28, 28) + bytes(28 * 28 * 5)  # header says 10, holds 5
    labels = struct.pack(">BBBBI", 0, 0, 8, 1, 10) + bytes(10)
    for prefix in ("train", "t10k"):
        (idx / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (idx / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    # a run folder whose files are not what kdgen wrote
    for name, corrupt in (("run_pickle_state", "state"), ("run_pickle_ckpt", "checkpoint")):
        run = root / name
        (run / "state").mkdir(parents=True)
        (run / "checkpoints").mkdir()
        from kdgen.config import load_config

        config = load_config(None, [a for a in TINY if "=" in a] + ["log.progress=false"])
        (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
        # strict generation 0 teaches generation 1, so resuming must load it
        done = ["strict-seed0-gen0"] if corrupt == "checkpoint" else []
        (run / "results.json").write_text(json.dumps({"rows": [], "done": done, "complete": False}))
        payload = pickle.dumps(Payload(str(root / "pwned")))
        # the first unit of the run (TINY trains the default arms) is in progress: its state is read
        target = run / "state" / "baseline-seed0-gen0.safetensors" if corrupt == "state" \
            else run / "checkpoints" / "strict-seed0-gen0.safetensors"
        target.write_bytes(payload)
    (root / "run_bad_results").mkdir()
    (root / "run_bad_results" / "results.json").write_text("{not json")
    return {}


CASES = {
    "unknown key": (["run", "train.epoch=2"], "train.epoch"),
    "misspelt section": (["run", "trian.epochs=2"], "trian"),
    "misspelt key in file": (["run", "--config", "typo.yaml"], "train.epcohs"),
    "wrong type": (["run", "train.epochs=two"], "train.epochs"),
    "zero epochs": (["run", "train.epochs=0"], "train.epochs"),
    "zero batch": (["run", "train.batch_size=0"], "train.batch_size"),
    "negative lr": (["run", "train.lr=-0.1"], "train.lr"),
    "k below 2": (["run", "tolerance.k=1"], "tolerance.k"),
    "k above classes": (["run", "tolerance.k=11"], "tolerance.k"),
    "temperature zero": (["run", "distill.temperature=0"], "distill.temperature"),
    "temperature negative": (["run", "distill.temperature=-2"], "distill.temperature"),
    "weight above 1": (["run", "distill.weight=2"], "distill.weight"),
    "empty seeds": (["run", "seeds=[]"], "seeds"),
    "repeated seeds": (["run", "seeds=[3,3]"], "seeds"),
    "unknown arm": (["run", "generations.arms=[strict,teacher]"], "generations.arms"),
    "unknown model": (["run", "model.name=resnet21"], "model.name"),
    "unknown source": (["run", "data.name=imagenet22k"], "data.name"),
    "unknown precision": (["run", "runtime.precision=fp8"], "runtime.precision"),
    "unknown method": (["run", "tolerance.method=magic"], "tolerance.method"),
    "val fraction 1": (["run", "data.val_fraction=1"], "data.val_fraction"),
    "not key=value": (["run", "epochs"], "KEY=VALUE"),
    "missing config": (["run", "--config", "nope.yaml"], "nope.yaml"),
    "empty config": (["run", "--config", "empty.yaml"], "empty.yaml"),
    "config not a mapping": (["run", "--config", "list.yaml"], "list.yaml"),
    "invalid yaml": (["run", "--config", "broken.yaml"], "broken.yaml"),
    "yaml with a python tag": (["run", "--config", "evil.yaml"], "evil.yaml"),
    "mnist without root": (["run", "data.name=mnist"], "data.root"),
    "data files missing": (["run", "data.name=fashion-mnist", "data.root=empty_dir"], "empty_dir"),
    "truncated idx": (["run", "data.name=fashion-mnist", "data.root=fmnist"], "fmnist"),
    "cifar missing": (["run", "data.name=cifar10", "data.root=empty_dir"], "empty_dir"),
    "imagefolder missing": (["run", "data.name=imagefolder", "data.root=no_such_folder"], "no_such_folder"),
    "out is a file": (["run", "--out", "a_file", *TINY], "a_file"),
    "out not empty": (["run", "--out", "busy", *TINY], "busy"),
    "resume without config.yaml": (["run", "--resume", "--out", "busy"], "busy"),
    "pickle as training state": (["run", "--resume", "--out", "run_pickle_state"], "baseline-seed0-gen0.safetensors"),
    "pickle as checkpoint": (["run", "--resume", "--out", "run_pickle_ckpt"], "strict-seed0-gen0.safetensors"),
    "report of a non-run": (["report", "empty_dir"], "empty_dir"),
    "report of corrupt results": (["report", "run_bad_results"], "results.json"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mistake(case, tmp_path, monkeypatch, capsys):
    args, named = CASES[case]
    make_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert named in lines[0], lines[0]
    assert not (tmp_path / "pwned").exists()
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed was changed
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_battery_is_large_enough():
    assert len(CASES) >= 25


def test_divergence_stops_with_one_line_and_keeps_last_good_epoch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--out", "run", *[a for a in TINY if not a.startswith("train.epochs")], "train.epochs=3",
                 "train.lr=1e12", "train.warmup_epochs=1", "generations.arms=[strict]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "strict" in err[0] and "generation 0" in err[0] and "epoch" in err[0] and "step" in err[0]
    assert "non-finite" in err[0]
