"""How a run executes: device, precision, memory layout, compilation, loader workers, process rank.

:class:`Runtime` is the resolved form of the config's ``runtime`` section. It never changes *what*
is computed (beyond float rounding), so a run may be resumed under a different runtime, and
``resume`` ignores the whole section.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Iterator

import torch

from kdgen.errors import UserError
from kdgen.training.parallel import OneProcess, ParallelMode
from kdgen.training.settings import RuntimeConfig

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) at or above which bf16 convolutions run natively.
_NATIVE_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                     "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "ALL"}
# Measured with benchmarks/bf16_emulation.py on a 2-core AMD EPYC (AVX512-BF16 hardware capped to AVX2
# kernels, ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, one thread): a training step in bf16 took
# 10.3x (small CNN, 538 ms) and 11.6x (ResNet-20, batch 128: 3.6 s) the fp32 step.
EMULATED_BF16_SLOWDOWN = "measured 10-12x slower than fp32 (benchmarks/bf16_emulation.py)"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("runtime.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The activation (and weight) layout ``runtime.channels_last`` asks for."""
    return torch.channels_last if channels_last else torch.contiguous_format


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512-BF16 or AMX), as PyTorch and oneDNN
    are allowed to use it: the ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` caps count."""
    cpu = torch.cpu
    hardware = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    capped = torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX") or \
        os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() not in _NATIVE_BF16_ISAS
    return bool(hardware) and not capped


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where bf16 autocast is native on ``device``, else ``fp32``."""
    if name != "auto":
        return name
    return "bf16" if native_bf16(device) else "fp32"


def native_bf16(device: torch.device) -> bool:
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()


def autocast(device_type: str, precision: str) -> torch.autocast:
    """The autocast a resolved ``precision`` means on a device of ``device_type``: bf16 or fp16, else disabled.
    Training, evaluation, ``kdgen.load`` and ``kdgen transfer`` all run a model under this one."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


def warn_if_emulated(precision: str, device: torch.device) -> None:
    """An explicit ``bf16`` where it is not native is kept (the user asked for it), with one line of warning."""
    if precision == "bf16" and not native_bf16(device):
        print(f"kdgen: warning: runtime.precision=bf16 on a {device.type.upper()} without native bf16 is emulated, "
              f"{EMULATED_BF16_SLOWDOWN}; use runtime.precision=auto", file=sys.stderr)


@dataclass(frozen=True)
class Runtime:
    """Resolved runtime settings, handed to the training loop and to evaluation."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # "fp32", "bf16" or "fp16", already resolved
    channels_last: bool = True
    compile: bool = False
    workers: int = 0
    deterministic: bool = False
    save_every_s: float = 0.0  # how often an unfinished unit's training state is saved (see the config)
    # How the processes torchrun started share the run (kdgen.training.parallel); one process by default.
    parallel: ParallelMode = field(default_factory=OneProcess)

    @classmethod
    def from_config(cls, runtime_cfg: RuntimeConfig, parallel: ParallelMode | None = None) -> "Runtime":
        """From the config's ``runtime`` section (``auto`` device and precision resolved here).

        Under torchrun on GPUs, each process takes the GPU of its local rank (``parallel.device``).
        """
        device = resolve_device(runtime_cfg.device)
        if parallel is not None and device.type == "cuda":
            device = parallel.device
        if parallel is None or parallel.is_leader:
            warn_if_emulated(runtime_cfg.precision, device)
        return cls(device=device, precision=resolve_precision(runtime_cfg.precision, device),
                   channels_last=runtime_cfg.channels_last, compile=runtime_cfg.compile, workers=runtime_cfg.workers,
                   deterministic=runtime_cfg.deterministic, save_every_s=runtime_cfg.save_every_s,
                   parallel=parallel if parallel is not None else OneProcess())

    @property
    def memory_format(self) -> torch.memory_format:
        return memory_format(self.channels_last)

    @contextlib.contextmanager
    def kernels(self) -> Iterator[None]:
        """The kernel choices of kdgen's own training, restored afterwards (a user's process keeps its own).

        Deterministic: cuDNN's deterministic kernels without autotuning, and PyTorch's deterministic
        algorithms (a warning, not an error, for an op that has none). Otherwise, on CUDA, cuDNN autotuning:
        shapes are fixed within a run (full batches only), so its one-off search pays back many times.
        """
        cudnn = torch.backends.cudnn
        before = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
                  torch.is_deterministic_algorithms_warn_only_enabled())
        if self.deterministic:
            # cuBLAS needs a fixed workspace for reproducible matrix products; read when CUDA starts.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            cudnn.benchmark, cudnn.deterministic = False, True
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif self.device.type == "cuda":
            cudnn.benchmark = True
        try:
            yield
        finally:
            cudnn.benchmark, cudnn.deterministic = before[0], before[1]
            torch.use_deterministic_algorithms(before[2], warn_only=before[3])

    def autocast(self) -> torch.autocast:
        """bf16 or fp16 autocast when ``precision`` asks for it, a disabled one otherwise."""
        return autocast(self.device.type, self.precision)

    def grad_scaler(self) -> "torch.amp.GradScaler | None":
        """fp16 needs its loss scaled (small gradients would underflow to zero); None for fp32 and bf16."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
