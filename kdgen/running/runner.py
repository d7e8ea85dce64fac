"""The one pipeline: config and data -> checks -> generations -> run folder and report.

``kdgen run`` (:func:`run_experiment`, which loads the data source and builds the model from the
registry) and the Python API (:func:`kdgen.train_generations`, your data and model) both go through
:func:`run_pipeline`: the same checks, the same ``config.yaml``, the same resumable run folder and
the same report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from kdgen import arms
from kdgen.checkpoint import write_json
from kdgen.config import Config, resolve_k
from kdgen.data.base import DataBundle
from kdgen.errors import ConfigError, UserError
from kdgen.folders import Row, saved_config
from kdgen.models import Profile
from kdgen.reporting.page import build_report
from kdgen.reporting.results import Results
from kdgen.reporting.tables import console_summary
from kdgen.running.generations import ChainModels, GenerationsRunner, units
from kdgen.running.inference import example_shape
from kdgen.running import tracking
from kdgen.running.run_folder import (RunFolder, check_new_out_dir, make_out_dir, new_run_dir, nothing_to_resume,
                                      write_architectures, write_config)
from kdgen.running.unit_cache import UnitCache
from kdgen.training.batches import check_share
from kdgen.training.loop import StopFlag, TrainingInterrupted
from kdgen.training.parallel import ParallelMode, PeerLost, PeerSilent, is_peer_lost, peer_failure_summary
from kdgen.training.runtime import Runtime

# Settings that do not change what is computed: they may differ when resuming.
NOT_COMPARED_ON_RESUME = ("log.", "runtime.")
ORIGIN_CLI, ORIGIN_API = "kdgen run", "kdgen.train_generations"
T = TypeVar("T")


def start_parallel(runtime_cfg: Any, mode: str | None = None) -> ParallelMode:
    """This process's ``runtime.parallel`` mode (or ``mode``), joined with the others torchrun started."""
    from kdgen.training import parallel

    return parallel.start(mode or runtime_cfg.parallel, runtime_cfg.device, sync_batchnorm=runtime_cfg.sync_batchnorm,
                          lease_s=runtime_cfg.lease_s)


def check_against_data(cfg: Config, data: DataBundle, data_name: str, models: ChainModels) -> list[Profile]:
    """Config checks that need the data (the class count, split sizes, the image shape every generation's model
    must take), and each arm's own checks. Returns each generation's model profile (parameters, FLOPs)."""
    for name in cfg.generations.arms:
        arm = arms.make(name, cfg)
        arm.check()
        if arm.uses_tolerance:
            cfg.tolerance.check(data.num_classes, data_name)
        for g in range(1, cfg.generations.count + 1):
            start = arm.start(g)
            if start is not None and models.name(start) != models.name(g):
                raise ConfigError(f"generations.models: arm {name} starts generation {g} from generation {start}'s "
                                  f"weights, so both need one architecture (got {models.name(start)!r} and "
                                  f"{models.name(g)!r}); drop the arm or give one model")
    if len(data.train) < 2:
        raise ConfigError(f"data: the training split has {len(data.train)} example(s) after holding out validation data")
    if len(data.val) == 0:
        raise ConfigError(f"data.val_fraction: the val split of {data_name} is empty (too few images per class "
                          f"to hold any out); use more data or a larger data.val_fraction")
    return models.profiles(cfg.generations.count, example_shape(data.test if len(data.test) else data.train))


def describe_chain(profiles: list[Profile]) -> str:
    """"model cnn (66k parameters)", or each generation's model when a chain changes architecture."""
    def one(p: Profile) -> str:
        return f"{p.name} ({p.params / 1e3:,.0f}k parameters)" if p.params < 1e6 else f"{p.name} ({p.params / 1e6:.1f}M parameters)"

    if len({p.name for p in profiles}) == 1:
        return f"model {one(profiles[0])}"
    students = {p.name: p for p in profiles[1:]}  # each student architecture once, in chain order
    shown = ", ".join(one(p) for p in students.values())
    return f"patriarch {one(profiles[0])}, students {shown}"


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: Config, requested: Config) -> list[str]:
    """Dotted keys whose values differ, ignoring the runtime and log sections."""
    a, b = _flatten(saved.to_dict()), _flatten(requested.to_dict())
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith(NOT_COMPARED_ON_RESUME))


