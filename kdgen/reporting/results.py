"""A run's results, loaded once and typed: what the report, the verdict, the sweep page, the plots,
``kdgen transfer`` and ``kdgen.load`` all read.

``results.json`` holds tidy rows (one dict per arm, generation, kind, seed and split; see
:mod:`kdgen.running.run_folder`). :class:`Results` wraps them with what every reader needs: the arms that
were recorded, the mean ± std of every metric per cell (:class:`Cell`), the values that paired tests
pair, the comparisons the recorded arms ask for (:meth:`Results.comparisons`) and the model to keep
(chosen on val). A metric is declared once, in :data:`METRICS`; tables and plots iterate over it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping

from kdgen import arms as arm_registry
from kdgen.checkpoint import read_json
from kdgen.errors import CheckpointError
from kdgen.folders import RESULTS_FILE, Row, checkpoint_relpath
from kdgen.reporting.statistics import Paired, paired


@dataclass(frozen=True)
class Metric:
    """A per-model number of a results row: its name in the row, how tables label it and how many digits they show.

    ``secondary`` metrics describe what a model says beyond its top-1 choice (the report's secondary
    table); ``sweep`` metrics are shown for every cell of a sweep.
    """

    name: str
    label: str
    digits: int = 3
    secondary: bool = False
    sweep: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("top1", "top-1 (%)", 2, sweep=True),
    Metric("top5", "top-5 (%)", 2),
    Metric("nll", "NLL", 3, sweep=True),
    Metric("ece", "ECE", 3),
    Metric("conf", "confidence", 3, secondary=True, sweep=True),
    Metric("entropy", "entropy", 3, secondary=True, sweep=True),
    Metric("secondary_mass", "mass ranks 2..K", 3, secondary=True, sweep=True),
    Metric("semantic", "semantic 2nd choice %", 1, secondary=True, sweep=True),
    Metric("semantic_mass", "semantic mass", 3, secondary=True),
)
METRIC = {m.name: m for m in METRICS}
REQUIRED = ("arm", "generation", "kind", "seed", "split", "top1", "nll", "ece")


@dataclass(frozen=True)
class Cell:
    """Every seed's model of one (split, kind, arm, generation): mean and sample std (ddof 1) per metric."""

    split: str
    kind: str
    arm: str
    generation: int
    n: int
    means: Mapping[str, float] = field(default_factory=dict)
    stds: Mapping[str, float] = field(default_factory=dict)

    def has(self, metric: str) -> bool:
        return metric in self.means

    def format(self, metric: str, digits: int | None = None) -> str:
        """``mean ± std`` with the metric's digits, "–" when no model of the cell has it."""
        return format_cell(self, metric, digits)

    def to_json(self) -> dict[str, Any]:
        """The flat form written to summary.json and sweep_summary.json (``top1_mean``, ``top1_std``, ...)."""
        entry: dict[str, Any] = {"split": self.split, "kind": self.kind, "arm": self.arm,
                                 "generation": self.generation, "n": self.n}
        for metric in self.means:
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = self.means[metric], self.stds[metric]
        return entry


def format_cell(cell: Cell | None, metric: str, digits: int | None = None) -> str:
    """``mean ± std`` of ``metric`` in ``cell`` (the metric's own digits unless given), "–" when absent."""
    if cell is None or metric not in cell.means:
        return "–"
    digits = METRIC[metric].digits if digits is None and metric in METRIC else 2 if digits is None else digits
    return f"{cell.means[metric]:.{digits}f} ± {cell.stds[metric]:.{digits}f}"


def cells_of(rows: Iterable[Row]) -> list[Cell]:
    """Mean ± std over seeds for every (split, kind, arm, generation), in report order."""
    import numpy as np

    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[(str(row["split"]), str(row["kind"]), str(row["arm"]), int(row["generation"]))].append(row)  # type: ignore[arg-type]
    cells = []
    for (split, kind, arm, generation), members in groups.items():
        means, stds = {}, {}
        for metric in METRIC:
            values = np.array([m[metric] for m in members if metric in m], dtype=float)
            if len(values):
                means[metric] = float(values.mean())
                stds[metric] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        cells.append(Cell(split, kind, arm, generation, len(members), means, stds))
    cells.sort(key=lambda c: (c.split, c.kind, arm_registry.sort_key(c.arm), c.generation))
    return cells


Comparison = tuple[str, str, str]  # (arm, other, kind): arm − other, single models or ensembles


