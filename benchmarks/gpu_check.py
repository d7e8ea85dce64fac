"""The first thing to run on a GPU: kdgen's CUDA path end to end, then what it is worth in throughput.

Checks (each a ``kdgen run`` in a fresh process, as a user runs it; tiny synthetic data):

1. every precision: fp32, bf16 (where the GPU has it) and fp16 (gradient scaler) train and give finite results;
2. exact resume: a run stopped by SIGTERM after its first saved state and resumed gives the rows of an
   uninterrupted run (``runtime.deterministic=true``, so both use the same kernels);
3. parity with the CPU: the same runs on the CPU, cell by cell, against the spread over seeds;
4. the parallel modes that fit one GPU: ``chains`` with two processes sharing the GPU (equal rows to one
   process) and ``data`` with one process;

then figures: images/s of the distillation step (ResNet-20 student and teacher, CIFAR-shaped data,
batch 128) next to the standard-recipe loop of benchmarks/throughput.py, and models/hour for the
converged Fashion-MNIST recipe (CNN, 1,000 28x28 images, 60 epochs, batch 64; synthetic images of that
shape, as the machine may have no data) with 1, 2 and 4 processes sharing the GPU (``chains``).

Under 5 minutes on an H100. Without a GPU it says so in one line and exits 0. Usage::

    python benchmarks/gpu_check.py [--out docs/benchmarks/gpu_check.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TINY = ["data.name=synthetic", "data.num_train=2048", "data.num_test=512", "data.image_size=16", "data.channels=3",
        "data.num_classes=10", "model.name=cnn", "train.epochs=4", "train.batch_size=64", "seeds=[0,1,2]",
        "generations.count=2", "generations.arms=[strict,tolerant]", "--no-progress"]
# The converged Fashion-MNIST recipe (configs/fashion-mnist-converged.yaml) on synthetic images of its shape.
CONVERGED = ["data.name=synthetic", "data.num_train=1112", "data.num_test=1000", "data.image_size=28",
             "data.channels=1", "data.num_classes=10", "data.val_fraction=0.1", "model.name=cnn", "train.epochs=60",
             "train.batch_size=64", "train.lr=0.1", "train.schedule=cosine", "generations.count=0",
             "generations.arms=[strict]", "--no-progress"]


def kdgen_run(out: Path, *args: str, processes: int = 1, timeout: float = 300) -> tuple[int, float, str]:
    """``kdgen run --out out args`` (under torchrun with ``processes``): exit code, seconds, stderr's tail."""
    command = [sys.executable, "-m", "kdgen", "run", "--out", str(out), *args]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "kdgen", "run", "--out", str(out), *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    return done.returncode, time.perf_counter() - start, done.stderr[-600:]


def rows(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]


def top1_by_cell(found: list[dict], split: str = "test") -> dict[tuple, dict[int, float]]:
    cells: dict[tuple, dict[int, float]] = {}
    for row in found:
        if row["split"] == split:
            cells.setdefault((row["arm"], row["generation"], row["kind"]), {})[row["seed"]] = row["top1"]
    return cells


def parity(gpu: list[dict], cpu: list[dict]) -> tuple[float, float]:
    """The largest |GPU − CPU| mean top-1 over cells, and the smallest seed std of those cells (points)."""
    a, b = top1_by_cell(gpu), top1_by_cell(cpu)
    gaps, spreads = [], []
    for cell in a.keys() & b.keys():
        values = list(a[cell].values()) + list(b[cell].values())
        gaps.append(abs(sum(a[cell].values()) / len(a[cell]) - sum(b[cell].values()) / len(b[cell])))
        mean = sum(values) / len(values)
        spreads.append(math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)))
    return max(gaps, default=math.nan), min(spreads, default=math.nan)


