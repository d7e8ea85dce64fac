"""A sweep's plan: its grid axes (linked keys included), points, base config and ``--select``; and the shape of its
summary (:class:`SweepSummary`, one :class:`PointSummary` per point).

Pure data and parsing, shared by the sweep runner (:mod:`kdgen.running.sweep`), its summary page
(:mod:`kdgen.reporting.sweep_page`) and the plots.
"""

from __future__ import annotations

import itertools
import re
import shlex
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdgen.config import Config, apply_overrides, build_config, read_yaml
from kdgen.errors import ConfigError

if TYPE_CHECKING:  # what a sweep's summary holds; reporting computes it (kdgen.reporting.sweep_page)
    from kdgen.reporting.results import Results
    from kdgen.reporting.statistics import Paired

SWEEP_SPLIT = "val"  # a sweep chooses; it never reads the test split
# Keys a grid may not vary: they say which runs exist, not how a unit is trained.
NOT_SWEEPABLE = ("seeds", "generations.arms", "log.")


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid``: a key and its values, or linked keys (``a,b=[1,2],[3,4]``) that move together."""

    key: str
    values: tuple[Any, ...]

    @property
    def keys(self) -> list[str]:
        return axis_keys(self.key)

    def settings(self, value: Any) -> dict[str, Any]:
        """The config keys one value of this axis sets."""
        keys = self.keys
        return dict(zip(keys, value)) if len(keys) > 1 else {self.key: value}


def axis_keys(key: str) -> list[str]:
    """The config keys of a grid axis: ``distill.temperature,distill.weight`` links two."""
    return key.split(",")


@dataclass(frozen=True)
class Point:
    name: str
    settings: dict[str, Any]

    def overrides(self) -> list[str]:
        return [f"{key}={format_value(value)}" for key, value in self.settings.items()]


def format_value(value: Any) -> str:
    """A value as a ``KEY=VALUE`` override spells it (YAML flow style, so it parses back the same)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def label_value(value: Any) -> str:
    """A value as a point's folder name shows it: a section such as ``{method: tsd, eta: 0.74}`` as ``tsd-eta0.74``."""
    if isinstance(value, dict):
        return "-".join(str(v) if k == "method" else f"{k}{format_value(v)}" for k, v in value.items())
    return format_value(value)


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so ``train.milestones=[0.5,0.75],[0.3]`` has two values."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse_axis(text: str) -> GridAxis:
    """``KEY=V1,V2,...`` into a :class:`GridAxis`; values are parsed as YAML scalars or lists.

    ``KEY1,KEY2=[a1,a2],[b1,b2]`` links keys that only make sense together (a temperature and its
    distillation weight): each value is a list with one entry per key, and the axis has as many
    points as values, not their product.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key or not raw.strip():
        raise ConfigError(f"--grid {text!r} is not of the form KEY=V1,V2,... (e.g. tolerance.eta=0,0.1,0.2)")
    keys = axis_keys(key)
    for one in keys:
        if not one or one == "seeds" or one.startswith(NOT_SWEEPABLE):
            raise ConfigError(f"--grid {one or key!r}: cannot be swept (every grid point runs the same seeds and "
                              f"arms; set it as KEY=VALUE instead)")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid {key}: a linked key is repeated")
    values = []
    for item in split_values(raw):
        if not item.strip():
            raise ConfigError(f"--grid {text!r}: empty value")
        try:
            values.append(yaml.safe_load(item))
        except yaml.YAMLError:
            raise ConfigError(f"--grid {text!r}: value {item!r} is not valid YAML") from None
    if len({format_value(v) for v in values}) != len(values):
        raise ConfigError(f"--grid {key}: a value is repeated")
    if len(keys) > 1 and any(not isinstance(v, list) or len(v) != len(keys) for v in values):
        raise ConfigError(f"--grid {key}: linked keys take values of the form [{', '.join('v' + str(i + 1) for i in range(len(keys)))}], "
                          f"one entry per key (e.g. {key}=[1,0.5],[4,0.9])")
    return GridAxis(key, tuple(values))


def short_name(key: str, keys: list[str]) -> str:
    """The last part of a dotted key, or more of it where that alone would be ambiguous."""
    parts = key.split(".")
    for length in range(1, len(parts) + 1):
        suffix = ".".join(parts[-length:])
        if sum(k == suffix or k.endswith("." + suffix) for k in keys) == 1:
            return suffix
    return key


def grid_points(axes: list[GridAxis]) -> list[Point]:
    """Every combination of the axes' values, in order, each with a folder-safe readable name."""
    keys = [key for axis in axes for key in axis.keys]
    width = len(str(max(0, _product_size(axes) - 1)))
    points = []
    for index, combo in enumerate(itertools.product(*(axis.values for axis in axes))):
        settings = {k: v for axis, value in zip(axes, combo) for k, v in axis.settings(value).items()}
        label = "_".join(f"{short_name(k, keys)}={label_value(v)}" for k, v in settings.items())
        label = re.sub(r"[^A-Za-z0-9.=_+-]", "", label)[:120]
        points.append(Point(f"{index:0{width}d}_{label}", settings))
    return points


