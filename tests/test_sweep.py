"""kdgen sweep: which settings a unit depends on, reuse that equals a fresh run, val-only scoring,
resume and one-line errors."""

import json
import subprocess
import sys

import pytest

from kdgen.checkpoint import read_json, write_json
from kdgen.config import load_config
from kdgen.reporting.sweep_page import build_sweep_report
from kdgen.running import generations
from kdgen.running.runner import run_experiment
from kdgen.running.sweep import run_sweep
from kdgen.running.unit_cache import UnitCache, unit_key
from kdgen.sweep_plan import grid_points, make_plan, parse_axis

TINY = ["data.name=synthetic", "data.num_train=96", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=1", "train.batch_size=16", "seeds=[0,1]",
        "generations.count=2", "log.progress=false"]


def cfg(*overrides):
    return load_config(None, TINY + list(overrides))


def test_unit_keys_depend_only_on_the_settings_that_change_the_unit():
    a = cfg("tolerance.eta=0.1", "distill.weight=0.5")
    for arm, generation in [("baseline", 0), ("baseline", 2)]:
        assert unit_key(a, arm, 0, generation) == unit_key(cfg("tolerance.eta=0.4", "distill.weight=0.9"), arm, 0, generation)
    assert unit_key(a, "strict", 0, 1) == unit_key(cfg("tolerance.eta=0.4", "distill.weight=0.5"), "strict", 0, 1)
    assert unit_key(a, "strict", 0, 1) != unit_key(cfg("tolerance.eta=0.1", "distill.weight=0.9"), "strict", 0, 1)
    assert unit_key(a, "strict", 0, 0) == unit_key(cfg("distill.weight=0.9"), "strict", 0, 0)  # a patriarch has no teacher
    assert unit_key(a, "tolerant", 0, 0) == unit_key(cfg("tolerance.eta=0.1", "distill.weight=0.9"), "tolerant", 0, 0)
    assert unit_key(a, "tolerant", 0, 0) != unit_key(cfg("tolerance.eta=0.2", "distill.weight=0.5"), "tolerant", 0, 0)
    assert unit_key(a, "tolerant", 0, 1) != unit_key(cfg("tolerance.eta=0.1", "distill.weight=0.9"), "tolerant", 0, 1)
    # with no tolerance term at all, primary changes nothing
    assert unit_key(cfg("tolerance.eta=0", "tolerance.k=3"), "tolerant", 0, 1) == \
        unit_key(cfg("tolerance.eta=0", "tolerance.k=3", "tolerance.primary=top1"), "tolerant", 0, 1)
    # K is also the K of every row's mass on ranks 2..K, but a reused unit's rows are recomputed for the run's own K
    # (tests/test_unit_keys.py): a strict unit does not depend on it
    assert unit_key(cfg("tolerance.k=2"), "strict", 0, 0) == unit_key(cfg("tolerance.k=3"), "strict", 0, 0)
    # seeds, generation count and cosmetic settings do not matter; the seed and the data do
    assert unit_key(a, "strict", 1, 1) == unit_key(cfg("tolerance.eta=0.1", "distill.weight=0.5", "seeds=[1]",
                                                       "generations.count=5", "runtime.compile=true"), "strict", 1, 1)
    assert unit_key(a, "strict", 0, 1) != unit_key(a, "strict", 1, 1)
    assert unit_key(a, "strict", 0, 1) != unit_key(cfg("tolerance.eta=0.1", "distill.weight=0.5", "train.lr=0.2"), "strict", 0, 1)


def _count_training(monkeypatch):
    trained = []
    real = generations.train_generation

    def counting(*args, **kwargs):
        trained.append(args[5].where)
        return real(*args, **kwargs)

    monkeypatch.setattr(generations, "train_generation", counting)
    return trained


@pytest.mark.slow
def test_reused_units_equal_a_fresh_run_and_only_the_tolerant_arm_is_trained_again(tmp_path, monkeypatch):
    cache = UnitCache(tmp_path / "units")
    run_experiment(cfg("tolerance.eta=0.1"), tmp_path / "a", echo=False, unit_cache=cache)
    trained = _count_training(monkeypatch)
    _, reused = run_experiment(cfg("tolerance.eta=0.3"), tmp_path / "b", echo=False, unit_cache=cache)
    assert trained and all(where.startswith("arm tolerant") for where in trained)
    assert len(trained) == 2 * 3  # seeds x tolerant generations
    _, fresh = run_experiment(cfg("tolerance.eta=0.3"), tmp_path / "fresh", echo=False)
    assert reused == fresh
    assert read_json(tmp_path / "b" / "results.json")["extras"] == read_json(tmp_path / "fresh" / "results.json")["extras"]
    # each point stays a complete, self-contained run folder
    assert len(list((tmp_path / "b" / "checkpoints").glob("*.safetensors"))) == 2 * 3 * 3


