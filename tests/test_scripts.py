"""The helper scripts run and compute what they say."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def script(monkeypatch, capsys):
    """``python scripts/NAME ARGS``, run as ``__main__`` in this process (a new interpreter would spend
    seconds importing torch and kdgen again): its exit code, stdout and stderr."""
    def call(name, *args):
        path = str(ROOT / "scripts" / name)
        monkeypatch.setattr(sys, "argv", [path, *map(str, args)])
        capsys.readouterr()  # this call's output only
        try:
            runpy.run_path(path, run_name="__main__")
            code = 0
        except SystemExit as stopped:  # sys.exit(main()) and argparse's errors
            code = stopped.code if isinstance(stopped.code, int) else 0 if stopped.code is None else 1
        captured = capsys.readouterr()
        return subprocess.CompletedProcess([path, *args], code, captured.out, captured.err)
    return call


def write_run(folder: Path, top1_by_seed: dict[int, float]) -> Path:
    rows = [{"arm": "strict", "generation": 1, "kind": "single", "seed": seed, "split": split, "top1": top1,
             "nll": 0.1, "ece": 0.01}
            for seed, top1 in top1_by_seed.items() for split in ("val", "test")]
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"rows": rows}))
    return folder


def test_compare_runs_pairs_cells_by_seed(tmp_path, script):
    a = write_run(tmp_path / "a", {0: 90.0, 1: 92.0, 2: 94.0})
    b = write_run(tmp_path / "b", {0: 91.0, 1: 93.0, 2: 95.5})
    done = script("compare_runs.py", a, b)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "| strict | single | 1 | 3 | 92.00 ± 2.00 | 93.17 ± 2.25 | 1.17 ± 0.29 |" in out
    assert "all 3 paired cells: mean B − A +1.167, std 0.29, mean seed-to-seed std 2.13" in out


def test_compare_arms_pairs_lines_from_different_runs_by_seed(tmp_path, script):
    a = write_run(tmp_path / "a", {0: 90.0, 1: 92.0, 2: 94.0})
    b = write_run(tmp_path / "b", {0: 91.0, 1: 93.0, 2: 95.5})
    done = script("compare_arms.py", "--split", "test", "--reference", "ref", f"ref={a}/strict", f"other={b}/strict")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "| ref | 1 | 3 | 92.00 ± 2.00 | – | – | – | – |" in out
    # +1, +1, +1.5: mean 1.17, std 0.29, paired t p = 0.020; detectable: 3.264 σ at n = 3 (noncentral t, 80 % power)
    assert "| other | 1 | 3 | 93.17 ± 2.25 | – | +1.17 ± 0.29 | 0.020 | ±0.94 |" in out
    # other metrics beside top-1, and one generation only (a compact student's)
    shown = script("compare_arms.py", "--split", "test", "--reference", "ref", "--show", "conf,nll", "--generations",
                   "1", f"ref={a}/strict", f"other={b}/strict").stdout
    assert "| confidence | nll | − ref |" in shown and "| other | 1 | 3 | 93.17 ± 2.25 | – | 0.100 ± 0.000 | +1.17" in shown
    assert all(line.split(" | ")[1] == "1" for line in shown.splitlines()[2:])
    # the lines' transfer probes instead of the models: the probe's rows, paired the same way
    for folder, values in ((a, {0: 70.0, 1: 71.0, 2: 72.0}), (b, {0: 72.0, 1: 73.0, 2: 74.5})):
        (folder / "transfer").mkdir()
        rows = [{"arm": "strict", "generation": 1, "kind": "single", "seed": seed, "split": "test", "top1": top1,
                 "nll": 0.5, "probe": "mnist"} for seed, top1 in values.items()]
        (folder / "transfer" / "mnist.json").write_text(json.dumps({"rows": rows}))
    probes = script("compare_arms.py", "--split", "test", "--reference", "ref", "--probe", "mnist", "--show", "nll",
                    f"ref={a}/strict", f"other={b}/strict").stdout
    assert "| other | 1 | 3 | 73.17 ± 1.26 | 0.500 ± 0.000 | +2.17 ± 0.29 |" in probes


def test_throughput_benchmark_prints_every_figure(tmp_path):
    """A tiny end-to-end run of benchmarks/throughput.py, so the benchmark cannot rot (figures are not checked)."""
    out = tmp_path / "figures.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--model", "resnet8", "--steps", "2",
                    "--pipeline-images", "600", "--workers", "0", "--no-compile", "--peak-seconds", "0.05",
                    "--json", str(out)], capture_output=True, text=True, check=True, timeout=300)
    figures = json.loads(out.read_text())
    from kdgen.training.runtime import native_bf16

    if native_bf16(torch.device("cpu")):
        assert figures["peak_bf16_tflops"] > 0
    for key in ("peak_fp32_tflops", "flops_per_step_g", "kdgen_img_s", "kdgen_fp32_img_s",
                "standard_img_s", "step_ratio", "utilisation_vs_peak", "kdgen_pipeline_s", "standard_pipeline_s",
                "pipeline_ratio"):
        assert figures[key] > 0, key
    assert figures["model"] == "resnet8"


def test_merge_runs_equals_one_run_over_all_seeds(tmp_path, script):
    from kdgen.checkpoint import read_json
    from kdgen.config import load_config
    from kdgen.running.runner import run_experiment

    tiny = ["data.name=synthetic", "data.num_train=64", "data.num_test=16", "data.image_size=8", "data.channels=1",
            "data.num_classes=3", "model.name=cnn-tiny", "train.epochs=1", "train.batch_size=16",
            "generations.count=1", "log.progress=false"]
    for name, seeds in (("a", "[0]"), ("b", "[1]"), ("both", "[0,1]")):
        run_experiment(load_config(None, tiny + [f"seeds={seeds}"]), tmp_path / name, echo=False)
    done = script("merge_runs.py", tmp_path / "merged", tmp_path / "a", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    merged, single = read_json(tmp_path / "merged" / "results.json"), read_json(tmp_path / "both" / "results.json")
    assert merged["rows"] == single["rows"] and merged["extras"] == single["extras"]
    assert "seeds:\n- 0\n- 1" in (tmp_path / "merged" / "config.yaml").read_text()
    assert (tmp_path / "merged" / "report.md").is_file()
    again = script("merge_runs.py", tmp_path / "m2", tmp_path / "a", tmp_path / "a")
    assert again.returncode == 2 and "is in both" in again.stderr


def test_merge_runs_of_different_arms_equals_one_run_and_refuses_other_settings(tmp_path, script):
    from kdgen.checkpoint import read_json
    from kdgen.config import load_config
    from kdgen.running.runner import run_experiment

    tiny = ["data.name=synthetic", "data.num_train=64", "data.num_test=16", "data.image_size=8", "data.channels=1",
            "data.num_classes=3", "model.name=cnn-tiny", "train.epochs=2", "train.batch_size=16",
            "generations.count=1", "log.progress=false", "seeds=[0]"]
    for name, extra in (("strict", ["generations.arms=[strict]"]),
                        ("snapshot", ["generations.arms=[snapshot]", "snapshot.weight=0.5"]),
                        ("both", ["generations.arms=[strict,snapshot]", "snapshot.weight=0.5"]),
                        ("other", ["generations.arms=[tolerant]", "distill.weight=0.5"])):
        run_experiment(load_config(None, tiny + extra), tmp_path / name, echo=False)
    done = script("merge_runs.py", tmp_path / "merged", tmp_path / "strict", tmp_path / "snapshot")
    assert done.returncode == 0, done.stderr
    key = lambda r: (r["seed"], r["arm"], r["generation"], r["kind"], r["split"])  # noqa: E731
    merged, single = read_json(tmp_path / "merged" / "results.json"), read_json(tmp_path / "both" / "results.json")
    assert sorted(merged["rows"], key=key) == sorted(single["rows"], key=key)
    assert load_config(tmp_path / "merged" / "config.yaml") == load_config(tmp_path / "both" / "config.yaml")
    refused = script("merge_runs.py", tmp_path / "m2", tmp_path / "strict", tmp_path / "other")
    assert refused.returncode == 2 and "tolerant-seed0-gen1 was trained with settings" in refused.stderr


def test_equal_cost_pairs_compares_cells_of_equal_cost_across_arms(tmp_path, script):
    from kdgen.config import load_config
    from kdgen.running.runner import run_experiment

    tiny = ["data.name=synthetic", "data.num_train=64", "data.num_test=16", "data.image_size=8", "data.channels=1",
            "data.num_classes=3", "model.name=cnn-tiny", "train.epochs=6", "train.batch_size=16",
            "generations.count=2", "log.progress=false", "seeds=[0,1]", "generations.arms=[baseline,strict,snapshot]"]
    run_experiment(load_config(None, tiny), tmp_path / "run", echo=False)
    done = script("equal_cost_pairs.py", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # three 2-epoch snapshot cycles cost one 6-epoch model; strict generation 1 costs two, like a baseline
    # ensemble of two models
    assert any(line.split()[:7] == ["6", "snapshot", "g2", "single", "baseline", "g0", "single"] for line in lines)
    assert any(line.split()[:7] == ["12", "strict", "g1", "single", "baseline", "g2", "ensemble"] for line in lines)
    assert not any("baseline g1 single" in line for line in lines)  # one baseline single model stands for all
    assert not any(line.split()[1:2] == line.split()[4:5] for line in lines[2:])  # never an arm against itself
