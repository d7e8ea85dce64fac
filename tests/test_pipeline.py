"""One pipeline for ``kdgen run`` and ``kdgen.train_generations``; the runtime section; tolerance methods as plug-ins."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

import kdgen
from kdgen.config import load_config
from kdgen.errors import ConfigError, UserError
from kdgen.losses import confidence_penalty, cross_entropy, label_smoothing_loss, top_score_difference
from kdgen.models import build
from kdgen.tolerance import METHODS
from kdgen.training import runtime as runtime_module


def api_data():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(96) % 4
    images[labels == 1, :, :4] = 255  # something to learn
    return kdgen.bundle_from_tensors(images[:72], labels[:72], images[72:], labels[72:], val_fraction=0.25)


def api_config(**sections):
    return tiny_config(generations={"count": 1, "arms": ["strict", "tolerant"]}, **sections)


def test_api_run_folder_is_a_full_run_folder_and_resumes(tmp_path):
    cfg, data = api_config(), api_data()
    rows = kdgen.train_generations(lambda: build("cnn-tiny", 4, 1), data, cfg, out_dir=tmp_path / "run")
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "results.json", "report.md", "report.html", "checkpoints"}
    assert load_config(out / "config.yaml").tolerance.k == 3  # "auto" recorded as what ran
    payload = json.loads((out / "results.json").read_text())
    assert payload["complete"] and payload["rows"] == rows
    # resuming a finished API run trains nothing and returns the same rows
    again = kdgen.train_generations(lambda: build("cnn-tiny", 4, 1), data, cfg, out_dir=out, resume=True)
    assert again == rows
    # kdgen run cannot continue it: its data and model were not the config's
    result = subprocess.run([sys.executable, "-m", "kdgen", "run", "--resume", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "kdgen.train_generations" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_api_checks_the_config_against_the_data_before_training(tmp_path, monkeypatch):
    import kdgen.running.generations as generations_module

    monkeypatch.setattr(generations_module, "train_generation", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ConfigError, match="tolerance.k: 7 is more than the 4 classes"):
        kdgen.train_generations(lambda: build("cnn-tiny", 4, 1), api_data(), api_config(tolerance={"k": 7}),
                                out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_api_refuses_a_non_empty_out_dir(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        kdgen.train_generations(lambda: build("cnn-tiny", 4, 1), api_data(), api_config(), out_dir=tmp_path / "run")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("old, new", [("train.precision=bf16", "runtime.precision"), ("train.device=cpu", "runtime.device"),
                                      ("train.compile=true", "runtime.compile"),
                                      ("train.channels_last=false", "runtime.channels_last"),
                                      ("data.workers=2", "runtime.workers")])
def test_old_runtime_spellings_name_the_new_key(old, new):
    with pytest.raises(ConfigError, match=f"{old.split('=')[0]} has moved to {new}"):
        load_config(None, [old])


@pytest.mark.parametrize("method, old, new", [("label-smoothing", "eta", "epsilon"), ("confidence-penalty", "eta", "beta")])
def test_an_old_tolerance_eta_names_the_methods_own_key(method, old, new):
    with pytest.raises(ConfigError, match=f"its strength is tolerance.{new}"):
        load_config(None, [f"tolerance.method={method}", f"tolerance.{old}=0.1"])


def test_tolerance_methods_have_their_own_parameters_and_terms():
    assert set(METHODS) == {"none", "tsd", "label-smoothing", "confidence-penalty"}
    logits, target = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    tsd = load_config(None, ["tolerance.eta=0.4", "tolerance.k=3"]).tolerance.term()
    assert torch.equal(tsd.loss(logits, target), 0.4 * top_score_difference(logits, 3, target=target, primary="target"))
    ls = load_config(None, ["tolerance.method=label-smoothing", "tolerance.epsilon=0.2"]).tolerance.term()
    assert ls.replaces_ce and torch.equal(ls.loss(logits, target), label_smoothing_loss(logits, target, 0.2))
    cp = load_config(None, ["tolerance.method=confidence-penalty", "tolerance.beta=0.3"]).tolerance.term()
    assert not cp.replaces_ce and torch.equal(cp.loss(logits, target), 0.3 * confidence_penalty(logits))
    assert load_config(None, ["tolerance.method=none"]).tolerance.term() is None
    assert load_config(None, ["tolerance.eta=0"]).tolerance.term() is None  # inactive: no term at all
    with pytest.raises(ConfigError, match="'tolerance.k' is not a key of tolerance.method 'label-smoothing' \\(a key of 'tsd'\\)"):
        load_config(None, ["tolerance.method=label-smoothing", "tolerance.k=3"])


def test_label_smoothing_replaces_cross_entropy_with_its_weight():
    from kdgen import arms
    from kdgen.tolerance import LabelSmoothing

    cfg = tiny_config(distill={"weight": 0.6, "temperature": 2.0})
    cfg = cfg.model_copy(update={"tolerance": LabelSmoothing(epsilon=0.2, apply_to="all")})
    logits, target, teacher = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), torch.randn(6, 4)
    terms = arms.make("tolerant", cfg).objective(1).terms(logits, target, teacher)
    assert set(terms) == {"ce", "kd"}
    torch.testing.assert_close(terms["ce"], 0.4 * label_smoothing_loss(logits, target, 0.2))
    strict_terms = arms.make("strict", cfg).objective(1).terms(logits, target, teacher)
    torch.testing.assert_close(strict_terms["ce"], 0.4 * cross_entropy(logits, target))


def test_explicit_bf16_without_native_support_is_warned_about_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: False)
    assert runtime_module.resolve_precision("auto", torch.device("cpu")) == "fp32"
    rt = runtime_module.Runtime.from_config(load_config(None, ["runtime.precision=bf16", "runtime.device=cpu"]).runtime)
    assert rt.precision == "bf16"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "emulated" in err[0] and "runtime.precision=auto" in err[0]
    runtime_module.Runtime.from_config(load_config(None, ["runtime.device=cpu"]).runtime)
    assert capsys.readouterr().err == ""


def test_auto_precision_honours_an_avx2_cap():
    code = "import torch; from kdgen.training.runtime import resolve_precision; print(resolve_precision('auto', torch.device('cpu')))"
    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "fp32", result.stderr


def test_resume_ignores_the_whole_runtime_section(tmp_path):
    args = ["seeds=[0]", "generations.count=1", "generations.arms=[strict]", "train.epochs=1", "data.name=synthetic",
            "data.num_train=64", "data.num_test=16", "data.image_size=8", "data.channels=1", "data.num_classes=4",
            "model.name=cnn-tiny", "log.progress=false"]
    out = tmp_path / "run"
    first = subprocess.run([sys.executable, "-m", "kdgen", "run", "--out", str(out), *args], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    import yaml

    recorded = yaml.safe_load((out / "config.yaml").read_text())["runtime"]
    assert recorded["device"] == "cpu" and recorded["precision"] != "auto"  # what "auto" meant, for kdgen cache ls --runs
    again = subprocess.run([sys.executable, "-m", "kdgen", "run", "--resume", "--out", str(out), "runtime.precision=fp32",
                            "runtime.channels_last=false", "runtime.workers=0", "runtime.device=cpu"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr


def test_run_folders_written_before_the_runtime_section_are_read_in_todays_spelling(tmp_path):
    import yaml

    from kdgen.config import upgrade_recorded
    from kdgen.folders import saved_config

    old = {"train": {"epochs": 3, "precision": "bf16", "compile": False, "device": "auto", "channels_last": True},
           "data": {"name": "digits", "workers": 4},
           "tolerance": {"method": "label-smoothing", "eta": 0.1, "k": 3, "primary": "top1", "apply_to": "patriarch"}}
    new = upgrade_recorded(old)
    assert new["runtime"] == {"precision": "bf16", "compile": False, "device": "auto", "channels_last": True, "workers": 4}
    assert new["tolerance"] == {"method": "label-smoothing", "epsilon": 0.1, "apply_to": "patriarch"}
    assert old["train"]["precision"] == "bf16"  # the record itself is not touched
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = saved_config(tmp_path)
    assert cfg.runtime.precision == "bf16" and cfg.tolerance.epsilon == 0.1 and cfg.train.epochs == 3
    with pytest.raises(ConfigError, match="train.device has moved to runtime.device"):
        load_config(tmp_path / "config.yaml")  # a config a user passes is not rewritten behind their back
