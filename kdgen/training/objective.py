"""What one generation minimises: the hard-label term, its student method's terms, and its tolerance term.

An arm builds a :class:`GenerationObjective` for each of its generations (:meth:`kdgen.arms.Arm.objective`);
the training loop hands it each :class:`~kdgen.methods.Step` and sums the named terms it returns, in order.
"""

from __future__ import annotations

import torch

from kdgen import losses
from kdgen.methods import GenerationLoss, Progress, Step, StudentMethod
from kdgen.methods.kd import KnowledgeDistillation
from kdgen.tolerance import ToleranceTerm


class GenerationObjective(GenerationLoss):
    """``hard_weight * CE + method terms + tolerance`` for one generation.

    Without a teacher (or without a method) the hard-label term has weight 1. A tolerance term with
    ``replaces_ce`` (label smoothing) takes cross-entropy's place, with cross-entropy's weight.
    """

    def __init__(self, tolerance: ToleranceTerm | None = None, method: StudentMethod | None = None) -> None:
        super().__init__()
        self.tolerance = tolerance
        self.method = method
        self.features = method.features if method is not None else ()

    @classmethod
    def kd(cls, weight: float, temperature: float, tolerance: ToleranceTerm | None = None) -> "GenerationObjective":
        """Today's objective with Hinton KD: ``(1 - w) CE + w T^2 KL (+ tolerance)``."""
        return cls(tolerance, KnowledgeDistillation(weight, temperature))

    def terms(self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None, *,
              epoch: int = 0) -> dict[str, torch.Tensor]:
        """The terms on bare logits (no features, progress at ``epoch``): for tests and notebooks."""
        return self(Step(logits, target, logits, Progress(epoch, 0, 1, epoch + 1), teacher_logits))

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; the training loss is their sum (in this order)."""
        tol, method = self.tolerance, self.method
        taught = method is not None and step.teacher_logits is not None
        hard_weight = method.hard_weight if taught else 1.0  # type: ignore[union-attr]
        if tol is not None and tol.replaces_ce:
            hard = tol.loss(step.logits, step.targets)
        else:
            hard = losses.cross_entropy(step.logits, step.targets)
        terms = {"ce": hard_weight * hard}
        if taught:
            terms.update(method(step))  # type: ignore[misc]
        if tol is not None and not tol.replaces_ce:
            terms[tol.name] = tol.loss(step.logits, step.targets)
        return terms