def open_out(out: Path | None, resume: bool) -> tuple[bool, Config | None]:
    """Check ``out`` before anything slow happens; return whether there is a run to resume, and its config."""
    if resume and out is None:
        raise UserError("--resume needs --out DIR, the folder of the run to continue")
    if out is None:
        return False, None
    if resume and nothing_to_resume(out):
        return False, None  # killed before anything was written: start afresh
    if not resume:
        check_new_out_dir(out)
        return False, None
    return True, saved_config(out)


def together(parallel: ParallelMode, step: Callable[[], T]) -> T:
    """``step()`` on every process; if it fails on any (a user mistake), it fails on all, before any waits."""
    error, value = None, None
    try:
        value = step()
    except UserError as exc:
        error = exc
    parallel.agree(error)
    return value  # type: ignore[return-value]


def keep_partial(folder: RunFolder | None, leader: bool) -> None:
    """On a stop: results.json with what every process finished so far (for kdgen report), by the leader."""
    if folder is not None and leader:
        folder.refresh()
        folder.write_results(complete=False)


def unit_counts(parallel: ParallelMode, trained: int, reused: int) -> dict[str, int]:
    """Units trained and units taken from the unit cache in this invocation, summed over the processes (in data
    mode only the leader, which writes the units, counts them)."""
    if parallel.world_size > 1 and parallel.control is not None:
        import torch.distributed as dist

        every: list[object] = [None] * parallel.world_size
        dist.all_gather_object(every, (trained, reused), group=parallel.control)
        trained, reused = sum(t for t, _ in every), sum(r for _, r in every)  # type: ignore[misc]
    return {"units_trained": trained, "units_reused": reused}


def run_pipeline(cfg: Config, data: DataBundle, models: ChainModels, out: Path | None, *,
                 data_name: str, origin: str, resume: bool = False, echo: bool = True,
                 unit_cache: UnitCache | None = None, stop: StopFlag | None = None,
                 parallel: ParallelMode | None = None) -> tuple[Path | None, list[Row]]:
    """Run every arm, seed and generation of ``cfg`` on ``data``; with ``out``, write the run folder.

    With ``resume``, ``out`` must be a folder this function wrote before with the same config (the
    runtime and log sections aside); finished units are loaded, the units in progress continue from
    their last saved step, and the final results.json is identical to an uninterrupted run's. With
    ``unit_cache`` (``kdgen sweep``), units trained by other runs with the same relevant settings
    are reused (:mod:`kdgen.running.unit_cache`). Without ``out`` nothing is written. Under torchrun,
    ``parallel`` (by default started here from ``runtime.parallel``) shares the work out.
    """
    owns = parallel is None
    parallel = parallel if parallel is not None else start_parallel(cfg.runtime)
    try:
        return _run_pipeline(cfg, data, models, out, parallel, data_name=data_name,
                             origin=origin, resume=resume, echo=echo, unit_cache=unit_cache, stop=stop)
    finally:
        if owns:
            parallel.close()


@dataclass
class PreparedRun:
    """A run after its checks, with its folder made and read (:func:`prepare_run`): what training needs."""

    cfg: Config  # resolved (the precision and K that "auto" mean here)
    runtime: Runtime
    folder: RunFolder | None
    tracker: tracking.Tracker
    resume: bool
    started: float  # time.perf_counter() when the run began

    def runner(self, data: DataBundle, models: ChainModels, *, unit_cache: UnitCache | None = None,
               stop: StopFlag | None = None) -> GenerationsRunner:
        """The generations driver of this run."""
        return GenerationsRunner(self.cfg, data, models, runtime=self.runtime, folder=self.folder,
                                 unit_cache=unit_cache, stop=stop, tracker=self.tracker)


