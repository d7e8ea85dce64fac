"""The method seam: what a generation minimises, as a module that gets one training step and returns named losses.

mdistiller's shape. The training loop builds a :class:`Step` (the batch, the student's logits, the frozen
teacher's logits, the training progress and any intermediate features asked for) and hands it to the
generation's loss, a :class:`GenerationLoss`; the loop only sums the terms it returns. A loss is an
``nn.Module``, so it may own parameters (a projection head): they join the optimizer and the resume state.

Student methods (``distill.method``) are the part of that loss that learns from a teacher: ``kd`` (Hinton et
al.), ``dkd`` (decoupled KD), or one a plug-in registers. Each is a pydantic settings class (the config's
``distill:`` section, told apart by ``method``) registered with :func:`register`, whose :meth:`build` returns
the module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

METHODS: dict[str, type["MethodSettings"]] = {}


@dataclass(frozen=True)
class Progress:
    """Where training is when a step runs: ``epoch`` (0-based), ``step`` (optimizer steps done so far)."""

    epoch: int
    step: int
    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


@dataclass
class Step:
    """What a generation's loss sees at one optimizer step.

    ``inputs`` are normalised images, ``logits`` the student's (under autocast: possibly bf16),
    ``teacher_logits`` the frozen teacher's on the same augmented batch (None without a teacher; with
    several teachers, the first one's, and ``teachers_logits`` holds every teacher's in order).
    ``features`` and ``teacher_features`` hold the outputs of the modules the loss named in
    :attr:`GenerationLoss.features`, by name (the teacher's: the first teacher's; ``teachers_features``
    every teacher's, in order). ``student`` and ``teacher`` are the models themselves.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    progress: Progress
    teacher_logits: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    student: nn.Module | None = None
    teacher: nn.Module | None = None
    teachers_logits: list[torch.Tensor] = field(default_factory=list)
    teachers_features: list[dict[str, torch.Tensor]] = field(default_factory=list)


class GenerationLoss(nn.Module):
    """What a generation minimises: ``forward(step) -> {name: weighted loss term}``; the loss is their sum.

    ``features`` names modules of the student (and of the teacher: same architecture) whose outputs the
    loss reads from ``step.features`` / ``step.teacher_features``; the loop captures them with forward hooks.
    """

    features: tuple[str, ...] = ()

    def forward(self, step: Step) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


class StudentMethod(GenerationLoss):
    """The terms a student with a teacher adds; the hard-label term gets ``hard_weight`` (not 1) then."""

    hard_weight: float = 1.0


class MethodSettings(BaseModel):
    """Base of every student method's settings: the ``distill:`` section, told apart by ``method``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: str
    # A method's revision: raise it when a fix changes what the method computes, so the unit cache never
    # reuses units trained before the fix (kdgen.running.unit_cache).
    revision: ClassVar[int] = 1

    def build(self) -> StudentMethod:
        """The module a generation with a teacher adds to its loss."""
        raise NotImplementedError

    def unit_settings(self) -> dict[str, Any]:
        """The settings a student's weights depend on (the unit cache's key): all of them."""
        return self.model_dump(mode="json")

    def recipe_warnings(self, epochs: int) -> list[str]:
        """Lines of warning about these settings with a recipe of ``epochs`` epochs per generation (a setting that
        cannot do what it says in so few epochs); the config prints each once per process."""
        return []


def register(cls: type[MethodSettings]) -> type[MethodSettings]:
    """Class decorator: make ``cls`` a valid ``distill.method`` (its ``method`` literal's default is the name)."""
    name = cls.model_fields["method"].default
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"distill method {name!r} is registered twice")
    METHODS[name] = cls
    return cls
