"""The training loop: one generation (or one baseline model), from a fresh model to trained weights.

Everything a generation needs is created here, afresh: optimizer, LR schedule and RNG stream.
Nothing survives from one call to the next, which rules out the born-again bug of a student
inheriting its teacher's optimizer state or half-decayed schedule.

:func:`train_generation` is the loop itself; what varies around it has a name of its own:
:class:`Placement` (device, memory layout, precision, compile, DistributedDataParallel, the folded
teacher and the feature taps: it turns a batch into a :class:`~kdgen.methods.Step`), :class:`EpochTally`
(loss sums and the first non-finite step, kept on the device), :class:`TrainHooks` (progress, logging,
state capture for exact resume, stop requests) and :mod:`kdgen.training.resume` (the state itself).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from kdgen.training.settings import TrainConfig
from kdgen.data.base import DataBundle
from kdgen.errors import UserError
from kdgen.methods import GenerationLoss, Progress, Step
from kdgen.training.augment import Normalizer
from kdgen.training.batches import TrainBatches
from kdgen.training.fast import check_compile_supported, fold_batchnorm, maybe_compile
from kdgen.training.resume import EpochState, capture, restore
from kdgen.training.runtime import Runtime

# Raise when a change to this loop (or to the RNG streams it is given) changes what it computes: units trained before
# are then not reused (kdgen.running.unit_cache). Arms, student methods and tolerance methods carry a ``revision`` of
# their own.
# 2 (issue 29): every arm's unit of a (seed, generation) draws the same stream (kdgen.running.generations.
#   Unit.stream_seed: common random numbers), and a step schedule's milestones are fractions of all the epochs,
#   warm-up included (they were counted from the end of warm-up).
REVISION = 2


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
    ``on_state`` receives the full training state after an epoch once ``state_every_s`` seconds have passed
    since it last did (0: after every epoch), and always at a requested stop (the caller saves it: exact
    resume). ``stop`` is checked before every step; a stop needs ``on_state``.
    """

    where: str = ""
    on_step: Callable[[], None] | None = None
    on_epoch: Callable[["EpochLog"], None] | None = None
    on_state: Callable[[EpochState], None] | None = None
    stop: StopFlag | None = None
    state_every_s: float = 0.0


class StateCadence:
    """Whether an epoch's end is due to hand its state to ``on_state``: once ``every_s`` seconds have passed
    since the last time (0: every epoch). Capturing a state copies every tensor to the host; on a fast
    device that would otherwise dominate short epochs."""

    def __init__(self, every_s: float) -> None:
        self.every_s, self.last = every_s, time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return False
        self.last = now
        return True


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


def make_optimizer(model: nn.Module, recipe: TrainConfig, loss: nn.Module | None = None) -> torch.optim.Optimizer:
    """SGD with momentum; no weight decay on BatchNorm parameters and biases (1-D tensors).

    Parameters the generation's loss owns (a method's projection head) train with the model's.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if loss is not None:
        params += [p for p in loss.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov and recipe.momentum > 0, foreach=True)


def lr_factor(step: int, total_steps: int, warmup_steps: int, recipe: TrainConfig) -> float:
    """Multiplier of ``recipe.lr`` at ``step``: linear warm-up, then cosine, step or constant.

    Cosine runs from the end of warm-up to the end of training. A step schedule's milestones are fractions of all
    the steps, warm-up included (200 epochs, milestones [0.5, 0.75]: the rate drops at epochs 100 and 150, with or
    without a warm-up); a milestone inside the warm-up lowers the rate the warm-up climbs to.
    """
    if recipe.schedule == "step":
        # Drops at the first step at or after m * total_steps (1e-9: m * total_steps rounded just above an integer).
        factor = recipe.gamma ** sum(step >= m * total_steps - 1e-9 for m in recipe.milestones)
    else:
        factor = 1.0
    if step < warmup_steps:
        return factor * (step + 1) / warmup_steps
    if recipe.schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def make_schedule(optimizer: torch.optim.Optimizer, recipe: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's learning-rate schedule, stepped once per optimizer step (warm-up, then cosine, step or constant)."""
    total = recipe.epochs * steps_per_epoch
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, recipe))


