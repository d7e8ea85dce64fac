"""The run folder: checkpoints, per-epoch training state, and results, kept resumable.

Layout of ``DIR``::

    config.yaml                      the resolved config (written once, by the command line)
    results.json                     {"rows": [...], "done": [unit names], "complete": bool,
                                      "extras": {unit name: {"soft_confusion": {split: C x C}}}}
    checkpoints/<unit>.safetensors   weights of every finished unit
    state/current.safetensors        training state of the unit in progress, after its last epoch

Order of writes when a unit finishes: its checkpoint, then results.json (which marks it done),
then the in-progress state is removed. A kill between any two steps is harmless on resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdgen.checkpoint import load_model, read_json, save_model, write_json
from kdgen.errors import CheckpointError
from kdgen.resume import EpochState, load_state, save_state

Row = dict[str, Any]


class RunStore:
    """Reads and writes one run folder. ``resume=True`` loads what an earlier process left."""

    def __init__(self, out_dir: Path, *, resume: bool = False) -> None:
        self.out_dir = Path(out_dir)
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

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.json"

    @property
    def state_path(self) -> Path:
        return self.out_dir / "state" / "current.safetensors"

    def checkpoint_path(self, unit_name: str) -> Path:
        return self.out_dir / "checkpoints" / f"{unit_name}.safetensors"

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
                                       "extras": self.extras})
        state_dir = self.state_path.parent
        if complete and state_dir.is_dir() and not any(state_dir.iterdir()):
            state_dir.rmdir()  # nothing left to resume