def _product_size(axes: list[GridAxis]) -> int:
    size = 1
    for axis in axes:
        size *= len(axis.values)
    return size


@dataclass
class SweepPlan:
    """What a sweep runs: the base config (file + overrides) and the grid."""

    base: dict[str, Any]
    config_file: str | None
    overrides: list[str]
    axes: list[GridAxis]
    select: str = "tolerant/last"
    reference: int = 0

    def points(self) -> list[Point]:
        return grid_points(self.axes)

    def config_for(self, point: Point) -> Config:
        return build_config(apply_overrides(self.base, point.overrides()), f"grid point {point.name}")

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "config_file": self.config_file, "overrides": self.overrides,
                "grid": [[axis.key, list(axis.values)] for axis in self.axes], "select": self.select,
                "reference": self.reference, "points": [{"name": p.name, "settings": p.settings} for p in self.points()]}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> "SweepPlan":
        """The plan :meth:`to_json` wrote (``DIR/sweep.json``)."""
        return cls(saved["base"], saved["config_file"], saved["overrides"],
                   [GridAxis(key, tuple(values)) for key, values in saved["grid"]], saved["select"], saved["reference"])

    def test_command(self, point: Point) -> str:
        """The ``kdgen run`` command that evaluates ``point`` (its test rows are the ones to read)."""
        parts = ["kdgen", "run"]
        if self.config_file is not None:
            parts += ["--config", self.config_file]
        kept = [o for o in self.overrides if not o.startswith("log.")]  # how it shows progress is the user's business
        parts += kept + point.overrides() + ["--out", f"runs/{point.name.split('_', 1)[-1] or 'best'}-test"]
        return " ".join(shlex.quote(part) for part in parts)


def make_plan(config_file: Path | None, grid: list[str], overrides: list[str], select: str, reference: int) -> SweepPlan:
    """Validate everything before anything is trained: the grid, every point's config, the selection."""
    if not grid:
        raise ConfigError("kdgen sweep needs at least one --grid KEY=V1,V2,...")
    axes = [parse_axis(text) for text in grid]
    keys = [key for axis in axes for key in axis.keys]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid: key {next(k for k in keys if keys.count(k) > 1)} is given twice")
    raw = read_yaml(config_file) if config_file is not None else {}
    base = apply_overrides(raw, overrides)
    plan = SweepPlan(base, str(config_file) if config_file is not None else None, list(overrides), axes, select, reference)
    configs = [plan.config_for(point) for point in plan.points()]
    parse_select(select, configs[0])
    if not 0 <= reference < len(configs):
        raise ConfigError(f"--reference {reference}: the grid has points 0..{len(configs) - 1}")
    return plan


