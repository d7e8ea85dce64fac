"""``kdgen sweep``: a grid of ordinary run folders that share trained units, scored on val only.

``DIR/sweep.json`` records the base config and the grid; ``DIR/runs/<point>/`` is a normal run
folder per grid point (``kdgen report`` and ``kdgen predict`` work on it); ``DIR/units/`` is the
:class:`~kdgen.running.unit_cache.UnitCache` every point draws on, so no unit is trained twice; the
summary (``sweep.md``, ``sweep.html``, ``sweep_summary.json``, ``plots/``) is rebuilt after every
point. ``--resume`` continues where an interrupted sweep stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kdgen.checkpoint import read_json, write_json
from kdgen.errors import UserError
from kdgen.reporting.sweep_page import build_sweep_report
from kdgen.running.run_folder import check_new_out_dir, make_out_dir
from kdgen.running.runner import run_experiment
from kdgen.running.sweep_plan import SweepPlan
from kdgen.running.unit_cache import UnitCache

if TYPE_CHECKING:
    from kdgen.training.loop import StopFlag

def run_sweep(plan: SweepPlan, out: Path, *, resume: bool = False, echo: bool = True, units: Path | None = None,
              stop: "StopFlag | None" = None) -> Path:
    """Run every grid point of ``plan`` under ``out`` (sharing units), then write the summary.

    ``units`` is the unit cache folder (default ``out/units``); sweeps that name the same folder
    share their units, even while they run at the same time (a unit is published atomically).
    """
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
    cache = UnitCache(units if units is not None else out / "units")
    points = plan.points()
    for index, point in enumerate(points):
        run_dir = out / "runs" / point.name
        if (run_dir / "timing.json").is_file():
            continue  # finished before an interruption
        if echo:
            print(f"kdgen sweep: point {index + 1}/{len(points)}: {' '.join(point.overrides())}", flush=True)
        run_experiment(plan.config_for(point), run_dir, resume=run_dir.exists(), echo=False, unit_cache=cache,
                       stop=stop)
        build_sweep_report(out)
    path = build_sweep_report(out)
    if echo:
        print(path.with_suffix(".md").read_text(encoding="utf-8").split("\n## ")[0].strip())
        print(f"\nsummary: {path}")
    return path
