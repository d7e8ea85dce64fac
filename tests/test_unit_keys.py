"""Unit keys (kdgen.running.unit_cache): every config key is stated to enter a unit's key or not, and why; the keys
that change a result enter (the device resolved, per-process BatchNorm, the snapshot arm's KD revision), and those
that do not stay out (K of the metrics, the evaluation batch, where a published data set lies, loader workers)."""

from __future__ import annotations

import typing

import pytest
import torch
from pydantic import BaseModel

import kdgen.running.unit_cache as unit_cache
from kdgen import arms
from kdgen.config import Config, load_config
from kdgen.running.unit_cache import unit_key, unit_settings

TINY = ["data.name=synthetic", "data.num_train=96", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=12", "train.batch_size=16", "seeds=[0]",
        "generations.count=2", "log.progress=false"]  # tolerance: tsd, eta 0.3 (active), k auto
UNITS = [(arm, g) for arm in arms.names() for g in range(3)]  # every registered arm, patriarch and two students

ENTERS, IGNORED = "enters", "ignored"
# Every config key: whether it enters the key of a unit (of some arm, at some generation), why, and a probe: a new
# value (with the overrides it needs besides TINY) for which the keys must change (ENTERS: at least one unit's) or not
# (IGNORED: no unit's). None: no probe (the value needs an optional extra). A key of a tagged section is written
# section[method].key. A new config key fails test_every_config_key_is_stated until it is added here.
KEYS: dict[str, tuple[str, str, tuple | None]] = {
    "seeds": (IGNORED, "a unit's own seed enters; the run's other seeds do not matter", ([5, 6], [])),
    "data.name": (ENTERS, "the data", ("digits", [])),
    "data.root": (ENTERS, "for sources whose files it chooses (imagefolder, hf, plug-ins' sources); not for a "
                  "published data set, the same wherever it lies (unit_cache.LOCATED_SOURCES)",
                  ("/b", ["data.name=imagefolder", "data.root=/a"])),
    "data.val_fraction": (ENTERS, "the training split", (0.3, [])),
    "data.split_seed": (ENTERS, "the training split", (1, [])),
    "data.train_per_class": (ENTERS, "the training split", (5, [])),
    "data.classes": (ENTERS, "the data", ([0, 1], [])),
    "data.augment.translate": (ENTERS, "training augmentation", (2, [])),
    "data.augment.hflip": (ENTERS, "training augmentation", (True, [])),
    "data.stream": (ENTERS, "streamed folders augment otherwise (random-resized crops)", (True, [])),
    "data.num_train": (ENTERS, "synthetic data", (64, [])),
    "data.num_test": (ENTERS, "synthetic data", (32, [])),
    "data.image_size": (ENTERS, "synthetic data", (12, [])),
    "data.channels": (ENTERS, "synthetic data", (3, [])),
    "data.num_classes": (ENTERS, "synthetic data", (5, [])),
    "data.train_crop": (ENTERS, "image folders' training crops", (64, [])),
    "data.eval_resize": (ENTERS, "image folders' images", (128, [])),
    "data.eval_crop": (ENTERS, "image folders' images", (96, [])),
    "data.image_column": (ENTERS, "hf: which images", ("img", ["data.name=hf", "data.root=x"])),
    "data.label_column": (ENTERS, "hf: which labels", ("y", ["data.name=hf", "data.root=x"])),
    "data.val_split": (ENTERS, "hf: the val split", ("validation", ["data.name=hf", "data.root=x"])),
    "model.name": (ENTERS, "the architecture", ("cnn", [])),
    "model.kwargs": (ENTERS, "the architecture's options (timm/ models)", None),
    "model.pretrained": (ENTERS, "as the patriarch's weights' name, in the units that descend from it", None),
    "train.epochs": (ENTERS, "the recipe", (10, [])),
    "train.batch_size": (ENTERS, "the recipe", (32, [])),
    "train.lr": (ENTERS, "the recipe", (0.2, [])),
    "train.momentum": (ENTERS, "the recipe", (0.5, [])),
    "train.nesterov": (ENTERS, "the recipe", (False, [])),
    "train.weight_decay": (ENTERS, "the recipe", (0.0, [])),
    "train.schedule": (ENTERS, "the recipe", ("constant", [])),
    "train.milestones": (ENTERS, "the recipe (step schedule)", ([0.4], [])),
    "train.gamma": (ENTERS, "the recipe (step schedule)", (0.5, [])),
    "train.warmup_epochs": (ENTERS, "the recipe", (1.0, [])),
    "train.eval_batch_size": (IGNORED, "evaluation only, BatchNorm folded: rounding at most", (64, [])),
    "generations.count": (ENTERS, "snapshot arms only: the cycle length when snapshot.cycle_epochs is unset "
                          "(a unit of another arm does not depend on the generations after it)", (3, [])),
    "generations.arms": (IGNORED, "a unit's own arm enters; which other arms run does not matter", (["strict"], [])),
    "generations.models": (ENTERS, "the unit's architecture, and its line's where they differ",
                           (["cnn-tiny", "cnn"], [])),
    "tolerance[none].method": (ENTERS, "tolerant arms: which term (none: no term)", ("none", [])),
    "tolerance[none].apply_to": (IGNORED, "no term, nothing of it matters", ("all", ["tolerance.method=none"])),
    "tolerance[tsd].method": (ENTERS, "tolerant arms: which term", ("tsd", ["tolerance.method=none"])),
    "tolerance[tsd].apply_to": (ENTERS, "tolerant arms, from generation 1", ("all", [])),
    "tolerance[tsd].eta": (ENTERS, "tolerant arms (0: no term, then nothing of it enters)", (0.7, [])),
    "tolerance[tsd].k": (ENTERS, "tolerant arms with an active term; the rows' K is not in the key (their "
                         "secondary_mass is recomputed from the recorded per-rank mass)", (2, [])),
    "tolerance[tsd].primary": (ENTERS, "tolerant arms with an active term", ("top1", [])),
    "tolerance[tsd].confidence": (ENTERS, "tolerant arms: decides eta", (0.9, [])),
    "tolerance[label-smoothing].method": (ENTERS, "tolerant arms: which term", ("label-smoothing", [])),
    "tolerance[label-smoothing].apply_to": (ENTERS, "tolerant arms, from generation 1",
                                            ("all", ["tolerance.method=label-smoothing"])),
    "tolerance[label-smoothing].epsilon": (ENTERS, "tolerant arms", (0.2, ["tolerance.method=label-smoothing"])),
    "tolerance[confidence-penalty].method": (ENTERS, "tolerant arms: which term", ("confidence-penalty", [])),
    "tolerance[confidence-penalty].apply_to": (ENTERS, "tolerant arms, from generation 1",
                                               ("all", ["tolerance.method=confidence-penalty"])),
    "tolerance[confidence-penalty].beta": (ENTERS, "tolerant arms",
                                           (0.3, ["tolerance.method=confidence-penalty"])),
    "distill[kd].method": (ENTERS, "students of the born-again arms: which method", ("kd", ["distill.method=dkd"])),
    "distill[kd].weight": (ENTERS, "students of the born-again arms", (0.5, [])),
    "distill[kd].temperature": (ENTERS, "students of the born-again arms", (2.0, [])),
    "distill[dkd].method": (ENTERS, "students of the born-again arms: which method", ("dkd", [])),
    "distill[dkd].alpha": (ENTERS, "students of the born-again arms", (2.0, ["distill.method=dkd"])),
    "distill[dkd].beta": (ENTERS, "students of the born-again arms", (4.0, ["distill.method=dkd"])),
    "distill[dkd].temperature": (ENTERS, "students of the born-again arms", (2.0, ["distill.method=dkd"])),
    "distill[dkd].warmup_epochs": (ENTERS, "students of the born-again arms", (5.0, ["distill.method=dkd"])),
    "distill[dkd].ce_weight": (ENTERS, "students of the born-again arms", (0.5, ["distill.method=dkd"])),
    "runtime.device": (ENTERS, "resolved: auto enters as the cpu or cuda it means where the unit runs",
                       ("cpu", ["runtime.device=cuda"])),
    "runtime.precision": (ENTERS, "resolved: auto enters as the precision it means on that device",
                          ("fp16", [])),
    "runtime.channels_last": (ENTERS, "another memory layout, other kernels", (False, [])),
    "runtime.compile": (IGNORED, "other kernels for the same maths", (True, [])),
    "runtime.workers": (IGNORED, "streamed items draw their augmentation from per-item streams, the same for any "
                        "number of workers (test_streaming)", (0, [])),
    "runtime.parallel": (ENTERS, "only data mode on more than one process without sync_batchnorm: BatchNorm "
                         "statistics per process (chains, or data with sync, compute what one process does)",
                         ("data", ["runtime.sync_batchnorm=false"], {"WORLD_SIZE": "2"})),
    "runtime.sync_batchnorm": (ENTERS, "as runtime.parallel: only off, in data mode on more than one process",
                               (False, ["runtime.parallel=data"], {"WORLD_SIZE": "4"})),
    "runtime.deterministic": (IGNORED, "other kernels for the same maths", (True, [])),
    "runtime.save_every_s": (IGNORED, "how often a unit in training is saved; resume is exact", (0.0, [])),
    "runtime.lease_s": (IGNORED, "how long a claim on a unit lasts", (5.0, [])),
    "log.tensorboard": (IGNORED, "what a run shows", (True, [])),
    "log.progress": (IGNORED, "what a run shows", (True, [])),
    "log.mlflow": (IGNORED, "where a run is recorded", (True, [])),
    "log.mlflow_uri": (IGNORED, "where a run is recorded", ("sqlite:///x.db", [])),
    "log.mlflow_experiment": (IGNORED, "where a run is recorded", ("other", [])),
    "snapshot.cycle_epochs": (ENTERS, "snapshot arms", (3, [])),
    "snapshot.weight": (ENTERS, "snapshot arms, from cycle 1", (0.5, [])),
    "snapshot.temperature": (ENTERS, "snapshot arms, from cycle 1", (4.0, [])),
}


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every leaf key of the config, recursively; a tagged section's keys once per method (``section[method].key``).
    Sections and methods that plug-ins (other packages) add are theirs to key, through their arm or method."""
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        variants = typing.get_args(annotation)
        if _is_model(annotation):
            if annotation.__module__.startswith("kdgen."):
                found += config_keys(annotation, f"{prefix}{name}.")
        elif variants and all(_is_model(v) for v in variants):
            for variant in variants:
                if variant.__module__.startswith("kdgen."):
                    found += config_keys(variant, f"{prefix}{name}[{variant.model_fields['method'].default}].")
        else:
            found.append(prefix + name)
    return found


def test_every_config_key_is_stated():
    keys = config_keys()
    assert len(keys) > 60 and "data.augment.hflip" in keys and "distill[dkd].alpha" in keys
    missing = [key for key in keys if key not in KEYS]
    assert not missing, f"say in KEYS whether these enter a unit's key, and why: {missing}"
    stale = [key for key in KEYS if key not in keys]
    assert not stale, f"no such config keys any more: {stale}"
    assert all(verdict in (ENTERS, IGNORED) and reason for verdict, reason, _ in KEYS.values())


def _override(key: str, value: object) -> str:
    import json

    path = key.replace("]", "").split(".")
    path[0] = path[0].split("[")[0]
    return f"{'.'.join(path)}={json.dumps(value)}"


def _keys(overrides: list[str]) -> dict[tuple[str, int], str]:
    cfg = load_config(None, TINY + overrides)
    return {(arm, g): unit_key(cfg, arm, 0, g) for arm, g in UNITS}


@pytest.mark.parametrize("key", [key for key, (_, _, probe) in KEYS.items() if probe is not None])
def test_each_key_changes_unit_keys_as_stated(key, monkeypatch):
    verdict, reason, probe = KEYS[key]
    value, base = probe[0], probe[1]
    for name, setting in (probe[2] if len(probe) > 2 else {}).items():
        monkeypatch.setenv(name, setting)
    before, after = _keys(base), _keys(base + [_override(key, value)])
    changed = {unit for unit in UNITS if before[unit] != after[unit]}
    if verdict == ENTERS:
        assert changed, f"{key} is said to enter unit keys ({reason}), but {value!r} changes none"
    else:
        assert not changed, f"{key} is said not to enter unit keys ({reason}), but {value!r} changes {changed}"


def test_auto_device_enters_as_the_device_it_means(monkeypatch):
    """A unit trained with device auto on a GPU is not the one trained with auto on a CPU."""
    cfg = {device: load_config(None, TINY + [f"runtime.device={device}", "runtime.precision=fp32"])
           for device in ("auto", "cpu", "cuda")}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert unit_key(cfg["auto"], "strict", 0, 1) == unit_key(cfg["cpu"], "strict", 0, 1)
    assert unit_settings(cfg["auto"], "strict", 0, 1)["runtime"]["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert unit_key(cfg["auto"], "strict", 0, 1) == unit_key(cfg["cuda"], "strict", 0, 1)
    assert unit_key(cfg["auto"], "strict", 0, 1) != unit_key(cfg["cpu"], "strict", 0, 1)


def test_auto_precision_enters_resolved_as_the_runner_records_it(monkeypatch):
    """The runner passes a config whose precision is resolved; one with auto gives the same key (cache admin, API)."""
    from kdgen.training.runtime import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    here = resolve_precision("auto", torch.device("cpu"))
    auto = load_config(None, TINY)
    assert unit_key(auto, "tolerant", 0, 2) == unit_key(load_config(None, TINY + [f"runtime.precision={here}"]),
                                                         "tolerant", 0, 2)


def test_per_process_batchnorm_enters_with_the_number_of_processes(monkeypatch):
    def key(*overrides):
        return unit_key(load_config(None, TINY + list(overrides)), "baseline", 0, 0)

    one = key()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert key("runtime.parallel=data") == one  # synchronised BatchNorm: what one process computes
    assert key("runtime.parallel=chains", "runtime.sync_batchnorm=false") == one  # chains: one process per model
    two = key("runtime.parallel=data", "runtime.sync_batchnorm=false")
    assert two != one
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert key("runtime.parallel=data", "runtime.sync_batchnorm=false") not in (one, two)  # 4 shares, not 2
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert key("runtime.parallel=data", "runtime.sync_batchnorm=false") == one  # one process: no share


def test_k_eval_batch_and_a_data_sets_location_miss_no_unit():
    """A sweep over tolerance.k trains only the tolerant arm per point; the evaluation batch and where a published
    data set lies change no unit; for an image folder, data.root is the data."""
    base = _keys([])
    other_k = _keys(["tolerance.k=2"])
    assert {unit for unit in UNITS if base[unit] != other_k[unit]} == \
        {(arm, g) for arm, g in UNITS if arm in ("tolerant", "snapshot-tolerant")}  # TSD's own K: their line
    assert _keys(["train.eval_batch_size=7"]) == base
    for name in ("fashion-mnist", "mnist", "cifar10", "cifar100"):
        assert _keys([f"data.name={name}", "data.root=/a"]) == _keys([f"data.name={name}", "data.root=/b"])
    assert _keys(["data.name=imagefolder", "data.root=/a"])[("baseline", 0)] != \
        _keys(["data.name=imagefolder", "data.root=/b"])[("baseline", 0)]


def test_the_snapshot_arms_students_carry_the_kd_revision(monkeypatch):
    """The snapshot arm's cycles 1.. learn with kd whatever distill.method is: a fix to kd retrains them."""
    from kdgen.methods.kd import KDSettings

    for method in ("kd", "dkd"):
        cfg = load_config(None, TINY + [f"distill.method={method}"])
        before = {unit: unit_key(cfg, *unit[:1], 0, unit[1]) for unit in UNITS}
        monkeypatch.setattr(KDSettings, "revision", 2)
        changed = {unit for unit in UNITS if unit_key(cfg, unit[0], 0, unit[1]) != before[unit]}
        monkeypatch.setattr(KDSettings, "revision", 1)
        snapshot_students = {(arm, g) for arm, g in UNITS if arm.startswith("snapshot") and g >= 1}
        born_again_students = {(arm, g) for arm, g in UNITS if arm in ("strict", "tolerant") and g >= 1}
        assert changed == snapshot_students | (born_again_students if method == "kd" else set())
        assert "distill.kd" not in unit_settings(cfg, "snapshot", 0, 1).get("code", {})  # revision 1 adds nothing


