"""``distill.method: kd``: Hinton et al.'s soft targets, ``(1 - w) * CE + w * T^2 KL(teacher || student)``."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from kdgen import losses
from kdgen.methods.base import MethodSettings, Step, StudentMethod, register


class KnowledgeDistillation(StudentMethod):
    def __init__(self, weight: float, temperature: float) -> None:
        super().__init__()
        self.weight, self.temperature = weight, temperature
        self.hard_weight = 1.0 - weight

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        if self.weight <= 0 or step.teacher_logits is None:
            return {}
        return {"kd": self.weight * losses.distillation_loss(step.logits, step.teacher_logits, self.temperature)}


@register
class KDSettings(MethodSettings):
    method: Literal["kd"] = "kd"
    # From the regime search on converged Fashion-MNIST (docs/study/regime-search.md, val split): T 4
    # doubled the students' gain over their teacher compared with T 2.
    weight: float = Field(0.9, ge=0.0, le=1.0)
    temperature: float = Field(4.0, gt=0.0)

    def build(self) -> KnowledgeDistillation:
        return KnowledgeDistillation(self.weight, self.temperature)

    def unit_settings(self) -> dict[str, Any]:
        # kd was the only method before distill.method existed: its units keep the keys they had then.
        return {key: value for key, value in super().unit_settings().items() if key != "method"}
