"""``kdgen run`` as a function: config -> data -> generations -> run directory and report."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import yaml

from kdgen.checkpoint import write_json
from kdgen.config import Config
from kdgen.data import load_bundle
from kdgen.data.base import DataBundle
from kdgen.errors import ConfigError, UserError
from kdgen.generations import GenerationsRunner, Row
from kdgen.models import build
from kdgen.report import build_report, console_summary


def check_against_data(cfg: Config, data: DataBundle) -> None:
    """Config checks that need the data: settings that depend on the class count."""
    if cfg.tolerance.method == "tsd" and "tolerant" in cfg.generations.arms and cfg.tolerance.k > data.num_classes:
        raise ConfigError(f"tolerance.k: {cfg.tolerance.k} is more than the {data.num_classes} classes of "
                          f"{cfg.data.name}")
    if len(data.train) < 2:
        raise ConfigError(f"data: the training split has {len(data.train)} example(s) after holding out validation data")


def new_run_dir(base: Path = Path("runs")) -> Path:
    """A fresh folder name under ``runs/``: a timestamp, with a suffix if it is taken."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = base / stamp
    suffix = 1
    while candidate.exists():
        candidate = base / f"{stamp}-{suffix}"
        suffix += 1
    return candidate


def prepare_out_dir(out: Path | None) -> Path:
    """Create the run folder; an existing file, or a non-empty folder, is refused (never overwritten)."""
    out = new_run_dir() if out is None else out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; choose a new folder (kdgen never overwrites a run)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {str(out)!r}: cannot create folder ({exc.strerror})") from None
    return out


def run_experiment(cfg: Config, out: Path | None = None, *, echo: bool = True) -> tuple[Path, list[Row]]:
    """Run every arm, seed and generation of ``cfg``; write the run folder; return it and the rows."""
    start = time.perf_counter()
    data = load_bundle(cfg.data)
    check_against_data(cfg, data)
    out_dir = prepare_out_dir(out)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    rows: list[Row] = []

    def save_partial(new_rows: list[Row]) -> None:
        rows.extend(new_rows)
        write_json(out_dir / "results.json", {"rows": rows, "complete": False})

    if echo:
        print(f"kdgen: {cfg.data.name} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test, "
              f"{data.num_classes} classes), model {cfg.model.name}, arms {cfg.generations.arms}, "
              f"seeds {cfg.seeds}, patriarch + {cfg.generations.count} generations -> {out_dir}", flush=True)

    def factory():
        return build(cfg.model.name, data.num_classes, data.channels)

    runner = GenerationsRunner(cfg, data, factory, out_dir=out_dir, model_name=cfg.model.name, on_rows=save_partial)
    runner.run()
    wall = time.perf_counter() - start
    write_json(out_dir / "results.json", {"rows": rows, "complete": True, "wall_time_s": wall})
    build_report(out_dir, rows, wall_time_s=wall)
    if echo:
        print(console_summary(rows))
        print(f"\nwall time {wall:.1f} s; report: {out_dir / 'report.md'}")
    return out_dir, rows
