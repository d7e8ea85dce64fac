"""kdgen transfer: the feature layer of every zoo model and of a user's model, image adaptation, golden
probes whose accuracy is known, an end-to-end probe of a tiny run with its report section, and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from kdgen.checkpoint import read_json, write_json
from kdgen.errors import UserError
from kdgen.models import build, names
from kdgen.running.transfer import (adapt_images, extract_features, feature_module, fit_probe, score_probe,
                                    transfer_config)


@pytest.mark.parametrize("name", names())
def test_every_zoo_model_exposes_the_input_of_its_classifier(name):
    torch.manual_seed(0)
    model = build(name, num_classes=7, in_channels=3).eval()
    layer, module = feature_module(model)
    assert isinstance(module, nn.Linear) and module.out_features == 7, layer
    size = 32 if name in ("resnet18", "resnet34", "resnet50") else 16  # ImageNet stems downsample 32x
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    features = extract_features(model, images, [0.5] * 3, [0.25] * 3, batch_size=1)
    assert features.shape == (2, module.in_features)
    # the features are what the classifier sees: applying it gives the model's own logits
    x = (images.float() / 255.0 - 0.5) / 0.25
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(module(torch.from_numpy(features)), expected, rtol=1e-4, atol=1e-3)


class TwoHeads(nn.Module):
    """A user's model whose penultimate layer is not its last nn.Linear: it says so in ``feature_layer``."""

    feature_layer = "head"

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)
        self.aux = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_user_model_names_its_feature_layer():
    model = TwoHeads()
    assert feature_module(model)[0] == "head"
    assert feature_module(model, "aux")[0] == "aux"  # probe.layer wins
    with pytest.raises(UserError, match="not a module"):
        feature_module(model, "nope")
    with pytest.raises(UserError, match="no nn.Linear"):
        feature_module(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    features = extract_features(model, torch.zeros(5, 1, 4, 4, dtype=torch.uint8), [0.0], [1.0])
    assert features.shape == (5, 6)


def test_images_are_adapted_where_that_is_unambiguous():
    grey = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    rgb, note = adapt_images(grey, (3, 28, 28))
    assert note == "grey to RGB" and torch.equal(rgb[:, 2], grey[:, 0])
    colour = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    colour[0, 0] = 100  # pure red: luma 0.299 * 100
    back, note = adapt_images(colour, (1, 2, 2))
    assert note == "RGB to grey" and back.unique().tolist() == [30]
    resized, note = adapt_images(grey, (1, 32, 32))
    assert resized.shape == (3, 1, 32, 32) and resized.dtype == torch.uint8 and "28x28 resized to 32x32" in note
    same, note = adapt_images(grey, (1, 28, 28))
    assert same is grey and note == ""
    with pytest.raises(UserError, match="channel"):
        adapt_images(torch.zeros(1, 4, 8, 8, dtype=torch.uint8), (3, 8, 8))


def test_golden_probe_on_features_without_information_predicts_the_class_prior():
    rng = np.random.default_rng(0)
    train_y = np.repeat([0, 1, 2], [60, 30, 10])
    test_y = np.array([0] * 7 + [1] * 2 + [2] * 1)
    constant = lambda n: np.ones((n, 4), dtype=np.float32)  # noqa: E731
    probe, _ = fit_probe((constant(100), train_y), (constant(10), test_y), [1.0, 100.0])
    top1, nll = score_probe(probe, constant(10), test_y)
    # every image gets the training prior (0.6, 0.3, 0.1): top-1 is the share of class 0, NLL the cross-entropy
    assert top1 == pytest.approx(70.0)
    assert nll == pytest.approx(-(7 * np.log(0.6) + 2 * np.log(0.3) + np.log(0.1)) / 10, abs=2e-3)
    del rng


def test_golden_probe_on_separable_features_is_perfect_and_chooses_c_on_val():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    features = np.eye(4, dtype=np.float32)[labels] * 5 + rng.normal(0, 0.1, (400, 4)).astype(np.float32)
    probe, c = fit_probe((features[:300], labels[:300]), (features[300:], labels[300:]), [1e-4, 10.0])
    assert c == 10.0  # C 1e-4 flattens the probe; its val NLL is worse at equal top-1
    assert score_probe(probe, features[300:], labels[300:])[0] == 100.0


def test_transfer_config_mistakes_are_one_line_errors():
    for args, message in [(("nope",), "unknown data source"), (("mnist", None, ["data.bogus=1"]), "unknown key"),
                          (("mnist", None, ["probe.c_values=[]"]), "at least one C"),
                          (("mnist", None, ["probe.max_iter=1"]), "max_iter")]:
        with pytest.raises(UserError, match=message):
            transfer_config(*args)
    assert transfer_config("synthetic", None, ["data.train_per_class=null"]).data.train_per_class is None


def kdgen(*args):
    return subprocess.run([sys.executable, "-m", "kdgen", *args], capture_output=True, text=True, timeout=300)


# 20 training images a class: the probes need trained models, not good ones
TINY_RUN = ["train.epochs=1", "data.train_per_class=20", "seeds=[0,1]", "generations.count=1",
            "generations.arms=[strict,tolerant]", "model.name=cnn-tiny", "--no-progress"]
PROBE = ["--data", "synthetic", "data.num_train=120", "data.num_test=40", "data.image_size=12", "data.channels=3",
         "data.num_classes=3", "data.train_per_class=null", "probe.c_values=[0.1,1]"]


@pytest.mark.slow
def test_transfer_probes_every_model_of_a_run_and_adds_a_report_section(tmp_path, kdgen_cli):
    run = tmp_path / "run"
    assert kdgen_cli("run", "--out", str(run), *TINY_RUN).returncode == 0
    result = kdgen_cli("transfer", str(run), *PROBE)
    assert result.returncode == 0, result.stderr
    rows = read_json(run / "transfer" / "synthetic.json")["rows"]
    units = {(r["arm"], r["seed"], r["generation"]) for r in rows}
    assert units == {(a, s, g) for a in ("strict", "tolerant") for s in (0, 1) for g in (0, 1)}
    assert {r["split"] for r in rows} == {"val", "test"} and all(r["probe"] == "synthetic" for r in rows)
    assert all(0 <= r["top1"] <= 100 and r["nll"] > 0 and r["feature_dim"] == 32 and r["C"] in (0.1, 1) for r in rows)
    # the digits models (grey 8x8) saw the RGB 12x12 probe images as grey 8x8
    assert "RGB to grey" in read_json(run / "transfer" / "synthetic.json")["adapted"]
    report = (run / "report.md").read_text()
    assert "Transfer: linear probes on other data" in report and "Probe on synthetic" in report
    assert "tolerant − strict" in report.split("Transfer:")[1]
    # nothing is overwritten; --out writes elsewhere and leaves the run alone
    again = kdgen("transfer", str(run), *PROBE)
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    elsewhere = kdgen_cli("transfer", str(run), *PROBE, "--out", str(tmp_path / "probes"))
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert read_json(tmp_path / "probes" / "synthetic.json")["rows"] == rows  # same models, same probes
    # held-out classes: the probe sees only the classes named, relabelled
    held_out = kdgen_cli("transfer", str(run), *PROBE, "data.classes=[2,0]", "--out", str(tmp_path / "probes"))
    assert held_out.returncode == 0, held_out.stderr
    rows = read_json(tmp_path / "probes" / "synthetic-classes-2-0.json")["rows"]
    assert {r["probe"] for r in rows} == {"synthetic classes 2,0"} and len(rows) == len(units) * 2


def test_data_classes_keeps_and_relabels_the_classes_named():
    from kdgen.config import load_config
    from kdgen.data import load_bundle

    cfg = load_config(None, ["data.name=synthetic", "data.num_train=200", "data.classes=[3,1]"])
    full = load_bundle(load_config(None, ["data.name=synthetic", "data.num_train=200"]).data)
    bundle = load_bundle(cfg.data)
    assert bundle.class_names == ["class3", "class1"] and bundle.num_classes == 2
    for part, whole in ((bundle.test, full.test),):
        assert len(part) == int(((whole.labels == 3) | (whole.labels == 1)).sum())
        assert torch.equal(part.images[part.labels == 0], whole.images[whole.labels == 3])
    assert set(bundle.train.labels.tolist()) == {0, 1}
    # a config without the key serialises as before it existed (config.yaml and unit-cache keys unchanged)
    assert "classes" not in load_config(None).to_dict()["data"] and cfg.to_dict()["data"]["classes"] == [3, 1]
    for bad in ("[1]", "[1,1]", "[-1,2]"):
        with pytest.raises(UserError, match="classes"):
            load_config(None, [f"data.classes={bad}"])
    with pytest.raises(UserError, match="above 9"):
        load_bundle(load_config(None, ["data.name=synthetic", "data.classes=[3,10]"]).data)


def test_transfer_refuses_unfinished_runs_bad_paths_and_missing_data(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seeds: [0]\n")
    write_json(run / "results.json", {"rows": [], "complete": False})
    for args, message in [((str(run),), "has not finished"), ((str(tmp_path / "nowhere"),), "not a kdgen run folder")]:
        result = kdgen("transfer", *args, *PROBE)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (run / "transfer").exists()
    write_json(run / "results.json", {"rows": [], "complete": True})
    missing = kdgen("transfer", str(run), "--data", "mnist", "--root", str(tmp_path / "no-mnist"))
    assert missing.returncode == 2 and "no-mnist" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert not (run / "transfer").exists()
