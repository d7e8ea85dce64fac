"""Throughput of kdgen's distillation step against a standard-recipe loop, with FLOPs and utilisation.

Workload (issue 5): a ResNet-20 student learning from a frozen ResNet-20 teacher, 100 classes, 32x32x3
synthetic images, batch 128. Measured in one run, on whatever device is there:

1. kdgen's step (resident uint8 data, batched crop/flip on the device, channels_last, the configured
   precision, teacher under inference mode), through kdgen's own training loop;
2. the same work through a standard recipe written here: a ``Dataset`` doing per-sample random crop and
   flip, a ``DataLoader``, fp32, teacher under ``no_grad``;
3. FLOPs per step (``torch.utils.flop_counter``) and utilisation against this machine's measured bf16
   and fp32 matmul peaks;
4. a whole pipeline (patriarch + one student, training and evaluation) both ways;
5. the same with ``runtime.compile=true`` (unless ``--no-compile``): the steady step rate, the seconds the
   first epoch spends compiling, the steps after which compiling pays, and the pipeline.

Step rates time a second epoch, after a first that absorbs warm-up and compilation.

Usage::

    python benchmarks/throughput.py                 # CPU defaults: short runs
    python benchmarks/throughput.py --steps 200 --pipeline-images 51200   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from kdgen.config import build_config
from kdgen.data import load_bundle
from kdgen.models import build
from kdgen.running.generations import GenerationsRunner
from kdgen.training.loop import TrainHooks, freeze_teacher, train_generation
from kdgen.training.objective import GenerationObjective
from kdgen.training.runtime import Runtime, native_bf16, resolve_device, resolve_precision

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
ARCH = "resnet20"  # --model changes it, to see how the bounds move with width


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of a square matmul: the machine's practical peak for ``dtype``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if device.type == "cuda" and count % 20:
            continue
        sync(device)
    sync(device)
    return 2 * size**3 * count / (time.perf_counter() - start)


def synthetic_config(num_train: int, precision: str, epochs: int = 1, arms: str = "strict", count: int = 1,
                     compile: bool = False):
    return build_config({
        "seeds": [0], "data": {"name": "synthetic", "num_train": num_train, "num_test": 1024, "image_size": 32,
                               "channels": 3, "num_classes": 100, "val_fraction": 0.1},
        "model": {"name": ARCH},
        "train": {"epochs": epochs, "batch_size": 128}, "runtime": {"precision": precision, "compile": compile},
        "generations": {"count": count, "arms": [arms]}, "tolerance": {"k": 5}, "log": {"progress": False}})


def kdgen_step_rate(steps: int, precision: str, device: torch.device, compile: bool = False) -> tuple[float, float]:
    """Images per second of kdgen's distillation step, measured through train_generation, and the
    seconds the first epoch took beyond a steady one (compilation, kernel selection, warm-up).

    Two epochs of ``steps`` steps: the second is timed, so nothing paid once is counted per step.
    """
    cfg = synthetic_config(int(128 * steps / 0.9) + 1, precision, epochs=2, compile=compile)
    data = load_bundle(cfg.data)
    teacher = freeze_teacher(build(ARCH, 100, 3).to(device, memory_format=torch.channels_last))
    objective = GenerationObjective.kd(0.7, 2.0)
    marks: list[float] = []

    def mark(_log) -> None:
        sync(device)
        marks.append(time.perf_counter())

    sync(device)
    start = time.perf_counter()
    runtime = Runtime(device=device, precision=precision, compile=compile)
    result = train_generation(build(ARCH, 100, 3), data, cfg.train, objective, runtime, TrainHooks(on_epoch=mark),
                              seed=0, teacher=teacher)
    first, second = marks[0] - start, marks[1] - marks[0]
    return result.steps // 2 * 128 / second, max(0.0, first - second)


class CropFlipDataset(Dataset):
    """The standard recipe: per-sample float conversion, pad-4 random crop and flip."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = (self.images[index].float() / 255 - self.mean) / self.std
        image = F.pad(image, (4, 4, 4, 4))
        top, left = torch.randint(0, 9, (2,)).tolist()
        image = image[:, top:top + 32, left:left + 32]
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return image, self.labels[index]


def standard_epoch(student, teacher, loader, optimizer, device, kd: bool) -> int:
    student.train()
    seen = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = student(images)
        loss = F.cross_entropy(logits, labels)
        if kd:
            with torch.no_grad():
                teacher_logits = teacher(images)
            kl = F.kl_div(F.log_softmax(logits / 2, 1), F.softmax(teacher_logits / 2, 1), reduction="batchmean")
            loss = 0.3 * loss + 0.7 * 4 * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen


def standard_loader(num_images: int, workers: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 100, (num_images,), generator=generator)
    return DataLoader(CropFlipDataset(images, labels), batch_size=128, shuffle=True, drop_last=True,
                      num_workers=workers)


def standard_step_rate(steps: int, device: torch.device, workers: int) -> float:
    teacher = build(ARCH, 100, 3).to(device).eval()
    student = build(ARCH, 100, 3).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    standard_epoch(student, teacher, standard_loader(128 * 3, workers), optimizer, device, kd=True)  # warm-up
    loader = standard_loader(128 * steps, workers)
    sync(device)
    start = time.perf_counter()
    seen = standard_epoch(student, teacher, loader, optimizer, device, kd=True)
    sync(device)
    return seen / (time.perf_counter() - start)


