"""``distill.method: dkd``: decoupled knowledge distillation (Zhao et al., CVPR 2022).

Classical KD's per-sample loss splits into a target-class term and a non-target term,
``KL = TCKD + (1 - p_t^teacher) * NCKD``: the non-target term (the teacher's *secondary* information,
what a tolerant teacher is meant to give) is down-weighted exactly where the teacher is confident.
DKD weights the two freely, ``alpha * TCKD + beta * NCKD`` (each x T^2), and ramps the whole term up
linearly over the first ``warmup_epochs`` epochs. Defaults are the DKD paper's CIFAR-100 settings.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from kdgen import losses
from kdgen.methods.base import MethodSettings, Step, StudentMethod, register


class DecoupledKD(StudentMethod):
    def __init__(self, alpha: float, beta: float, temperature: float, warmup_epochs: float, ce_weight: float) -> None:
        super().__init__()
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.warmup_epochs = warmup_epochs
        self.hard_weight = ce_weight

    def warmup(self, epoch: int) -> float:
        """The term's weight in 0-based ``epoch``: the DKD code's ``min(epoch / warmup, 1)``, epochs counted from 1."""
        return min((epoch + 1) / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        if step.teacher_logits is None:
            return {}
        tckd, nckd = losses.decoupled_kd_terms(step.logits, step.teacher_logits, step.targets, self.temperature)
        ramp = self.warmup(step.progress.epoch)
        return {"tckd": ramp * self.alpha * tckd, "nckd": ramp * self.beta * nckd}


@register
class DKDSettings(MethodSettings):
    method: Literal["dkd"] = "dkd"
    alpha: float = Field(1.0, ge=0.0)
    beta: float = Field(8.0, ge=0.0)
    temperature: float = Field(4.0, gt=0.0)
    # Epochs over which the term's weight ramps linearly up to 1 (the paper: 20 of 240). Longer than train.epochs
    # (kdgen's default 8), the term never reaches its full weight: the config warns in one line.
    warmup_epochs: float = Field(20.0, ge=0.0)
    # Weight of the hard-label term (the paper keeps cross-entropy at 1).
    ce_weight: float = Field(1.0, ge=0.0)

    def reached(self, epochs: int) -> float:
        """The weight the term ramps up to by the last of ``epochs`` epochs (1: the whole term)."""
        return DecoupledKD(self.alpha, self.beta, self.temperature, self.warmup_epochs, self.ce_weight).warmup(epochs - 1)

    def recipe_warnings(self, epochs: int) -> list[str]:
        # The defaults are the paper's (20 of 240 epochs); with kdgen's default 8 epochs the ramp never ends (issue 29).
        if self.reached(epochs) >= 1.0:
            return []
        return [f"distill.warmup_epochs={self.warmup_epochs:g} exceeds train.epochs={epochs}: the DKD term's weight "
                f"only ramps up to {self.reached(epochs):.2g} of its full value (the DKD paper warms up over 1/12 of "
                f"the epochs: distill.warmup_epochs={epochs / 12:.2g} here)"]

    def build(self) -> DecoupledKD:
        return DecoupledKD(self.alpha, self.beta, self.temperature, self.warmup_epochs, self.ce_weight)
