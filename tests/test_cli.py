"""The command line end to end on tiny synthetic data, and its one-line errors."""

import json
import subprocess
import sys

import pytest
import yaml

TINY = ["data.name=synthetic", "data.num_train=64", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=1", "train.batch_size=16", "seeds=[0,1]",
        "generations.count=2", "tolerance.k=3"]


def kdgen(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kdgen", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_run_writes_the_run_directory_and_report_rebuilds(tmp_path):
    out = tmp_path / "run"
    result = kdgen("run", "--out", str(out), "--no-progress", *TINY)
    assert result.returncode == 0, result.stderr
    assert "tolerant − strict" in result.stdout and "wall time" in result.stdout
    rows = json.loads((out / "results.json").read_text())["rows"]
    singles = [r for r in rows if r["kind"] == "single"]
    assert len(singles) == 2 * 3 * 3 * 3  # seeds x arms x generations x splits (train sample, val, test)
    ensembles = [r for r in rows if r["kind"] == "ensemble"]
    assert {r["generation"] for r in ensembles} == {2} and len(ensembles) == 2 * 3 * 3
    for row in rows:
        assert {"arm", "generation", "kind", "seed", "split", "top1", "nll", "ece"} <= set(row)
        assert 0 <= row["top1"] <= 100 and row["split"] in ("train", "val", "test")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["epochs"] == 1 and config["data"]["name"] == "synthetic"
    assert len(list((out / "checkpoints").glob("*.safetensors"))) == 2 * 3 * 3
    assert (out / "report.md").read_text().count("|") > 20 and (out / "report.html").exists()
    assert (out / "plots" / "top1_test.png").stat().st_size > 1000
    best = json.loads((out / "best.json").read_text())
    assert (out / best["checkpoint"]).exists()
    # the report can be rebuilt from results.json alone
    (out / "report.md").unlink()
    rebuilt = kdgen("report", str(out))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (out / "report.md").exists()


@pytest.mark.slow
def test_checkpoint_loads_into_a_fresh_model(tmp_path):
    out = tmp_path / "run"
    assert kdgen("run", "--out", str(out), "--no-progress", *TINY, "seeds=[0]", "generations.count=1",
                 "generations.arms=[strict]").returncode == 0
    from kdgen.checkpoint import load_model
    from kdgen.models import build

    meta = load_model(build("cnn-tiny", 4, 1), out / "checkpoints" / "strict-seed0-gen1.safetensors")
    assert meta["arm"] == "strict" and meta["generation"] == 1 and meta["num_classes"] == 4


def test_help_and_module_entry_point():
    result = kdgen("--help")
    assert result.returncode == 0 and "run" in result.stdout and "report" in result.stdout
    run_help = kdgen("run", "--help")
    assert run_help.returncode == 0 and "KEY=VALUE" in run_help.stdout and "--resume" in run_help.stdout


@pytest.mark.parametrize("args, words", [
    (["run", "train.epoch=2"], ["unknown key", "train.epoch"]),
    (["run", "tolerance.k=11"], ["tolerance.k", "10 classes"]),
    (["run", "--config", "missing.yaml"], ["missing.yaml", "does not exist"]),
    (["run", "model.name=resnet7"], ["model.name"]),
    (["report", "no-such-dir"], ["no-such-dir"]),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, args, words):
    result = kdgen(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_non_empty_out_dir_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = kdgen("run", "--out", str(out), *TINY)
    assert result.returncode == 2 and "not empty" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    result = kdgen("run", "--out", str(a_file), *TINY)
    assert result.returncode == 2 and "is a file" in result.stderr and a_file.read_text() == "x"
