"""Profile kdgen's distillation step (ResNet-20 from a ResNet-20 teacher, 100 classes, 32x32, batch 128).

Prints the operators that take the most time, so an optimisation starts from evidence, and the
utilisation ceiling the convolutions alone set: the step's FLOPs over the time spent in convolution
kernels, against the measured matmul peak. If that ceiling is below a target, no amount of fusing
the elementwise work (BatchNorm, ReLU, adds) can reach the target::

    python benchmarks/profile_step.py --steps 10 --rows 20 [--compile]
"""

from __future__ import annotations

import argparse

import torch
from throughput import matmul_peak, step_flops, synthetic_config  # benchmarks/ is on sys.path when run as a script
from torch.profiler import ProfilerActivity, profile

from kdgen.data import load_bundle
from kdgen.models import build
from kdgen.training.loop import freeze_teacher, train_generation
from kdgen.training.objective import GenerationObjective
from kdgen.training.runtime import Runtime, resolve_device, resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="profile with runtime.compile=true")
    args = parser.parse_args()
    device = resolve_device("auto")
    precision = resolve_precision(args.precision, device)
    cfg = synthetic_config(int(128 * args.steps / 0.9) + 1, precision, compile=args.compile)
    data = load_bundle(cfg.data)
    teacher = freeze_teacher(build("resnet20", 100, 3).to(device, memory_format=torch.channels_last))
    objective = GenerationObjective.kd(0.7, 2.0)
    runtime = Runtime(device=device, precision=precision, compile=args.compile)
    train_generation(build("resnet20", 100, 3), data, cfg.train, objective, runtime, seed=1, teacher=teacher)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        steps = train_generation(build("resnet20", 100, 3), data, cfg.train, objective, runtime, seed=0,
                                 teacher=teacher).steps
    sort = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"device {device}, precision {precision}, compile {args.compile}, {steps} steps")
    events = prof.key_averages()
    print(events.table(sort_by=sort, row_limit=args.rows))
    if device.type == "cpu":
        total = sum(e.self_cpu_time_total for e in events) / 1e6 / steps
        conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key) / 1e6 / steps
        flops = step_flops(device)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        peak = max(matmul_peak(dtype, device, n) for n in (1024, 2048, 4096))
        print(f"per step: {total * 1e3:.1f} ms, of which convolution kernels {conv * 1e3:.1f} ms ({conv / total:.0%})")
        print(f"achieved {flops / total / 1e12:.3f} TFLOP/s = {flops / total / peak:.1%} of the {precision} peak "
              f"({peak / 1e12:.2f} TFLOP/s); convolutions alone run at {flops / conv / 1e12:.3f} TFLOP/s, a ceiling "
              f"of {flops / conv / peak:.1%} even if all other work took no time")


if __name__ == "__main__":
    main()
