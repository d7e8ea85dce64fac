"""``kdgen sweep``: a grid of ordinary run folders that share trained units, scored on val only.

``DIR/sweep.json`` records the base config and the grid; ``DIR/runs/<point>/`` is a normal run
folder per grid point (``kdgen report`` and ``kdgen predict`` work on it); ``DIR/units/`` is the
:class:`~kdgen.running.unit_cache.UnitCache` every point draws on, so no unit is trained twice; the
summary (``sweep.md``, ``sweep.html``, ``sweep_summary.json``, ``plots/``) is rebuilt after every
point (under ``torchrun``: once, at the end). ``--resume`` continues where an interrupted sweep stopped.
Under ``torchrun`` the processes share the chains of all points at once (:func:`run_sweep`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from kdgen.checkpoint import read_json, write_json
from kdgen.data.base import DataBundle
from kdgen.errors import UserError
from kdgen.reporting.sweep_page import build_sweep_report
from kdgen.running.generations import ChainModels, GenerationsRunner, waiting_last
from kdgen.running.run_folder import check_new_out_dir, make_out_dir
from kdgen.running.runner import (ORIGIN_CLI, PreparedRun, finish_run, keep_partial, lost_peer, prepare_run,
                                  run_experiment, start_parallel, together)
from kdgen.running.unit_cache import UnitCache, unit_key
from kdgen.sweep_plan import SweepPlan
from kdgen.training.loop import TrainingInterrupted
from kdgen.training.parallel import ParallelMode, is_peer_lost

if TYPE_CHECKING:
    from kdgen.training.loop import StopFlag


def run_sweep(plan: SweepPlan, out: Path, *, resume: bool = False, echo: bool = True, units: Path | None = None,
              stop: "StopFlag | None" = None) -> Path:
    """Run every grid point of ``plan`` under ``out`` (sharing units), then write the summary.

    ``units`` is the unit cache folder (default ``out/units``); sweeps that name the same folder
    share their units, even while they run at the same time (a unit is published atomically).

    One process runs the points in turn. Under ``torchrun`` (``runtime.parallel=chains``, the default there)
    the chains of *all* points are shared out at once (:func:`_run_spread`), so no process idles while a
    point has fewer chains left than there are processes. Under ``runtime.parallel=data`` (or with
    ``log.mlflow``) the processes run each point together, in turn. Rows and summary equal a one-process
    sweep's at the same thread count.
    """
    points = plan.points()
    base = plan.config_for(points[0])
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    mode = base.runtime.parallel if base.runtime.parallel != "none" or world == 1 else "chains"
    parallel = start_parallel(base.runtime, mode)
    try:
        together(parallel, lambda: _open(plan, out, resume) if parallel.is_leader else None)
        cache = UnitCache(units if units is not None else out / "units")
        if _spreads(plan, parallel):
            _run_spread(plan, out, cache, parallel, echo=echo, stop=stop)
        else:
            _run_in_turn(plan, out, cache, parallel, echo=echo, stop=stop)
        if not parallel.is_leader:
            return out / "sweep.md"
        path = build_sweep_report(out)
    finally:
        parallel.close()
    if echo:
        print(path.with_suffix(".md").read_text(encoding="utf-8").split("\n## ")[0].strip())
        print(f"\nsummary: {path}")
    return path


def _spreads(plan: SweepPlan, parallel: ParallelMode) -> bool:
    """Whether the chains of all points are shared out at once: several processes in chains mode, and no
    MLflow tracker (which follows one run at a time)."""
    return parallel.name == "chains" and parallel.world_size > 1 and \
        not any(plan.config_for(point).log.mlflow for point in plan.points())


def _run_in_turn(plan: SweepPlan, out: Path, cache: UnitCache, parallel: ParallelMode, *, echo: bool,
                 stop: "StopFlag | None") -> None:
    """One point after another, each a whole ``kdgen run`` (its chains shared by the processes), the summary
    rebuilt after each."""
    points = plan.points()
    for index, point in enumerate(points):
        run_dir = out / "runs" / point.name
        # One view of the folder for every process (rank 0's), so all make the same choice.
        finished, started = parallel.leader_value(((run_dir / "timing.json").is_file(), run_dir.exists()))
        if finished:
            continue  # finished before an interruption
        if echo and parallel.is_leader:
            print(f"kdgen sweep: point {index + 1}/{len(points)}: {' '.join(point.overrides())}", flush=True)
        run_experiment(plan.config_for(point), run_dir, resume=started, echo=False, unit_cache=cache, stop=stop,
                       parallel=parallel)
        if parallel.is_leader:
            build_sweep_report(out)


@dataclass
class _Point:
    """A grid point still to finish: its index in the grid, its prepared run folder and its driver."""

    index: int
    overrides: list[str]
    run: PreparedRun
    runner: GenerationsRunner


def _run_spread(plan: SweepPlan, out: Path, cache: UnitCache, parallel: ParallelMode, *, echo: bool,
                stop: "StopFlag | None") -> None:
    """Every point's chains shared out among the processes at once, then each point's folder finished.

    1. Every process prepares every unfinished point (checks, run folder), as ``kdgen run`` does.
    2. The leader lists every chain of every point with the steps it still has to train, counting a unit once
       however many points share it (equal unit keys); the chains with any steps are shared out longest first,
       each to the least-loaded process (:meth:`~kdgen.training.parallel.Chains.assign`). Each process trains
       its chains into their points' run folders and the unit cache (claims keep other sweeps sharing the cache
       from training a unit twice).
    3. The points are finished round-robin over the processes: units another point trained are taken from the
       cache (as a one-process sweep does), then results.json, timing.json and the report.
    """
    leader = parallel.is_leader
    todo = _prepare_points(plan, out, cache, parallel, stop)
    work = parallel.leader_value(_schedule([p.runner for p in todo]) if leader else None)
    costs = [cost for _, _, _, cost in work]  # type: ignore[union-attr]
    mine = sorted((i for i in parallel.assign(costs) if costs[i] > 0), key=lambda i: (-costs[i], i))
    if echo and leader:
        print(f"kdgen sweep: {len(todo)} point(s) to run, {sum(c > 0 for c in costs)} chain(s) to train "
              f"({sum(costs)} steps) over {parallel.world_size} processes", flush=True)
    try:
        try:
            with _bar(todo, work, mine, parallel) as bar:  # type: ignore[arg-type]
                def waits(i: int) -> bool:
                    point, seed, arm, _ = work[i]  # type: ignore[index]
                    return todo[point].runner.waits_on_another(seed, arm)

                for i in waiting_last(mine, waits):
                    point, seed, arm, _ = work[i]  # type: ignore[index]
                    todo[point].runner.run_chains([(seed, arm)], bar)
            if not parallel.wait_for_all(lambda: stop is not None and stop.requested):
                raise TrainingInterrupted("stopped while waiting for the other processes")
            _finish_points(todo, parallel, echo=echo, total=len(plan.points()))
        except UserError as exc:
            exc.rank = parallel.rank  # type: ignore[attr-defined]  # met by this process alone: it says so
            raise
        finally:
            for point in todo:
                if point.runner.writer is not None:
                    point.runner.writer.close()
    except KeyboardInterrupt:
        _keep_partial(todo, leader)
        raise
    except RuntimeError as exc:
        if not is_peer_lost(exc):
            raise
        _keep_partial(todo, leader)
        raise lost_peer(exc) from None


def _keep_partial(todo: list[_Point], leader: bool) -> None:
    """On a stop, by the leader: every unfinished point's results.json with what the processes finished so far
    (a point another process finished already keeps its complete one)."""
    for point in todo:
        folder = point.run.folder
        if folder is not None and not folder.timing_path().is_file():
            keep_partial(folder, leader)


def _prepare_points(plan: SweepPlan, out: Path, cache: UnitCache, parallel: ParallelMode,
                    stop: "StopFlag | None") -> list[_Point]:
    """Every unfinished point checked and its run folder made (or read, when it was started before)."""
    from kdgen.data import load_bundle

    loaded: dict[str, DataBundle] = {}  # one load per distinct data section (a grid rarely sweeps data.*)
    todo: list[_Point] = []
    for index, point in enumerate(plan.points()):
        run_dir = out / "runs" / point.name
        # One view of the folder for every process (rank 0's), so all make the same choice.
        finished, started = parallel.leader_value(((run_dir / "timing.json").is_file(), run_dir.exists()))
        if finished:
            continue  # finished before an interruption
        cfg = plan.config_for(point)
        key = json.dumps(cfg.to_dict()["data"], sort_keys=True, default=str)
        if key not in loaded:
            loaded[key] = together(parallel, lambda: load_bundle(cfg.data))  # noqa: B023 - called at once
        data = loaded[key]
        models = ChainModels.from_config(cfg, data.num_classes, data.channels)
        run = prepare_run(cfg, data, models, run_dir, parallel, data_name=cfg.data.name, origin=ORIGIN_CLI,
                          resume=bool(started), echo=False)
        todo.append(_Point(index, point.overrides(), run, run.runner(data, models, unit_cache=cache, stop=stop)))
    return todo


def _schedule(runners: list[GenerationsRunner]) -> list[tuple[int, int, str, int]]:
    """(point, seed, arm, steps) for every chain of every point: the steps of its units that no run folder or
    cache holds yet and no earlier chain trains (equal unit keys are one unit: a sweep over tolerance.eta trains
    the strict arm once, in the first point)."""
    seen: set[str] = set()
    work = []
    for point, runner in enumerate(runners):
        for seed, arm in runner.chains():
            steps = 0
            for unit in runner.units_to_train(seed, arm):
                key = unit_key(runner.cfg, unit.arm, unit.seed, unit.generation)
                if key not in seen:
                    seen.add(key)
                    steps += runner.unit_steps(unit)
            work.append((point, seed, arm, steps))
    return work


def _bar(todo: list[_Point], work: list[tuple[int, int, str, int]], mine: list[int], parallel: ParallelMode) -> tqdm:
    """One progress bar (the leader's) over this process's chains of every point, in optimizer steps."""
    chains = [(todo[work[i][0]].runner, work[i][1], work[i][2]) for i in mine]
    total = sum(r.unit_steps(u) for r, seed, arm in chains for u in r.chain(seed, arm))
    done = sum(r.unit_steps(u) for r, seed, arm in chains for u in r.chain(seed, arm) if r.is_done(u))
    show = parallel.is_leader and any(p.run.cfg.log.progress for p in todo)
    return tqdm(total=total, initial=done, unit="step", disable=not show, dynamic_ncols=True,
                mininterval=0.1 if sys.stderr.isatty() else 10.0)


def _finish_points(todo: list[_Point], parallel: ParallelMode, *, echo: bool, total: int) -> None:
    """Each point finished by one process (round-robin): the units other points trained taken from the cache,
    then results.json, timing.json and the report (no file has two writers)."""
    trained = parallel.sum_over_processes([p.runner.units_trained for p in todo])
    reused = parallel.sum_over_processes([p.runner.units_reused for p in todo])
    for n, point in enumerate(todo):
        if n % parallel.world_size != parallel.rank:
            continue
        runner, before = point.runner, (point.runner.units_trained, point.runner.units_reused)
        assert point.run.folder is not None
        point.run.folder.refresh()  # the units the other processes finished
        with tqdm(disable=True) as quiet:
            runner.run_chains(runner.chains(), quiet)
        counts = {"units_trained": trained[n] + runner.units_trained - before[0],
                  "units_reused": reused[n] + runner.units_reused - before[1]}
        finish_run(point.run, parallel, counts, time.perf_counter() - point.run.started)
        if echo:
            print(f"kdgen sweep: point {point.index + 1}/{total} done: {' '.join(point.overrides)}", flush=True)
    # The summary reads every point's folder: all of them are finished first.
    if not parallel.wait_for_all():
        raise TrainingInterrupted("stopped while waiting for the other processes")


def _open(plan: SweepPlan, out: Path, resume: bool) -> None:
    """Check ``out`` (a new folder, or the same sweep to resume) and write ``sweep.json``."""
    sweep_file = out / "sweep.json"
    if resume and sweep_file.is_file():
        saved = read_json(sweep_file)
        if not isinstance(saved, dict) or saved.get("base") != plan.base or \
                saved.get("grid") != plan.to_json()["grid"]:
            raise UserError(f"--resume: the config or grid differs from the one {str(out)!r} was started with")
    elif resume and out.exists() and any(out.iterdir()):
        raise UserError(f"--resume: {str(out)!r} is not a sweep folder (no sweep.json)")
    else:
        check_new_out_dir(out)
    make_out_dir(out)
    write_json(sweep_file, plan.to_json())
