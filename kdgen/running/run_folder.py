"""The run folder: everything kdgen knows about its layout, and the reads and writes that keep it resumable.

Layout of ``DIR``::

    config.yaml                      the resolved config (written once, when the run starts)
    results.json                     {"rows": [...], "done": [unit names], "complete": bool,
                                      "extras": {unit name: {"soft_confusion": {split: C x C}}}}
    checkpoints/<unit>.safetensors   weights of every finished unit (<arm>-seed<S>-gen<G>)
    records/<unit>.json              rows and extras of each finished unit, until the run completes
    state/<unit>.safetensors         training state of a unit in progress, after its last epoch or step
    timing.json                      wall time of the run
    architectures.json               each generation's model: name, parameters, forward FLOPs per image
    report.md, report.html, plots/   the report (kdgen report rebuilds them)
    tensorboard/                     with log.tensorboard

Order of writes when a unit finishes: its checkpoint, then its record (which marks it done), then
(by the leader) results.json, then the in-progress state is removed. A kill between any two steps
is harmless on resume. Under torchrun every process writes only its own units' files, and the
leader alone writes config.yaml, results.json and the report: no file has two writers. When the
run completes, results.json holds every record and the records folder is removed, so a finished
folder looks the same however many processes made it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from torch import nn

from kdgen.checkpoint import atomic_write, check_safetensors, link, load_model, read_json, save_model, write_json
from kdgen.errors import CheckpointError, UserError
from kdgen.folders import ARCHITECTURES_FILE, CONFIG_FILE, RESULTS_FILE, Row, unit_name
from kdgen.training.resume import EpochState, load_state, save_state

if TYPE_CHECKING:
    from kdgen.config import Config
    from kdgen.models import Profile

def new_run_dir(base: Path = Path("runs")) -> Path:
    """A fresh folder name under ``runs/``: a timestamp, with a suffix if it is taken."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = base / stamp
    suffix = 1
    while candidate.exists():
        candidate = base / f"{stamp}-{suffix}"
        suffix += 1
    return candidate


