"""What one generation minimises: a named dict of loss terms (mdistiller's shape).

An arm builds a :class:`GenerationObjective` for each of its generations and the training loop only
sums the terms it returns. Keeping the recipe here, as data, makes each arm's loss explicit and
testable in isolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdgen import losses
from kdgen.tolerance import ToleranceTerm


@dataclass(frozen=True)
class GenerationObjective:
    """``(1 - w) * CE + w * T^2 KL(teacher || student) + tolerance`` for one generation.

    ``distill_weight`` is ignored (treated as 0) when there is no teacher. A tolerance term with
    ``replaces_ce`` (label smoothing) takes cross-entropy's place, with cross-entropy's weight.
    """

    tolerance: ToleranceTerm | None = None
    distill_weight: float = 0.0
    temperature: float = 1.0

    def terms(self, logits: torch.Tensor, target: torch.Tensor,
              teacher_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; the training loss is their sum (in this order)."""
        weight = self.distill_weight if teacher_logits is not None else 0.0
        tol = self.tolerance
        hard = tol.loss(logits, target) if tol is not None and tol.replaces_ce else losses.cross_entropy(logits, target)
        terms = {"ce": (1.0 - weight) * hard}
        if teacher_logits is not None and weight > 0:
            terms["kd"] = weight * losses.distillation_loss(logits, teacher_logits, self.temperature)
        if tol is not None and not tol.replaces_ce:
            terms[tol.name] = tol.loss(logits, target)
        return terms
