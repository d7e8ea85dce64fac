"""The ``patriarch-taught`` arm: every student learns from the patriarch, not from the generation before it.

An arm subclasses :class:`kdgen.arms.Arm` (here the strict arm, to reuse its losses and costs) and answers
questions about its generations; :func:`kdgen.arms.register` makes it a valid ``generations.arms`` entry.
"""

from __future__ import annotations

from kdgen.arms import register
from kdgen.arms.born_again import Strict


@register
class PatriarchTaught(Strict):
    name = "patriarch-taught"
    description = "every student learns from the patriarch (generation 0)"
    color = "#8c564b"
    order = 20
    compare_with = ("strict",)

    def teacher(self, generation: int) -> int | None:
        return 0 if generation > 0 else None

    def cost_epochs(self, generation: int, kind: str) -> float:
        return (generation + 1) * self.cfg.train.epochs  # the patriarch, then each student in turn
