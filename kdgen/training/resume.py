"""Exact resume: everything a generation's training needs to continue from the end of an epoch.

The state is one safetensors file (tensors) whose metadata holds the rest as JSON, written
atomically, so a kill at any instant leaves the previous epoch's state or the new one. Nothing
here unpickles: optimizer and schedule states are split into tensors and JSON.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from kdgen.checkpoint import atomic_write, read_safetensors
from kdgen.errors import CheckpointError

FORMAT = "kdgen-epoch-state-1"


@dataclass
class EpochState:
    """Training state after ``epoch`` completed epochs (plus ``step`` steps of the next) of one unit.

    For a mid-epoch state (``step > 0``, written when a run is stopped by a signal), ``generator``
    is the state at the *start* of the interrupted epoch: resuming replays that epoch's random draws
    for the first ``step`` batches without training on them, so the rest of the epoch sees exactly
    the batches it would have seen. ``loss_sums`` and ``first_bad_step`` are the epoch's running
    bookkeeping at that point.
    """

    unit: str
    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    generator: torch.Tensor
    torch_rng: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    loss_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    first_bad_step: int = -1
    # The state of the generation's loss module, when it owns parameters or buffers (a method's head).
    loss_module: dict[str, torch.Tensor] = field(default_factory=dict)
    # The training device's default CUDA generator (dropout, CUDA-side random ops), when it ran on a GPU.
    cuda_rng: torch.Tensor | None = None
    # fp16's gradient scaler (its scale and growth tracker), when the unit trains in fp16.
    scaler: dict[str, Any] = field(default_factory=dict)


def capture(unit: str, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
            schedule: torch.optim.lr_scheduler.LRScheduler, generator_state: torch.Tensor,
            history: list[Any], *, step: int = 0, loss_sums: dict[str, torch.Tensor] | None = None,
            first_bad_step: int = -1, loss_module: nn.Module | None = None,
            device: torch.device = torch.device("cpu"), scaler: torch.amp.GradScaler | None = None) -> EpochState:
    """Snapshot (copies, on the CPU) of everything that determines the rest of the training, the random
    generators included: the batch generator, the CPU's default one and, on a GPU, ``device``'s."""
    return EpochState(
        unit=unit, epoch=epoch,
        model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        optimizer=copy.deepcopy(optimizer.state_dict()),
        schedule={k: v for k, v in schedule.state_dict().items() if k != "lr_lambdas"},
        generator=generator_state.clone(), torch_rng=torch.get_rng_state().clone(),
        history=[asdict(h) if not isinstance(h, dict) else h for h in history],
        step=step, loss_sums={k: v.detach().cpu().clone() for k, v in (loss_sums or {}).items()},
        first_bad_step=first_bad_step,
        loss_module=({k: v.detach().cpu().clone() for k, v in loss_module.state_dict().items()}
                     if loss_module is not None else {}),
        cuda_rng=torch.cuda.get_rng_state(device).clone() if device.type == "cuda" else None,
        scaler=dict(scaler.state_dict()) if scaler is not None else {},
    )


def restore(state: EpochState, model: nn.Module, optimizer: torch.optim.Optimizer,
            schedule: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
            loss_module: nn.Module | None = None, device: torch.device = torch.device("cpu"),
            scaler: torch.amp.GradScaler | None = None) -> None:
    """Load ``state`` into freshly built training objects and the random generators. A CUDA generator's state
    is restored on a GPU only (a run may resume on another device; its CUDA-side draws then differ)."""
    model.load_state_dict(state.model)
    if loss_module is not None and state.loss_module:
        loss_module.load_state_dict(state.loss_module)
    optimizer.load_state_dict(state.optimizer)
    schedule.load_state_dict({**schedule.state_dict(), **state.schedule})
    generator.set_state(state.generator)
    torch.set_rng_state(state.torch_rng)
    if state.cuda_rng is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda_rng, device)
    if scaler is not None and state.scaler:
        scaler.load_state_dict(state.scaler)


def save_state(path: Path, state: EpochState) -> None:
    """Write ``state`` atomically as safetensors + JSON metadata."""
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.contiguous() for k, v in state.model.items()}
    optim_meta: dict[str, dict[str, Any]] = {}
    for index, values in state.optimizer["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                optim_meta.setdefault(str(index), {})[key] = value
    tensors["rng.generator"] = state.generator
    tensors["rng.torch"] = state.torch_rng
    if state.cuda_rng is not None:
        tensors["rng.cuda"] = state.cuda_rng
    tensors.update({f"sums.{k}": v.reshape(()).contiguous() for k, v in state.loss_sums.items()})
    tensors.update({f"loss.{k}": v.contiguous() for k, v in state.loss_module.items()})
    meta = {"format": FORMAT, "unit": state.unit, "epoch": state.epoch, "step": state.step,
            "first_bad_step": state.first_bad_step,
            "param_groups": state.optimizer["param_groups"], "optimizer_scalars": optim_meta,
            "schedule": state.schedule, "history": state.history, "scaler": state.scaler}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"kdgen": json.dumps(meta)}))


def load_state(path: Path) -> EpochState:
    """Read a state written by :func:`save_state`; anything else is a :class:`CheckpointError`."""
    tensors, raw_meta = read_safetensors(path, "kdgen training state")
    try:
        meta = json.loads(raw_meta["kdgen"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: not a kdgen training state (no kdgen metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a kdgen training state (unknown format)")
    optimizer_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    for index, values in meta["optimizer_scalars"].items():
        optimizer_state.setdefault(int(index), {}).update(values)
    return EpochState(
        unit=meta["unit"], epoch=int(meta["epoch"]),
        model={k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")},
        optimizer={"state": optimizer_state, "param_groups": meta["param_groups"]},
        schedule=meta["schedule"], generator=tensors["rng.generator"], torch_rng=tensors["rng.torch"],
        history=meta["history"], step=int(meta.get("step", 0)), first_bad_step=int(meta.get("first_bad_step", -1)),
        loss_sums={k.removeprefix("sums."): v for k, v in tensors.items() if k.startswith("sums.")},
        loss_module={k.removeprefix("loss."): v for k, v in tensors.items() if k.startswith("loss.")},
        cuda_rng=tensors.get("rng.cuda"), scaler=meta.get("scaler") or {},
    )
