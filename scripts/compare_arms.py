"""Compare arms taken from different run folders, paired by seed, generation by generation.

For studies whose arms live in separate runs (a label-smoothing patriarch's line in one sweep point, a TSD
patriarch's in another, the strict line in a third)::

    python scripts/compare_arms.py --split val --reference strict \\
        strict=sweeps/a/runs/0_eta=0.83/strict tsd=sweeps/a/runs/0_eta=0.83/tolerant \\
        ls=sweeps/c-ls/runs/1_epsilon=0.1/tolerant

Each ``LABEL=RUN/ARM`` names one line of models. Units depend only on their seed and settings, so the same
seed in two runs of the same data and recipe is a fair pair. Prints a markdown table: per label and
generation, mean ± std of top-1 and confidence over seeds, and the paired difference to the reference with
its p (two-sided paired t-test) and the smallest difference the seeds detect with 80 % power. ``--show`` adds other
metrics (mean ± std), ``--generations`` keeps some generations (e.g. a compact student's), ``--probe mnist``
compares the lines' ``kdgen transfer`` probes (RUN/transfer/mnist.json) instead of the models themselves.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdgen.checkpoint import read_json
from kdgen.folders import TRANSFER_DIR
from kdgen.reporting.formatting import difference
from kdgen.reporting.results import Results
from kdgen.reporting.statistics import paired
from kdgen.reporting.tables import detectable_cell, p_cell


def line_rows(spec: str, probe: str | None = None) -> tuple[str, list[dict]]:
    label, _, where = spec.partition("=")
    run, _, arm = where.rpartition("/")
    if not label or not run or not arm:
        raise SystemExit(f"{spec!r}: expected LABEL=RUN/ARM")
    if probe is not None:  # kdgen transfer's rows of this run: RUN/transfer/PROBE.json
        path = Path(run) / TRANSFER_DIR / f"{probe}.json"
        if not path.is_file():
            raise SystemExit(f"{spec!r}: no {path} (run kdgen transfer first)")
        found = read_json(path)["rows"]
    else:
        found = Results.load(Path(run)).rows
    rows = [dict(r, arm=label) for r in found if r["arm"] == arm]
    if not rows:
        raise SystemExit(f"{spec!r}: arm {arm!r} has no rows in {run}")
    return label, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lines", nargs="+", metavar="LABEL=RUN/ARM")
    parser.add_argument("--split", default="val")
    parser.add_argument("--reference", required=True, metavar="LABEL")
    parser.add_argument("--show", default="conf", metavar="METRIC,...",
                        help="metrics shown as mean ± std beside top-1 (default conf; e.g. conf,nll,ece,secondary_mass)")
    parser.add_argument("--generations", default=None, metavar="G,...", help="only these generations (default all)")
    parser.add_argument("--probe", default=None, metavar="NAME",
                        help="compare kdgen transfer's linear probes (RUN/transfer/NAME.json, e.g. mnist) instead of "
                        "the models' own rows")
    args = parser.parse_args()
    shown = [m for m in args.show.split(",") if m]
    wanted = None if args.generations is None else {int(g) for g in args.generations.split(",")}
    rows = [row for spec in args.lines for row in line_rows(spec, args.probe)[1]]
    labels = [spec.partition("=")[0] for spec in args.lines]
    if args.reference not in labels:
        raise SystemExit(f"--reference {args.reference!r} is not one of {labels}")
    results = Results(rows)
    summary = {(c.arm, c.generation): c for c in results.cells_in(args.split, "single")}
    top1 = results.values(args.split)
    names = {"conf": "confidence", "secondary_mass": "mass ranks 2..K"}
    header = ["line", "gen", "n", f"top-1 ({args.split})", *(names.get(m, m) for m in shown),
              f"− {args.reference}", "p", "detectable (80 %)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label in labels:
        for generation in sorted(g for (a, g) in summary if a == label and (wanted is None or g in wanted)):
            entry = summary[(label, generation)]
            diff = None if label == args.reference else paired(
                top1[(label, generation, "single")], top1.get((args.reference, generation, "single"), {}))
            text = ["–", "–", "–"]
            if diff is not None:
                text = [difference(diff.mean, diff.std), p_cell(diff), detectable_cell(diff)]
            cells = [label, str(generation), str(entry.n), entry.format("top1"), *(entry.format(m) for m in shown)]
            print("| " + " | ".join(cells + text) + " |")


if __name__ == "__main__":
    main()