def parse_select(select: str, cfg: Config) -> tuple[str, int, str]:
    """``ARM/GEN[/ensemble]`` (GEN a number or ``last``) into (arm, generation, kind)."""
    parts = select.split("/")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("single", "ensemble")):
        raise ConfigError(f"--select {select!r} is not ARM/GEN or ARM/GEN/ensemble (e.g. tolerant/last)")
    arm, gen_text = parts[0], parts[1]
    kind = parts[2] if len(parts) == 3 else "single"
    if arm not in cfg.generations.arms:
        raise ConfigError(f"--select {select!r}: arm {arm!r} is not run (generations.arms: {cfg.generations.arms})")
    last = cfg.generations.count
    if gen_text == "last":
        generation = last
    elif gen_text.isdigit() and int(gen_text) <= last:
        generation = int(gen_text)
    else:
        raise ConfigError(f"--select {select!r}: generation must be 0..{last} or last")
    if kind == "ensemble" and generation < 2:
        raise ConfigError(f"--select {select!r}: ensembles start at generation 2")
    return arm, generation, kind


# --- a sweep's results, as kdgen.reporting.sweep_page summarises them (sweep_summary.json) ----------------

@dataclass
class PointSummary:
    """One grid point: its settings, its val (and train-sample) results and how its selected cell scores."""

    name: str
    settings: dict[str, Any]
    complete: bool
    results: Results
    score: dict[int, float] = field(default_factory=dict)  # the selected cell's val top-1 per seed
    score_nll: float = math.nan
    patriarch_train_top1: float = math.nan  # did the patriarch converge? (its unaugmented training sample)
    vs_reference: Paired | None = None
    vs_rival: Paired | None = None
    vs_others: dict[str, Paired | None] = field(default_factory=dict)  # the selected arm's other rivals that ran

    @property
    def score_mean(self) -> float:
        return mean_of(self.score)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "settings": self.settings, "complete": self.complete,
                                 "cells": [c.to_json() for c in self.results.cells_in(SWEEP_SPLIT)],
                                 "score_n": len(self.score), "patriarch_train_top1": self.patriarch_train_top1}
        if self.score:
            entry.update(score_mean=self.score_mean, score_nll=self.score_nll,
                         vs_reference=_json(self.vs_reference), vs_rival=_json(self.vs_rival),
                         vs_others={other: _json(found) for other, found in self.vs_others.items()})
        return entry


@dataclass
class SweepSummary:
    """A sweep's results as data; :meth:`to_json` is ``sweep_summary.json``."""

    arm: str
    generation: int
    kind: str
    rival: str | None  # the selected arm's main rival, when it ran
    others: list[str]  # its other rivals that ran (e.g. baseline for tolerant: a compact student's own architecture)
    grid: list
    reference: str
    points: list[PointSummary]
    best: PointSummary | None
    test_command: str | None

    @property
    def best_settings(self) -> dict[str, Any] | None:
        return self.best.settings if self.best is not None else None

    def to_json(self) -> dict[str, Any]:
        return {"select": {"arm": self.arm, "generation": self.generation, "kind": self.kind, "metric": "top1",
                           "split": SWEEP_SPLIT},
                "rival": self.rival, "others": self.others, "grid": self.grid, "reference": self.reference,
                "points": [p.to_json() for p in self.points], "best": self.best.name if self.best else None,
                "best_settings": self.best_settings, "test_command": self.test_command}


def _json(found: Paired | None) -> dict[str, Any] | None:
    if found is None:
        return None
    entry = {"n": found.n, "mean": found.mean, "std": found.std, "p": found.p}
    if found.no_spread and not found.identical:  # the same nonzero difference on every seed: no t-test (p NaN),
        entry["sign_p"] = found.sign_p  # the exact sign test's p instead
    return entry


def mean_of(values: dict[int, float]) -> float:
    """The mean of a {seed: value} mapping (nan when empty)."""
    return sum(values.values()) / len(values) if values else math.nan
