"""Chains that change architecture (``generations.models``): a large patriarch educating compact students.

End to end on tiny data (checkpoints, architectures.json, report, equal-cost inference cost), unit keys that
cover the architecture of every generation a unit depends on, kdgen.load / predict / transfer on a student of
another architecture, the Python API with one factory per generation, ``kdgen models`` and bad input.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from torch import nn

import kdgen
from kdgen.checkpoint import load_state, read_json
from kdgen.config import load_config
from kdgen.data import load_bundle
from kdgen.models import _MODELS, build, profile, register
from kdgen.running.unit_cache import unit_key, unit_settings
from kdgen.sweep_plan import make_plan

DATA = ["data.name=synthetic", "data.num_train=120", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4"]
CHAIN = [*DATA, "generations.models=[resnet8,cnn-tiny]", "train.epochs=1", "train.batch_size=16", "seeds=[0]",
         "generations.count=2", "tolerance.k=3", "--no-progress"]
PROBE = ["--data", "synthetic", "data.num_train=90", "data.num_test=30", "data.image_size=8", "data.channels=1",
         "data.num_classes=3", "data.train_per_class=null", "probe.c_values=[1]"]


def size(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a loaded model is frozen: count every parameter


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    from kdgen.cli import main

    run = tmp_path_factory.mktemp("chain") / "run"
    assert main(["run", "--out", str(run), *CHAIN]) == 0
    return run


def test_a_chain_records_each_generations_model_and_the_report_says_what_it_compares(chain_run):
    for arm in ("baseline", "strict", "tolerant"):
        recorded = [load_state(chain_run / "checkpoints" / f"{arm}-seed0-gen{g}.safetensors")[1]["model"]
                    for g in range(3)]
        assert recorded == ["resnet8", "cnn-tiny", "cnn-tiny"]  # the baseline trains each architecture alone
    architectures = read_json(chain_run / "architectures.json")["generations"]
    assert [a["model"] for a in architectures] == ["resnet8", "cnn-tiny", "cnn-tiny"]
    for entry in architectures:
        expected = profile(build(entry["model"], 4, 1), (1, 8, 8))
        assert (entry["params"], entry["flops"]) == (expected.params, expected.flops)
    assert architectures[0]["params"] > 4 * architectures[1]["params"]
    rows = read_json(chain_run / "results.json")["rows"]
    ensembles = {(r["arm"], r["generation"]) for r in rows if r["kind"] == "ensemble"}
    assert ensembles == {("baseline", 2), ("strict", 2), ("tolerant", 2)}  # students 1..2, one architecture
    report = (chain_run / "report.md").read_text()
    assert "A chain that changes architecture" in report and "patriarch is **resnet8**" in report
    assert "strict − baseline, single models, generation 2 (cnn-tiny)" in report
    assert "Each generation's model" in report and "MFLOPs / image" in report.split("Equal cost")[1]


def test_load_predict_and_transfer_work_on_a_student_of_another_architecture(chain_run, kdgen_cli, tmp_path):
    data = load_bundle(load_config(None, DATA).data)
    student, patriarch = kdgen.load(chain_run, "strict/0/1"), kdgen.load(chain_run, "strict/0/0")
    assert size(student.members[0]) == size(build("cnn-tiny", 4, 1))
    assert size(patriarch.members[0]) == size(build("resnet8", 4, 1))
    ensemble = kdgen.load(chain_run, "ensemble:tolerant/0")
    assert len(ensemble.members) == 2
    rows = read_json(chain_run / "results.json")["rows"]
    for which, classifier in (("strict/0/1", student), ("strict/0/0", patriarch)):
        arm, seed, generation = which.split("/")
        with torch.inference_mode():
            predicted = classifier(data.test.images).argmax(dim=1)
        top1 = next(r["top1"] for r in rows if (r["arm"], r["seed"], r["generation"], r["kind"], r["split"])
                    == (arm, int(seed), int(generation), "single", "test"))
        assert 100.0 * (predicted == data.test.labels).float().mean().item() == pytest.approx(top1)
    png = tmp_path / "one.png"
    from PIL import Image

    Image.fromarray(data.test.images[0, 0].numpy(), mode="L").save(png)
    assert kdgen_cli("predict", str(chain_run), str(png), "--which", "tolerant/0/2").returncode == 0
    result = kdgen_cli("transfer", str(chain_run), *PROBE, "--out", str(tmp_path / "probes"))
    assert result.returncode == 0, result.stderr
    probes = read_json(tmp_path / "probes" / "synthetic.json")["rows"]
    dims = {r["generation"]: r["feature_dim"] for r in probes}
    assert dims == {0: 64, 1: 32, 2: 32}  # each model's own feature layer: resnet8's 64, cnn-tiny's 32
    # the students only, of two arms
    only = kdgen_cli("transfer", str(chain_run), *PROBE, "probe.generations=[1]", "probe.arms=[strict,tolerant]",
                     "--out", str(tmp_path / "students"))
    assert only.returncode == 0, only.stderr
    rows = read_json(tmp_path / "students" / "synthetic.json")["rows"]
    assert {(r["arm"], r["generation"]) for r in rows} == {("strict", 1), ("tolerant", 1)}
    assert [r for r in probes if (r["arm"], r["generation"]) == ("strict", 1)] == \
        [r for r in rows if r["arm"] == "strict"]  # the same model, the same probe
    none = kdgen_cli("transfer", str(chain_run), *PROBE, "probe.generations=[7]", "--out", str(tmp_path / "none"))
    assert none.returncode == 2 and "leave no model to probe" in none.stderr


def test_unit_keys_cover_the_architecture_of_every_generation_a_unit_depends_on():
    def key(models, arm, generation, **sections):
        extra = {"generations": {"count": 2, "models": models}} if models else {"generations": {"count": 2}}
        return unit_key(tiny_config(**extra, **sections), arm, 0, generation)

    big_small, big_mlp, mlp_small = ["cnn", "cnn-tiny"], ["cnn", "mlp"], ["mlp", "cnn-tiny"]
    # only a student's architecture differs: the students differ, the patriarchs are the same units
    assert key(big_small, "strict", 1) != key(big_mlp, "strict", 1)
    assert key(big_small, "strict", 0) == key(big_mlp, "strict", 0) == key(None, "strict", 0, model={"name": "cnn"})
    # only the patriarch differs: every strict generation differs (its teacher line), a baseline student does not
    assert key(big_small, "strict", 2) != key(mlp_small, "strict", 2)
    assert key(big_small, "baseline", 1) == key(mlp_small, "baseline", 1)
    assert key(big_small, "baseline", 1) == key(None, "baseline", 1, model={"name": "cnn-tiny"})
    # a chain of one architecture is the same run as model.name: its units are shared
    assert key(["cnn-tiny"], "tolerant", 2) == key(None, "tolerant", 2, model={"name": "cnn-tiny"})
    settings = unit_settings(tiny_config(generations={"models": big_small}), "strict", 0, 1)
    assert settings["model"]["name"] == "cnn-tiny" and settings["lineage_models"] == ["cnn", "cnn-tiny"]


def test_model_of_repeats_the_last_entry_and_unset_means_model_name():
    cfg = tiny_config(generations={"count": 3, "models": ["resnet20", "cnn-tiny"]})
    assert cfg.chain_models == ["resnet20", "cnn-tiny", "cnn-tiny", "cnn-tiny"] and cfg.changes_architecture
    plain = tiny_config()
    assert plain.chain_models == ["cnn-tiny"] * 3 and not plain.changes_architecture
    assert "models" not in plain.to_dict()["generations"]  # config.yaml of an ordinary run is as before


@pytest.fixture
def rgb_only():
    """A registered model that ignores in_channels: it cannot take grey images."""

    @register("test-rgb-only")
    def factory(num_classes: int, in_channels: int = 3) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    yield "test-rgb-only"
    _MODELS.pop("test-rgb-only")


@pytest.mark.parametrize("models, arms, message", [
    ("[cnn,cnn-tny]", "[baseline,strict]", "generations.models: unknown model 'cnn-tny' (did you mean 'cnn-tiny'?)"),
    ("[]", "[strict]", "generations.models: give at least one model"),
    ("[cnn,test-rgb-only]", "[strict]", "model 'test-rgb-only' (generation 1) cannot take the data's 1x8x8 images"),
    ("[cnn,cnn-tiny]", "[strict,snapshot]", "arm snapshot starts generation 1 from generation 0's weights"),
])
def test_bad_chains_are_one_line_errors_before_any_training(models, arms, message, rgb_only, kdgen_cli, tmp_path):
    out = tmp_path / "run"
    result = kdgen_cli("run", "--out", str(out), *CHAIN, f"generations.models={models}", f"generations.arms={arms}",
                       "train.epochs=3")
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())  # nothing trained, nothing written


def test_the_python_api_takes_one_factory_per_generation(tmp_path):
    cfg = tiny_config(generations={"count": 1, "arms": ["strict"]}, train={"epochs": 1})
    data = load_bundle(cfg.data)
    made = []

    def big() -> nn.Module:
        made.append("big")
        return build("cnn", data.num_classes, data.channels)

    def small() -> nn.Module:
        made.append("small")
        return build("cnn-tiny", data.num_classes, data.channels)

    rows = kdgen.train_generations([big, small], data, cfg, out_dir=tmp_path / "run")
    assert {(r["generation"], r["kind"]) for r in rows} == {(0, "single"), (1, "single")}
    assert "big" in made and "small" in made
    student = kdgen.load(tmp_path / "run", "strict/0/1", model_factory=[big, small])
    assert size(student.members[0]) == size(build("cnn-tiny", 4, 1))
    assert [a["model"] for a in read_json(tmp_path / "run" / "architectures.json")["generations"]] == \
        ["custom-0", "custom-1"]


def test_profile_counts_two_flops_per_multiply_add():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    found = profile(model, (1, 4, 4))
    assert found.params == 2 * 9 + 32 * 3 + 3
    assert found.flops == 2 * (2 * 16 * 9 + 32 * 3)  # conv: 2 maps x 16 positions x 9 taps; linear: 32 x 3


def test_kdgen_models_prints_parameters_and_flops(kdgen_cli):
    result = kdgen_cli("models", "--input", "1x28x28", "cnn", "cnn-tiny")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    for name in ("cnn", "cnn-tiny"):
        expected = profile(build(name, 10, 1), (1, 28, 28))
        assert lines[name][1] == f"{expected.params:,}" and lines[name][2] == f"{expected.flops / 1e6:,.2f}"
    for args, message in ((["--input", "28x28"], "CxHxW"), (["nope"], "unknown model 'nope'"),
                          (["--classes", "1"], "at least 2 classes")):
        bad = kdgen_cli("models", *args)
        assert bad.returncode == 2 and message in bad.stderr


def test_a_sweep_axis_can_be_the_teachers_tolerance_method_with_its_strength(tmp_path, kdgen_cli):
    from kdgen.running.sweep import run_sweep

    tiny = [o for o in CHAIN if not o.startswith("--")] + ["generations.count=1", "log.progress=false"]
    plan = make_plan(None, ["tolerance={method: tsd, eta: 0.74},{method: label-smoothing, epsilon: 0.03}",
                            "train.milestones=[0.5]"], tiny, "tolerant/last", 0)
    points = plan.points()
    assert [p.name for p in points] == ["0_tolerance=tsd-eta0.74_milestones=0.5",
                                        "1_tolerance=label-smoothing-epsilon0.03_milestones=0.5"]
    assert plan.config_for(points[1]).tolerance.method == "label-smoothing"
    run_sweep(plan, tmp_path / "sweep", echo=False)  # its page and plots take section- and list-valued axes
    page = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| label-smoothing-epsilon0.03 |" in page and "Δ vs baseline" in page
    assert (tmp_path / "sweep" / "plots" / "sweep_tolerance.png").is_file()
    assert "`tolerance` ∈ [tsd-eta0.74, label-smoothing-epsilon0.03]" in page
    (tmp_path / "sweep" / "sweep.md").unlink()  # kdgen report rebuilds a sweep's page as it does a run's
    assert kdgen_cli("report", str(tmp_path / "sweep")).returncode == 0
    assert (tmp_path / "sweep" / "sweep.md").read_text() == page
