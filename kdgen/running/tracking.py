"""Optional MLflow tracking of a run (``log.mlflow: true``, the ``[mlflow]`` extra).

What is recorded, in the experiment ``log.mlflow_experiment`` (default ``kdgen``) of ``log.mlflow_uri``:

- one parent run per run folder: the resolved config flattened to dotted params (``train.epochs``, ...); tags
  ``kdgen.version``, ``kdgen.run_dir``, ``data``, ``model`` (and ``kdgen.sweep``, ``kdgen.sweep_point`` for a point
  of ``kdgen sweep``); at the end, the seed means of every arm and generation as metrics
  (``test_top1.tolerant.gen2``, ...) and ``best_val_top1``, and ``report.html``, ``report.md``, ``results.json``,
  ``config.yaml`` and ``plots/`` as artifacts;
- one nested run per unit (``mlflow.parentRunId``), named like its checkpoint (``strict-seed0-gen1``): tags and
  params ``arm``, ``seed``, ``generation``, ``model``; each epoch's losses (``loss_<name>``) and ``lr`` with
  ``step`` = the epoch; when it finishes, its result rows as metrics ``<split>_<metric>`` (``val_top1``,
  ``test_nll``, ...; an ensemble row as ``ensemble_<split>_<metric>``). A unit taken from a sweep's unit cache
  gets a run with its rows and the tag ``kdgen.reused``, but no epoch history.

Run ids live in the run folder, so ``--resume`` reopens the same runs instead of making new ones::

    DIR/mlflow/run.json            parent run id, experiment id, tracking URI (written by the leader)
    DIR/mlflow/units/<unit>.json   the unit's run id and whether it is finished (by the process that trains it)
    DIR/mlflow/off-<rank>.txt      why tracking was switched off in a process (the report shows it)

Under ``torchrun`` in chains mode the leader opens the parent run and hands its id to the other processes; each
logs the units it trains as nested runs of it (in data mode, rank 0 alone logs every unit). Every file has one
writer, as in the rest of the run folder.

The tracker must never cost a run: any MLflow failure (an unreachable server, a rejected value) prints one
warning line, switches tracking off for the rest of this process's run and leaves a note for the report; training
goes on. MLflow's HTTP client retries for minutes by default, so unless the user set them, the tracker shortens
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (1), ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (1) and ``MLFLOW_HTTP_REQUEST_TIMEOUT``
(10 s), process-wide.

``mlflow`` is imported only when ``log.mlflow`` is on; without it the run stops with one line before training.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit, urlunsplit

from kdgen.checkpoint import read_json, write_json
from kdgen.errors import UserError
from kdgen.folders import TRACKING_DIR, Row, unit_name

if TYPE_CHECKING:
    from kdgen.config import Config, LogConfig
    from kdgen.training.parallel import ParallelMode

DEFAULT_EXPERIMENT = "kdgen"
# MLflow's HTTP defaults (7 retries with exponential backoff, 120 s timeout) would stall a run for minutes on an
# unreachable server before it gives up; these cost seconds, once, and still ride out one dropped request.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values
ROW_KEYS = ("arm", "generation", "kind", "seed", "split")  # a row's identity, not metrics
# The run folder's report copied to the parent run (plots/ as a folder of artifacts).
REPORT_FILES = ("report.html", "report.md", "results.json", "config.yaml")


def tracking_dir(run_dir: Path) -> Path:
    return Path(run_dir) / TRACKING_DIR


class Tracker:
    """Where the run's progress goes besides the run folder; this base class records nothing (``log.mlflow`` off).

    The runner calls :meth:`start` once the run folder exists (on every process), the generations driver
    :meth:`unit_started`, :meth:`epoch` and :meth:`unit_finished` for the units this process trains, and the
    leader :meth:`finish` after the report is written; :meth:`close` when the run stops early.
    """

    def start(self, run_dir: Path, cfg: "Config", parallel: "ParallelMode", *, resume: bool, data_name: str,
              models: list[str]) -> None:
        """Open (or, on ``resume``, reopen) the run's parent run; ``models``: each generation's model name."""

    def unit_started(self, unit: Any, model: str) -> None:
        """``unit`` (an arm, seed, generation with a ``name``) begins or continues training."""

    def epoch(self, unit: Any, epoch: int, losses: dict[str, float], lr: float) -> None:
        """One finished epoch of ``unit`` (1-based)."""

    def unit_finished(self, unit: Any, model: str, rows: list[Row], *, reused: bool = False) -> None:
        """``unit`` is done and saved, with these result rows (``reused``: taken from a unit cache)."""

    def finish(self, run_dir: Path, rows: list[Row]) -> bool:
        """The report is written: copy it and close the parent run. True when tracking failed just now (the
        report, written before, does not say so yet)."""
        return False

    def close(self, status: str) -> None:
        """The run stops early (``KILLED``, ``FAILED``): mark the runs this process has open."""


def make(log: "LogConfig", rank: int = 0, *, has_folder: bool = True) -> Tracker:
    """The tracker ``log`` asks for; a one-line :class:`UserError` when it needs MLflow and MLflow is missing.
    Tracking needs a run folder (run ids for resume, the report as artifacts): without one it is off, said once."""
    if not log.mlflow:
        return Tracker()
    if not has_folder:
        if rank == 0:
            print("kdgen: warning: log.mlflow records runs that have a run folder (out); this one is not tracked",
                  file=sys.stderr)
        return Tracker()
    try:
        import mlflow  # the package itself first: a stub in sys.modules must fail here
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("log.mlflow needs the mlflow package: pip install 'kdgen[mlflow]'") from None
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    uri = log.mlflow_uri or mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, else MLflow's default
    return MlflowTracker(MlflowClient(tracking_uri=uri), uri, log.mlflow_experiment or DEFAULT_EXPERIMENT, rank)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_params(cfg: "Config") -> dict[str, str]:
    """The config as MLflow params: dotted keys, YAML-like values (lists and null as JSON)."""
    return {key: (value if isinstance(value, str) else json.dumps(value))[:MAX_PARAM_LENGTH]
            for key, value in _flatten(cfg.to_dict()).items()}


def row_metrics(rows: list[Row]) -> dict[str, float]:
    """A unit's rows as flat metrics: ``val_top1``, ``test_nll``, ``ensemble_val_top1``, ..."""
    metrics: dict[str, float] = {}
    for row in rows:
        prefix = f"{row['split']}_" if row.get("kind") == "single" else f"{row.get('kind')}_{row['split']}_"
        for key, value in row.items():
            if key not in ROW_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[_metric_name(prefix + key)] = float(value)
    return metrics


