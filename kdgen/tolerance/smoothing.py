"""The rivals that also lower a model's confidence: label smoothing and the confidence penalty."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from kdgen import losses
from kdgen.tolerance.base import ToleranceMethod, ToleranceTerm, register


@register
class LabelSmoothing(ToleranceMethod):
    """Cross-entropy against ``(1 - epsilon) * onehot + epsilon / C`` in place of plain cross-entropy."""

    method: Literal["label-smoothing"] = "label-smoothing"
    epsilon: float = Field(0.1, ge=0.0, lt=1.0)
    renamed: ClassVar[dict[str, str]] = {"eta": "epsilon"}

    @property
    def active(self) -> bool:
        return self.epsilon > 0

    def term(self) -> ToleranceTerm | None:
        if not self.active:
            return None
        epsilon = self.epsilon
        return ToleranceTerm("ce", lambda logits, target: losses.label_smoothing_loss(logits, target, epsilon),
                             replaces_ce=True)


@register
class ConfidencePenalty(ToleranceMethod):
    """``beta`` times the negative entropy of the softmax (Pereyra et al. 2017)."""

    method: Literal["confidence-penalty"] = "confidence-penalty"
    beta: float = Field(0.1, ge=0.0)
    renamed: ClassVar[dict[str, str]] = {"eta": "beta"}

    @property
    def active(self) -> bool:
        return self.beta > 0

    def term(self) -> ToleranceTerm | None:
        if not self.active:
            return None
        beta = self.beta
        return ToleranceTerm("cp", lambda logits, target: beta * losses.confidence_penalty(logits))
