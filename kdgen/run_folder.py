"""The run folder: everything kdgen knows about its layout, and the reads and writes that keep it resumable.

Layout of ``DIR``::

    config.yaml                      the resolved config (written once, when the run starts)
    results.json                     {"rows": [...], "done": [unit names], "complete": bool,
                                      "extras": {unit name: {"soft_confusion": {split: C x C}}}}
    checkpoints/<unit>.safetensors   weights of every finished unit (<arm>-seed<S>-gen<G>)
    state/current.safetensors        training state of the unit in progress, after its last epoch
    timing.json                      wall time of the run
    report.md, report.html, plots/   the report (kdgen report rebuilds them)
    tensorboard/                     with log.tensorboard

Order of writes when a unit finishes: its checkpoint, then results.json (which marks it done),
then the in-progress state is removed. A kill between any two steps is harmless on resume.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from torch import nn

from kdgen.checkpoint import atomic_write, check_safetensors, load_model, read_json, save_model, write_json
from kdgen.errors import CheckpointError, UserError
from kdgen.resume import EpochState, load_state, save_state

if TYPE_CHECKING:
    from kdgen.config import Config

Row = dict[str, Any]
CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"


def unit_name(arm: str, seed: int, generation: int) -> str:
    """The name of a unit's checkpoint (and of its entry in results.json's ``done``)."""
    return f"{arm}-seed{seed}-gen{generation}"


def checkpoint_relpath(arm: str, seed: int, generation: int) -> str:
    """Where a unit's weights are, relative to the run folder."""
    return f"checkpoints/{unit_name(arm, seed, generation)}.safetensors"


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


def saved_config(out: Path) -> "Config":
    """The config a run folder was started with."""
    from kdgen.config import build_config, read_yaml, upgrade_recorded

    path = out / CONFIG_FILE
    if not out.is_dir():
        raise UserError(f"--resume: {str(out)!r} is not a run folder")
    if not path.is_file():
        raise UserError(f"--resume: {str(out)!r} has no {CONFIG_FILE} (not a kdgen run folder)")
    return build_config(upgrade_recorded(read_yaml(path)), str(path))


def write_config(out: Path, cfg: "Config") -> None:
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(out / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class RunFolder:
    """Reads and writes one run folder. ``resume=True`` loads what an earlier process left."""

    def __init__(self, out_dir: Path, *, resume: bool = False, origin: str = "kdgen run") -> None:
        self.out_dir = Path(out_dir)
        # Who made the folder: `kdgen run` (data and model from the config) or the Python API (yours),
        # so a resume cannot continue an API run with the config's data source.
        self.origin = origin
        self.rows: list[Row] = []
        self.done: list[str] = []
        # Per-unit data that is not a tidy row (the patriarchs' soft confusion matrices).
        self.extras: dict[str, dict[str, Any]] = {}
        if resume and self.results_path.exists():
            payload = read_json(self.results_path)
            if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list) \
                    or not isinstance(payload.get("done"), list):
                raise CheckpointError(f"{self.results_path}: not a kdgen results file")
            self.rows, self.done = payload["rows"], [str(name) for name in payload["done"]]
            self.extras = payload.get("extras") or {}
            made_by = payload.get("origin", "kdgen run")
            if made_by != origin:
                raise UserError(f"--resume: {str(out_dir)!r} was made by {made_by} (with its own data and model); "
                                f"continue it the same way, not with {origin}")
            # Every finished unit's weights must be readable before anything trains: a resume that
            # would fail half-way (and rewrite results.json on the way) fails now instead.
            for name in self.done:
                check_safetensors(self.checkpoint_path(name), "safetensors checkpoint")

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.out_dir / "tensorboard"

    @property
    def state_path(self) -> Path:
        return self.out_dir / "state" / "current.safetensors"

    def checkpoint_path(self, unit_name: str) -> Path:
        return self.out_dir / "checkpoints" / f"{unit_name}.safetensors"

    def timing_path(self) -> Path:
        return self.out_dir / "timing.json"

    def is_done(self, unit_name: str) -> bool:
        return unit_name in self.done

    def load_finished(self, unit_name: str, model: nn.Module) -> None:
        """Weights of a finished unit, for use as a teacher or an ensemble member after a resume."""
        load_model(model, self.checkpoint_path(unit_name))

    def save_epoch(self, state: EpochState) -> None:
        save_state(self.state_path, state)

    def pending_state(self, unit_name: str) -> EpochState | None:
        """The saved in-progress state if it belongs to ``unit_name``."""
        if not self.state_path.exists():
            return None
        state = load_state(self.state_path)
        return state if state.unit == unit_name else None

    def finish_unit(self, unit_name: str, model: nn.Module, metadata: dict[str, Any], rows: list[Row],
                    extras: dict[str, Any] | None = None) -> None:
        save_model(model, self.checkpoint_path(unit_name), metadata)
        self._mark_done(unit_name, rows, extras)
        self.state_path.unlink(missing_ok=True)

    def adopt_unit(self, unit_name: str, checkpoint: Path, rows: list[Row], extras: dict[str, Any]) -> None:
        """Finish a unit with a checkpoint another run trained (a hard link where possible)."""
        from kdgen.unit_cache import link

        self.checkpoint_path(unit_name).parent.mkdir(parents=True, exist_ok=True)
        link(checkpoint, self.checkpoint_path(unit_name))
        self._mark_done(unit_name, rows, extras)

    def _mark_done(self, unit_name: str, rows: list[Row], extras: dict[str, Any] | None) -> None:
        """Record a unit whose checkpoint is on disk: its rows and extras, then results.json (which marks it done)."""
        self.rows.extend(rows)
        if extras:
            self.extras[unit_name] = extras
        self.done.append(unit_name)
        self.write_results(complete=False)

    def write_results(self, *, complete: bool) -> None:
        write_json(self.results_path, {"rows": self.rows, "done": self.done, "complete": complete,
                                       "extras": self.extras, "origin": self.origin})
        state_dir = self.state_path.parent
        if complete and state_dir.is_dir() and not any(state_dir.iterdir()):
            state_dir.rmdir()  # nothing left to resume