def test_grid_axes_parse_yaml_values_and_refuse_what_cannot_be_swept():
    assert parse_axis("tolerance.eta=0,0.05,0.1").values == (0, 0.05, 0.1)
    assert parse_axis("train.milestones=[0.5,0.75],[0.3]").values == ([0.5, 0.75], [0.3])
    assert parse_axis("tolerance.primary=top1,target").values == ("top1", "target")
    for bad, message in [("tolerance.eta", "KEY=V1,V2"), ("seeds=[0],[1]", "cannot be swept"),
                         ("tolerance.eta=0.1,,0.2", "empty value"), ("tolerance.eta=0.1,0.1", "repeated")]:
        with pytest.raises(Exception, match=message):
            parse_axis(bad)


def test_linked_keys_move_together():
    axis = parse_axis("distill.temperature,distill.weight=[1,0.5],[4,0.9]")
    assert axis.keys == ["distill.temperature", "distill.weight"]
    points = grid_points([parse_axis("tolerance.eta=0.7,0.8"), axis])
    assert [p.settings for p in points] == [
        {"tolerance.eta": eta, "distill.temperature": t, "distill.weight": w}
        for eta in (0.7, 0.8) for t, w in ((1, 0.5), (4, 0.9))]
    assert points[1].overrides() == ["tolerance.eta=0.7", "distill.temperature=4", "distill.weight=0.9"]
    for bad, message in [("distill.temperature,distill.weight=1,4", "one entry per key"),
                         ("distill.temperature,distill.weight=[1,0.5,2]", "one entry per key"),
                         ("distill.weight,distill.weight=[1,0.5]", "repeated"),
                         ("tolerance.eta,seeds=[1,[0]]", "cannot be swept")]:
        with pytest.raises(Exception, match=message):
            parse_axis(bad)
    plan = make_plan(None, ["distill.temperature,distill.weight=[1,0.5],[4,0.9]"], TINY, "tolerant/last", 0)
    assert [plan.config_for(p).distill.weight for p in plan.points()] == [0.5, 0.9]
    with pytest.raises(Exception, match="given twice"):
        make_plan(None, ["distill.temperature,distill.weight=[1,0.5]", "distill.weight=0.2"], TINY, "tolerant/last", 0)


def test_every_point_is_validated_before_anything_runs():
    with pytest.raises(Exception, match="tolerance.eta"):
        make_plan(None, ["tolerance.eta=0.1,-1"], TINY, "tolerant/last", 0)
    with pytest.raises(Exception, match="given twice"):
        make_plan(None, ["tolerance.eta=0.1", "tolerance.eta=0.2"], TINY, "tolerant/last", 0)
    with pytest.raises(Exception, match="generation must be"):
        make_plan(None, ["tolerance.eta=0.1"], TINY, "tolerant/7", 0)
    with pytest.raises(Exception, match="reference"):
        make_plan(None, ["tolerance.eta=0.1,0.2"], TINY, "tolerant/last", 2)


