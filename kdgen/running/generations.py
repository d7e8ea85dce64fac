"""The generations driver: for every seed and arm, a chain of generations, then evaluation.

What a generation does (its loss, recipe, start, teacher and ensemble) is the arm's business
(:mod:`kdgen.arms`); this module only walks the chains in order, trains or reloads each unit,
evaluates it on every split and keeps the run folder and the unit cache up to date.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdgen import arms
from kdgen.arms import Arm
from kdgen.checkpoint import load_model
from kdgen.config import Config, resolve_k
from kdgen.data.base import DataBundle
from kdgen.errors import ConfigError, UserError
from kdgen.folders import Row, unit_name
from kdgen.models import Profile, profile
from kdgen.running.inference import example_shape
from kdgen.running.run_folder import RunFolder
from kdgen.running.tracking import Tracker
from kdgen.running.unit_cache import CachedUnit, UnitCache
from kdgen.running.unit_claims import Claims
from kdgen.training.augment import Normalizer
from kdgen.training.batches import steps_per_epoch
from kdgen.training.loop import EpochLog, StopFlag, TrainHooks, freeze_teacher, train_generation
from kdgen.training.metrics import (calibration_bins, classification_metrics, predict_probs, rank_mass, secondary_mass,
                                    soft_confusion)
from kdgen.training.resume import EpochState
from kdgen.training.runtime import Runtime

ModelFactory = Callable[[], nn.Module]


T = TypeVar("T")  # an item to schedule (a chain, or a chain's index)


def waiting_last(items: list[T], waits: Callable[[T], bool]) -> Iterator[T]:
    """``items`` in order, except that one whose ``waits(item)`` is true now (its next unit is claimed by another
    process) is put off while another is ready: a process trains other chains meanwhile. Asked afresh before each."""
    pending = list(items)
    while pending:
        yield pending.pop(next((i for i, item in enumerate(pending) if not waits(item)), 0))


@dataclass(frozen=True)
class ChainModels:
    """The model of each generation of a chain: a factory and a name per generation, the last repeating.

    From a config (:meth:`from_config`: ``generations.models``, else ``model.name``) or from the Python API's own
    factories (:meth:`from_user`: one callable for every generation, or a list, patriarch first).
    """

    factories: tuple[ModelFactory, ...]
    names: tuple[str, ...]

    def _index(self, generation: int) -> int:
        return min(generation, len(self.factories) - 1)

    def build(self, generation: int) -> nn.Module:
        """A new model of ``generation``'s architecture (seed the RNG first)."""
        return self.factories[self._index(generation)]()

    def name(self, generation: int) -> str:
        return self.names[self._index(generation)]

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int, in_channels: int) -> "ChainModels":
        """Each generation's model as the config names it; ``model.kwargs`` go to the models of a namespace
        (``timm/...``), and ``model.pretrained`` starts the patriarch alone from its library's weights."""
        from kdgen.models import build, namespaced

        names = tuple(cfg.chain_models)  # one per generation: the patriarch's factory alone is pretrained

        def factory(g: int, name: str) -> ModelFactory:
            options = cfg.model.kwargs if namespaced(name) else None
            pretrained = bool(cfg.model.pretrained) and g == 0
            return lambda: build(name, num_classes, in_channels, pretrained=pretrained, options=options)

        return cls(tuple(factory(g, name) for g, name in enumerate(names)), names)

    @classmethod
    def from_user(cls, factory: ModelFactory | Sequence[ModelFactory]) -> "ChainModels":
        factories = tuple(factory) if isinstance(factory, Sequence) else (factory,)
        if not factories or not all(callable(f) for f in factories):
            raise UserError("model_factory: give a function that returns a new model, or a list of them "
                            "(one per generation, patriarch first, the last repeating)")
        names = ("custom",) if len(factories) == 1 else tuple(f"custom-{i}" for i in range(len(factories)))
        return cls(factories, names)

    def profiles(self, generations: int, image_shape: Sequence[int]) -> list[Profile]:
        """Parameters and forward FLOPs of generations 0..``generations``, each architecture built once; a model
        that cannot take ``image_shape`` images is a one-line :class:`~kdgen.errors.ConfigError`."""
        measured: dict[int, Profile] = {}
        for g in range(generations + 1):
            index = self._index(g)
            if index not in measured:
                name = self.names[index]
                try:
                    measured[index] = profile(self.factories[index](), image_shape, name)
                except UserError:
                    raise  # the model's own one-line reason (options it does not take, weights not here)
                except Exception as exc:  # noqa: BLE001 - any failure of the model on such images is the user's
                    shape = "x".join(str(s) for s in image_shape)
                    first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
                    raise ConfigError(f"model {name!r} (generation {g}) cannot take the data's {shape} images: "
                                      f"{first}") from None
        return [measured[self._index(g)] for g in range(generations + 1)]


