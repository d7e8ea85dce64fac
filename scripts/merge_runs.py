"""Merge finished run folders with different seeds or different arms into one run folder.

A unit depends only on its own seed, arm and generation (its RNG stream) and on the settings its arm
reads (:func:`kdgen.running.unit_cache.unit_key`), so seeds or arms run in separate processes or on separate
machines give exactly the units one run over all of them would. The merged config is the first
run's, with every run's seeds and arms (and the config sections of the arms it brings, e.g.
``snapshot:``); the merge is refused unless every unit's key is the same under the merged config as
under its own run's. The merged folder is an ordinary run folder: checkpoints are hard-linked (copied
across file systems), rows are concatenated, and the report is rebuilt. Usage::

    kdgen run --config C.yaml seeds=[0,1,2,3,4] --out runs/a &
    kdgen run --config C.yaml seeds=[5,6,7,8,9] --out runs/b &
    wait; python scripts/merge_runs.py runs/all runs/a runs/b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from kdgen import arms
from kdgen.checkpoint import link, read_json, write_json
from kdgen.errors import UserError
from kdgen.folders import saved_config
from kdgen.reporting.page import build_report
from kdgen.running.generations import units
from kdgen.running.run_folder import check_new_out_dir
from kdgen.running.unit_cache import unit_key


def merged_config(runs: list[Path]):
    """The first run's config with every run's seeds, arms and arm sections; checked unit by unit."""
    configs = [saved_config(run) for run in runs]
    seeds = sorted({seed for cfg in configs for seed in cfg.seeds})
    arm_names = [name for name in arms.names() if any(name in cfg.generations.arms for cfg in configs)]
    merged = configs[0].model_copy(update={"seeds": seeds, "generations": configs[0].generations.model_copy(
        update={"arms": arm_names})})
    for cfg in configs:
        for name in cfg.generations.arms:
            section = arms.get(name).settings
            if section is not None:
                merged = merged.model_copy(update={section[0]: getattr(cfg, section[0])})
    owner: dict[str, Path] = {}
    for run, cfg in zip(runs, configs):
        for unit in units(cfg):
            if unit.name in owner:
                raise UserError(f"{unit.name} is in both {owner[unit.name]} and {run}; each unit must come from one run")
            owner[unit.name] = run
            if unit_key(cfg, unit.arm, unit.seed, unit.generation) != unit_key(merged, unit.arm, unit.seed, unit.generation):
                raise UserError(f"{run}: {unit.name} was trained with settings the merged config does not have "
                                f"(the runs differ in more than seeds, arms and their own arms' sections)")
    return merged


def merge(out: Path, runs: list[Path]) -> Path:
    merged = merged_config(runs)
    payloads = [read_json(run / "results.json") for run in runs]
    for run, payload in zip(runs, payloads):
        if not payload.get("complete"):
            raise UserError(f"{run}: the run is not finished (results.json is not complete)")
    check_new_out_dir(out)
    (out / "checkpoints").mkdir(parents=True)
    rows, done, extras, wall = [], [], {}, 0.0
    for run, payload in zip(runs, payloads):
        for name in payload["done"]:
            link(run / "checkpoints" / f"{name}.safetensors", out / "checkpoints" / f"{name}.safetensors")
        rows += payload["rows"]
        done += payload["done"]
        extras.update(payload.get("extras") or {})
        timing = run / "timing.json"
        wall += float(read_json(timing)["wall_time_s"]) if timing.is_file() else 0.0
    (out / "config.yaml").write_text(yaml.safe_dump(merged.to_dict(), sort_keys=False), encoding="utf-8")
    write_json(out / "results.json", {"rows": rows, "done": done, "complete": True, "extras": extras})
    write_json(out / "timing.json", {"wall_time_s": wall, "merged_from": [str(r) for r in runs],
                                     "note": "sum of the merged runs' wall times (they may have run side by side)"})
    return build_report(out, wall_time_s=wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="new folder for the merged run")
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders")
    args = parser.parse_args()
    try:
        print(merge(args.out, args.runs))
    except UserError as exc:
        print(f"merge_runs: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
