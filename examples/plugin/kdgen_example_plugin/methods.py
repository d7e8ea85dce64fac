"""``distill.method: mse-logits``: the student regresses the teacher's logits (Ba & Caruana, NeurIPS 2014).

A student method is two small classes: its settings (a pydantic model whose ``method`` literal is its name,
registered with :func:`kdgen.methods.register`; this is the ``distill:`` config section) and the module its
``build`` returns, which gets each training :class:`~kdgen.methods.Step` and returns named loss terms.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdgen.methods import MethodSettings, Step, StudentMethod, register


class LogitMatching(StudentMethod):
    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.hard_weight = 1.0 - weight  # the hard-label term's weight when there is a teacher

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        matched = F.mse_loss(step.logits.float(), step.teacher_logits.float())
        return {"mse_logits": self.weight * matched}


@register
class LogitMatchingSettings(MethodSettings):
    method: Literal["mse-logits"] = "mse-logits"
    weight: float = Field(0.5, ge=0.0, le=1.0)

    def build(self) -> LogitMatching:
        return LogitMatching(self.weight)