class Results:
    """The tidy rows of one run (or of one sweep point, or a transfer file), with the summaries every reader needs.

    Build it with :meth:`load` (a run folder) or directly from rows; summaries are computed once.
    """

    def __init__(self, rows: Iterable[Row], extras: Mapping[str, Any] | None = None, complete: bool = True):
        self.rows: list[Row] = list(rows)
        self.extras: dict[str, Any] = dict(extras or {})
        self.complete = complete
        self._values: dict[tuple[str, str], dict[tuple[str, int, str], dict[int, float]]] = {}

    @classmethod
    def load(cls, run_dir: Path) -> "Results":
        """``run_dir/results.json``; a missing folder or file, or one that is not kdgen's, is a
        :class:`~kdgen.errors.CheckpointError` naming it."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir}: not a run directory")
        path = run_dir / RESULTS_FILE
        payload = read_json(path)
        rows = payload.get("rows") if isinstance(payload, dict) else None
        if not isinstance(rows, list) or any(not isinstance(r, dict) or not set(REQUIRED) <= set(r) for r in rows):
            raise CheckpointError(f"{path}: not a kdgen results file (expected {{\"rows\": [...]}} with {sorted(REQUIRED)})")
        extras = payload.get("extras")
        return cls(rows, extras if isinstance(extras, dict) else {}, bool(payload.get("complete", True)))

    # --- what was recorded -------------------------------------------------------------------------
    @cached_property
    def arms(self) -> list[str]:
        """The arms with rows, in report order."""
        return sorted({str(r["arm"]) for r in self.rows}, key=arm_registry.sort_key)

    @cached_property
    def seeds(self) -> list[int]:
        return sorted({int(r["seed"]) for r in self.rows})  # type: ignore[arg-type]

    @cached_property
    def splits(self) -> set[str]:
        return {str(r["split"]) for r in self.rows}

    def last_generation(self) -> int:
        return max((int(r["generation"]) for r in self.rows), default=0)  # type: ignore[arg-type]

    # --- summaries ---------------------------------------------------------------------------------
    @cached_property
    def cells(self) -> list[Cell]:
        """Every (split, kind, arm, generation)'s mean ± std, in report order."""
        return cells_of(self.rows)

    @cached_property
    def _cell_index(self) -> dict[tuple[str, str, str, int], Cell]:
        return {(c.split, c.kind, c.arm, c.generation): c for c in self.cells}

    def cell(self, split: str, arm: str, generation: int, kind: str = "single") -> Cell | None:
        return self._cell_index.get((split, kind, arm, generation))

    def cells_in(self, split: str, kind: str | None = None) -> list[Cell]:
        return [c for c in self.cells if c.split == split and (kind is None or c.kind == kind)]

    def values(self, split: str, metric: str = "top1") -> dict[tuple[str, int, str], dict[int, float]]:
        """``{(arm, generation, kind): {seed: value}}`` of ``metric`` on ``split``: what paired tests pair."""
        key = (split, metric)
        if key not in self._values:
            values: dict[tuple[str, int, str], dict[int, float]] = defaultdict(dict)
            for row in self.rows:
                if row["split"] == split and metric in row:
                    cell = (str(row["arm"]), int(row["generation"]), str(row["kind"]))  # type: ignore[arg-type]
                    values[cell][int(row["seed"])] = float(row[metric])  # type: ignore[arg-type]
            self._values[key] = dict(values)
        return self._values[key]

    # --- comparisons -------------------------------------------------------------------------------
    def comparisons(self) -> list[Comparison]:
        """Every comparison a recorded arm asks for (its ``compare_with``) whose other arm was recorded too,
        single models and ensembles; the most derived arms first (tolerant − strict before strict − baseline)."""
        present = set(self.arms)
        found = []
        for arm in sorted(present & set(arm_registry.names()), key=arm_registry.sort_key, reverse=True):
            for other in arm_registry.get(arm).compare_with:
                if other in present:
                    found += [(arm, other, "single"), (arm, other, "ensemble")]
        return found

    def common_generations(self, arm: str, other: str, split: str, kind: str = "single",
                           metric: str = "top1") -> list[int]:
        """The generations at which both arms have ``kind`` models with ``metric`` on ``split``, ascending."""
        values = self.values(split, metric)
        return sorted({g for (a, g, k) in values if a == arm and k == kind}
                      & {g for (a, g, k) in values if a == other and k == kind})

    def paired(self, arm: str, other: str, split: str, kind: str = "single", metric: str = "top1") -> dict[int, Paired]:
        """``arm − other`` per generation both have, paired by seed (see :func:`kdgen.reporting.statistics.paired`)."""
        values = self.values(split, metric)
        result = {}
        for generation in self.common_generations(arm, other, split, kind, metric):
            found = paired(values[(arm, generation, kind)], values[(other, generation, kind)])
            if found is not None:
                result[generation] = found
        return result

    # --- the model to keep -------------------------------------------------------------------------
    def best_unit(self, generations: Iterable[int] | None = None) -> dict[str, Any] | None:
        """The single model to keep, chosen on the *val* split only: the (arm, generation) with the highest mean
        val top-1 over seeds (ties: lower mean NLL), then its seed with the highest val top-1 (ties: lower NLL).
        ``generations``: choose among these only (e.g. those of a compact student's architecture)."""
        allowed = None if generations is None else set(generations)
        cells = [c for c in self.cells_in("val", "single") if c.has("top1")
                 and (allowed is None or c.generation in allowed)]
        if not cells:
            return None
        chosen_cell = max(cells, key=lambda c: (c.means["top1"], -c.means.get("nll", 0.0)))
        arm, generation = chosen_cell.arm, chosen_cell.generation
        candidates = [r for r in self.rows if r["split"] == "val" and r["kind"] == "single"
                      and r["arm"] == arm and r["generation"] == generation]
        chosen = max(candidates, key=lambda r: (r["top1"], -float(r["nll"])))  # type: ignore[arg-type]
        return {"arm": arm, "generation": generation, "seed": chosen["seed"], "val_top1": chosen["top1"],
                "checkpoint": checkpoint_relpath(arm, int(chosen["seed"]), generation)}  # type: ignore[arg-type]