@dataclass(frozen=True)
class Unit:
    """One model to train: an (arm, seed, generation) triple."""

    arm: str
    seed: int
    generation: int

    @property
    def name(self) -> str:
        return unit_name(self.arm, self.seed, self.generation)

    @property
    def triple(self) -> tuple[str, int, int]:
        """(arm, seed, generation): how the unit cache names a unit."""
        return self.arm, self.seed, self.generation

    @property
    def stream_seed(self) -> int:
        """Seed of this unit's own RNG stream (init, batch order, augmentation).

        Derived from (seed, generation) with NumPy's SeedSequence, the same for every arm: the arms' models of one
        seed and generation start from the same initial weights and see the same batches (common random numbers).
        That narrows every paired difference between arms: the intervals of tolerant - strict were 2.6x narrower
        (geometric mean) on Fashion-MNIST (docs/study/common-random-numbers.md; issue 29). Adding an arm or a
        generation does not shift the others. Before issue 29 the arm (its crc32) entered too:
        kdgen.training.loop.REVISION 2 keeps such units out of the unit cache.
        """
        entropy = [self.seed, self.generation]
        return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def units(cfg: Config) -> list[Unit]:
    """Every unit of the run, in the order they are trained."""
    return [Unit(arm, seed, g) for seed in cfg.seeds for arm in cfg.generations.arms
            for g in range(cfg.generations.count + 1)]


def _row(unit: Unit, kind: str, split: str, metrics: dict[str, float]) -> Row:
    return {"arm": unit.arm, "generation": unit.generation, "kind": kind, "seed": unit.seed, "split": split, **metrics}