@pytest.mark.slow
def test_sweep_scores_on_val_only_resumes_without_training_and_names_the_test_command(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    plan = make_plan(None, ["tolerance.eta=0,0.3", "tolerance.k=2,3"], TINY, "tolerant/last", 0)
    run_sweep(plan, out, echo=False)
    summary = read_json(out / "sweep_summary.json")
    assert len(summary["points"]) == 4 and all(p["complete"] for p in summary["points"])
    assert summary["best"] in {p["name"] for p in summary["points"]}
    assert summary["test_command"].startswith("kdgen run ") and "tolerance.eta=" in summary["test_command"]
    assert all(c["split"] == "val" for p in summary["points"] for c in p["cells"])
    assert (out / "sweep.md").read_text().count("|") > 20 and (out / "sweep.html").exists()
    assert (out / "plots" / "sweep_tolerance_eta.png").stat().st_size > 1000
    # the strict arm (tolerant's main rival) ran, so every point is compared with it (a rebuilt page once said
    # it was not run)
    assert summary["rival"] == "strict" and all(p["vs_rival"] is not None for p in summary["points"])
    # and with its other rival, the baseline (for a compact student: its own architecture trained alone)
    assert summary["others"] == ["baseline"] and all(p["vs_others"]["baseline"] is not None for p in summary["points"])
    assert "Δ vs baseline" in (out / "sweep.md").read_text()
    assert "against the strict arm" in (out / "sweep.md").read_text() and "was not run" not in (out / "sweep.md").read_text()
    # eta=0 makes K irrelevant to training: the two eta=0 points have the same models, and their rows differ
    # only in the mass on ranks 2..K, measured at each point's own K
    a, b = (json.loads((out / "runs" / p["name"] / "results.json").read_text())["rows"] for p in summary["points"][:2])
    drop = lambda rows: [{k: v for k, v in r.items() if k != "secondary_mass"} for r in rows]  # noqa: E731
    assert drop(a) == drop(b) and any(x["secondary_mass"] != y["secondary_mass"] for x, y in zip(a, b))
    # test rows never move the summary
    for point in summary["points"]:
        path = out / "runs" / point["name"] / "results.json"
        payload = read_json(path)
        for row in payload["rows"]:
            if row["split"] == "test":
                row["top1"] = 100.0 - row["top1"]
        write_json(path, payload)
    build_sweep_report(out)
    assert read_json(out / "sweep_summary.json") == summary
    # a finished sweep resumes without training anything
    trained = _count_training(monkeypatch)
    run_sweep(plan, out, resume=True, echo=False)
    assert trained == []


@pytest.mark.parametrize("args, message", [
    (["--grid", "tolerance.eta=0.1,0.2"], "required: --out"),
    (["--out", "X", "--grid", "tolerance.bogus=1,2"], "unknown key 'tolerance.bogus'"),
    (["--out", "X"], "at least one --grid"),
    (["--out", "X", "--grid", "seeds=[0],[1]"], "cannot be swept"),
    (["--out", "X", "--grid", "tolerance.eta=0.1", "--select", "nobody/1"], "not run"),
])
def test_sweep_mistakes_are_one_line_errors(tmp_path, args, message, kdgen_cli):
    args = [str(tmp_path / a) if a == "X" else a for a in args]
    result = kdgen_cli("sweep", *args, *TINY)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "X").exists()


def test_sweep_refuses_a_used_folder_and_a_changed_grid_on_resume(tmp_path, kdgen_cli):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    result = kdgen_cli("sweep", "--out", str(used), "--grid", "tolerance.eta=0.1", *TINY)
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (used / "keep.txt").read_text() == "mine"
    result = kdgen_cli("sweep", "--out", str(used), "--resume", "--grid", "tolerance.eta=0.1", *TINY)
    assert result.returncode == 2 and "not a sweep folder" in result.stderr
    plan = make_plan(None, ["tolerance.eta=0.1"], TINY, "tolerant/last", 0)
    write_json(tmp_path / "s" / "sweep.json", plan.to_json())
    result = kdgen_cli("sweep", "--out", str(tmp_path / "s"), "--resume", "--grid", "tolerance.eta=0.2", *TINY)
    assert result.returncode == 2 and "differs" in result.stderr


@pytest.mark.slow
def test_run_with_units_shares_a_cache_from_the_command_line(tmp_path, kdgen_cli):
    units = tmp_path / "units"
    tiny = TINY[:-1] + ["seeds=[0]", "generations.count=1"]
    first = kdgen_cli("run", "--units", str(units), "--out", str(tmp_path / "a"), "--no-progress", *tiny)
    assert first.returncode == 0, first.stderr
    assert len(list(units.glob("*/record.json"))) == 3 * 2  # arms x generations
    second = kdgen_cli("run", "--units", str(units), "--out", str(tmp_path / "b"), "--no-progress", *tiny)
    assert second.returncode == 0, second.stderr
    rows = [json.loads((tmp_path / name / "results.json").read_text())["rows"] for name in ("a", "b")]
    assert rows[0] == rows[1]


def test_a_raised_code_revision_changes_the_keys_of_the_units_that_ran_that_code(monkeypatch):
    """A fix to a method, an arm or the loop raises its revision: units trained before are not reused after it.
    Revisions of 1 add nothing, so caches written before revisions existed keep their keys."""
    import kdgen.running.unit_cache as unit_cache
    from kdgen.arms.born_again import Strict
    from kdgen.methods.kd import KDSettings
    from kdgen.tolerance import METHODS

    # From revisions of 1 everywhere (the loop's own is 2 since issue 29), so each raise below shows alone.
    monkeypatch.setattr(unit_cache, "train_revision", 1)
    base = cfg("tolerance.eta=0.1")
    units = [(arm, g) for arm in ("baseline", "strict", "tolerant") for g in (0, 1)]
    before = {u: unit_key(base, u[0], 0, u[1]) for u in units}
    assert all("code" not in unit_cache.unit_settings(base, arm, 0, g) for arm, g in units)

    def changed():
        return {u for u in units if unit_key(base, u[0], 0, u[1]) != before[u]}

    monkeypatch.setattr(KDSettings, "revision", 2)
    assert changed() == {("strict", 1), ("tolerant", 1)}  # the students: KD taught them
    monkeypatch.setattr(KDSettings, "revision", 1)
    monkeypatch.setattr(METHODS["tsd"], "revision", 2)
    assert changed() == {("tolerant", 0), ("tolerant", 1)}  # the TSD patriarch and its line
    monkeypatch.setattr(METHODS["tsd"], "revision", 1)
    monkeypatch.setattr(Strict, "revision", 3)
    # tolerant subclasses strict: it runs strict's code, so it inherits the revision (unless it sets its own)
    assert changed() == {("strict", 0), ("strict", 1), ("tolerant", 0), ("tolerant", 1)}
    monkeypatch.setattr(Strict, "revision", 1)
    monkeypatch.setattr(unit_cache, "train_revision", 2)
    assert changed() == set(units)
    assert unit_cache.unit_settings(base, "baseline", 0, 0)["code"] == {"train": 2}


