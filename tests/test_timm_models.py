"""timm architectures as ``timm/<architecture>`` (the [timm] extra): tiny timm test models on tiny data, offline.

timm imports torchvision, whose PyPI wheels need PyPI's torch: with the CPU-only torch wheel README installs,
``import timm`` fails and these tests skip with that reason. ``.ci/run`` runs them in a venv of their own
(PyPI's torch, torchvision, timm); see docs/guide/bring-your-own.md.
"""

import os
import subprocess
import sys

import pytest
import torch

from kdgen.models import check_name, namespace

_reason = namespace("timm").missing()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"the [timm] extra is not usable here: {_reason}")

from conftest import tiny_config  # noqa: E402

TEACHER = "timm/test_efficientnet"  # 101k parameters, BatchNorm, pre-logits 'classifier'


def test_names_listed_and_checked(kdgen_cli):
    done = kdgen_cli("models", "--timm", "test_e*")
    assert done.returncode == 0 and "timm/test_efficientnet" in done.stdout.split()
    assert check_name("timm/test_resnet") == "timm/test_resnet"
    assert check_name("timm/test_resnet.r160_in1k") == "timm/test_resnet.r160_in1k"  # a weights tag
    with pytest.raises(ValueError, match=r"did you mean timm/test_resnet"):
        check_name("timm/test_resnt")
    done = kdgen_cli("models", "--input", "1x16x16", "timm/test_resnt")
    assert done.returncode == 2 and "did you mean" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_options_reach_timm_and_bad_options_are_one_line(kdgen_cli, tmp_path):
    from kdgen.running.generations import ChainModels

    cfg = tiny_config(model={"name": TEACHER, "kwargs": {"drop_rate": 0.25}}, generations={"count": 1})
    model = ChainModels.from_config(cfg, 4, 1).build(0)
    assert model.drop_rate == 0.25 and model.default_cfg["architecture"] == "test_efficientnet"
    done = kdgen_cli("run", "data.name=synthetic", "data.image_size=16", f"model.name={TEACHER}",
                     "model.kwargs={no_such_option: 1}", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "model.kwargs" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_timm_teacher_kdgen_student_chain_trains_predicts_and_transfers(kdgen_cli, tmp_path):
    out = tmp_path / "run"
    done = kdgen_cli("run", "data.name=synthetic", "data.num_train=64", "data.num_test=16", "data.image_size=16",
                     "data.channels=1", "data.num_classes=4", f"generations.models=[{TEACHER},cnn-tiny]",
                     "generations.count=1", "generations.arms=[strict]", "seeds=[0]", "train.epochs=1",
                     "train.batch_size=16", "--no-progress", "--out", str(out))
    assert done.returncode == 0, done.stderr
    import kdgen

    teacher, student = kdgen.load(out, "strict/0/0"), kdgen.load(out, "strict/0/1")
    images = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    for model in (teacher, student):
        probs = model(images)
        assert probs.shape == (3, 4) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-3)
    assert type(teacher.members[0]).__module__.startswith("timm.")

    # Transfer: features are timm's pre-logits output, the input of its own classifier.
    from kdgen.running.transfer import feature_module

    name, module = feature_module(teacher.members[0])
    assert name == "classifier" and module is teacher.members[0].get_classifier()
    done = kdgen_cli("transfer", str(out), "--data", "synthetic", "data.image_size=16", "data.channels=1",
                     "data.num_train=96", "data.num_classes=3", "data.train_per_class=16", "probe.c_values=[1]")
    assert done.returncode == 0, done.stderr
    rows = kdgen.checkpoint.read_json(out / "transfer" / "synthetic.json")["rows"]
    assert {r["generation"] for r in rows} == {0, 1}


def test_pretrained_starts_only_the_patriarch_and_joins_its_line_keys(tmp_path):
    """Weights from a local file (timm's own pretrained_cfg_overlay), so nothing is downloaded."""
    import timm
    from safetensors.torch import save_file

    from kdgen.running.generations import ChainModels
    from kdgen.running.unit_cache import unit_settings

    source = timm.create_model("test_efficientnet", num_classes=4, in_chans=1)
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    overlay = {"pretrained_cfg_overlay": {"file": str(weights)}}
    cfg = tiny_config(model={"name": TEACHER, "pretrained": True, "kwargs": overlay}, generations={"count": 2},
                      data={"image_size": 16})
    chain = ChainModels.from_config(cfg, 4, 1)
    torch.manual_seed(1)
    patriarch, student = chain.build(0), chain.build(1)
    assert torch.equal(patriarch.conv_stem.weight, source.conv_stem.weight)
    assert not torch.equal(student.conv_stem.weight, source.conv_stem.weight)

    plain = tiny_config(model={"name": TEACHER, "kwargs": overlay}, generations={"count": 2}, data={"image_size": 16})
    keyed = unit_settings(cfg, "strict", 0, 2)
    assert keyed["model"]["weights"] == "timm/test_efficientnet.r160_in1k" and "pretrained" not in keyed["model"]
    # A baseline student is trained alone, from scratch: the same unit with or without pretrained weights.
    assert unit_settings(cfg, "baseline", 0, 1) == unit_settings(plain, "baseline", 0, 1)
    assert unit_settings(cfg, "baseline", 0, 0) != unit_settings(plain, "baseline", 0, 0)


def test_pretrained_weights_missing_offline_is_one_line_before_training(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-cache")}
    done = subprocess.run([sys.executable, "-m", "kdgen", "run", "data.name=synthetic", "data.image_size=16",
                           f"model.name={TEACHER}", "model.pretrained=true", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "timm/test_efficientnet.r160_in1k" in lines[0] and "not on this machine" in lines[0]
    assert not out.exists()
