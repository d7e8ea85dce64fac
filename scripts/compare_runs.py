"""Compare two run folders cell by cell (arm x kind x generation), paired by seed.

For checks that a setting which should not change results does not: precision, compile, a refactor::

    kdgen run --out runs/fp32 runtime.precision=fp32
    kdgen run --out runs/bf16 runtime.precision=bf16
    python scripts/compare_runs.py runs/fp32 runs/bf16

Each row shows both runs' mean ± std over seeds and the paired difference B - A. The last line sets
the mean difference against the seed-to-seed spread: a setting is neutral when the differences are
centred on zero and no larger than that spread.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from kdgen.reporting.results import Results

Cell = tuple[str, str, int]


def cells(run_dir: Path, split: str, metric: str) -> dict[Cell, dict[int, float]]:
    """``{(arm, kind, generation): {seed: value}}`` for one split and metric."""
    table: dict[Cell, dict[int, float]] = defaultdict(dict)
    for row in Results.load(run_dir).rows:
        if row["split"] == split:
            table[(str(row["arm"]), str(row["kind"]), int(row["generation"]))][int(row["seed"])] = float(row[metric])
    return table


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--metric", default="top1")
    args = parser.parse_args()
    a, b = cells(args.run_a, args.split, args.metric), cells(args.run_b, args.split, args.metric)
    print(f"| arm | kind | gen | seeds | A: {args.run_a.name} | B: {args.run_b.name} | B − A (paired) |")
    print("|---|---|---|---|---|---|---|")
    differences, spreads = [], []
    for cell in sorted(a.keys() & b.keys()):
        seeds = sorted(a[cell].keys() & b[cell].keys())
        if not seeds:
            continue
        values_a, values_b = [a[cell][s] for s in seeds], [b[cell][s] for s in seeds]
        paired = [vb - va for va, vb in zip(values_a, values_b)]
        differences += paired
        if len(seeds) > 1:
            spreads += [statistics.stdev(values_a), statistics.stdev(values_b)]
        arm, kind, generation = cell
        print(f"| {arm} | {kind} | {generation} | {len(seeds)} | {mean_std(values_a)} | {mean_std(values_b)} | "
              f"{mean_std(paired)} |")
    if not differences:
        raise SystemExit("compare_runs: the two runs share no (arm, kind, generation, seed) cells")
    spread = f", mean seed-to-seed std {statistics.mean(spreads):.2f}" if spreads else ""
    sd = f", std {statistics.stdev(differences):.2f}" if len(differences) > 1 else ""
    print(f"\nall {len(differences)} paired cells: mean B − A {statistics.mean(differences):+.3f}{sd}{spread}")


if __name__ == "__main__":
    main()