def prepare_run(cfg: Config, data: DataBundle, models: ChainModels, out: Path | None, parallel: ParallelMode, *,
                data_name: str, origin: str, resume: bool, echo: bool) -> PreparedRun:
    """Every check (on every process, failing on all together), then the run folder, made by the leader and read
    by every process before any writes to it (so all share out the same chains)."""
    start = time.perf_counter()
    leader = parallel.is_leader
    # log.mlflow without the package is a mistake to name now, not after the training.
    tracker = together(parallel, lambda: tracking.make(cfg.log, parallel.rank, has_folder=out is not None))

    def checks() -> tuple[bool, Config, Runtime, list[Profile]]:
        is_resume, saved = open_out(out, resume)
        profiles = check_against_data(cfg, data, data_name, models)
        if out is None and parallel.world_size > 1 and parallel.name == "chains":
            raise ConfigError("runtime.parallel=chains needs a run folder (out_dir) to collect the processes' results")
        check_share(min(cfg.train.batch_size, len(data.train)), parallel.batch_share[1])  # as TrainBatches will
        runtime = Runtime.from_config(cfg.runtime, parallel)
        # config.yaml records what actually runs: the device, precision and K that "auto" means here (so that
        # `kdgen cache ls --runs` on another machine recomputes the keys this run's units were stored under).
        resolved = resolve_k(cfg.model_copy(update={"runtime": cfg.runtime.model_copy(
            update={"precision": runtime.precision, "device": runtime.device.type})}), data.num_classes)
        if out is not None and saved is not None:
            differing = config_differences(resolve_k(saved, data.num_classes), resolved)
            if differing:
                raise UserError(f"--resume: the config differs from the one {str(out)!r} was started with, in: "
                                f"{', '.join(differing)}")
        return is_resume, resolved, runtime, profiles

    resume, cfg, runtime, profiles = together(parallel, checks)
    folder = None
    if out is not None:
        def prepare() -> None:  # one writer: the leader makes the folder; the others wait for it
            if leader:
                make_out_dir(out)
                if not resume:
                    write_config(out, cfg)
                    RunFolder(out, origin=origin).write_results(complete=False)
                write_architectures(out, profiles)

        together(parallel, prepare)
        order = [unit.name for unit in units(cfg)]
        # Every process reads the folder before any writes to it (so all share out the same chains).
        folder = together(parallel, lambda: RunFolder(out, resume=resume, origin=origin, order=order, leader=leader))
        tracker.start(out, cfg, parallel, resume=resume, data_name=data_name, models=[p.name for p in profiles])
    if echo and leader:
        where = f" -> {out}" if out is not None else ""
        processes = f", {parallel.world_size} processes ({parallel.name})" if parallel.world_size > 1 else ""
        print(f"kdgen: {data_name} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test, "
              f"{data.num_classes} classes), {describe_chain(profiles)} ({runtime.precision}{processes}), arms "
              f"{cfg.generations.arms}, seeds {cfg.seeds}, patriarch + {cfg.generations.count} generations{where}"
              + (f" (resuming: {len(folder.done)} models done)" if resume and folder is not None else ""), flush=True)
    return PreparedRun(cfg, runtime, folder, tracker, resume, start)


def finish_run(run: PreparedRun, parallel: ParallelMode, counts: dict[str, int], wall: float) -> list[Row]:
    """By the process that writes the run's summary files (the leader; in a torchrun sweep, the point's
    assembler): the complete results.json, timing.json and the report. Returns every row."""
    folder = run.folder
    assert folder is not None
    folder.refresh()
    rows = folder.rows
    folder.write_results(complete=True)
    write_json(folder.timing_path(), {"wall_time_s": wall, "resumed": run.resume, "processes": parallel.world_size,
                                      "parallel": parallel.name, **counts})
    build_report(folder.out_dir, wall_time_s=wall)  # from the results.json just written (rows and extras)
    if run.tracker.finish(folder.out_dir, rows):  # MLflow failed on the report itself: the report says so
        build_report(folder.out_dir, wall_time_s=wall)
    return rows


