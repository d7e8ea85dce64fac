"""Recompute every row of a finished run folder from its checkpoints, into a new run folder.

For run folders whose rows were measured under other settings than their config's: before the unit
cache keyed units by the K of the secondary-information metrics, a unit reused from a sweep point with
another ``tolerance.k`` carried that K's ``secondary_mass``. Models are loaded, never trained; the new
folder gets hard links to the checkpoints, the recomputed results.json (and extras) and a new report,
and the script prints how many values of each metric changed. Usage::

    OMP_NUM_THREADS=1 python scripts/reevaluate_run.py OLD_RUN NEW_RUN

Use the thread count the run was made with: bf16 results can depend on it in the last bits.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from kdgen import arms
from kdgen.checkpoint import link, read_json, write_json
from kdgen.data import load_bundle
from kdgen.errors import UserError
from kdgen.folders import saved_config
from kdgen.reporting.page import build_report
from kdgen.running.generations import ChainModels, GenerationsRunner, Unit
from kdgen.running.run_folder import check_new_out_dir, write_config


def reevaluate(old: Path, new: Path) -> Counter:
    cfg = saved_config(old)
    payload = read_json(old / "results.json")
    if not payload.get("complete"):
        raise UserError(f"{old}: the run is not finished")
    check_new_out_dir(new)
    data = load_bundle(cfg.data)
    runner = GenerationsRunner(cfg, data, ChainModels.from_config(cfg, data.num_classes, data.channels))
    rows, extras = [], {}
    for seed in cfg.seeds:
        for name in cfg.generations.arms:
            arm, member_probs = arms.make(name, runner.cfg), {}
            for generation in range(cfg.generations.count + 1):
                unit = Unit(name, seed, generation)
                model = runner.load_unit(unit, old / "checkpoints" / f"{unit.name}.safetensors")
                unit_rows, unit_extras = runner.evaluate(unit, arm, model, member_probs)
                rows += unit_rows
                if unit_extras:
                    extras[unit.name] = unit_extras
    (new / "checkpoints").mkdir(parents=True)
    for name in payload["done"]:
        link(old / "checkpoints" / f"{name}.safetensors", new / "checkpoints" / f"{name}.safetensors")
    write_config(new, runner.cfg)
    write_json(new / "results.json", {**payload, "rows": rows, "extras": extras})
    key = lambda r: (r["arm"], r["seed"], r["generation"], r["kind"], r["split"])  # noqa: E731
    before = {key(r): r for r in payload["rows"]}
    changed = Counter(metric for r in rows for metric, value in r.items() if before[key(r)].get(metric) != value)
    timing = old / "timing.json"
    build_report(new, rows, wall_time_s=read_json(timing).get("wall_time_s") if timing.is_file() else None)
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path, help="a finished run folder with its checkpoints")
    parser.add_argument("new", type=Path, help="a new folder for the re-evaluated run")
    args = parser.parse_args()
    try:
        changed = reevaluate(args.old, args.new)
    except UserError as exc:
        print(f"reevaluate_run: error: {exc}", file=sys.stderr)
        return 2
    print("values changed per metric:", dict(changed) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
