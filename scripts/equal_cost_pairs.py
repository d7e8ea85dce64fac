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

from kdgen.arms import sort_key as arm_sort_key
from kdgen.reporting.equal_cost import equal_cost_points, run_config
from kdgen.reporting.formatting import difference, markdown_table, p_value, text_table
from kdgen.reporting.results import Results
from kdgen.reporting.statistics import paired


def pairs(run_dir: Path, metric: str) -> tuple[list[str], list[list[str]]]:
    results = Results.load(run_dir)
    cfg = run_config(run_dir)
    if cfg is None:
        raise SystemExit(f"{run_dir}: no readable config.yaml")
    points = equal_cost_points(results.cells, cfg)
    by_cost: dict[float, list[tuple[str, int, str]]] = defaultdict(list)
    for p in points:  # one cell per (arm, kind) and cost: see equal_cost_points
        if p.cell.split == "val":
            by_cost[p.cost].append((p.cell.arm, p.cell.generation, p.cell.kind))
    for cells in by_cost.values():
        cells.sort(key=lambda c: arm_sort_key(c[0]), reverse=True)  # derived arm first: A − B reads "new − reference"
    header = ["epochs", "A", "B", "n", f"val Δ {metric} (A − B)", "p", f"test Δ {metric} (A − B)", "p "]
    body = []
    values = {split: results.values(split, metric) for split in ("val", "test")}
    for cost in sorted(by_cost):
        cells = by_cost[cost]
        for i, a in enumerate(cells):
            for b in cells[i + 1:]:
                if a[0] == b[0]:
                    continue
                line = [f"{cost:g}", f"{a[0]} g{a[1]} {a[2]}", f"{b[0]} g{b[1]} {b[2]}"]
                for split in ("val", "test"):
                    d = paired(values[split].get(a, {}), values[split].get(b, {}))
                    if d is None:
                        line += (["0"] if split == "val" else []) + ["–", "–"]
                        continue
                    if split == "val":
                        line.append(str(d.n))
                    line += [difference(d.mean, d.std, 2 if metric.startswith("top") else 3), p_value(d.p)]
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
