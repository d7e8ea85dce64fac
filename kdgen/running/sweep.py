"""``kdgen sweep``: a grid of ordinary run folders that share trained units, scored on val only.

``DIR/sweep.json`` records the base config and the grid; ``DIR/runs/<point>/`` is a normal run
folder per grid point (``kdgen report`` and ``kdgen predict`` work on it); ``DIR/units/`` is the
:class:`~kdgen.running.unit_cache.UnitCache` every point draws on, so no unit is trained twice; the
summary (``sweep.md``, ``sweep.html``, ``sweep_summary.json``, ``plots/``) is rebuilt after every
point. ``--resume`` continues where an interrupted sweep stopped. Under ``torchrun`` the processes share
every point's training (:func:`run_sweep`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from kdgen.checkpoint import read_json, write_json
from kdgen.errors import UserError
from kdgen.reporting.sweep_page import build_sweep_report
from kdgen.running.run_folder import check_new_out_dir, make_out_dir
from kdgen.running.runner import run_experiment, start_parallel, together
from kdgen.running.unit_cache import UnitCache
from kdgen.sweep_plan import SweepPlan

if TYPE_CHECKING:
    from kdgen.training.loop import StopFlag


def run_sweep(plan: SweepPlan, out: Path, *, resume: bool = False, echo: bool = True, units: Path | None = None,
              stop: "StopFlag | None" = None) -> Path:
    """Run every grid point of ``plan`` under ``out`` (sharing units), then write the summary.

    ``units`` is the unit cache folder (default ``out/units``); sweeps that name the same folder
    share their units, even while they run at the same time (a unit is published atomically).

    Under ``torchrun`` the processes run each point together in ``runtime.parallel=chains`` (unless the
    base config names another mode): its chains still to train are spread over them, longest first, each
    process trains its own and puts them in the shared unit cache, and rank 0 writes the point's
    results.json and the summary. Rows and summary equal a one-process sweep's at the same thread count.
    """
    points = plan.points()
    base = plan.config_for(points[0])
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    mode = base.runtime.parallel if base.runtime.parallel != "none" or world == 1 else "chains"
    parallel = start_parallel(base.runtime, mode)
    try:
        together(parallel, lambda: _open(plan, out, resume) if parallel.is_leader else None)
        cache = UnitCache(units if units is not None else out / "units")
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
        if not parallel.is_leader:
            return out / "sweep.md"
        path = build_sweep_report(out)
    finally:
        parallel.close()
    if echo:
        print(path.with_suffix(".md").read_text(encoding="utf-8").split("\n## ")[0].strip())
        print(f"\nsummary: {path}")
    return path


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
