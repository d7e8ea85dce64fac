"""The training loop: one generation (or one baseline model), from a fresh model to trained weights.

Everything a generation needs is created here, afresh: optimizer, LR schedule and RNG stream.
Nothing survives from one call to the next, which rules out the born-again bug of a student
inheriting its teacher's optimizer state or half-decayed schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from kdgen.augment import Normalizer
from kdgen.batches import TrainBatches
from kdgen.config import TrainConfig
from kdgen.data.base import DataBundle
from kdgen.errors import UserError
from kdgen.fast import check_compile_supported, fold_batchnorm, maybe_compile
from kdgen.objective import GenerationObjective
from kdgen.resume import EpochState, capture, restore
from kdgen.runtime import Runtime


class StopFlag:
    """Set (from a signal handler, or another thread) to stop training at the next step boundary.

    Stopping between steps, not wherever the signal lands, keeps the saved state consistent: the
    optimizer step, the schedule step and the loss bookkeeping of the last step all happened.
    The command line owns one per run; nothing about it is global.
    """

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request; its state up to the last finished step was handed to ``on_state``."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite (usually a learning rate that is far too high)."""


@dataclass
class EpochLog:
    epoch: int
    lr: float
    losses: dict[str, float]


@dataclass
class TrainHooks:
    """What the caller wants to hear from the training loop, and how it may stop it.

    ``where`` names the unit in messages. ``on_step`` runs after every optimizer step (a progress
    bar; it must not read tensors, which would sync the device). ``on_epoch`` gets each epoch's log.
    ``on_state`` receives the full training state after every epoch, and at a requested stop (the
    caller saves it: exact resume). ``stop`` is checked before every step; a stop needs ``on_state``.
    """

    where: str = ""
    on_step: Callable[[], None] | None = None
    on_epoch: Callable[["EpochLog"], None] | None = None
    on_state: Callable[[EpochState], None] | None = None
    stop: StopFlag | None = None


@dataclass
class TrainResult:
    history: list[EpochLog] = field(default_factory=list)
    steps: int = 0


def freeze_teacher(model: nn.Module) -> nn.Module:
    """Put a trained model in eval mode with gradients off, so it can only teach."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def make_optimizer(model: nn.Module, recipe: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum; no weight decay on BatchNorm parameters and biases (1-D tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov and recipe.momentum > 0, foreach=True)


def lr_factor(step: int, total_steps: int, warmup_steps: int, recipe: TrainConfig) -> float:
    """Multiplier of ``recipe.lr`` at ``step``: linear warm-up, then cosine, step or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if recipe.schedule == "step":
        return recipe.gamma ** sum(progress >= m for m in recipe.milestones)
    return 1.0


def make_schedule(optimizer: torch.optim.Optimizer, recipe: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = recipe.epochs * steps_per_epoch
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, recipe))


