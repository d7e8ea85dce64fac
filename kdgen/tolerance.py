"""Tolerance methods: how a teacher is made *tolerant*, each a registered config class with its own parameters.

A method is a pydantic model with a ``method`` literal (the discriminator of ``tolerance:`` in the
config) and its own strength parameter, plus :meth:`ToleranceMethod.term`, which turns it into the loss
term a generation's objective adds (or, for label smoothing, uses in place of cross-entropy).

To add a method: subclass :class:`ToleranceMethod` in this file, decorate it with :func:`register`,
and give it a golden-value test. ``kdgen.config`` builds the ``tolerance`` field's union from
:data:`METHODS`, so the method is then valid in YAML, on the command line and in sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from kdgen import losses
from kdgen.errors import ConfigError

# The best K on converged Fashion-MNIST val (docs/study/tolerance-curve.md); also the K of the
# secondary-information metrics (mass on ranks 2..K) for runs whose method has no K.
DEFAULT_TSD_K = 3

METHODS: dict[str, type["ToleranceMethod"]] = {}


def register(cls: type["ToleranceMethod"]) -> type["ToleranceMethod"]:
    """Class decorator: make ``cls`` a valid ``tolerance.method``."""
    METHODS[cls.model_fields["method"].default] = cls
    return cls


@dataclass(frozen=True)
class ToleranceTerm:
    """A loss term in a generation's objective.

    ``name`` is its key in the dict of loss terms (and in logs). With ``replaces_ce`` the term is the
    hard-label loss itself (weighted by ``1 - distill weight`` like cross-entropy); otherwise it is
    added with its own weight already applied.
    """

    name: str
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    replaces_ce: bool = False


class ToleranceMethod(BaseModel):
    """Base of every tolerance method's settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: str
    # Raise when a fix changes what the method computes: units trained before are then not reused (kdgen.unit_cache).
    revision: ClassVar[int] = 1
    # Whether only the patriarch (generation 0) gets the term, or every generation of the arm.
    apply_to: Literal["patriarch", "all"] = "patriarch"
    # Keys older configs used for this method's parameters: {old key: new key}.
    renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for old, new in cls.renamed.items():
                if old in raw:
                    raise ValueError(f"{old} is not a setting of method {raw.get('method')!r}; "
                                     f"its strength is tolerance.{new}")
        return raw

    @property
    def active(self) -> bool:
        """False when the method adds nothing (strength 0, or ``none``): no tolerance setting then matters."""
        return False

    def term(self) -> ToleranceTerm | None:
        """The loss term, or None when inactive."""
        return None

    def resolved(self, num_classes: int) -> "ToleranceMethod":
        """This method with data-dependent settings (``k: auto``) made concrete."""
        return self

    def check(self, num_classes: int, data_name: str) -> None:
        """Settings that are wrong for data with ``num_classes`` classes raise a one-line ConfigError."""

    def secondary_k(self, num_classes: int) -> int:
        """The K of the secondary-information metrics (probability mass on ranks 2..K)."""
        return min(DEFAULT_TSD_K, num_classes)


@register
class NoTolerance(ToleranceMethod):
    """No term: a "tolerant" arm with this method is the strict arm."""

    method: Literal["none"] = "none"


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
    # Not significantly better than its neighbours or than no term at all: see README.
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