def _run_pipeline(cfg: Config, data: DataBundle, models: ChainModels, out: Path | None,
                  parallel: ParallelMode, *, data_name: str, origin: str, resume: bool, echo: bool,
                  unit_cache: UnitCache | None, stop: StopFlag | None) -> tuple[Path | None, list[Row]]:
    leader = parallel.is_leader
    run = prepare_run(cfg, data, models, out, parallel, data_name=data_name, origin=origin, resume=resume, echo=echo)
    folder, tracker = run.folder, run.tracker
    try:
        try:
            generations = run.runner(data, models, unit_cache=unit_cache, stop=stop)
            rows = generations.run()
        except UserError as exc:
            tracker.close("FAILED")
            exc.rank = parallel.rank  # type: ignore[attr-defined]  # met by this process alone: it says so
            raise
        # Processes whose chains are done wait for the others (still answering a stop signal).
        if not parallel.wait_for_all(lambda: stop is not None and stop.requested):
            raise TrainingInterrupted("stopped while waiting for the other processes")
        counts = unit_counts(parallel, generations.units_trained, generations.units_reused)
    except KeyboardInterrupt:
        keep_partial(folder, leader)
        tracker.close("KILLED")
        raise
    except RuntimeError as exc:
        tracker.close("FAILED")
        if not (parallel.world_size > 1 and is_peer_lost(exc)):
            raise
        keep_partial(folder, leader)
        raise lost_peer(exc) from None
    wall = time.perf_counter() - run.started
    if folder is not None and leader:
        rows = finish_run(run, parallel, counts, wall)
    if echo and leader:
        print(console_summary(Results(rows)))
        print(f"\nwall time {wall:.1f} s" + (f"; report: {out / 'report.md'}" if out is not None else ""))
    return out, rows


def lost_peer(exc: BaseException) -> PeerLost:
    """The one-line error of a run that lost another process (its finished units and states are kept)."""
    what = str(exc) if isinstance(exc, PeerSilent) else f"lost contact with another process ({peer_failure_summary(exc)})"
    return PeerLost(f"{what}; every finished unit and the last saved training states are kept")


def run_experiment(cfg: Config, out: Path | None = None, *, resume: bool = False, echo: bool = True,
                   unit_cache: UnitCache | None = None, stop: StopFlag | None = None,
                   parallel: ParallelMode | None = None) -> tuple[Path, list[Row]]:
    """``kdgen run``: the config's data source and registry model through :func:`run_pipeline`.

    ``out`` defaults to a new folder under ``runs/`` (under torchrun, rank 0's choice). ``parallel``: the
    processes' mode when the caller started it (``kdgen sweep``, for every point), else started here from
    ``runtime.parallel``. Returns the run folder and its rows.
    """
    from kdgen.data import load_bundle

    owns = parallel is None
    parallel = parallel if parallel is not None else start_parallel(cfg.runtime)
    try:
        together(parallel, lambda: open_out(out, resume))  # path mistakes before the (possibly slow) data load
        out = Path(parallel.leader_value(new_run_dir() if out is None else out))  # type: ignore[arg-type]
        data = together(parallel, lambda: load_bundle(cfg.data))
        models = ChainModels.from_config(cfg, data.num_classes, data.channels)
        run_dir, rows = run_pipeline(cfg, data, models, out, data_name=cfg.data.name,
                                     origin=ORIGIN_CLI, resume=resume, echo=echo, unit_cache=unit_cache, stop=stop,
                                     parallel=parallel)
    finally:
        if owns:
            parallel.close()
    assert run_dir is not None
    return run_dir, rows