def step_flops(device: torch.device) -> float:
    """FLOPs of one distillation step: teacher forward + student forward and backward, batch 128."""
    teacher = build(ARCH, 100, 3).to(device).eval()
    student = build(ARCH, 100, 3).to(device)
    images = torch.randn(128, 3, 32, 32, device=device)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            teacher(images)
        student(images).sum().backward()
    return float(counter.get_total_flops())


def kdgen_pipeline_seconds(num_train: int, epochs: int, precision: str, compile: bool = False) -> float:
    cfg = synthetic_config(num_train, precision, epochs=epochs, compile=compile)
    start = time.perf_counter()
    data = load_bundle(cfg.data)
    GenerationsRunner(cfg, data, lambda: build(ARCH, 100, 3)).run()
    return time.perf_counter() - start


@torch.no_grad()
def standard_evaluate(model, images: torch.Tensor, device) -> None:
    model.eval()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for start in range(0, len(images), 128):
        model(((images[start:start + 128].float() / 255 - mean) / std).to(device))


def standard_pipeline_seconds(num_train: int, epochs: int, device: torch.device, workers: int) -> float:
    start = time.perf_counter()
    cfg = synthetic_config(num_train, "fp32", epochs=epochs)
    data = load_bundle(cfg.data)
    loader = DataLoader(CropFlipDataset(data.train.images, data.train.labels), batch_size=128, shuffle=True,
                        drop_last=True, num_workers=workers)
    teacher = None
    for kd in (False, True):
        model = build(ARCH, 100, 3).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        for _ in range(epochs):
            standard_epoch(model, teacher, loader, optimizer, device, kd=kd)
        standard_evaluate(model, data.val.images, device)
        standard_evaluate(model, data.test.images, device)
        teacher = model.eval()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20", help="architecture of teacher and student (issue 5: resnet20)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per step-rate measurement")
    parser.add_argument("--pipeline-images", type=int, default=5120, help="training images for the pipeline runs")
    parser.add_argument("--pipeline-epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the standard recipe")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure runtime.compile=true (step, compile time, pipeline)")
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="timing per matmul size for the peaks")
    parser.add_argument("--warm-compile-cache", action="store_true",
                        help="use inductor's usual on-disk cache instead of a fresh one (compile_seconds drops)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    global ARCH
    ARCH = args.model
    if args.compile and not args.warm_compile_cache:
        # A fresh inductor cache: compile_seconds is what a user's first compiled run pays.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdgen-inductor-")
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    # The practical peak is the best of a few sizes: small matmuls underuse the units, huge ones the caches.
    peak_sizes = (4096, 8192) if device.type == "cuda" else (1024, 2048, 4096)
    figures: dict[str, float | str] = {"model": ARCH, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                                       "threads": torch.get_num_threads(), "precision": precision}
    # bf16's peak only where bf16 is native: an emulated 4096² bf16 matmul takes tens of seconds, and no
    # kdgen run uses bf16 there (runtime.precision auto).
    dtypes = (("peak_bf16_tflops", torch.bfloat16), ("peak_fp32_tflops", torch.float32)) if native_bf16(device) \
        else (("peak_fp32_tflops", torch.float32),)
    for name, dtype in dtypes:
        figures[name] = max(matmul_peak(dtype, device, n, args.peak_seconds) for n in peak_sizes) / 1e12
    figures["flops_per_step_g"] = step_flops(device) / 1e9
    figures["kdgen_img_s"], _ = kdgen_step_rate(args.steps, precision, device)
    figures["kdgen_fp32_img_s"], _ = kdgen_step_rate(args.steps, "fp32", device)
    figures["standard_img_s"] = standard_step_rate(args.steps, device, args.workers)
    figures["step_ratio"] = figures["kdgen_img_s"] / figures["standard_img_s"]
    if args.compile:
        # Compiled: the steady rate, and what the first epoch paid for compiling (student + teacher).
        figures["kdgen_compiled_img_s"], figures["compile_seconds"] = kdgen_step_rate(args.steps, precision, device,
                                                                                      compile=True)
        figures["compiled_step_ratio"] = figures["kdgen_compiled_img_s"] / figures["standard_img_s"]
        saved_per_step = 128 / figures["kdgen_img_s"] - 128 / figures["kdgen_compiled_img_s"]
        figures["compile_pays_after_steps"] = (figures["compile_seconds"] / saved_per_step if saved_per_step > 0
                                               else float("inf"))
    best = max(figures["kdgen_img_s"], figures.get("kdgen_compiled_img_s", 0.0))
    peak = figures["peak_bf16_tflops"] if precision == "bf16" else figures["peak_fp32_tflops"]
    figures["kdgen_tflops"] = best / 128 * figures["flops_per_step_g"] / 1e3
    figures["utilisation_vs_peak"] = figures["kdgen_tflops"] / peak
    figures["kdgen_pipeline_s"] = kdgen_pipeline_seconds(args.pipeline_images, args.pipeline_epochs, precision)
    if args.compile:
        # Dynamo's in-memory graphs are dropped, so the pipeline pays tracing again; inductor's disk cache,
        # filled by the step measurement above, stays warm, as on a user's second run.
        torch._dynamo.reset()
        figures["kdgen_compiled_pipeline_s"] = kdgen_pipeline_seconds(args.pipeline_images, args.pipeline_epochs,
                                                                      precision, compile=True)
    figures["standard_pipeline_s"] = standard_pipeline_seconds(args.pipeline_images, args.pipeline_epochs, device,
                                                               args.workers)
    figures["pipeline_ratio"] = figures["standard_pipeline_s"] / figures["kdgen_pipeline_s"]
    if args.compile:
        figures["compiled_pipeline_ratio"] = figures["standard_pipeline_s"] / figures["kdgen_compiled_pipeline_s"]
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
