"""Merge finished run folders that differ only in their seeds into one run folder.

Every unit depends on its own seed alone (its RNG stream is derived from seed, arm and
generation), so seeds run in separate processes or on separate machines give exactly the units a
single run over all the seeds would. The merged folder is an ordinary run folder: checkpoints are
hard-linked (copied across file systems), rows are concatenated in the order one run would write
them, and the report is rebuilt. Usage::

    kdgen run --config C.yaml seeds=[0,1,2,3,4] --out runs/a &
    kdgen run --config C.yaml seeds=[5,6,7,8,9] --out runs/b &
    wait; python scripts/merge_runs.py runs/all runs/a runs/b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from kdgen.checkpoint import read_json, write_json
from kdgen.config import build_config, read_yaml
from kdgen.errors import UserError
from kdgen.report import build_report
from kdgen.runner import check_new_out_dir, config_differences
from kdgen.unit_cache import link


def merge(out: Path, runs: list[Path]) -> Path:
    configs = [build_config(read_yaml(run / "config.yaml"), str(run / "config.yaml")) for run in runs]
    for run, cfg in zip(runs[1:], configs[1:]):
        differing = [k for k in config_differences(configs[0], cfg) if k != "seeds"]
        if differing:
            raise UserError(f"{run}: config differs from {runs[0]} in {', '.join(differing)} (only seeds may)")
    seeds = [seed for cfg in configs for seed in cfg.seeds]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"the runs share seeds ({seeds}); each seed must come from one run")
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
    merged = configs[0].model_copy(update={"seeds": seeds})
    (out / "config.yaml").write_text(yaml.safe_dump(merged.to_dict(), sort_keys=False), encoding="utf-8")
    write_json(out / "results.json", {"rows": rows, "done": done, "complete": True, "extras": extras})
    write_json(out / "timing.json", {"wall_time_s": wall, "merged_from": [str(r) for r in runs],
                                     "note": "sum of the merged runs' wall times (they may have run side by side)"})
    return build_report(out, rows, wall_time_s=wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="new folder for the merged run")
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders, in seed order")
    args = parser.parse_args()
    try:
        print(merge(args.out, args.runs))
    except UserError as exc:
        print(f"merge_runs: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