def train_generation(
    model: nn.Module,
    data: DataBundle,
    recipe: TrainConfig,
    objective: GenerationObjective,
    runtime: Runtime = Runtime(),
    hooks: TrainHooks = TrainHooks(),
    *,
    seed: int,
    teacher: nn.Module | None = None,
    resume_from: EpochState | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``recipe.epochs`` epochs on ``data.train``.

    Everything stateful is created here, afresh: optimizer, LR schedule and the batch generator.
    ``teacher`` (if given) must be a different object, frozen with :func:`freeze_teacher`; it is
    run under inference mode on the same augmented batch the student sees, as a copy with its
    BatchNorm folded into the convolutions (:func:`kdgen.fast.fold_batchnorm`). ``seed`` drives the
    batch order and augmentation through a private generator (model initialisation is the
    caller's business). ``resume_from`` continues from a state ``hooks.on_state`` received, as if
    training had never stopped.
    """
    if teacher is model:
        raise ValueError("teacher and student must be different objects")
    if teacher is not None and (teacher.training or any(p.requires_grad for p in teacher.parameters())):
        raise ValueError("teacher must be frozen (eval mode, no gradients): call freeze_teacher first")
    device, memory_format, where = runtime.device, runtime.memory_format, hooks.where
    model.to(device, memory_format=memory_format).train()
    if device.type == "cuda":
        # Shapes are fixed within a run (full batches only), so cuDNN's one-off search for the fastest
        # convolution algorithms pays back many times.
        torch.backends.cudnn.benchmark = True
    if runtime.compile:
        check_compile_supported(device)
    parallel = runtime.parallel
    # runtime.parallel=data: DistributedDataParallel (and cross-rank BatchNorm) around the model.
    trained, end_parallel = parallel.prepare(model)
    student = maybe_compile(trained, runtime.compile)
    teach = None
    if teacher is not None:
        teach = maybe_compile(fold_batchnorm(teacher).to(device, memory_format=memory_format), runtime.compile)
    normalize = Normalizer(data.mean, data.std, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = TrainBatches(data.train, data.augment, recipe.batch_size, device, generator, runtime.workers,
                           share=parallel.batch_share)
    steps = len(batches)
    optimizer = make_optimizer(model, recipe)
    schedule = make_schedule(optimizer, recipe, steps)
    autocast = runtime.autocast()
    result = TrainResult()
    start_epoch, skip_steps = 0, 0
    if resume_from is not None:
        restore(resume_from, model, optimizer, schedule, generator)
        start_epoch, skip_steps = resume_from.epoch, resume_from.step
        result.history = [EpochLog(**h) for h in resume_from.history]
    for epoch in range(start_epoch, recipe.epochs):
        epoch_generator_state = generator.get_state().clone()
        # Loss sums and the first bad step stay on the device; reading them once per epoch avoids
        # a host-device sync per step.
        sums: dict[str, torch.Tensor] = {}
        first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        lr = schedule.base_lrs[0] * schedule.lr_lambdas[0](epoch * steps)  # the LR this epoch starts at
        if skip_steps and resume_from is not None:
            sums = {k: v.to(device) for k, v in resume_from.loss_sums.items()}
            first_bad_step.fill_(resume_from.first_bad_step)
        for step, (images, targets) in enumerate(batches):
            if step < skip_steps:
                continue  # drawn (same RNG use as before the stop) but already trained on
            if parallel.any_stop(hooks.stop is not None and hooks.stop.requested) and hooks.on_state is not None:
                hooks.on_state(capture(where, epoch, model, optimizer, schedule, epoch_generator_state, result.history,
                                 step=step, loss_sums=sums, first_bad_step=int(first_bad_step)))
                raise TrainingInterrupted(f"{where}: stopped in epoch {epoch + 1} after step {step}")
            inputs = normalize(images).contiguous(memory_format=memory_format)
            teacher_logits = None
            if teach is not None:
                with torch.inference_mode(), autocast:
                    teacher_logits = teach(inputs)
                teacher_logits = teacher_logits.clone()  # a normal tensor, usable next to autograd
            with autocast:
                logits = student(inputs)
            terms = objective.terms(logits, targets, teacher_logits)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach()
            bad_now = ~torch.isfinite(loss.detach()) & (first_bad_step < 0)
            first_bad_step = torch.where(bad_now, torch.full_like(first_bad_step, step + 1), first_bad_step)
            if hooks.on_step is not None:
                hooks.on_step()
        skip_steps = 0
        sums, first_bad_step = parallel.epoch_totals(sums, first_bad_step)
        mean_losses = {name: float(total) / steps for name, total in sums.items()}
        result.steps += steps
        if int(first_bad_step) >= 0:
            raise TrainingDiverged(f"{where or 'training'}: loss became non-finite in epoch {epoch + 1}, step "
                                   f"{int(first_bad_step)} of {steps}; the last good epoch is kept, lower train.lr")
        log = EpochLog(epoch=epoch + 1, lr=lr, losses=mean_losses)
        result.history.append(log)
        if hooks.on_state is not None:
            hooks.on_state(capture(where, epoch + 1, model, optimizer, schedule, generator.get_state(), result.history))
        if hooks.on_epoch is not None:
            hooks.on_epoch(log)
    end_parallel()
    model.eval()
    return result
