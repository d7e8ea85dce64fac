"""The equal-cost view: every arm's accuracy against the training epochs its result cost.

A strict generation 3 needed four models' training; a snapshot "generation 3" one model's, split
into cycles; a baseline ensemble of g models, g trainings. Each arm says what its units cost
(:meth:`kdgen.arms.Arm.cost_epochs`); this module puts the measured accuracy next to it, and what using the
result costs: forward FLOPs per image of the model, or of all an ensemble's members (a compact student's is
lower than its teacher's; an epoch of different architectures costs differently too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdgen import arms as arm_registry
from kdgen.reporting.results import Cell

if TYPE_CHECKING:
    from kdgen.config import Config


def run_config(run_dir: Path) -> "Config | None":
    """The run folder's config, or None when it has none or one this version cannot read."""
    from kdgen.errors import UserError
    from kdgen.folders import saved_config

    try:
        return saved_config(Path(run_dir))
    except UserError:
        return None


@dataclass(frozen=True)
class CostPoint:
    """A cell of the run and what it cost: ``cost`` training epochs, ``models`` = cost / train.epochs, and
    ``inference_flops``, the forward FLOPs per image of using it (an ensemble: all its members; None when the run
    did not record its architectures)."""

    cell: Cell
    cost: float
    models: float
    inference_flops: float | None = None


def equal_cost_points(cells: list[Cell], cfg: "Config", flops: list[float] | None = None) -> list[CostPoint]:
    """The cells of registered arms with their cost, one per (split, arm, kind, cost, inference cost): the lowest generation
    (the baseline's single models all cost one training, and generation 0 stands for them). ``flops``: each
    generation's forward FLOPs per image (the run's architectures.json), for the inference cost."""
    bound = {name: arm_registry.make(name, cfg) for name in arm_registry.names()}
    points: dict[tuple, CostPoint] = {}
    for cell in sorted(cells, key=lambda c: c.generation):
        arm = bound.get(cell.arm)
        if arm is None or not cell.has("top1"):
            continue
        cost = arm.cost_epochs(cell.generation, cell.kind)
        members = arm.ensemble(cell.generation) if cell.kind == "ensemble" else [cell.generation]
        inference = (sum(flops[m] for m in members) if flops is not None and all(m < len(flops) for m in members)
                     else None)
        # Equal cost and equal model (a chain that changes architecture): the lowest generation stands for the rest.
        points.setdefault((cell.split, cell.arm, cell.kind, cost, inference),
                          CostPoint(cell, cost, cost / cfg.train.epochs, inference))
    return list(points.values())


def equal_cost_table(points: list[CostPoint], split: str) -> tuple[list[str], list[list[str]]]:
    """One line per (arm, generation, kind), cheapest first: cost, inference cost where known, and top-1
    (mean ± std over seeds)."""
    chosen = sorted((p for p in points if p.cell.split == split), key=lambda p: (p.cost, -p.cell.means["top1"]))
    inference = any(p.inference_flops is not None for p in chosen)
    header = ["epochs spent", "models' worth"] + (["MFLOPs / image"] if inference else []) + \
        ["arm", "gen", "kind", "n", "top1"]
    body = [[f"{p.cost:g}", f"{p.models:.2f}"]
            + ([f"{p.inference_flops / 1e6:.3g}" if p.inference_flops is not None else "–"] if inference else [])
            + [p.cell.arm, str(p.cell.generation), p.cell.kind, str(p.cell.n), p.cell.format("top1")] for p in chosen]
    return header, body
