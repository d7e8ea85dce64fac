"""The equal-cost view: every arm's accuracy against the training epochs its result cost.

A strict generation 3 needed four models' training; a snapshot "generation 3" one model's, split
into cycles; a baseline ensemble of g models, g trainings. Each arm says what its units cost
(:meth:`kdgen.arms.Arm.cost_epochs`); this module puts the measured accuracy next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kdgen import arms as arm_registry

if TYPE_CHECKING:
    from kdgen.config import Config


def run_config(run_dir: Path) -> "Config | None":
    """The run folder's config, or None when it has none or one this version cannot read."""
    from kdgen.errors import UserError
    from kdgen.run_folder import saved_config

    try:
        return saved_config(Path(run_dir))
    except UserError:
        return None


def equal_cost_points(summary: list[dict[str, object]], cfg: "Config") -> list[dict[str, object]]:
    """Summary entries of registered arms with ``cost`` (epochs) and ``models`` (cost / train.epochs) added.

    One entry per (split, arm, kind, cost), the lowest generation: the baseline's single models all
    cost one training, and generation 0 stands for them.
    """
    bound = {name: arm_registry.make(name, cfg) for name in arm_registry.names()}
    points: dict[tuple, dict[str, object]] = {}
    for entry in sorted(summary, key=lambda e: int(e["generation"])):  # type: ignore[arg-type]
        arm = bound.get(str(entry["arm"]))
        if arm is None or "top1_mean" not in entry:
            continue
        cost = arm.cost_epochs(int(entry["generation"]), str(entry["kind"]))  # type: ignore[arg-type]
        points.setdefault((entry["split"], entry["arm"], entry["kind"], cost),
                          {**entry, "cost": cost, "models": cost / cfg.train.epochs})
    return list(points.values())


def equal_cost_table(points: list[dict[str, object]], split: str) -> tuple[list[str], list[list[str]]]:
    """One line per (arm, generation, kind), cheapest first: cost and top-1 (mean ± std over seeds)."""
    from kdgen.report import format_cell

    header = ["epochs spent", "models' worth", "arm", "gen", "kind", "n", "top1"]
    chosen = sorted((p for p in points if p["split"] == split),
                    key=lambda p: (float(p["cost"]), -float(p["top1_mean"])))  # type: ignore[arg-type]
    body = [[f"{float(p['cost']):g}", f"{float(p['models']):.2f}", str(p["arm"]), str(p["generation"]), str(p["kind"]),  # type: ignore[arg-type]
             str(p["n"]), format_cell(p, "top1")] for p in chosen]
    return header, body