def check_new_out_dir(out: Path) -> None:
    """An existing file, or a non-empty folder, is refused (kdgen never overwrites a run)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; choose a new folder, or add --resume to continue that run")


def make_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {str(out)!r}: cannot create folder ({exc.strerror})") from None


def nothing_to_resume(out: Path) -> bool:
    """A run killed before it wrote anything: there is nothing to continue (start afresh)."""
    return not out.exists() or (out.is_dir() and not any(out.iterdir()))


def write_architectures(out: Path, profiles: list["Profile"]) -> None:
    """Each generation's model, parameters and forward FLOPs per image (the report's compression and inference cost)."""
    write_json(out / ARCHITECTURES_FILE, {"generations": [
        {"generation": g, "model": p.name, "params": p.params, "flops": p.flops, "image_shape": list(p.image_shape)}
        for g, p in enumerate(profiles)]})


def write_config(out: Path, cfg: "Config") -> None:
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(out / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class RunFolder:
    """Reads and writes one run folder. ``resume=True`` loads what earlier processes left.

    ``order`` (unit names in training order) fixes the order of results.json's rows, so a run
    whose units finished in another order (several processes) writes the same file as one process.
    Only the ``leader`` (rank 0, or the only process) writes results.json; every process writes the
    records, checkpoints and training states of the units it trains, one writer per file.
    """

    def __init__(self, out_dir: Path, *, resume: bool = False, origin: str = "kdgen run",
                 order: list[str] | None = None, leader: bool = True) -> None:
        self.out_dir = Path(out_dir)
        # Who made the folder: `kdgen run` (data and model from the config) or the Python API (yours),
        # so a resume cannot continue an API run with the config's data source.
        self.origin = origin
        self.order = {name: index for index, name in enumerate(order or [])}
        self.leader = leader
        self.unit_rows: dict[str, list[Row]] = {}  # finished units' rows, by unit name
        # Per-unit data that is not a tidy row (the patriarchs' soft confusion matrices).
        self.extras: dict[str, dict[str, Any]] = {}
        if resume and self.results_path.exists():
            payload = read_json(self.results_path)
            if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list) \
                    or not isinstance(payload.get("done"), list):
                raise CheckpointError(f"{self.results_path}: not a kdgen results file")
            made_by = payload.get("origin", "kdgen run")
            if made_by != origin:
                raise UserError(f"--resume: {str(out_dir)!r} was made by {made_by} (with its own data and model); "
                                f"continue it the same way, not with {origin}")
            self.unit_rows = {str(name): [] for name in payload["done"]}
            for row in payload["rows"]:
                self.unit_rows.setdefault(unit_name(row["arm"], row["seed"], row["generation"]), []).append(row)
            self.extras = payload.get("extras") or {}
        if resume:
            self.refresh()
            # Every finished unit's weights must be readable before anything trains: a resume that
            # would fail half-way (and rewrite results.json on the way) fails now instead.
            for name in self.done:
                check_safetensors(self.checkpoint_path(name), "safetensors checkpoint")

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS_FILE

    @property
    def records_dir(self) -> Path:
        return self.out_dir / "records"

    @property
    def tensorboard_dir(self) -> Path:
        return self.out_dir / "tensorboard"

    @property
    def done(self) -> list[str]:
        """Finished units, in training order (``order``), then any others in the order they finished."""
        return sorted(self.unit_rows, key=lambda name: self.order.get(name, len(self.order)))

    @property
    def rows(self) -> list[Row]:
        return [row for name in self.done for row in self.unit_rows[name]]

    def state_path(self, unit_name: str) -> Path:
        return self.out_dir / "state" / f"{unit_name}.safetensors"

    def checkpoint_path(self, unit_name: str) -> Path:
        return self.out_dir / "checkpoints" / f"{unit_name}.safetensors"

    def timing_path(self) -> Path:
        return self.out_dir / "timing.json"

    def is_done(self, unit_name: str) -> bool:
        return unit_name in self.unit_rows

    def refresh(self) -> None:
        """Take in the records of units other processes finished (each record is written atomically)."""
        if not self.records_dir.is_dir():
            return
        for path in sorted(self.records_dir.glob("*.json")):
            name = path.stem
            if name in self.unit_rows:
                continue
            record = read_json(path)
            if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
                raise CheckpointError(f"{path}: not a kdgen unit record")
            self.unit_rows[name] = record["rows"]
            if record.get("extras"):
                self.extras[name] = record["extras"]

    def load_finished(self, unit_name: str, model: nn.Module) -> None:
        """Weights of a finished unit, for use as a teacher or an ensemble member after a resume."""
        load_model(model, self.checkpoint_path(unit_name))

    def save_epoch(self, state: EpochState) -> None:
        save_state(self.state_path(state.unit), state)

    def pending_state(self, unit_name: str) -> EpochState | None:
        """The saved in-progress state of ``unit_name``, if any (also from folders of older kdgen versions,
        which kept the one unit in progress in state/current.safetensors)."""
        for path in (self.state_path(unit_name), self.out_dir / "state" / "current.safetensors"):
            if path.exists():
                state = load_state(path)
                if state.unit == unit_name:
                    return state
        return None

    def finish_unit(self, unit_name: str, model: nn.Module, metadata: dict[str, Any], rows: list[Row],
                    extras: dict[str, Any] | None = None) -> None:
        save_model(model, self.checkpoint_path(unit_name), metadata)
        self._mark_done(unit_name, rows, extras)
        self.state_path(unit_name).unlink(missing_ok=True)
        legacy = self.out_dir / "state" / "current.safetensors"
        if legacy.exists() and load_state(legacy).unit == unit_name:
            legacy.unlink()

    def adopt_unit(self, unit_name: str, checkpoint: Path, rows: list[Row], extras: dict[str, Any]) -> None:
        """Finish a unit with a checkpoint another run trained (a hard link where possible)."""
        self.checkpoint_path(unit_name).parent.mkdir(parents=True, exist_ok=True)
        link(checkpoint, self.checkpoint_path(unit_name))
        self._mark_done(unit_name, rows, extras)

    def _mark_done(self, unit_name: str, rows: list[Row], extras: dict[str, Any] | None) -> None:
        """Record a unit whose checkpoint is on disk: its record file (which marks it done), then,
        by the leader, results.json with every record so far."""
        write_json(self.records_dir / f"{unit_name}.json", {"rows": rows, "extras": extras or {}})
        self.unit_rows[unit_name] = rows
        if extras:
            self.extras[unit_name] = extras
        if self.leader:
            self.refresh()
            self.write_results(complete=False)

    def write_results(self, *, complete: bool) -> None:
        """results.json from every finished unit; when ``complete``, the records and state folders go."""
        write_json(self.results_path, {"rows": self.rows, "done": self.done, "complete": complete,
                                       "extras": {name: self.extras[name] for name in self.done if name in self.extras},
                                       "origin": self.origin})
        if not complete:
            return
        # results.json now holds every record (and a kill before this point loses nothing).
        state_dir = self.out_dir / "state"
        for folder in (self.out_dir, self.records_dir, state_dir, self.out_dir / "checkpoints"):
            for stale in folder.glob(".*.tmp") if folder.is_dir() else []:
                stale.unlink()  # half-written by a process killed inside an atomic write (kdgen.checkpoint)
        for name in self.done:  # a process killed between finishing a unit and removing its state
            self.state_path(name).unlink(missing_ok=True)
        if self.records_dir.is_dir():
            for path in self.records_dir.glob("*.json"):
                path.unlink()
            self.records_dir.rmdir()
        if state_dir.is_dir() and not any(state_dir.iterdir()):
            state_dir.rmdir()  # nothing left to resume