def stopped_and_resumed(out: Path, args: list[str]) -> tuple[bool, str]:
    """Start a run, SIGTERM it once a training state is saved, resume it; (finished, message)."""
    command = [sys.executable, "-m", "kdgen", "run", "--out", str(out), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120

    def saved() -> bool:
        return (out / "state").is_dir() and any((out / "state").glob("*.safetensors"))

    while not saved():
        if process.poll() is not None or time.monotonic() > deadline:
            return False, "the run ended before a state was saved"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    if process.wait(timeout=120) != 130:
        return False, f"SIGTERM: exit {process.returncode}: {process.stderr.read()[-300:]}"
    code, _, err = kdgen_run(out, *args, "--resume")
    return code == 0, err


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.failed += not ok
        self.say(f"- {'PASS' if ok else 'FAIL'} {name}: {detail}")

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--steps", type=int, default=100, help="timed steps of the step-rate figures")
    parser.add_argument("--only", choices=["all", "chains"], default="all",
                        help="chains: only the checks and figures of several processes sharing the GPU (a rerun)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to check")
        return 0
    report = Report()
    name = torch.cuda.get_device_name()
    report.say(f"# kdgen gpu_check: {name}, {torch.cuda.device_count()} GPU(s)\n")
    report.say(f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}, "
               f"{os.cpu_count()} CPU cores; {time.strftime('%Y-%m-%d %H:%M')}\n")
    work = Path(tempfile.mkdtemp(prefix="kdgen-gpu-check-"))
    start = time.perf_counter()
    try:
        report.say("## Checks\n")
        precisions = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        if args.only == "chains":
            precisions = []
        for precision in precisions:
            code, seconds, err = kdgen_run(work / precision, *TINY, f"runtime.precision={precision}")
            finite = code == 0 and all(math.isfinite(r["nll"]) for r in rows(work / precision))
            report.check(f"precision {precision}", finite, f"{seconds:.1f} s" if code == 0 else err)
        exact = [*TINY, "runtime.deterministic=true", "runtime.precision=fp32", "runtime.save_every_s=0"]
        code, _, err = kdgen_run(work / "exact", *exact)
        if code != 0:
            report.check("reference run (fp32, deterministic)", False, err)
            return 1
        if args.only == "all":
            single_process_checks(report, work, exact)
        code, seconds, err = kdgen_run(work / "chains", *exact, "runtime.parallel=chains", processes=2)
        same = code == 0 and rows(work / "chains") == rows(work / "exact")
        report.check("chains, 2 processes on one GPU, equals 1 process", same, f"{seconds:.1f} s" if code == 0 else err)
        if args.only == "all":
            code, seconds, err = kdgen_run(work / "data", *TINY, "runtime.parallel=data", processes=1)
            report.check("data mode, 1 process", code == 0, f"{seconds:.1f} s" if code == 0 else err)

        report.say("\n## Figures\n")
        if args.only == "all":
            step_rate_figure(report, args.steps)
        for processes in (1, 2, 4):
            seeds = f"seeds=[{','.join(str(s) for s in range(processes))}]"
            extra = ["runtime.parallel=chains"] if processes > 1 else []
            code, seconds, err = kdgen_run(work / f"converged-{processes}", *CONVERGED, seeds, *extra,
                                           processes=processes)
            if code == 0:
                report.say(f"- converged Fashion-MNIST recipe, {processes} process(es) on one GPU: {processes} models "
                           f"in {seconds:.1f} s (start-up included): {3600 * processes / seconds:,.0f} models/hour")
            else:
                report.check(f"converged recipe, {processes} processes", False, err)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.say(f"\n{report.failed} check(s) failed; {time.perf_counter() - start:.0f} s in all.")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(report.lines) + "\n", encoding="utf-8")
    return 1 if report.failed else 0


def single_process_checks(report: Report, work: Path, exact: list[str]) -> None:
    """Exact resume, deterministic repeats and CPU parity, against the run in ``work / "exact"``."""
    finished, message = stopped_and_resumed(work / "resumed", exact)
    same = finished and rows(work / "resumed") == rows(work / "exact")
    report.check("SIGTERM then --resume equals an uninterrupted run", same, "rows identical" if same else message)
    code, _, err = kdgen_run(work / "again", *exact)
    repeat = code == 0 and rows(work / "again") == rows(work / "exact")
    report.check("runtime.deterministic=true repeats bit for bit", repeat, "rows identical" if repeat else err)
    code, _, err = kdgen_run(work / "cpu", *exact, "runtime.device=cpu", timeout=900)
    if code == 0:
        gap, spread = parity(rows(work / "exact"), rows(work / "cpu"))
        report.check("GPU against CPU (fp32)", gap <= max(spread, 0.5),
                     f"largest |mean top-1 difference| {gap:.2f} points; smallest seed std {spread:.2f}")
    else:
        report.check("GPU against CPU (fp32)", False, err)


def step_rate_figure(report: Report, steps: int) -> None:
    """Images/s of kdgen's distillation step next to the standard-recipe loop (benchmarks/throughput.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from throughput import kdgen_step_rate, standard_step_rate

    device = torch.device("cuda")
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    kdgen_img_s, _ = kdgen_step_rate(steps, precision, device)
    standard_img_s = standard_step_rate(steps, device, workers=4)
    report.say(f"- distillation step, ResNet-20 on 32x32x3, batch 128: kdgen {kdgen_img_s:,.0f} img/s ({precision}),"
               f" standard-recipe loop {standard_img_s:,.0f} img/s (fp32, DataLoader, 4 workers): "
               f"{kdgen_img_s / standard_img_s:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
