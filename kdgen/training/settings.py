"""The sections of the config that the training layer owns: ``train`` (one generation's recipe) and ``runtime``
(how a run executes). :mod:`kdgen.config` composes them; training reads them without importing the config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from kdgen.settings import Settings


class TrainConfig(Settings):
    """The per-generation recipe: every generation (and every baseline model) uses it afresh."""

    # 8 epochs x 2 students keep the default digits run well under a minute on a 2-core AVX2 CPU in fp32
    # (docs/guide/getting-started.md, "The default run"); recipes set their own.
    epochs: int = Field(8, ge=1)
    # Images per optimizer step (full batches only; under data mode, split over the processes).
    batch_size: int = Field(128, ge=1)
    # SGD's peak learning rate, momentum and Nesterov momentum.
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    # L2 decay of weights (not of BatchNorm parameters or biases).
    weight_decay: float = Field(5e-4, ge=0.0)
    # Learning-rate schedule per step: cosine to zero, step decay (×gamma at each milestone), or constant.
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    # step schedule: where the rate drops, as fractions of the epochs, and by what factor.
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    # Linear warm-up from zero over this many epochs (fractions allowed).
    warmup_epochs: float = Field(0.0, ge=0.0)
    # Images per forward pass when evaluating (no effect on results).
    eval_batch_size: int = Field(1024, ge=1)

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < m < 1.0 for m in value) or value != sorted(value):
            raise ValueError("milestones are increasing fractions of the epochs, each in (0, 1)")
        return value


class RuntimeConfig(Settings):
    """How a run executes, not what it computes: may differ on ``--resume`` (e.g. moved to a GPU)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16
    # or AMX), else fp32. Measured on the digits default: 2x faster, accuracy within seed noise
    # (docs/guide/speed.md). An explicit bf16 on a CPU without native bf16 is warned about: it is emulated there.
    # fp16: float16 autocast with a gradient scaler (GPUs without bf16); never chosen by auto.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # NHWC activations: oneDNN and cuDNN convolutions are faster in this layout (1.5x measured on
    # the 2-core CPU for the small CNN, more with bf16).
    channels_last: bool = True
    # torch.compile for the student and the (BatchNorm-folded) teacher. Off by default: on the 2-core
    # CPU it pays only for runs long enough to amortise the first compile (docs/performance.md).
    compile: bool = False
    # DataLoader workers for streamed image folders and streamed evaluation.
    workers: int = Field(4, ge=0, le=64)
    # Under torchrun: "chains" spreads whole (seed, arm) chains over the processes, "data" trains each
    # model on all of them (DistributedDataParallel). See kdgen.training.parallel and docs/guide/parallel.md.
    parallel: str = "none"
    # data mode: BatchNorm statistics over the whole global batch (as one process computes them).
    sync_batchnorm: bool = True
    # Reproducible kernels where PyTorch has them (cuDNN deterministic, no autotuning, deterministic
    # algorithms, warn where an op has none): equal results run to run on one GPU, at some speed (docs/guide/parallel.md,
    # "On GPUs"). CPU runs are deterministic either way. Off: cuDNN picks the fastest kernels.
    deterministic: bool = False
    # An unfinished unit's training state is saved after an epoch once this many seconds have passed since the
    # last save (0: after every epoch), and always on a stop (SIGTERM, Ctrl-C): saving (a copy of the whole
    # state to the host, fsynced) then costs a bounded share of the time on any device. A SIGKILL loses at most
    # this much training; --resume gives the same results either way.
    save_every_s: float = Field(30.0, ge=0.0)
    # With a shared unit cache (--units): a process training a unit renews its claim on it every lease_s / 3
    # seconds; a claim not renewed for lease_s seconds (its process was killed, or its machine lost) is taken over
    # by a process waiting for the unit (docs/guide/parallel.md, "Sharing a unit cache"). Under torchrun, a process
    # silent for lease_s seconds (frozen, its machine lost) ends the others' wait for it as a lost process.
    # Not part of unit keys.
    lease_s: float = Field(60.0, gt=0)

    @field_validator("parallel")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        from kdgen.training import parallel

        if value not in parallel.names():
            raise ValueError(f"unknown mode {value!r}; choose from {', '.join(parallel.names())}")
        return value
