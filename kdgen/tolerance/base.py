"""The tolerance interface: :class:`ToleranceMethod` (a method's settings), :class:`ToleranceTerm` (its loss
term), the registry and the ``none`` method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator

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
    # Raise when a fix changes what the method computes: units trained before are then not reused (kdgen.running.unit_cache).
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