def summary_metrics(run_dir: Path) -> dict[str, float]:
    """The parent run's metrics, from the report's files: the seed means of every arm and generation
    (``test_top1.tolerant.gen2``, ``val_nll.strict.gen0``, ...) and the val top-1 of the model to keep
    (``best_val_top1``), so runs (e.g. a sweep's points) compare in MLflow's run table."""
    metrics: dict[str, float] = {}
    summary = run_dir / "summary.json"
    for cell in read_json(summary).get("summary", []) if summary.is_file() else []:
        if cell.get("kind") == "single":
            for metric in ("top1", "nll", "ece"):
                if isinstance(cell.get(f"{metric}_mean"), (int, float)):
                    name = f"{cell['split']}_{metric}.{cell['arm']}.gen{cell['generation']}"
                    metrics[_metric_name(name)] = float(cell[f"{metric}_mean"])
    best = run_dir / "best.json"
    if best.is_file() and isinstance(read_json(best).get("val_top1"), (int, float)):
        metrics["best_val_top1"] = float(read_json(best)["val_top1"])
    return metrics


def _metric_name(name: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", name)  # the characters MLflow accepts in a key


def _sweep_tags(run_dir: Path) -> dict[str, str]:
    """A point of ``kdgen sweep`` (``SWEEP/runs/<point>``, next to ``SWEEP/sweep.json``): tags that group its runs."""
    sweep = run_dir.resolve().parent.parent
    if run_dir.resolve().parent.name == "runs" and (sweep / "sweep.json").is_file():
        return {"kdgen.sweep": str(sweep), "kdgen.sweep_point": run_dir.name}
    return {}


def shown_uri(uri: str) -> str:
    """``uri`` without a password (``http://user:***@host``): it goes into run.json and the report, which get shared."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _version() -> str:
    from kdgen.running.unit_cache import _package_version

    return _package_version()


class MlflowTracker(Tracker):
    """Records the run in MLflow through one :class:`mlflow.tracking.MlflowClient` (no global MLflow state)."""

    def __init__(self, client: Any, uri: str, experiment: str, rank: int = 0) -> None:
        self.client = client
        self.uri = uri
        self.experiment = experiment
        self.rank = rank
        self.on = True
        self.dir: Path | None = None
        self.parent: str | None = None  # the parent run's id, once known
        self.experiment_id: str | None = None
        self.models: list[str] = []  # each generation's model name
        self.leader = False
        self.units: dict[str, str] = {}  # unit name -> run id, for the units this process logs
        self.skip_to: dict[str, int] = {}  # unit name -> last epoch already logged (a reopened run)
        self.open: set[str] = set()  # run ids this process must close

    # Every MLflow call goes through here: a failure switches tracking off, never stops the run.
    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        if not self.on:
            return None
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - whatever MLflow or the network raise, the run goes on
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace(self.uri, shown_uri(self.uri))
            self._off(f"{what}: {reason[:200]}")
            return None

    def _off(self, reason: str) -> None:
        """One warning line, and a note in the run folder for the report (one file per process)."""
        self.on = False
        print(f"kdgen: warning: MLflow {reason}; tracking is off for the rest of this run, training goes on",
              file=sys.stderr, flush=True)
        if self.dir is not None:
            path = tracking_dir(self.dir) / f"off-{self.rank}.txt"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(reason + "\n", encoding="utf-8")
            except OSError:
                pass  # the warning above said it; a full disk will stop the run elsewhere

    def _log(self, run_id: str, metrics: dict[str, float] | None = None, step: int = 0,
             params: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> None:
        """One batch (MLflow takes at most 100 params in one)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metric_list = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
        param_list = [Param(k, v) for k, v in (params or {}).items()]
        tag_list = [RunTag(k, v) for k, v in (tags or {}).items()]
        for i in range(0, max(len(param_list), 1), 100):
            self.client.log_batch(run_id, metrics=metric_list if i == 0 else [], params=param_list[i:i + 100],
                                  tags=tag_list if i == 0 else [])

    # The parent run.
    def start(self, run_dir: Path, cfg: "Config", parallel: "ParallelMode", *, resume: bool, data_name: str,
              models: list[str]) -> None:
        self.dir = Path(run_dir)
        self.models = models
        self.leader = parallel.is_leader
        if self.leader:
            self._call("could not open the parent run", lambda: self._open_parent(cfg, resume, data_name))
        # The leader's parent run for every process (None: tracking is off there, so it is here too).
        shared = parallel.leader_value((self.parent, self.experiment_id) if self.on else None)
        if shared is None:
            self.on = False  # the leader warned, and its note is the report's
            return
        self.parent, self.experiment_id = shared  # type: ignore[misc]

    def _open_parent(self, cfg: "Config", resume: bool, data_name: str) -> None:
        assert self.dir is not None
        path = tracking_dir(self.dir) / "run.json"
        saved = read_json(path) if resume and path.is_file() else None
        uri = shown_uri(self.uri)
        if isinstance(saved, dict) and saved.get("tracking_uri") == uri:
            self.parent, self.experiment_id = saved["parent"], saved["experiment_id"]
            self.client.update_run(self.parent, status="RUNNING")  # the same run continues
            self._log(self.parent, tags={"kdgen.resumed": "true"})
        else:
            found = self.client.get_experiment_by_name(self.experiment)
            self.experiment_id = found.experiment_id if found is not None else \
                self.client.create_experiment(self.experiment)
            tags = {"kdgen.version": _version(), "kdgen.run_dir": str(self.dir.resolve()), "data": data_name,
                    "model": ",".join(dict.fromkeys(self.models)), **_sweep_tags(self.dir)}
            run = self.client.create_run(self.experiment_id, run_name=self.dir.name, tags=tags)
            self.parent = run.info.run_id
            write_json(path, {"parent": self.parent, "experiment_id": self.experiment_id, "tracking_uri": uri,
                              "experiment": self.experiment})
            self._log(self.parent, params=config_params(cfg))
        self.open.add(self.parent)

    # Units.
    def _unit_file(self, name: str) -> Path:
        assert self.dir is not None
        return tracking_dir(self.dir) / "units" / f"{name}.json"

    def _unit_run(self, unit: Any, model: str, reused: bool = False) -> str:
        """The unit's run: reopened when this run folder has one (a resume), else a new nested run."""
        if unit.name in self.units:
            return self.units[unit.name]
        path = self._unit_file(unit.name)
        saved = read_json(path) if path.is_file() else None
        if isinstance(saved, dict) and saved.get("parent") == self.parent:
            run_id = saved["run_id"]
            self.client.update_run(run_id, status="RUNNING")
            history = self.client.get_metric_history(run_id, "lr")  # epochs logged before the stop
            self.skip_to[unit.name] = max((m.step for m in history), default=0)
        else:
            tags = {"mlflow.parentRunId": self.parent, "arm": unit.arm, "seed": str(unit.seed),
                    "generation": str(unit.generation), "model": model, **({"kdgen.reused": "true"} if reused else {})}
            run_id = self.client.create_run(self.experiment_id, run_name=unit.name, tags=tags).info.run_id
            write_json(path, {"run_id": run_id, "parent": self.parent, "finished": False})
            self._log(run_id, params={"arm": unit.arm, "seed": str(unit.seed), "generation": str(unit.generation),
                                      "model": model})
        self.units[unit.name] = run_id
        self.open.add(run_id)
        return run_id

    def unit_started(self, unit: Any, model: str) -> None:
        self._call(f"could not open the run of {unit.name}", lambda: self._unit_run(unit, model))

    def epoch(self, unit: Any, epoch: int, losses: dict[str, float], lr: float) -> None:
        run_id = self.units.get(unit.name)
        if run_id is None or epoch <= self.skip_to.get(unit.name, 0):
            return  # not opened (tracking off), or logged before a stop and now only redone
        metrics = {_metric_name(f"loss_{name}"): float(value) for name, value in losses.items()}
        self._call(f"could not log an epoch of {unit.name}",
                   lambda: self._log(run_id, {**metrics, "lr": float(lr)}, step=epoch))

    def unit_finished(self, unit: Any, model: str, rows: list[Row], *, reused: bool = False) -> None:
        def finish() -> None:
            run_id = self._unit_run(unit, model, reused)
            self._log(run_id, row_metrics(rows))
            self.client.set_terminated(run_id, "FINISHED")
            self.open.discard(run_id)
            write_json(self._unit_file(unit.name), {"run_id": run_id, "parent": self.parent, "finished": True})

        self._call(f"could not log the results of {unit.name}", finish)

    # The end.
    def finish(self, run_dir: Path, rows: list[Row]) -> bool:
        if not (self.on and self.leader):
            return False
        self._call("could not log the units' results", lambda: self._log_missing_units(rows))
        self._call("could not upload the report", lambda: self._upload_report(Path(run_dir)))
        self._call("could not close the parent run", lambda: self.client.set_terminated(self.parent, "FINISHED"))
        self.open.discard(self.parent)  # type: ignore[arg-type]
        return not self.on

    def _log_missing_units(self, rows: list[Row]) -> None:
        """Finished units without a finished run (their process's tracking went off, or a kill came between the
        unit's files and its run): their result rows, so every unit of the run has its metrics."""
        by_unit: dict[tuple[str, int, int], list[Row]] = {}
        for row in rows:
            by_unit.setdefault((str(row["arm"]), int(row["seed"]), int(row["generation"])), []).append(row)
        for (arm, seed, generation), unit_rows in by_unit.items():
            unit = _UnitId(arm, seed, generation)
            path = self._unit_file(unit.name)
            saved = read_json(path) if path.is_file() else None
            if not (isinstance(saved, dict) and saved.get("finished") and saved.get("parent") == self.parent):
                self.unit_finished(unit, self.models[min(generation, len(self.models) - 1)], unit_rows)

    def _upload_report(self, run_dir: Path) -> None:
        self._log(self.parent, summary_metrics(run_dir))  # type: ignore[arg-type]
        for name in REPORT_FILES:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.parent, str(run_dir / name))
        if (run_dir / "plots").is_dir():
            self.client.log_artifacts(self.parent, str(run_dir / "plots"), artifact_path="plots")

    def close(self, status: str) -> None:
        for run_id in sorted(self.open):
            self._call("could not close a run", lambda run_id=run_id: self.client.set_terminated(run_id, status))
        self.open.clear()


class _UnitId:
    """A unit named by its rows (for units this process did not train)."""

    def __init__(self, arm: str, seed: int, generation: int) -> None:
        self.arm, self.seed, self.generation = arm, seed, generation
        self.name = unit_name(arm, seed, generation)
