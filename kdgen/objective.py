"""What one generation minimises: a named dict of loss terms (mdistiller's shape).

A :class:`GenerationObjective` is built by the generations driver for every (arm, generation)
and handed to the training loop, which only sums the terms it returns. Keeping the recipe here,
as data, makes each arm's loss explicit and testable in isolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdgen import losses


@dataclass(frozen=True)
class Tolerance:
    """A tolerance term added to (or, for label smoothing, replacing) cross-entropy."""

    method: str  # "tsd" | "label-smoothing" | "confidence-penalty"
    eta: float
    k: int = 2
    primary: str = "top1"


@dataclass(frozen=True)
class GenerationObjective:
    """``(1 - w) * CE + w * T^2 KL(teacher || student) + tolerance`` for one generation.

    ``distill_weight`` is ignored (treated as 0) when there is no teacher.
    """

    tolerance: Tolerance | None = None
    distill_weight: float = 0.0
    temperature: float = 1.0

    def terms(self, logits: torch.Tensor, target: torch.Tensor,
              teacher_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; the training loss is their sum."""
        weight = self.distill_weight if teacher_logits is not None else 0.0
        tol = self.tolerance
        if tol is not None and tol.method == "label-smoothing":
            hard = losses.label_smoothing_loss(logits, target, tol.eta)
        else:
            hard = losses.cross_entropy(logits, target)
        terms = {"ce": (1.0 - weight) * hard}
        if teacher_logits is not None and weight > 0:
            terms["kd"] = weight * losses.distillation_loss(logits, teacher_logits, self.temperature)
        if tol is not None and tol.method == "tsd" and tol.eta > 0:
            terms["tsd"] = tol.eta * losses.top_score_difference(logits, tol.k, target=target, primary=tol.primary)
        elif tol is not None and tol.method == "confidence-penalty" and tol.eta > 0:
            terms["cp"] = tol.eta * losses.confidence_penalty(logits)
        return terms
