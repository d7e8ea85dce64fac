"""The ``baseline`` arm: independent models trained with cross-entropy only.

The no-distillation reference, and the control for ensembles: its ensemble at ``g`` averages ``g``
independently trained models (1..g), the same count as a distilled arm's ensemble of students.
"""

from __future__ import annotations

from kdgen.arms.base import Arm, register
from kdgen.training.objective import GenerationObjective


@register
class Baseline(Arm):
    name = "baseline"
    description = "independent models, cross-entropy only"
    color = "#7f7f7f"
    order = 0

    def objective(self, generation: int) -> GenerationObjective:
        return GenerationObjective()

    def cost_epochs(self, generation: int, kind: str) -> float:
        models = len(self.ensemble(generation)) if kind == "ensemble" else 1
        return models * self.cfg.train.epochs
