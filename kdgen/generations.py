"""The generations driver: for every seed and arm, a patriarch and its students, then evaluation.

Arms:
- ``baseline``: ``count + 1`` independent models, cross-entropy only (the no-distillation reference
  and the control for ensembles).
- ``strict``: patriarch with cross-entropy; generation g learns from generation g - 1.
- ``tolerant``: as strict, but the patriarch (or, with ``apply_to: all``, every generation) also
  minimises the tolerance term (TSD by default).

Ensembles average the softmax of generations ``1..g`` (students only; for the baseline, models
``1..g``), so an ensemble of k generations is compared with an ensemble of k independent models.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdgen.augment import Normalizer
from kdgen.batches import steps_per_epoch
from kdgen.config import Config, resolve_k
from kdgen.data.base import DataBundle
from kdgen.metrics import classification_metrics, predict_probs, soft_confusion
from kdgen.objective import GenerationObjective, Tolerance
from kdgen.resume import EpochState
from kdgen.store import Row, RunStore
from kdgen.device import memory_format, resolve_device
from kdgen.errors import UserError
from kdgen.train import EpochLog, freeze_teacher, train_generation
from kdgen.checkpoint import load_model
from kdgen.unit_cache import UnitCache

ModelFactory = Callable[[], nn.Module]


@dataclass(frozen=True)
class Unit:
    """One model to train: an (arm, seed, generation) triple."""

    arm: str
    seed: int
    generation: int

    @property
    def name(self) -> str:
        return f"{self.arm}-seed{self.seed}-gen{self.generation}"

    @property
    def stream_seed(self) -> int:
        """Seed of this unit's own RNG stream (init, batch order, augmentation).

        Derived from (seed, arm, generation) with NumPy's SeedSequence, so streams never overlap
        and adding an arm or a generation does not shift the others. crc32 keeps arm codes stable
        across Python processes (``hash`` of a str is salted).
        """
        entropy = [self.seed, zlib.crc32(self.arm.encode()), self.generation]
        return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def objective_for(cfg: Config, arm: str, generation: int) -> GenerationObjective:
    """The loss recipe of ``arm`` at ``generation``."""
    tolerance = None
    if cfg.tolerance.method != "none" and arm == "tolerant" and (generation == 0 or cfg.tolerance.apply_to == "all"):
        tolerance = Tolerance(cfg.tolerance.method, cfg.tolerance.eta, cfg.tolerance.k, cfg.tolerance.primary)
    distills = arm != "baseline" and generation > 0
    return GenerationObjective(tolerance=tolerance, distill_weight=cfg.distill.weight if distills else 0.0,
                               temperature=cfg.distill.temperature)


def units(cfg: Config) -> list[Unit]:
    """Every unit of the run, in the order they are trained."""
    return [Unit(arm, seed, g) for seed in cfg.seeds for arm in cfg.generations.arms
            for g in range(cfg.generations.count + 1)]


def _rows(unit: Unit, kind: str, split: str, metrics: dict[str, float]) -> Row:
    return {"arm": unit.arm, "generation": unit.generation, "kind": kind, "seed": unit.seed, "split": split, **metrics}


class GenerationsRunner:
    """Trains every unit of ``cfg`` on ``data`` with models from ``model_factory``.

    With a ``store`` (a run folder), every finished unit's checkpoint and rows are saved as it
    goes, the unit in progress is saved after every epoch, and units the store already holds are
    loaded instead of trained again (exact resume). With a ``unit_cache`` (``kdgen sweep``), units
    trained by another run with the same relevant settings are taken from it, and new ones put in.
    """

    def __init__(self, cfg: Config, data: DataBundle, model_factory: ModelFactory, *, store: RunStore | None = None,
                 model_name: str = "custom", unit_cache: UnitCache | None = None) -> None:
        self.cfg = resolve_k(cfg, data.num_classes)
        self.data = data
        self.model_factory = model_factory
        self.store = store
        self.unit_cache = unit_cache
        self.model_name = model_name
        self.device = resolve_device(cfg.train.device)
        self.normalize = Normalizer(data.mean, data.std, self.device)
        self.steps_per_epoch = steps_per_epoch(len(data.train), cfg.train.batch_size)
        self.writer = None
        if cfg.log.tensorboard and store is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("log.tensorboard needs the tensorboard package: pip install 'kdgen[tensorboard]'") from None
            self.writer = SummaryWriter(str(store.out_dir / "tensorboard"))

    def run(self) -> list[Row]:
        """Train and evaluate every unit; return the tidy result rows (with a store: all of its rows)."""
        all_units = units(self.cfg)
        rows: list[Row] = []
        done = sum(self.store is not None and self.store.is_done(u.name) for u in all_units)
        # Off a terminal (CI logs, files) redraw rarely instead of filling the log with updates.
        interactive = sys.stderr.isatty()
        # Counted in optimizer steps, so long epochs (ImageNet) show progress and the rate is steps/s.
        unit_steps = self.cfg.train.epochs * self.steps_per_epoch
        with tqdm(total=len(all_units) * unit_steps, unit="step", disable=not self.cfg.log.progress,
                  initial=done * unit_steps, dynamic_ncols=True, mininterval=0.1 if interactive else 10.0) as bar:
            for seed in self.cfg.seeds:
                for arm in self.cfg.generations.arms:
                    rows.extend(self.run_arm(arm, seed, bar))
        if self.writer is not None:
            self.writer.close()
        return self.store.rows if self.store is not None else rows

    def run_arm(self, arm: str, seed: int, bar: tqdm | None = None) -> list[Row]:
        """Patriarch and students of one arm and seed (or the baseline's independent models).

        A unit this run folder finished already, or one the unit cache holds, is not trained again;
        it is loaded (and evaluated) only when a later generation still to be computed needs it as
        a teacher or as an ensemble member.
        """
        rows: list[Row] = []
        teacher: nn.Module | None = None
        splits = self.eval_splits()
        member_probs: dict[str, list[torch.Tensor]] = {name: [] for name in splits}
        chain = [Unit(arm, seed, g) for g in range(self.cfg.generations.count + 1)]
        finished = [self.store is not None and self.store.is_done(u.name) for u in chain]
        cached = [None if done or self.unit_cache is None else self.unit_cache.get(self.cfg, u.arm, u.seed, u.generation)
                  for u, done in zip(chain, finished)]
        last_to_compute = max((g for g, u in enumerate(chain) if not finished[g] and cached[g] is None), default=-1)
        for generation, unit in enumerate(chain):
            hit = cached[generation]
            ready = finished[generation] or hit is not None
            if hit is not None and bar is not None:
                bar.update(self.cfg.train.epochs * self.steps_per_epoch)
            if ready and generation >= last_to_compute:
                student = None  # nothing later in this chain needs it
            elif finished[generation]:
                student = self.load_unit(unit)
            elif hit is not None:
                student = self.load_unit(unit, hit.checkpoint)
            else:
                student = self.train_unit(unit, teacher, bar)
            new_rows: list[Row] = []
            extras: dict[str, object] = {}
            for split_name, split in (splits.items() if student is not None else ()):
                probs = predict_probs(student, split, self.normalize, batch_size=self.cfg.train.eval_batch_size,
                                      precision=self.cfg.train.precision, channels_last=self.cfg.train.channels_last,
                                      workers=self.cfg.data.workers)
                new_rows.append(_rows(unit, "single", split_name, self.metrics(probs, split.labels)))
                if generation == 0 and split_name != "train":
                    extras["class_names"] = self.data.class_names
                    extras.setdefault("soft_confusion", {})[split_name] = soft_confusion(  # type: ignore[index]
                        probs, split.labels, self.data.num_classes)
                if generation >= 1:
                    member_probs[split_name].append(probs)
                if len(member_probs[split_name]) >= 2:
                    ensemble = torch.stack(member_probs[split_name]).mean(dim=0)
                    new_rows.append(_rows(unit, "ensemble", split_name, self.metrics(ensemble, split.labels)))
            if hit is not None:
                new_rows, extras = hit.rows, hit.extras  # the same numbers, measured when it was trained
            if not finished[generation]:
                rows.extend(new_rows)
                if self.store is not None and hit is not None:
                    self.store.adopt_unit(unit.name, hit.checkpoint, new_rows, extras)
                elif self.store is not None:
                    assert student is not None
                    self.store.finish_unit(unit.name, student, {
                        "arm": arm, "seed": seed, "generation": generation, "model": self.model_name,
                        "num_classes": self.data.num_classes, "in_channels": self.data.channels}, new_rows, extras)
                    if self.unit_cache is not None:
                        self.unit_cache.put(self.cfg, arm, seed, generation, self.store.checkpoint_path(unit.name),
                                            new_rows, extras)
            # The trained student becomes the next teacher; the next student is a new object.
            teacher = freeze_teacher(student) if arm != "baseline" and student is not None else None
        return rows

    def eval_splits(self) -> dict[str, object]:
        """The splits every model is evaluated on: val, test and (when the data has one) the train sample."""
        splits = {"val": self.data.val, "test": self.data.test}
        if self.data.train_eval is not None:
            splits["train"] = self.data.train_eval
        return splits

    def metrics(self, probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return classification_metrics(probs, labels, k=int(self.cfg.tolerance.k), groups=self.data.class_groups)

    def load_unit(self, unit: Unit, checkpoint: Path | None = None) -> nn.Module:
        """A unit finished by an earlier process, from its checkpoint in the store (or ``checkpoint``)."""
        torch.manual_seed(unit.stream_seed)
        model = self.model_factory()
        if checkpoint is not None:
            load_model(model, checkpoint)
        else:
            assert self.store is not None
            self.store.load_finished(unit.name, model)
        # The same memory layout as after training, so a resumed teacher computes bit-identical logits.
        return model.to(self.device, memory_format=memory_format(self.cfg.train.channels_last)).eval()

    def train_unit(self, unit: Unit, teacher: nn.Module | None, bar: tqdm | None = None) -> nn.Module:
        """A fresh model trained for ``unit`` (initialised from the unit's own stream)."""
        torch.manual_seed(unit.stream_seed)
        student = self.model_factory().to(self.device)
        resume_from = self.store.pending_state(unit.name) if self.store is not None else None
        if bar is not None and resume_from is not None:
            bar.update(resume_from.epoch * self.steps_per_epoch + resume_from.step)

        def on_state(state: EpochState) -> None:
            state.unit = unit.name
            self.store.save_epoch(state)  # type: ignore[union-attr]

        if bar is not None:
            bar.set_description(f"{unit.arm} seed {unit.seed} gen {unit.generation}")

        def on_epoch(log: EpochLog) -> None:
            if bar is not None:
                bar.set_postfix({k: f"{v:.3f}" for k, v in log.losses.items()}, refresh=False)
            if self.writer is not None:
                step = log.epoch
                for name, value in log.losses.items():
                    self.writer.add_scalar(f"{unit.name}/loss_{name}", value, step)
                self.writer.add_scalar(f"{unit.name}/lr", log.lr, step)

        train_generation(student, self.data, self.cfg.train, objective_for(self.cfg, unit.arm, unit.generation),
                         seed=unit.stream_seed, teacher=teacher, device=self.device, on_epoch=on_epoch,
                         on_step=(lambda: bar.update(1)) if bar is not None else None,
                         where=f"arm {unit.arm}, seed {unit.seed}, generation {unit.generation}",
                         workers=self.cfg.data.workers, resume_from=resume_from,
                         on_state=on_state if self.store is not None else None)
        return student
