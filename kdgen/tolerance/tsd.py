"""Top score difference (Yang et al., AAAI 2019), the paper's way to make a patriarch tolerant."""

from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from kdgen import losses
from kdgen.errors import ConfigError
from kdgen.tolerance.base import DEFAULT_TSD_K, ToleranceMethod, ToleranceTerm, register


def eta_for_confidence(confidence: float, k: int) -> float:
    """The TSD strength whose per-sample optimum puts ``confidence`` on the primary class.

    With cross-entropy, ``CE + eta * TSD`` on one sample is smallest when the non-target mass
    ``1 - p`` sits evenly on the K-1 runners-up: ``-log p + eta * (p - (1 - p)/(K-1))``, whose
    derivative ``-1/p + eta*K/(K-1)`` vanishes at ``p = (K-1)/(K*eta)``. So ``eta = (K-1)/(K*p)``.
    The same holds for ``primary: top1`` while the target stays the top class (p > 1/K). For
    ``eta <= (K-1)/K`` the optimum is p = 1: the term then only slows the approach to a strict model.
    """
    if not 1.0 / k < confidence < 1.0:
        raise ValueError(f"a target confidence must lie in (1/K, 1) = ({1.0 / k:.3g}, 1) for K = {k}")
    return (k - 1) / (k * confidence)


def binding_eta(k: int) -> float:
    """The TSD strength above which the term caps a converged model's confidence below 1: (K-1)/K."""
    return (k - 1) / k


@register
class TopScoreDifference(ToleranceMethod):
    """Top score difference (Yang et al., AAAI 2019): ``eta * (p_primary - mean(p_(2..K)))``.

    The strength is ``eta`` or, instead, ``confidence``: the training-set confidence on the primary
    class the term aims for; then ``eta = (K-1)/(K*confidence)`` (:func:`eta_for_confidence`) and
    config.yaml records both. Only ``eta > (K-1)/K`` binds a converged model (see that function).
    """

    method: Literal["tsd"] = "tsd"
    # The best point on the val split of converged Fashion-MNIST (kdgen sweep; docs/study/tolerance-curve.md).
    # Not significantly better than its neighbours or than no term at all: see docs/findings.md.
    eta: float = Field(0.3, ge=0.0)
    # "auto": DEFAULT_TSD_K, or the class count where there are fewer classes; resolved against the
    # data when a run starts, and config.yaml records the number. An explicit K above the class
    # count is an error.
    k: int | Literal["auto"] = "auto"
    primary: Literal["top1", "target"] = "target"
    # The strength as the confidence it aims for; when set it decides eta (replacing any eta given).
    confidence: float | None = Field(None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _eta_from_confidence(self) -> "TopScoreDifference":
        if self.confidence is not None and self.k != "auto":
            eta = eta_for_confidence(self.confidence, int(self.k))
            if self.eta != eta:
                self.eta = eta  # validate_assignment re-runs this validator once; then eta is equal
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_confidence(self, handler: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        # Configs that state eta serialise as before the confidence knob existed: same config.yaml,
        # same unit-cache keys.
        data = handler(self)
        if data.get("confidence") is None:
            data.pop("confidence", None)
        return data

    @field_validator("k", mode="before")
    @classmethod
    def _k_at_least_two(cls, value: object) -> object:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError("K is an integer of at least 2 (the primary score and one secondary), or auto")
        return value

    @property
    def active(self) -> bool:
        return self.eta > 0

    def term(self) -> ToleranceTerm | None:
        if not self.active:
            return None
        if self.k == "auto":
            raise ValueError("tolerance.k is still 'auto': resolve it against the data first")
        eta, k, primary = self.eta, int(self.k), self.primary
        return ToleranceTerm("tsd", lambda logits, target: eta * losses.top_score_difference(
            logits, k, target=target, primary=primary))

    def resolved(self, num_classes: int) -> "TopScoreDifference":
        if self.k != "auto":
            return self
        return type(self).model_validate({**self.model_dump(), "k": min(DEFAULT_TSD_K, num_classes)})

    def check(self, num_classes: int, data_name: str) -> None:
        if self.k != "auto" and self.k > num_classes:
            raise ConfigError(f"tolerance.k: {self.k} is more than the {num_classes} classes of {data_name}")

    def secondary_k(self, num_classes: int) -> int:
        return min(int(self.resolved(num_classes).k), num_classes)