@pytest.mark.slow
def test_torchrun_sweep_equals_one_process_and_a_killed_worker_resumes_to_the_same(tmp_path):
    """Two processes share every point's chains; a worker killed mid-sweep, then --resume with one process,
    ends with the rows and summary of an uninterrupted one-process sweep (equal threads: one each)."""
    import os
    import signal
    import time

    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    grid = ["--grid", "tolerance.eta=0.3,0.6", "train.epochs=3", "data.num_train=192"]

    def sweep(out, *launcher, extra=()):
        return subprocess.Popen([sys.executable, *launcher, "-m", "kdgen", "sweep", "--out", str(out), *grid, *TINY,
                                 *extra], env=one_thread, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    alone, together = sweep(tmp_path / "alone"), sweep(tmp_path / "together", *torchrun)  # side by side: start-up dominates
    assert alone.wait(timeout=300) == 0, alone.stderr.read()
    assert together.wait(timeout=300) == 0, together.stderr.read()
    killed = sweep(tmp_path / "killed", *torchrun)
    units = tmp_path / "killed" / "units"
    deadline = time.time() + 120  # once the first unit is in the cache, kill one worker (not torchrun)
    while not (units.is_dir() and any(units.glob("*/record.json"))) and time.time() < deadline and killed.poll() is None:
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-f", f"kdgen sweep --out {tmp_path / 'killed'}"], capture_output=True,
                             text=True).stdout.split()
    os.kill(int(max(workers, key=int)), signal.SIGKILL)  # the last started: a worker
    assert killed.wait(timeout=120) != 0
    resumed = sweep(tmp_path / "killed", extra=["--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    for out in ("together", "killed"):
        assert (tmp_path / out / "sweep_summary.json").read_bytes() == (tmp_path / "alone" / "sweep_summary.json").read_bytes()
        for point in (tmp_path / "alone" / "runs").iterdir():
            assert read_json(tmp_path / out / "runs" / point.name / "results.json")["rows"] == \
                read_json(point / "results.json")["rows"], (out, point.name)


def test_a_torchrun_sweep_shares_out_the_chains_of_all_points_counting_a_shared_unit_once():
    """Under torchrun every point's chains are shared out at once: a unit two points share (strict and baseline
    across eta) is counted for the first point only, so the second point's strict and baseline chains cost
    nothing and the tolerant chains of both points keep both processes busy."""
    from kdgen.data import load_bundle
    from kdgen.running.generations import ChainModels, GenerationsRunner
    from kdgen.running.sweep import _schedule
    from kdgen.training.parallel import Chains, Place

    plan = make_plan(None, ["tolerance.eta=0.3,0.6"], TINY, "tolerant/last", 0)
    configs = [plan.config_for(point) for point in plan.points()]
    data = load_bundle(configs[0].data)
    runners = [GenerationsRunner(c, data, ChainModels.from_config(c, data.num_classes, data.channels)) for c in configs]
    work = _schedule(runners)
    chain = 3 * runners[0].steps_per_epoch  # three one-epoch generations
    assert [(point, arm, steps) for point, seed, arm, steps in work if seed == 0] == [
        (0, "baseline", chain), (0, "strict", chain), (0, "tolerant", chain),
        (1, "baseline", 0), (1, "strict", 0), (1, "tolerant", chain)]
    costs = [steps for *_, steps in work]
    shares = [Chains(Place(rank=rank, world_size=2)).assign(costs) for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(len(work)))
    # 8 chains with steps: 4 each (point by point, the second point's 2 tolerant chains would go 1:1 and 2 of its
    # 4 chains to a process with nothing to train)
    assert [sum(costs[i] for i in share) for share in shares] == [4 * chain, 4 * chain]