class FeatureTap:
    """Forward hooks that keep the outputs of named submodules of ``model`` during one forward pass."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise UserError(f"the loss asks for the output of module {name!r}, which the model does not have") from None
            self.handles.append(module.register_forward_hook(self._keeper(name)))

    def _keeper(self, name: str) -> Callable[..., None]:
        def keep(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            self.outputs[name] = output
        return keep

    def take(self) -> dict[str, torch.Tensor]:
        outputs, self.outputs = self.outputs, {}
        return outputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class Placement:
    """Where and how the student and its teacher run: turns a batch of uint8 images into a :class:`Step`.

    The student moves to the runtime's device and memory layout, in train mode, wrapped for
    ``runtime.parallel=data`` (DistributedDataParallel, cross-rank BatchNorm) and compiled with
    ``runtime.compile``. The teacher runs under inference mode as a copy with its BatchNorm folded into
    the convolutions (:func:`kdgen.training.fast.fold_batchnorm`), unless the loss reads its features (then as it
    is, so the named modules exist). Both run under the runtime's autocast.
    """

    def __init__(self, model: nn.Module, teachers: list[nn.Module], loss: GenerationLoss, data: DataBundle,
                 runtime: Runtime) -> None:
        device, self.memory_format = runtime.device, runtime.memory_format
        model.to(device, memory_format=self.memory_format).train()
        loss.to(device)
        if runtime.compile:
            check_compile_supported(device)
        if runtime.parallel.splits_batches and any(p.requires_grad for p in loss.parameters()):
            raise UserError("a loss with parameters of its own cannot run under runtime.parallel=data yet "
                            "(its gradients would not be averaged across processes); use runtime.parallel=chains")
        trained, self.end_parallel = runtime.parallel.prepare(model)
        self.model, self.teacher = model, teachers[0] if teachers else None
        self.student = maybe_compile(trained, runtime.compile)
        self.student_tap = FeatureTap(model, loss.features) if loss.features else None
        self.teacher_taps: list[FeatureTap] = []
        self.teach = []
        for teacher in teachers:
            runnable = teacher if loss.features else fold_batchnorm(teacher)
            self.teach.append(maybe_compile(runnable.to(device, memory_format=self.memory_format), runtime.compile))
            if loss.features:
                self.teacher_taps.append(FeatureTap(runnable, loss.features))
        self.normalize = Normalizer(data.mean, data.std, device)
        self.autocast = runtime.autocast()
        self.kernels = runtime.kernels()  # cuDNN and determinism settings, for this generation's steps only
        self.kernels.__enter__()

    def step(self, images: torch.Tensor, targets: torch.Tensor, progress: Progress) -> Step:
        """Normalise, run the frozen teacher and the student, and collect what the loss asked for."""
        inputs = self.normalize(images).contiguous(memory_format=self.memory_format)
        teachers_logits = []
        for teach in self.teach:
            with torch.inference_mode(), self.autocast:
                teacher_logits = teach(inputs)
            teachers_logits.append(teacher_logits.clone())  # a normal tensor, usable next to autograd
        teachers_features = [{name: out.clone() for name, out in tap.take().items()} for tap in self.teacher_taps]
        with self.autocast:
            logits = self.student(inputs)
        features = self.student_tap.take() if self.student_tap is not None else {}
        return Step(inputs, targets, logits, progress, teachers_logits[0] if teachers_logits else None, features,
                    teachers_features[0] if teachers_features else {}, self.model, self.teacher, teachers_logits,
                    teachers_features)

    def close(self) -> None:
        """Remove the feature hooks and undo the parallel wrapping: the model leaves as it came."""
        for tap in [self.student_tap, *self.teacher_taps]:
            if tap is not None:
                tap.remove()
        self.end_parallel()
        self.kernels.__exit__(None, None, None)

    def __enter__(self) -> "Placement":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also on a stop or an error: no hook stays on a model the caller keeps


class EpochTally:
    """One epoch's loss sums and first non-finite step, kept on the device: reading them once per epoch
    avoids a host-device sync per step."""

    def __init__(self, device: torch.device, resumed: EpochState | None = None) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        if resumed is not None:  # a stop in mid-epoch: continue its bookkeeping
            self.sums = {k: v.to(device) for k, v in resumed.loss_sums.items()}
            self.first_bad_step.fill_(resumed.first_bad_step)

    def add(self, terms: dict[str, torch.Tensor], loss: torch.Tensor, step: int) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach()
        bad_now = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad_now, torch.full_like(self.first_bad_step, step + 1), self.first_bad_step)

    def close(self, runtime: Runtime, epoch: int, steps: int, where: str) -> dict[str, float]:
        """Mean losses of the epoch over all processes; :class:`TrainingDiverged` if a step was not finite."""
        sums, first_bad_step = runtime.parallel.epoch_totals(self.sums, self.first_bad_step)
        if int(first_bad_step) >= 0:
            raise TrainingDiverged(f"{where or 'training'}: loss became non-finite in epoch {epoch + 1}, step "
                                   f"{int(first_bad_step)} of {steps}; the last good epoch is kept, lower train.lr")
        return {name: float(total) / steps for name, total in sums.items()}


def check_teachers(model: nn.Module, teachers: list[nn.Module]) -> None:
    """The born-again bugs a teacher can carry: the student itself, or a teacher still training."""
    for teacher in teachers:
        if teacher is model:
            raise ValueError("teacher and student must be different objects")
        if teacher.training or any(p.requires_grad for p in teacher.parameters()):
            raise ValueError("teacher must be frozen (eval mode, no gradients): call freeze_teacher first")


def train_generation(
    model: nn.Module,
    data: DataBundle,
    recipe: TrainConfig,
    objective: GenerationLoss,
    runtime: Runtime = Runtime(),
    hooks: TrainHooks = TrainHooks(),
    *,
    seed: int,
    teacher: nn.Module | Sequence[nn.Module] | None = None,
    resume_from: EpochState | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``recipe.epochs`` epochs on ``data.train``, minimising ``objective``.

    Everything stateful is created here, afresh: optimizer, LR schedule and the batch generator.
    ``teacher`` (a model, several, or None) must be a different object, frozen with :func:`freeze_teacher`;
    it sees the same augmented batch as the student. ``seed`` drives the batch order and augmentation through a
    private generator (model initialisation is the caller's business). ``resume_from`` continues from a
    state ``hooks.on_state`` received, as if training had never stopped.
    """
    teachers = [] if teacher is None else [teacher] if isinstance(teacher, nn.Module) else list(teacher)
    check_teachers(model, teachers)
    with Placement(model, teachers, objective, data, runtime) as placement:
        generator = torch.Generator(device=runtime.device).manual_seed(seed)
        batches = TrainBatches(data.train, data.augment, recipe.batch_size, runtime.device, generator, runtime.workers,
                               share=runtime.parallel.batch_share)
        steps = len(batches)
        optimizer = make_optimizer(model, recipe, objective)
        schedule = make_schedule(optimizer, recipe, steps)
        scaler = runtime.grad_scaler()
        result, start_epoch, skip_steps = TrainResult(), 0, 0
        if resume_from is not None:
            restore(resume_from, model, optimizer, schedule, generator, objective, runtime.device, scaler)
            start_epoch, skip_steps = resume_from.epoch, resume_from.step
            result.history = [EpochLog(**h) for h in resume_from.history]

        def state(epoch: int, generator_state: torch.Tensor, **mid_epoch: object) -> EpochState:
            return capture(hooks.where, epoch, model, optimizer, schedule, generator_state, result.history,
                           loss_module=objective, device=runtime.device, scaler=scaler,
                           **mid_epoch)  # type: ignore[arg-type]

        cadence = StateCadence(hooks.state_every_s)
        for epoch in range(start_epoch, recipe.epochs):
            epoch_generator_state = generator.get_state().clone()
            tally = EpochTally(runtime.device, resume_from if skip_steps else None)
            lr = schedule.base_lrs[0] * schedule.lr_lambdas[0](epoch * steps)  # the LR this epoch starts at
            for step, (images, targets) in enumerate(batches):
                if step < skip_steps:
                    continue  # drawn (same RNG use as before the stop) but already trained on
                stop = runtime.parallel.any_stop(hooks.stop is not None and hooks.stop.requested)
                if stop and hooks.on_state is not None:
                    hooks.on_state(state(epoch, epoch_generator_state, step=step, loss_sums=tally.sums,
                                         first_bad_step=int(tally.first_bad_step)))
                    raise TrainingInterrupted(f"{hooks.where}: stopped in epoch {epoch + 1} after step {step}")
                progress = Progress(epoch, epoch * steps + step, steps, recipe.epochs)
                terms = objective(placement.step(images, targets, progress))
                loss = sum(terms.values())
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:  # fp16: a step whose scaled gradients overflowed is skipped and the scale lowered
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                schedule.step()
                tally.add(terms, loss, step)
                if hooks.on_step is not None:
                    hooks.on_step()
            skip_steps = 0
            log = EpochLog(epoch=epoch + 1, lr=lr, losses=tally.close(runtime, epoch, steps, hooks.where))
            result.steps += steps
            result.history.append(log)
            if hooks.on_state is not None and cadence.due():
                hooks.on_state(state(epoch + 1, generator.get_state()))
            if hooks.on_epoch is not None:
                hooks.on_epoch(log)
    model.eval()
    return result
