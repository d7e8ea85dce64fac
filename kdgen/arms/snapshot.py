"""Snapshot distillation (Yang, Xie, Su, Yuille, CVPR 2019): teacher-student optimisation in one generation.

One model's training is split into cycles of a restarting schedule (cosine by default: the LR
rises back to ``train.lr`` at every cycle's start). At the end of each cycle the current weights are
frozen as the teacher of the next cycle, and training continues from them. Cycle ``g`` is reported
as generation ``g`` of the arm; all ``count + 1`` cycles together cost ``(count + 1) * cycle_epochs``
epochs, by default one model's ``train.epochs``, where the strict arm's generation g costs ``g + 1``
models.

Each cycle builds a new optimizer (momentum restarts with the LR) and schedule; only cycle 0 warms
up. The paper's cycle count, schedule and loss weights are not known to us: the settings below are
ours, chosen on a val split (docs/study/snapshot.md).

``snapshot-tolerant`` adds the tolerance term to cycle 0 (or, with ``tolerance.apply_to: all``, to
every cycle), as the tolerant arm does to its patriarch.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kdgen.arms.base import Arm, register
from kdgen.errors import ConfigError
from kdgen.methods.kd import KDSettings
from kdgen.training.objective import GenerationObjective
from kdgen.training.settings import TrainConfig


class SnapshotSettings(BaseModel):
    """The ``snapshot:`` config section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Epochs per cycle. None: train.epochs split evenly over the count + 1 cycles (one model's budget).
    cycle_epochs: int | None = Field(None, ge=1)
    # Weight and temperature of the teacher term from cycle 1 on: the best point of the val sweeps on
    # converged Fashion-MNIST (docs/study/snapshot.md; w 0 .. 0.9, T 1 .. 4, 5 seeds). Within noise of
    # weight 0 (restarts alone); w 0.9 with T 4 (the born-again arms' setting) is clearly worse.
    weight: float = Field(0.3, ge=0.0, le=1.0)
    temperature: float = Field(2.0, gt=0.0)


@register
class Snapshot(Arm):
    name = "snapshot"
    description = "snapshot distillation: one model's training in restarting cycles, each taught by the last"
    color = "#2ca02c"
    order = 3
    compare_with = ("strict", "baseline")
    settings = ("snapshot", SnapshotSettings)

    @property
    def options(self) -> SnapshotSettings:
        return getattr(self.cfg, self.settings[0])  # type: ignore[index]

    @property
    def cycle_epochs(self) -> int:
        cycles = self.cfg.generations.count + 1
        return self.options.cycle_epochs or self.cfg.train.epochs // cycles

    def check(self) -> None:
        if self.cycle_epochs < 1:
            raise ConfigError(f"arm {self.name}: train.epochs {self.cfg.train.epochs} split over "
                              f"{self.cfg.generations.count + 1} cycles leaves no epoch per cycle; "
                              f"set snapshot.cycle_epochs")

    def recipe(self, generation: int) -> TrainConfig:
        warmup = self.cfg.train.warmup_epochs if generation == 0 else 0.0
        return self.cfg.train.model_copy(update={"epochs": self.cycle_epochs, "warmup_epochs": warmup})

    def objective(self, generation: int) -> GenerationObjective:
        tolerance = self.tolerance_term(generation)
        if generation == 0:
            return GenerationObjective(tolerance)
        return GenerationObjective.kd(self.options.weight, self.options.temperature, tolerance)

    def start(self, generation: int) -> int | None:
        return generation - 1 if generation > 0 else None

    def teacher(self, generation: int) -> int | None:
        return generation - 1 if generation > 0 else None

    def cost_epochs(self, generation: int, kind: str) -> float:
        return (generation + 1) * self.cycle_epochs

    def unit_settings(self, generation: int) -> dict[str, Any]:
        settings: dict[str, Any] = {"snapshot": {"cycle_epochs": self.cycle_epochs}, **self.tolerance_settings(generation)}
        if generation >= 1:
            settings["snapshot"].update(weight=self.options.weight, temperature=self.options.temperature)
        return settings

    def code_revisions(self, generation: int) -> dict[str, int]:
        """Code this generation runs beyond the loop and the arm (:func:`kdgen.running.unit_cache.code_revisions`):
        cycles 1.. learn with the ``kd`` method whatever ``distill.method`` says, so its revision, from cycle 1 on
        (a cycle's key covers the cycles before it)."""
        return {"distill.kd": KDSettings.revision} if generation >= 1 else {}


@register
class SnapshotTolerant(Snapshot):
    name = "snapshot-tolerant"
    description = "snapshot distillation with a tolerant first cycle (tolerance.*)"
    color = "#9467bd"
    order = 4
    compare_with = ("snapshot", "tolerant")
    uses_tolerance = True