def test_keys_hold_no_metrics_k_and_the_resolved_runtime():
    settings = unit_settings(load_config(None, TINY), "baseline", 0, 0)
    assert "metrics" not in settings and "eval_batch_size" not in settings["train"]
    assert settings["runtime"]["device"] in ("cpu", "cuda") and settings["runtime"]["precision"] != "auto"
    assert set(settings["runtime"]) == {"device", "precision", "channels_last"}
    assert unit_cache.COSMETIC_RUNTIME <= set(Config.model_fields["runtime"].annotation.model_fields)


def test_a_unit_reused_at_another_k_has_the_rows_a_fresh_run_at_that_k_measures(tmp_path, monkeypatch):
    """K is not in the key: a run at K 2 reuses the units of a run at K 3 and recomputes their mass on ranks 2..K
    from the recorded per-rank mass, as a fresh run at K 2 measures it; a record without it is trained again."""
    from kdgen.checkpoint import read_json, write_json
    from kdgen.data import load_bundle
    from kdgen.running import generations
    from kdgen.running.run_folder import RunFolder
    from kdgen.running.unit_cache import UnitCache

    small = TINY + ["train.epochs=1", "generations.count=2", "generations.arms=[strict]", "train.lr=0.05",
                    "runtime.precision=fp32"]
    data = load_bundle(load_config(None, small).data)
    trained: list[str] = []
    real = generations.train_generation
    monkeypatch.setattr(generations, "train_generation",
                        lambda *args, **kwargs: trained.append(args[5].where) or real(*args, **kwargs))
    cache = UnitCache(tmp_path / "units")

    def run(k, name, units=cache):
        cfg = load_config(None, small + [f"tolerance.k={k}"])
        models = generations.ChainModels.from_config(cfg, data.num_classes, data.channels)
        folder = RunFolder(tmp_path / name)
        return generations.GenerationsRunner(cfg, data, models, folder=folder, unit_cache=units).run()

    at3 = run(3, "k3")
    assert len(trained) == 3
    reused = run(2, "k2")
    assert len(trained) == 3  # nothing trained again
    fresh = run(2, "fresh", None)
    assert reused == fresh
    assert any(a["secondary_mass"] != b["secondary_mass"] for a, b in zip(at3, reused))
    record = next((tmp_path / "units").glob("strict-seed0-gen2-*/record.json"))
    old = read_json(record)
    assert old["secondary_k"] == 3 and {"single/val", "single/test", "ensemble/val"} <= set(old["rank_mass"])
    write_json(record, {key: value for key, value in old.items() if key not in ("rank_mass", "secondary_k")})
    trained.clear()
    assert run(2, "again") == fresh and trained == ["arm strict, seed 0, generation 2"]
