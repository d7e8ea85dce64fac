"""Arms as plug-ins: the registry, every arm's plan, and the snapshot arm end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

import kdgen.running.generations as generations_module
import kdgen.training.objective as objective_module
from kdgen import arms
from kdgen.config import load_config
from kdgen.data import load_bundle
from kdgen.errors import ConfigError
from kdgen.models import build
from kdgen.running.generations import GenerationsRunner
from kdgen.running.runner import run_experiment
from kdgen.training.loop import StopFlag, TrainingInterrupted


def snapshot_config(**sections):
    base = {"generations": {"count": 2, "arms": ["snapshot"]}, "train": {"epochs": 6, "lr": 0.05},
            "snapshot": {"cycle_epochs": 2}}
    base.update(sections)
    return tiny_config(**base)


def test_registry_lists_every_arm_and_refuses_unknown_names():
    assert {"baseline", "strict", "tolerant", "snapshot", "snapshot-tolerant"} <= set(arms.names())
    assert arms.names()[:3] == ["baseline", "strict", "tolerant"]
    with pytest.raises(ConfigError, match="unknown arm 'snapshott' \\(did you mean 'snapshot'\\?\\)"):
        load_config(None, ["generations.arms=[snapshott]"])


@pytest.mark.parametrize("name", arms.names())
def test_every_arm_plans_a_consistent_chain(name):
    cfg = tiny_config(train={"epochs": 8}, generations={"count": 3, "arms": [name]})
    arm = arms.make(name, cfg)
    costs = []
    for g in range(4):
        for earlier in (arm.start(g), arm.teacher(g)):
            assert earlier is None or 0 <= earlier < g  # only finished generations start or teach
        assert all(0 <= m <= g for m in arm.ensemble(g))
        assert arm.recipe(g).epochs >= 1
        costs.append(arm.cost_epochs(g, "single"))
        assert arm.objective(g).method is None or arm.teacher(g) is not None
    assert costs == sorted(costs) and costs[0] > 0
    assert all(other in arms.names() for other in arm.compare_with)


def test_costs_put_one_snapshot_chain_at_one_models_budget():
    cfg = tiny_config(train={"epochs": 12}, generations={"count": 3})
    strict, snapshot, baseline = (arms.make(n, cfg) for n in ("strict", "snapshot", "baseline"))
    assert [strict.cost_epochs(g, "single") for g in range(4)] == [12, 24, 36, 48]
    assert [snapshot.cost_epochs(g, "single") for g in range(4)] == [3, 6, 9, 12]
    assert baseline.cost_epochs(3, "single") == 12 and baseline.cost_epochs(3, "ensemble") == 36


def test_snapshot_needs_an_epoch_per_cycle():
    cfg = tiny_config(train={"epochs": 2}, generations={"count": 3, "arms": ["snapshot"]})
    with pytest.raises(ConfigError, match="snapshot.cycle_epochs"):
        arms.make("snapshot", cfg).check()


def test_snapshot_cycles_warm_start_from_and_learn_from_the_previous_cycle(monkeypatch):
    """Cycle g starts from cycle g-1's final weights, is taught by a frozen snapshot of them, and its
    LR schedule restarts at train.lr with a fresh optimizer."""
    cfg = snapshot_config()
    data = load_bundle(cfg.data)
    calls = []
    real_train = generations_module.train_generation

    def spy(model, data_, recipe, objective, runtime, hooks, *, seed, teacher=None, resume_from=None):
        given, teacher = teacher, (teacher or [None])[0]  # the runner hands the arm's list of teachers
        start = {k: v.clone() for k, v in model.state_dict().items()}
        teacher_state = None if teacher is None else {k: v.clone() for k, v in teacher.state_dict().items()}
        frozen = teacher is None or (not teacher.training and not any(p.requires_grad for p in teacher.parameters()))
        result = real_train(model, data_, recipe, objective, runtime, hooks, seed=seed, teacher=given,
                            resume_from=resume_from)
        calls.append({"start": start, "teacher": teacher_state, "frozen": frozen, "same": teacher is model,
                      "end": {k: v.clone() for k, v in model.state_dict().items()}, "epochs": recipe.epochs,
                      "lrs": [log.lr for log in result.history], "weight": objective.method.weight if objective.method is not None else 0})
        return result

    monkeypatch.setattr(generations_module, "train_generation", spy)
    GenerationsRunner(cfg, data, lambda: build("cnn-tiny", 4, 1)).run()
    assert len(calls) == 3 and all(c["epochs"] == 2 for c in calls)
    assert calls[0]["teacher"] is None and calls[0]["weight"] == 0
    for previous, cycle in zip(calls, calls[1:]):
        assert all(torch.equal(cycle["start"][k], previous["end"][k]) for k in previous["end"])
        assert all(torch.equal(cycle["teacher"][k], previous["end"][k]) for k in previous["end"])
        assert cycle["frozen"] and not cycle["same"] and cycle["weight"] == cfg.snapshot.weight
    for cycle in calls:
        assert cycle["lrs"][0] == cfg.train.lr and cycle["lrs"][-1] < cfg.train.lr  # restart, then decay


def test_snapshot_has_its_own_teacher_weight_and_temperature():
    cfg = snapshot_config(snapshot={"cycle_epochs": 2, "weight": 0.4, "temperature": 2.0})
    objective = arms.make("snapshot", cfg).objective(1)
    assert objective.method.weight == 0.4 and objective.method.temperature == 2.0
    tolerant = arms.make("snapshot-tolerant", cfg)
    assert tolerant.objective(0).tolerance is not None and tolerant.objective(1).tolerance is None
    assert arms.make("snapshot", cfg).objective(0).tolerance is None


def test_snapshot_resumes_exactly_from_a_stop_in_the_middle_of_a_cycle(tmp_path, monkeypatch):
    cfg = snapshot_config()
    _, reference = run_experiment(cfg, tmp_path / "reference", echo=False)
    data = load_bundle(cfg.data)
    steps_per_cycle = cfg.snapshot.cycle_epochs * (len(data.train) // cfg.train.batch_size)
    stop, calls = StopFlag(), {"n": 0}
    real_terms = objective_module.GenerationObjective.forward

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == steps_per_cycle + 3:  # cycle 1, in its first epoch
            stop.set()
        return real_terms(self, *args, **kwargs)

    monkeypatch.setattr(objective_module.GenerationObjective, "forward", counting)
    with pytest.raises(TrainingInterrupted, match="generation 1"):
        run_experiment(cfg, tmp_path / "run", echo=False, stop=stop)
    monkeypatch.setattr(objective_module.GenerationObjective, "forward", real_terms)
    _, resumed = run_experiment(cfg, tmp_path / "run", resume=True, echo=False)
    assert resumed == reference


def test_report_has_the_equal_cost_view(tmp_path):
    cfg = snapshot_config(generations={"count": 2, "arms": ["strict", "snapshot"]})
    out, _ = run_experiment(cfg, tmp_path / "run", echo=False)
    report = (out / "report.md").read_text()
    assert "Equal cost: top-1 against training epochs spent, test split" in report
    assert (out / "plots" / "equal_cost_test.png").is_file()
    assert "alt='equal_cost_test'" in (out / "report.html").read_text()  # embedded in the page
    # strict generation 2 cost three 6-epoch trainings; snapshot generation 2 three 2-epoch cycles
    lines = [line for line in report.splitlines() if line.startswith("| 18 |") or line.startswith("| 6 |")]
    assert any("| strict | 2 | single |" in line for line in lines)
    assert any("| snapshot | 2 | single |" in line for line in lines)


def test_kdgen_arms_lists_every_registered_arm(capsys):
    from kdgen.cli import main

    assert main(["arms"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == arms.names()