class GenerationsRunner:
    """Trains every unit of ``cfg`` on ``data`` with each generation's model from ``models``.

    With a ``folder`` (a run folder), every finished unit's checkpoint and rows are saved as it
    goes, the unit in progress is saved after every epoch, and units the folder already holds are
    loaded instead of trained again (exact resume). With a ``unit_cache`` (``kdgen sweep``), units
    trained by another run with the same relevant settings are taken from it, and new ones put in.
    ``stop``, when set, stops training at the next step boundary after saving its state. ``tracker``
    (:mod:`kdgen.running.tracking`) hears of every unit this process trains and saves (MLflow).
    """

    def __init__(self, cfg: Config, data: DataBundle, models: ChainModels | ModelFactory, *, runtime: Runtime | None = None,
                 folder: RunFolder | None = None, unit_cache: UnitCache | None = None,
                 stop: StopFlag | None = None, tracker: Tracker | None = None) -> None:
        self.cfg = resolve_k(cfg, data.num_classes)
        self.data = data
        self.models = models if isinstance(models, ChainModels) else ChainModels.from_user(models)
        self.folder = folder
        self.unit_cache = unit_cache
        self.stop = stop
        self.runtime = runtime if runtime is not None else Runtime.from_config(cfg.runtime)
        self.arms: dict[str, Arm] = {name: arms.make(name, self.cfg) for name in self.cfg.generations.arms}
        self.normalize = Normalizer(data.mean, data.std, self.runtime.device)
        self.steps_per_epoch = steps_per_epoch(len(data.train), cfg.train.batch_size)
        self.writer = None
        # Units are tracked by the process that writes their files (in data mode: rank 0 for all).
        self.tracker = tracker if tracker is not None and self.runtime.parallel.writes_units else Tracker()
        self.image_shape: list[int] | None = None  # (C, H, W) of evaluation images, for checkpoint metadata
        # A unit that will go to the cache is claimed before it trains (kdgen.running.unit_claims); in data mode the
        # leader, which writes the units, claims for all processes.
        self.claims = Claims(unit_cache, self.cfg, lease_s=cfg.runtime.lease_s, stop=stop) \
            if unit_cache is not None and folder is not None and self.runtime.parallel.writes_units else None
        self.units_trained = self.units_reused = 0  # by this process, this time (timing.json sums the processes')
        if cfg.log.tensorboard and folder is not None and self.runtime.parallel.writes_units:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("log.tensorboard needs the tensorboard package: pip install 'kdgen[tensorboard]'") from None
            self.writer = SummaryWriter(str(folder.tensorboard_dir))

    def unit_steps(self, unit: Unit) -> int:
        """Optimizer steps of ``unit``'s training (its arm may give it fewer epochs than train.epochs)."""
        return self.arms[unit.arm].recipe(unit.generation).epochs * self.steps_per_epoch

    def chains(self) -> list[tuple[int, str]]:
        """Every (seed, arm) chain of the run, in training order."""
        return [(seed, arm) for seed in self.cfg.seeds for arm in self.cfg.generations.arms]

    def units_to_train(self, seed: int, arm: str) -> list[Unit]:
        """The units of a chain that neither the run folder nor the unit cache holds yet."""
        def held(unit: Unit) -> bool:
            return self.is_done(unit) or (self.unit_cache is not None and
                                          self.unit_cache.get(self.cfg, unit.arm, unit.seed, unit.generation) is not None)

        return [u for u in self.chain(seed, arm) if not held(u)]

    def run(self) -> list[Row]:
        """Train and evaluate every unit (under ``runtime.parallel=chains``: this process's chains);
        return the tidy result rows (with a folder: all of its rows this process knows of)."""
        chains = self.chains()
        # Units another run put in the cache cost nothing here: counting them would leave a process idle.
        remaining = [sum(self.unit_steps(u) for u in self.units_to_train(seed, arm)) for seed, arm in chains]
        # The leader's view, so every process shares out the same chains even while the cache changes.
        remaining = self.runtime.parallel.leader_value(remaining)  # type: ignore[assignment]
        mine = [chains[i] for i in self.runtime.parallel.assign(remaining)]
        rows = self.run_chains(mine)
        if self.writer is not None:
            self.writer.close()
        return self.folder.rows if self.folder is not None else rows

    def progress(self, chains: list[tuple[int, str]]) -> tqdm:
        """The progress bar of training ``chains``, the leader's alone (processes' bars would overwrite each
        other); counted in optimizer steps, so long epochs (ImageNet) show progress and the rate is steps/s."""
        done = sum(self.unit_steps(u) for seed, arm in chains for u in self.chain(seed, arm) if self.is_done(u))
        total = sum(self.unit_steps(u) for seed, arm in chains for u in self.chain(seed, arm))
        # Off a terminal (CI logs, files) redraw rarely instead of filling the log with updates.
        interactive = sys.stderr.isatty()
        show = self.cfg.log.progress and self.runtime.parallel.is_leader
        return tqdm(total=total, unit="step", disable=not show, initial=done, dynamic_ncols=True,
                    mininterval=0.1 if interactive else 10.0)

    def run_chains(self, chains: list[tuple[int, str]], bar: tqdm | None = None) -> list[Row]:
        """Train and evaluate the units of ``chains`` (seed, arm) in order; the rows of the units this call
        finished. A stop or an error releases this process's claims (the shared states stay)."""
        own = bar is None
        bar = self.progress(chains) if own else bar
        rows: list[Row] = []
        try:
            for seed, arm in waiting_last(chains, lambda chain: self.waits_on_another(*chain)):
                rows.extend(self.run_arm(arm, seed, bar))
        finally:
            if self.claims is not None:
                self.claims.release_all()
            if own:
                bar.close()
        return rows

    def waits_on_another(self, seed: int, arm: str) -> bool:
        """Whether the first unit of the chain still to train is claimed by another process (sharing the unit
        cache), so that starting this chain now would wait. Data mode never reorders (its processes move together)."""
        if self.claims is None or self.folder is None or self.runtime.parallel.splits_batches:
            return False
        todo = self.units_to_train(seed, arm)
        return bool(todo) and self.claims.claimed_elsewhere(todo[0])

    def chain(self, seed: int, arm: str) -> list[Unit]:
        return [Unit(arm, seed, g) for g in range(self.cfg.generations.count + 1)]

    def is_done(self, unit: Unit) -> bool:
        return self.folder is not None and self.folder.is_done(unit.name)

    def run_arm(self, arm_name: str, seed: int, bar: tqdm | None = None) -> list[Row]:
        """The chain of one arm and seed, generation by generation.

        A unit this run folder finished already, or one the unit cache holds, is not trained again;
        it is loaded (and evaluated) only when a unit still to be trained needs it: as its start,
        its teacher or a member of its ensemble.
        """
        arm = self.arms[arm_name]
        rows: list[Row] = []
        chain = self.chain(seed, arm_name)
        finished = [self.is_done(u) for u in chain]
        cached = [None if done or self.unit_cache is None else self.reusable(self.unit_cache.get(self.cfg, *u.triple))
                  for u, done in zip(chain, finished)]
        to_train = [not done and hit is None for done, hit in zip(finished, cached)]
        needed = {j for g, train in enumerate(to_train) if train
                  for j in [arm.start(g), *arm.teachers(g), *arm.ensemble(g)] if j is not None and j != g}
        models: dict[int, nn.Module] = {}  # frozen generations a later one starts from or learns from
        member_probs: dict[int, dict[str, torch.Tensor]] = {}
        for generation, unit in enumerate(chain):
            if to_train[generation] and self.unit_cache is not None and self.folder is not None:
                hit = self.reusable(self.claims.acquire(unit, bar)) if self.claims is not None else None
                if self.runtime.parallel.splits_batches and self.runtime.parallel.leader_value(hit is not None):
                    hit = hit or self.reusable(self.unit_cache.get(self.cfg, *unit.triple))
                if hit is not None:  # another process trained it meanwhile
                    to_train[generation], cached[generation] = False, hit
            hit = cached[generation]
            if hit is not None and bar is not None:
                bar.update(self.unit_steps(unit))
            if to_train[generation]:
                model = self.train_unit(unit, arm, models, bar)
            elif generation in needed:
                model = self.load_unit(unit, hit.checkpoint if hit is not None else None)
            else:
                model = None  # nothing still to train needs it
            new_rows, extras, masses = self.evaluate(unit, arm, model, member_probs) if model is not None \
                else ([], {}, {})
            if hit is not None:
                new_rows, extras = hit.rows, hit.extras  # the same numbers, measured when it was trained
            if not finished[generation]:
                rows.extend(new_rows)
                self.record(unit, model, hit, new_rows, extras, masses)
            # The generation can now only teach or be started from; the next student is a new object.
            if model is not None:
                models[generation] = freeze_teacher(model)
            later = {j for g in range(generation + 1, len(chain)) for j in (arm.start(g), *arm.teachers(g))}
            models = {j: m for j, m in models.items() if j in later}
        return rows

    def record(self, unit: Unit, model: nn.Module | None, hit: CachedUnit | None, rows: list[Row],
               extras: dict[str, object], masses: dict[str, list[float]] | None = None) -> None:
        """Put a newly finished unit in the run folder (and a newly trained one in the unit cache, with ``masses``:
        each row's mean probability at every rank, keyed ``"kind/split"``)."""
        if self.folder is None or not self.runtime.parallel.writes_units:
            return
        if hit is not None:
            self.folder.adopt_unit(unit.name, hit.checkpoint, rows, extras)
            self.units_reused += 1
            self.tracker.unit_finished(unit, self.models.name(unit.generation), rows, reused=True)
            return
        assert model is not None
        if self.image_shape is None:
            self.image_shape = list(example_shape(self.data.test if len(self.data.test) else self.data.train))
        # Everything kdgen.load needs to use the model on uint8 images, without the data.
        self.folder.finish_unit(unit.name, model, {
            "arm": unit.arm, "seed": unit.seed, "generation": unit.generation,
            "model": self.models.name(unit.generation),
            "num_classes": self.data.num_classes, "in_channels": self.data.channels, "mean": list(self.data.mean),
            "std": list(self.data.std), "class_names": list(self.data.class_names), "image_shape": self.image_shape},
            rows, extras)
        self.tracker.unit_finished(unit, self.models.name(unit.generation), rows)
        self.units_trained += 1
        if self.unit_cache is not None:
            self.unit_cache.put(self.cfg, unit.arm, unit.seed, unit.generation, self.folder.checkpoint_path(unit.name),
                                rows, extras, rank_mass=masses, secondary_k=self.secondary_k)
            if self.claims is not None:
                self.claims.release(unit, finished=True)

    def evaluate(self, unit: Unit, arm: Arm, model: nn.Module,
                 member_probs: dict[int, dict[str, torch.Tensor]]
                 ) -> tuple[list[Row], dict[str, object], dict[str, list[float]]]:
        """Rows of ``model`` on every split, and of the arm's ensemble at this generation; extras: calibration
        bins of every model, and a patriarch's soft confusion matrices; and each row's mean probability at every
        rank (``{"kind/split": [...]}``, for the unit cache: :meth:`reusable`)."""
        rows: list[Row] = []
        extras: dict[str, object] = {}
        masses: dict[str, list[float]] = {}
        generation, runtime = unit.generation, self.runtime
        for split_name, split in self.eval_splits().items():
            probs = runtime.parallel.gather(
                lambda part: predict_probs(model, part, self.normalize, batch_size=self.cfg.train.eval_batch_size,
                                           precision=runtime.precision, channels_last=runtime.channels_last,
                                           workers=runtime.workers), split)
            rows.append(_row(unit, "single", split_name, self.metrics(probs, split.labels)))
            masses[f"single/{split_name}"] = rank_mass(probs)
            if split_name != "train":  # the report's reliability diagrams and confidence histograms
                extras.setdefault("calibration", {})[split_name] = calibration_bins(probs, split.labels)  # type: ignore[index]
            if generation == 0 and split_name != "train":
                extras["class_names"] = self.data.class_names
                extras.setdefault("soft_confusion", {})[split_name] = soft_confusion(  # type: ignore[index]
                    probs, split.labels, self.data.num_classes)
            member_probs.setdefault(generation, {})[split_name] = probs
            members = arm.ensemble(generation)
            if len(members) >= 2 and all(m in member_probs for m in members):
                ensemble = torch.stack([member_probs[m][split_name] for m in members]).mean(dim=0)
                rows.append(_row(unit, "ensemble", split_name, self.metrics(ensemble, split.labels)))
                masses[f"ensemble/{split_name}"] = rank_mass(ensemble)
        return rows, extras, masses

    def eval_splits(self) -> dict[str, object]:
        """The splits every model is evaluated on: val, test and (when the data has one) the train sample."""
        splits = {"val": self.data.val, "test": self.data.test}
        if self.data.train_eval is not None:
            splits["train"] = self.data.train_eval
        return splits

    @property
    def secondary_k(self) -> int:
        """The K of the rows' secondary-information metrics (mass on ranks 2..K)."""
        return self.cfg.tolerance.secondary_k(self.data.num_classes)

    def metrics(self, probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return classification_metrics(probs, labels, k=self.secondary_k, groups=self.data.class_groups)

    def reusable(self, hit: CachedUnit | None) -> CachedUnit | None:
        """A cached unit with rows for this run: K is not in a unit's key, so ``secondary_mass`` is recomputed for
        this run's K from the unit's recorded per-rank mass (as this run would have measured it). None when its
        record cannot give them (written without the per-rank mass, at another K): then the unit is trained again."""
        if hit is None or hit.secondary_k == self.secondary_k:
            return hit
        masses = hit.rank_mass or {}
        if any(f"{row['kind']}/{row['split']}" not in masses for row in hit.rows):
            return None
        rows = [{**row, "secondary_mass": secondary_mass(masses[f"{row['kind']}/{row['split']}"], self.secondary_k)}
                if "secondary_mass" in row else row for row in hit.rows]
        return replace(hit, rows=rows, secondary_k=self.secondary_k)

    def load_unit(self, unit: Unit, checkpoint: Path | None = None) -> nn.Module:
        """A unit finished by an earlier process, from its checkpoint in the run folder (or ``checkpoint``)."""
        torch.manual_seed(unit.stream_seed)
        model = self.models.build(unit.generation)
        if checkpoint is not None:
            load_model(model, checkpoint)
        else:
            assert self.folder is not None
            self.folder.load_finished(unit.name, model)
        # The same memory layout as after training, so a resumed teacher computes bit-identical logits.
        return model.to(self.runtime.device, memory_format=self.runtime.memory_format).eval()

    def train_unit(self, unit: Unit, arm: Arm, models: dict[int, nn.Module], bar: tqdm | None = None) -> nn.Module:
        """``unit`` trained: a new model, initialised from the unit's own stream or from the arm's start generation."""
        generation = unit.generation
        torch.manual_seed(unit.stream_seed)
        student = self.models.build(generation).to(self.runtime.device)
        start = arm.start(generation)
        if start is not None:
            student.load_state_dict(models[start].state_dict())  # a copy: the start model stays as it was
        resume_from = self.folder.pending_state(unit.name) if self.folder is not None else None
        if resume_from is None and self.claims is not None and not self.runtime.parallel.splits_batches:
            resume_from = self.claims.shared_state(unit)  # a claimer that died left it next to its claim
        if bar is not None:
            if resume_from is not None:
                bar.update(resume_from.epoch * self.steps_per_epoch + resume_from.step)
            bar.set_description(f"{unit.arm} seed {unit.seed} gen {generation}")

        def on_state(state: EpochState) -> None:
            state.unit = unit.name
            if self.runtime.parallel.writes_units:  # data mode: rank 0 saves the state all ranks share
                self.folder.save_epoch(state)  # type: ignore[union-attr]
                if self.claims is not None:
                    self.claims.share_state(unit, self.folder.state_path(unit.name))  # type: ignore[union-attr]

        def on_epoch(log: EpochLog) -> None:
            if bar is not None:
                bar.set_postfix({k: f"{v:.3f}" for k, v in log.losses.items()}, refresh=False)
            if self.writer is not None:
                for name, value in log.losses.items():
                    self.writer.add_scalar(f"{unit.name}/loss_{name}", value, log.epoch)
                self.writer.add_scalar(f"{unit.name}/lr", log.lr, log.epoch)
            self.tracker.epoch(unit, log.epoch, log.losses, log.lr)

        self.tracker.unit_started(unit, self.models.name(generation))
        hooks = TrainHooks(where=f"arm {unit.arm}, seed {unit.seed}, generation {generation}",
                           on_step=(lambda: bar.update(1)) if bar is not None else None, on_epoch=on_epoch,
                           on_state=on_state if self.folder is not None else None, stop=self.stop,
                           state_every_s=self.runtime.save_every_s)
        train_generation(student, self.data, arm.recipe(generation), arm.objective(generation), self.runtime, hooks,
                         seed=unit.stream_seed, teacher=[models[t] for t in arm.teachers(generation)],
                         resume_from=resume_from)
        return student
