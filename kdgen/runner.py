"""``kdgen run`` as a function: config -> data -> generations -> run directory and report."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from kdgen.checkpoint import atomic_write, write_json
from kdgen.config import Config, build_config, read_yaml, resolve_k
from kdgen.data import load_bundle
from kdgen.data.base import DataBundle
from kdgen.errors import ConfigError, UserError
from kdgen.generations import GenerationsRunner, Row
from kdgen.models import build
from kdgen.report import build_report, console_summary
from kdgen.store import RunStore
from kdgen.unit_cache import UnitCache
from kdgen.device import resolve_device, resolve_precision

# Settings that do not change results: they may differ when resuming.
COSMETIC_KEYS = ("log.", "train.compile")


def check_against_data(cfg: Config, data: DataBundle) -> None:
    """Config checks that need the data: settings that depend on the class count."""
    if cfg.tolerance.method == "tsd" and "tolerant" in cfg.generations.arms and cfg.tolerance.k != "auto" \
            and cfg.tolerance.k > data.num_classes:
        raise ConfigError(f"tolerance.k: {cfg.tolerance.k} is more than the {data.num_classes} classes of "
                          f"{cfg.data.name}")
    if len(data.train) < 2:
        raise ConfigError(f"data: the training split has {len(data.train)} example(s) after holding out validation data")
    if len(data.val) == 0:
        raise ConfigError(f"data.val_fraction: the val split of {cfg.data.name} is empty (too few images per class "
                          f"to hold any out); use more data or a larger data.val_fraction")


def new_run_dir(base: Path = Path("runs")) -> Path:
    """A fresh folder name under ``runs/``: a timestamp, with a suffix if it is taken."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = base / stamp
    suffix = 1
    while candidate.exists():
        candidate = base / f"{stamp}-{suffix}"
        suffix += 1
    return candidate


def check_new_out_dir(out: Path) -> None:
    """An existing file, or a non-empty folder, is refused (kdgen never overwrites a run)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; choose a new folder, or add --resume to continue that run")


def make_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {str(out)!r}: cannot create folder ({exc.strerror})") from None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: Config, requested: Config) -> list[str]:
    """Dotted keys whose values differ, ignoring cosmetic settings."""
    a, b = _flatten(saved.to_dict()), _flatten(requested.to_dict())
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith(COSMETIC_KEYS))


def saved_config(out: Path) -> Config:
    """The config a run folder was started with."""
    path = out / "config.yaml"
    if not out.is_dir():
        raise UserError(f"--resume: {str(out)!r} is not a run folder")
    if not path.is_file():
        raise UserError(f"--resume: {str(out)!r} has no config.yaml (not a kdgen run folder)")
    return build_config(read_yaml(path), str(path))


def with_resolved_precision(cfg: Config) -> Config:
    """``cfg`` with ``train.precision: auto`` replaced by what it means on this machine."""
    precision = resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": precision})})


def run_experiment(cfg: Config, out: Path | None = None, *, resume: bool = False, echo: bool = True,
                   unit_cache: UnitCache | None = None) -> tuple[Path, list[Row]]:
    """Run every arm, seed and generation of ``cfg``; write the run folder; return it and the rows.

    With ``resume``, ``out`` must be a folder this function wrote before with the same config
    (``COSMETIC_KEYS``, settings that do not change results, aside); finished units are loaded,
    the unit in progress continues from its last epoch, and the final results.json is identical
    to an uninterrupted run's. With ``unit_cache`` (``kdgen sweep``), units trained by other runs with
    the same relevant settings are reused (:mod:`kdgen.unit_cache`).
    """
    start = time.perf_counter()
    if resume and out is None:
        raise UserError("--resume needs --out DIR, the folder of the run to continue")
    if resume and (not out.exists() or (out.is_dir() and not any(out.iterdir()))):
        resume = False  # killed before anything was written: there is nothing to continue, start afresh
    saved = saved_config(out) if resume else None
    if not resume:
        out = new_run_dir() if out is None else out
        check_new_out_dir(out)
    data = load_bundle(cfg.data)
    check_against_data(cfg, data)
    # config.yaml records what actually runs: the precision and K that "auto" means here.
    cfg = resolve_k(with_resolved_precision(cfg), data.num_classes)
    if saved is not None:
        differing = config_differences(resolve_k(with_resolved_precision(saved), data.num_classes), cfg)
        if differing:
            raise UserError(f"--resume: the config differs from the one {str(out)!r} was started with, in: "
                            f"{', '.join(differing)}")
    make_out_dir(out)
    store = RunStore(out, resume=resume)
    if not resume:
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        atomic_write(out / "config.yaml", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        store.write_results(complete=False)
    if echo:
        print(f"kdgen: {cfg.data.name} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test, "
              f"{data.num_classes} classes), model {cfg.model.name} ({cfg.train.precision}), arms {cfg.generations.arms}, "
              f"seeds {cfg.seeds}, patriarch + {cfg.generations.count} generations -> {out}"
              + (f" (resuming: {len(store.done)} models done)" if resume else ""), flush=True)

    def factory():
        return build(cfg.model.name, data.num_classes, data.channels)

    rows = GenerationsRunner(cfg, data, factory, store=store, model_name=cfg.model.name, unit_cache=unit_cache).run()
    store.write_results(complete=True)
    wall = time.perf_counter() - start
    write_json(out / "timing.json", {"wall_time_s": wall, "resumed": resume})
    build_report(out, rows, wall_time_s=wall)
    if echo:
        print(console_summary(rows))
        print(f"\nwall time {wall:.1f} s; report: {out / 'report.md'}")
    return out, rows
