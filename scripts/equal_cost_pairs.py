"""Paired tests between arms at equal training cost, from a finished run folder.

Cells (arm, generation, single or ensemble) that cost the same number of training epochs
(:meth:`kdgen.arms.Arm.cost_epochs`) are compared pairwise across arms, paired by seed, on the val
and test splits: e.g. a snapshot chain's last cycle (one model's budget) against a baseline model,
or a strict generation 1 (two models' budget) against a baseline ensemble of two. Usage::

    python scripts/equal_cost_pairs.py RUN_DIR [--metric top1] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from kdgen.equal_cost import equal_cost_points, run_config
from kdgen.arms import sort_key as arm_sort_key
from kdgen.report import load_rows, markdown_table, paired_stats, summarize, text_table, values_by_cell


def pairs(run_dir: Path, metric: str) -> tuple[list[str], list[list[str]]]:
    rows = load_rows(run_dir)
    cfg = run_config(run_dir)
    if cfg is None:
        raise SystemExit(f"{run_dir}: no readable config.yaml")
    points = equal_cost_points(summarize(rows), cfg)
    by_cost: dict[float, list[tuple[str, int, str]]] = defaultdict(list)
    for p in points:  # one cell per (arm, kind) and cost: see equal_cost_points
        if p["split"] == "val":
            by_cost[float(p["cost"])].append((str(p["arm"]), int(p["generation"]), str(p["kind"])))  # type: ignore[arg-type]
    for cells in by_cost.values():
        cells.sort(key=lambda c: arm_sort_key(c[0]), reverse=True)  # derived arm first: A − B reads "new − reference"
    header = ["epochs", "A", "B", "n", f"val Δ {metric} (A − B)", "p", f"test Δ {metric} (A − B)", "p "]
    body = []
    values = {split: values_by_cell(rows, split, metric) for split in ("val", "test")}
    for cost in sorted(by_cost):
        cells = by_cost[cost]
        for i, a in enumerate(cells):
            for b in cells[i + 1:]:
                if a[0] == b[0]:
                    continue
                line = [f"{cost:g}", f"{a[0]} g{a[1]} {a[2]}", f"{b[0]} g{b[1]} {b[2]}"]
                for split in ("val", "test"):
                    d = paired_stats(values[split].get(a, {}), values[split].get(b, {}))
                    if d is None:
                        line += (["0"] if split == "val" else []) + ["–", "–"]
                        continue
                    if split == "val":
                        line.append(str(d["n"]))
                    p = "n/a" if d["p"] != d["p"] else ("<0.001" if d["p"] < 0.001 else f"{d['p']:.3f}")
                    digits = 2 if metric.startswith("top") else 3
                    line += [f"{d['mean']:+.{digits}f} ± {d['std']:.{digits}f}", p]
                body.append(line)
    return header, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--metric", default="top1")
    parser.add_argument("--markdown", action="store_true", help="a markdown table instead of plain text")
    args = parser.parse_args()
    header, body = pairs(args.run_dir, args.metric)
    print(markdown_table(header, body) if args.markdown else text_table(header, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
