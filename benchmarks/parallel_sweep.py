"""Whole-process time of one `kdgen sweep`: 1 process with every core's thread against torchrun chains mode.

    python benchmarks/parallel_sweep.py [--repeats N] [--processes P] [--grid KEY=V1,V2 ...] [KEY=VALUE ...]

The default sweep is the one of issue 28: the digits data (the embedded default), ``tolerance.eta`` at two
points, 4 seeds, the strict and tolerant arms, patriarch + 2 generations of 40 epochs each. On a machine with
C cores it times, alternately:

- ``kdgen sweep`` as one process with ``OMP_NUM_THREADS=C``;
- ``torchrun --standalone --nproc_per_node=P -m kdgen sweep ...`` with ``OMP_NUM_THREADS=C/P`` per process.

Each timing is the whole command, from start to exit (torchrun and interpreter start-up, data loading, training,
the reports). The script checks that both sweeps wrote the same rows for every point, and prints each repeat,
the medians, their ratio and the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from parallel_chains import timed  # noqa: E402  (a script beside this one: the same timing)

GRID = ["tolerance.eta=0.3,0.6"]
OVERRIDES = ["seeds=[0,1,2,3]", "generations.arms=[strict,tolerant]", "generations.count=2", "train.epochs=40"]


def cpu_model() -> str:
    """The CPU's model name (lscpu's "Model name"), or the platform's answer."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def point_rows(out: Path) -> dict[str, list[dict]]:
    return {p.name: json.loads((p / "results.json").read_text())["rows"] for p in sorted((out / "runs").iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--grid", action="append", help=f"a swept key (default: {' '.join(GRID)})")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"default: {' '.join(OVERRIDES)}")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    per_process = max(1, cores // args.processes)
    sweep = [arg for axis in (args.grid or GRID) for arg in ("--grid", axis)]
    common = [*sweep, *(args.overrides or OVERRIDES), "--no-progress"]
    labels = {"one": f"1 process x {cores} threads", "torchrun": f"{args.processes} processes x {per_process} thread"}
    times: dict[str, list[float]] = {label: [] for label in labels}
    rows: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for label in labels:
                out = Path(tmp) / f"{label}{repeat}"
                kdgen = ["-m", "kdgen", "sweep", "--out", str(out), *common]
                if label == "one":
                    command, threads = [sys.executable, *kdgen], cores
                else:
                    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={args.processes}", *kdgen]
                    threads = per_process
                times[label].append(timed(command, threads))
                rows[label] = point_rows(out)
                print(f"repeat {repeat}: {labels[label]:<26} {times[label][-1]:7.1f} s", flush=True)
    if rows["one"].keys() != rows["torchrun"].keys() or \
            any(len(rows["one"][p]) != len(rows["torchrun"][p]) for p in rows["one"]):
        sys.exit("the sweeps wrote different points or row counts")
    # Equal rows need equal thread counts (a matmul's sums depend on the split); with unequal counts, say so.
    same = rows["one"] == rows["torchrun"]
    one, spread = statistics.median(times["one"]), statistics.median(times["torchrun"])
    print(f"\nCPU: {cpu_model()}, {cores} cores; torch {torch.__version__}")
    print(f"sweep: {' '.join(common)}")
    for label, title in labels.items():
        print(f"{title:<26} median {statistics.median(times[label]):7.1f} s  "
              f"({', '.join(f'{t:.1f}' for t in times[label])})")
    print(f"ratio (one / torchrun): {one / spread:.2f}x; rows "
          + ("identical" if same else "equal in number (values differ in rounding: unequal thread counts)"))


if __name__ == "__main__":
    main()
