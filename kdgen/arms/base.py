"""The :class:`Arm` interface and the arm registry.

An arm answers, for each generation ``g`` of a chain (one seed): what the model minimises
(:meth:`Arm.objective`), with which recipe (:meth:`Arm.recipe`), how it starts (fresh, or from an
earlier generation's weights: :meth:`Arm.start`), who teaches it (:meth:`Arm.teacher`), which
generations its ensemble at ``g`` averages (:meth:`Arm.ensemble`), what it has cost so far
(:meth:`Arm.cost_epochs`), and which settings its result depends on (:meth:`Arm.unit_settings`).
Class attributes say how reports show it: colour, order, and the arms it is compared against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from kdgen.tolerance import ToleranceTerm
from kdgen.training.objective import GenerationObjective
from kdgen.training.settings import TrainConfig

if TYPE_CHECKING:  # an arm is bound to the whole config, which composes the arms' sections: annotations only
    from kdgen.config import Config

_REGISTRY: dict[str, type["Arm"]] = {}


class Arm:
    """One arm of an experiment, bound to a config. Subclass it and decorate with :func:`register`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    color: ClassVar[str] = "#555555"
    order: ClassVar[int] = 50  # position in tables and legends
    # Arms this one is compared against, paired by seed at equal generation (``this − other``); the first is its
    # main rival, which the verdict compares as single models and as ensembles (the others as ensembles only).
    compare_with: ClassVar[tuple[str, ...]] = ()
    # Whether this arm against its main rival is the question a run asks: the verdict's headline.
    headline: ClassVar[bool] = False
    # Whether the config's ``tolerance`` section shapes this arm (it is then checked against the data).
    uses_tolerance: ClassVar[bool] = False
    # A config section of the arm's own: (section name, pydantic model), or None.
    settings: ClassVar[tuple[str, type[BaseModel]] | None] = None
    # Raise when a fix changes what the arm computes: its units trained before are then not reused (kdgen.running.unit_cache).
    revision: ClassVar[int] = 1

    def __init__(self, cfg: "Config") -> None:
        self.cfg = cfg

    # --- what each generation does -------------------------------------------------------------
    def objective(self, generation: int) -> GenerationObjective:
        """The loss of ``generation``."""
        raise NotImplementedError

    def recipe(self, generation: int) -> TrainConfig:
        """The training recipe of ``generation`` (a new optimizer and schedule are built from it)."""
        return self.cfg.train

    def start(self, generation: int) -> int | None:
        """The earlier generation whose weights ``generation`` starts from; None: a fresh initialisation."""
        return None

    def teacher(self, generation: int) -> int | None:
        """The earlier generation that teaches ``generation`` (frozen, eval mode); None: no teacher."""
        return None

    def teachers(self, generation: int) -> list[int]:
        """Every earlier generation that teaches ``generation``, first the one ``teacher`` names. Override this
        (not ``teacher``) for several teachers: the loss then gets all their logits (``Step.teachers_logits``)."""
        teacher = self.teacher(generation)
        return [] if teacher is None else [teacher]

    def ensemble(self, generation: int) -> list[int]:
        """Generations whose softmax the ensemble reported at ``generation`` averages (reported when ≥ 2).

        Students only by default: generations 1..g, so an ensemble of k generations is compared with
        the baseline's ensemble of k independent models.
        """
        return list(range(1, generation + 1))

    def lineage(self, generation: int) -> list[int]:
        """``generation`` and every earlier generation its weights depend on: its start and its teachers, and
        theirs, in order. Their architectures join the unit's key when a chain changes architecture."""
        seen: set[int] = set()
        pending = [generation]
        while pending:
            g = pending.pop()
            if g not in seen:
                seen.add(g)
                pending.extend(j for j in (self.start(g), *self.teachers(g)) if j is not None)
        return sorted(seen)

    def cost_epochs(self, generation: int, kind: str) -> float:
        """Training epochs spent to obtain ``generation``'s single model (or its ensemble): the equal-cost x axis."""
        raise NotImplementedError

    # --- what its results depend on -------------------------------------------------------------
    def unit_settings(self, generation: int) -> dict[str, Any]:
        """Config sections beyond data/model/train/runtime that ``generation``'s weights depend on
        (its whole teacher line included). Equal settings, equal units: the unit cache's key."""
        return {}

    def check(self) -> None:
        """Raise a one-line :class:`~kdgen.errors.ConfigError` for settings this arm cannot run."""

    # --- helpers for subclasses -----------------------------------------------------------------
    def tolerance_term(self, generation: int) -> ToleranceTerm | None:
        """The config's tolerance term where it applies: the patriarch, or every generation with ``apply_to: all``."""
        tolerance = self.cfg.tolerance
        if not self.uses_tolerance or not (generation == 0 or tolerance.apply_to == "all"):
            return None
        return tolerance.term()

    def tolerance_settings(self, generation: int) -> dict[str, Any]:
        """The tolerance settings ``generation`` depends on: none when the term is inactive, and
        ``apply_to`` only from generation 1 (it decides whether students get the term too)."""
        if not self.uses_tolerance:
            return {}
        tolerance = self.cfg.tolerance.model_dump(mode="json")
        if not self.cfg.tolerance.active:
            tolerance = {"method": "none"}
        elif generation == 0:
            tolerance.pop("apply_to")
        return {"tolerance": tolerance}


def register(cls: type[Arm]) -> type[Arm]:
    """Class decorator: make ``cls`` available as ``generations.arms: [cls.name]``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"arm {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Registered arm names, in report order."""
    return sorted(_REGISTRY, key=lambda name: (_REGISTRY[name].order, name))


def get(name: str) -> type[Arm]:
    """The arm class registered as ``name`` (KeyError for an unknown name)."""
    return _REGISTRY[name]


def make(name: str, cfg: "Config") -> Arm:
    """The arm ``name`` bound to ``cfg``."""
    return _REGISTRY[name](cfg)


def sort_key(name: str) -> tuple[int, str]:
    """Report order of an arm name: the registered arms' ``order``, unknown names (old runs) last."""
    return (_REGISTRY[name].order if name in _REGISTRY else 99), name


def color(name: str) -> str | None:
    """The arm's colour, the same in every plot; None (matplotlib's cycle) for an unregistered name."""
    return _REGISTRY[name].color if name in _REGISTRY else None


def settings_sections() -> dict[str, type[BaseModel]]:
    """Config sections that arms bring: {section name: pydantic model}."""
    return dict(cls.settings for cls in _REGISTRY.values() if cls.settings is not None)
