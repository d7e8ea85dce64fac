"""Whole-process time of one `kdgen run`: 1 process with every core's thread against torchrun chains mode.

    python benchmarks/parallel_chains.py [--repeats N] [--processes P] [--config FILE] [KEY=VALUE ...]

On a machine with C cores it times, alternately:

- ``kdgen run`` as one process with ``OMP_NUM_THREADS=C``;
- ``torchrun --standalone --nproc_per_node=P -m kdgen run ... runtime.parallel=chains`` with
  ``OMP_NUM_THREADS=C/P`` per process (torchrun's own default is 1).

Each timing is the whole command, from start to exit: interpreter and torchrun start-up, data
loading in every process, training, evaluation and the report. Both runs train the same units,
and the script checks that their results.json rows agree in number. Prints each repeat, the
medians and their ratio, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def timed(command: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    began = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--one-thread", action="store_true",
                        help="also time one process with one thread (how well a process uses a second thread)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    config = ["--config", str(args.config)] if args.config else []
    common = [*config, *args.overrides, "--no-progress"]
    labels = ["one", "chains"] + (["one-1t"] if args.one_thread else [])
    times: dict[str, list[float]] = {label: [] for label in labels}
    # The pipeline alone (timing.json: from the checks to the report, without start-up and data loading).
    pipeline: dict[str, list[float]] = {label: [] for label in labels}
    rows: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for label in labels:
                out = Path(tmp) / f"{label}{repeat}"
                if label.startswith("one"):
                    command = [sys.executable, "-m", "kdgen", "run", "--out", str(out), *common]
                    threads = 1 if label == "one-1t" else cores
                else:
                    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={args.processes}", "-m", "kdgen", "run", "--out", str(out),
                               *common, "runtime.parallel=chains"]
                    threads = max(1, cores // args.processes)
                times[label].append(timed(command, threads))
                rows[label] = len(json.loads((out / "results.json").read_text())["rows"])
                pipeline[label].append(json.loads((out / "timing.json").read_text())["wall_time_s"])
                print(f"repeat {repeat}: {label:<6} {times[label][-1]:7.1f} s (pipeline {pipeline[label][-1]:.1f} s)",
                      flush=True)
    if len(set(rows.values())) != 1:
        sys.exit(f"the runs differ: {rows}")
    one, chains = statistics.median(times["one"]), statistics.median(times["chains"])
    print(f"\nmachine: {cores} cores, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; config: {' '.join(common)}")
    print(f"1 process x {cores} threads:        median {one:7.1f} s  ({', '.join(f'{t:.1f}' for t in times['one'])})")
    print(f"{args.processes} chains processes x {max(1, cores // args.processes)} thread: median {chains:7.1f} s  "
          f"({', '.join(f'{t:.1f}' for t in times['chains'])})")
    print(f"ratio (one / chains): {one / chains:.2f}x  ({rows['one']} result rows each)")
    if args.one_thread:
        single = statistics.median(times["one-1t"])
        print(f"1 process x 1 thread:         median {single:7.1f} s: a second thread makes one process "
              f"{single / one:.2f}x faster")
    inner = {label: statistics.median(values) for label, values in pipeline.items()}
    print("pipeline alone (timing.json: checks to report, without start-up and data loading), medians: "
          + ", ".join(f"{label} {value:.1f} s" for label, value in inner.items())
          + f"; one / chains {inner['one'] / inner['chains']:.2f}x")


if __name__ == "__main__":
    main()
