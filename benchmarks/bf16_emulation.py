"""What bf16 autocast costs where the CPU has no native bf16: the figure behind ``runtime.precision: auto``.

Times a training step (forward, backward, SGD) of a registry model in fp32 and in bf16 autocast, once
with the CPU as it is and once capped to AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2``: what a CPU without AVX512-BF16/AMX runs). Each measurement is a fresh
subprocess, because the caps are read when PyTorch and oneDNN load. Prints the step times and the
ratios::

    python benchmarks/bf16_emulation.py [--model cnn] [--batch 64] [--size 28] [--channels 1] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

STEP = r"""
import json, sys, time, torch
from kdgen.models import build
model_name, batch, size, channels, steps, precision = sys.argv[1:7]
batch, size, channels, steps = int(batch), int(size), int(channels), int(steps)
torch.manual_seed(0)
model = build(model_name, 10, channels).to(memory_format=torch.channels_last)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
images = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 10, (batch,))
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"ms": 1000 * (time.perf_counter() - start) / steps,
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""

CAPS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def measure(args: argparse.Namespace, caps: dict[str, str], precision: str) -> dict[str, float]:
    env = {**os.environ, **caps}
    steps = args.steps if precision == "fp32" or not caps else max(2, args.steps // 10)  # emulated bf16 is slow
    out = subprocess.run([sys.executable, "-c", STEP, args.model, str(args.batch), str(args.size), str(args.channels),
                          str(steps), precision], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import torch

    print(f"model {args.model}, batch {args.batch} x {args.channels} x {args.size} x {args.size}, "
          f"{torch.get_num_threads()} threads")
    times = {}
    for name, caps in CAPS.items():
        for precision in ("fp32", "bf16"):
            result = measure(args, caps, precision)
            times[(name, precision)] = result["ms"]
            print(f"{name:6s} ({result['capability']:7s}) {precision}: {result['ms']:9.1f} ms/step")
    print(f"bf16 / fp32, native kernels: {times[('native', 'bf16')] / times[('native', 'fp32')]:.2f}x")
    print(f"bf16 / fp32, AVX2 kernels (emulated bf16): {times[('avx2', 'bf16')] / times[('avx2', 'fp32')]:.1f}x")


if __name__ == "__main__":
    main()
