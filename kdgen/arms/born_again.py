"""Generations of the same architecture, each taught by the previous one (Furlanello et al. 2018;
Yang et al. 2019): the ``strict`` arm (born-again networks) and the ``tolerant`` arm, whose
patriarch also minimises the tolerance term (TSD by default).

Every generation starts from a fresh initialisation with a fresh optimizer and schedule, and
learns from the labels and from generation ``g - 1``, frozen.
"""

from __future__ import annotations

from typing import Any

from kdgen.arms.base import Arm, register
from kdgen.training.objective import GenerationObjective


@register
class Strict(Arm):
    name = "strict"
    description = "born-again generations: patriarch with cross-entropy, each student taught by the previous generation"
    color = "#1f77b4"
    order = 1
    compare_with = ("baseline",)

    def objective(self, generation: int) -> GenerationObjective:
        # Students learn from their teacher with the configured method (distill.method: kd, dkd, ...).
        method = self.cfg.distill.build() if generation > 0 else None
        return GenerationObjective(tolerance=self.tolerance_term(generation), method=method)

    def teacher(self, generation: int) -> int | None:
        return generation - 1 if generation > 0 else None

    def cost_epochs(self, generation: int, kind: str) -> float:
        # Generation g needed the g models before it: an ensemble of 1..g costs the same.
        return (generation + 1) * self.cfg.train.epochs

    def unit_settings(self, generation: int) -> dict[str, Any]:
        settings = self.tolerance_settings(generation)
        if generation >= 1:
            settings["distill"] = self.cfg.distill.unit_settings()
        return settings


@register
class Tolerant(Strict):
    name = "tolerant"
    description = "as strict, with a tolerant patriarch (tolerance.*: TSD by default)"
    color = "#d62728"
    order = 2
    compare_with = ("strict", "baseline")
    headline = True  # the paper's question: do tolerant patriarchs educate better students than strict ones?
    uses_tolerance = True
