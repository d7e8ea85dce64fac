"""``kdgen cache ls|verify|prune|du DIR``: look after a unit cache (:mod:`kdgen.running.unit_cache`).

Pure functions that read a cache folder and return data; the command line (:mod:`kdgen.cli`) prints it. Only
:func:`delete` changes anything.

A unit folder is ``DIR/<arm>-seed<S>-gen<G>-<key>/`` holding ``record.json`` and ``model.safetensors``; a claim file
``DIR/<unit folder>.claim`` marks a unit a process is training. A unit folder without ``record.json`` was
interrupted before it was finished and is not in the cache (:func:`scan` lists it as incomplete).

A folder or file that cannot be read or deleted (no permission, a read-only file system, an I/O error) is a
:class:`~kdgen.errors.ReadError` or :class:`~kdgen.errors.WriteError` naming it and the cause (one line, exit code 2
on the command line). Files that vanish while a cache is read (a run putting a unit in, another prune) are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdgen.errors import UserError, WriteError, os_reason, read_error
from kdgen.running.unit_cache import CHECKPOINT_FILE, RECORD_FILE, check_unit

UNIT_FOLDER = re.compile(r"^(?P<arm>.+)-seed(?P<seed>\d+)-gen(?P<generation>\d+)-(?P<key>[0-9a-f]{16})$")
CLAIM_SUFFIX = ".claim"
# A claimer's latest training state, shared so that whoever takes the unit over resumes it (kdgen.running.unit_claims).
STATE_SUFFIX = ".state.safetensors"
FRESH_CLAIM_S = 3600.0  # a claim file younger than this may belong to a live process: never deleted


@dataclass
class UnitEntry:
    """One unit folder of a cache, as found on disk."""

    folder: Path
    arm: str
    seed: int
    generation: int
    key: str
    bytes: int  # every file in the folder (apparent size; the checkpoint may be a hard link shared with run folders)
    mtime: float  # when it was finished: record.json's modification time (the folder's if there is none)
    record: dict[str, Any] | None
    complete: bool  # has record.json
    shared: bool = False  # the checkpoint has other hard links (run folders): deleting it here frees nothing

    @property
    def name(self) -> str:
        """The unit's name, as in a run folder: ``<arm>-seed<S>-gen<G>``."""
        return f"{self.arm}-seed{self.seed}-gen{self.generation}"

    @property
    def model(self) -> str:
        """The unit's model name from its recorded settings ("?" if unknown)."""
        settings = (self.record or {}).get("settings") or {}
        return str((settings.get("model") or {}).get("name", "?"))

    @property
    def claim(self) -> Path:
        """Where a process training this unit puts its claim file."""
        return self.folder.with_name(self.folder.name + CLAIM_SUFFIX)


@dataclass
class Verdict:
    """The check of one unit: ``status`` is ``ok``, ``unverified`` (no recorded checksum), ``bad`` or
    ``incomplete`` (no record: never finished, not in the cache); ``cause`` says why it is bad."""

    unit: UnitEntry
    status: str
    cause: str = ""


@dataclass
class Usage:
    """Totals of :func:`disk_usage`: bytes and units, overall and per arm and per model."""

    bytes: int = 0
    units: int = 0
    shared_bytes: int = 0  # of which checkpoints hard-linked from elsewhere as well
    per_arm: dict[str, list[int]] = field(default_factory=dict)  # arm -> [units, bytes]
    per_model: dict[str, list[int]] = field(default_factory=dict)  # model -> [units, bytes]


def _stat(path: Path) -> os.stat_result | None:
    """``path``'s stat, None if it is gone (removed or renamed since it was listed); an unreadable one is a
    :class:`~kdgen.errors.ReadError`."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):  # (a file where a folder of the path should be: no such path)
        return None
    except OSError as exc:
        raise read_error(path, exc) from None


def _list(folder: Path) -> list[Path] | None:
    """The entries of ``folder`` (None if it is gone); an unreadable folder is a :class:`~kdgen.errors.ReadError`."""
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise read_error(folder, exc) from None


def _is_file(info: os.stat_result | None) -> bool:
    return info is not None and stat.S_ISREG(info.st_mode)


def scan(root: Path) -> list[UnitEntry]:
    """Every unit folder of the cache ``root``, sorted by name.

    Raises :class:`UserError` if ``root`` is not a cache: missing, not a folder, or not empty yet without a single
    unit folder holding a ``record.json``; :class:`~kdgen.errors.ReadError` if a folder of it cannot be read.
    """
    root = Path(root)
    info = _stat(root)
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise UserError(f"{str(root)!r} is not a unit cache (no such folder)")
    units = []
    children = _list(root) or []
    for child in children:
        match = UNIT_FOLDER.match(child.name)
        child_info = _stat(child) if match else None
        if child_info is None or not stat.S_ISDIR(child_info.st_mode):
            continue
        entries = _list(child)
        if entries is None:  # deleted since it was listed (a prune)
            continue
        sizes = [found.st_size for found in map(_stat, entries) if _is_file(found)]
        record_path = child / RECORD_FILE
        record_info = _stat(record_path)
        complete = _is_file(record_info)
        record = check_unit_record(child)[0] if complete else None
        checkpoint = _stat(child / CHECKPOINT_FILE)
        units.append(UnitEntry(
            folder=child, arm=match["arm"], seed=int(match["seed"]), generation=int(match["generation"]),
            key=match["key"], bytes=sum(sizes), mtime=(record_info if complete else child_info).st_mtime,
            record=record, complete=complete, shared=_is_file(checkpoint) and checkpoint.st_nlink > 1))
    in_progress = [child for child in children if child.name.endswith((CLAIM_SUFFIX, STATE_SUFFIX))]
    if children and not any(unit.complete for unit in units) and not in_progress:
        # (a cache whose first unit is still being trained has its claim and shared state, and no unit folder yet)
        raise UserError(f"{str(root)!r} is not a unit cache (no <arm>-seed<S>-gen<G>-<key>/{RECORD_FILE} in it)")
    return sorted(units, key=lambda unit: (unit.arm, unit.seed, unit.generation, unit.key))


def check_unit_record(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The record of a unit folder without hashing its checkpoint (``(None, cause)`` if unreadable)."""
    from kdgen.checkpoint import read_json
    from kdgen.errors import CheckpointError, ReadError

    try:
        record = read_json(folder / RECORD_FILE)
    except ReadError as exc:  # no permission, an I/O error: listed as unreadable, not a traceback
        return None, f"{folder / RECORD_FILE}: cannot be read ({exc.reason})"
    except CheckpointError as exc:
        return None, str(exc)
    return (record, None) if isinstance(record, dict) else (None, "not a record")


def verify(units: list[UnitEntry]) -> list[Verdict]:
    """Check every unit's record and checkpoint against its recorded sha256 (reads every checkpoint)."""
    verdicts = []
    for unit in units:
        if not unit.complete:
            verdicts.append(Verdict(unit, "incomplete", f"no {RECORD_FILE} (never finished)"))
            continue
        try:
            record, cause = check_unit(unit.folder)
        except OSError as exc:  # an unreadable record (no permission, an I/O error)
            record, cause = None, f"unreadable ({os_reason(exc)}: {getattr(exc, 'filename', None) or unit.folder})"
        if cause is not None:
            verdicts.append(Verdict(unit, "bad", cause))
        elif record is not None and record.get("sha256") is None:
            verdicts.append(Verdict(unit, "unverified", "no checksum recorded (written before checksums)"))
        else:
            verdicts.append(Verdict(unit, "ok"))
    return verdicts


def flatten(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys: ``{"tolerance": {"eta": 0.7}}`` -> ``{"tolerance.eta": 0.7}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def differing_settings(units: list[UnitEntry]) -> dict[Path, dict[str, Any]]:
    """For every unit, the dotted settings in which it differs from another unit of the same (arm, seed, generation)
    in the cache (empty when it is the only one); a key one unit lacks counts as differing (``None`` there)."""
    groups: dict[tuple[str, int, int], list[UnitEntry]] = defaultdict(list)
    for unit in units:
        groups[(unit.arm, unit.seed, unit.generation)].append(unit)
    found: dict[Path, dict[str, Any]] = {}
    for members in groups.values():
        flat = [flatten((unit.record or {}).get("settings") or {}) for unit in members]
        keys = sorted({key for one in flat for key in one})
        differ = [key for key in keys if len({repr(one.get(key)) for one in flat}) > 1] if len(members) > 1 else []
        for unit, one in zip(members, flat):
            found[unit.folder] = {key: one.get(key) for key in differ}
    return found


def run_unit_folders(run_dir: Path) -> set[str]:
    """The cache folder names (``<unit name>-<key>``) of every unit of a run folder, from its saved config.

    This is the rule by which a run "uses" a unit: the unit its config asks for (the same key it would look up
    in a cache), whether it took it from this cache, trained it itself or has not got to it yet.
    """
    from kdgen.folders import saved_config, unit_name
    from kdgen.running.unit_cache import unit_key

    run_dir = Path(run_dir)
    try:
        cfg = saved_config(run_dir)
    except UserError as exc:
        raise UserError(f"--runs/--unused-by {str(run_dir)!r}: not a run folder ({exc})") from None
    except OSError as exc:
        raise read_error(getattr(exc, "filename", None) or run_dir, exc) from None
    return {f"{unit_name(arm, seed, g)}-{unit_key(cfg, arm, seed, g)}"
            for arm in cfg.generations.arms for seed in cfg.seeds for g in range(cfg.generations.count + 1)}


def users(units: list[UnitEntry], run_dirs: list[Path]) -> dict[Path, list[Path]]:
    """For every unit, which of ``run_dirs`` use it (see :func:`run_unit_folders`)."""
    wanted = {Path(run): run_unit_folders(run) for run in run_dirs}
    return {unit.folder: [run for run, names in wanted.items() if unit.folder.name in names] for unit in units}


def disk_usage(units: list[UnitEntry]) -> Usage:
    """Total size and number of finished units, and the same per arm and per model."""
    usage = Usage()
    for unit in units:
        if not unit.complete:
            continue
        usage.bytes += unit.bytes
        usage.units += 1
        if unit.shared:
            usage.shared_bytes += unit.bytes
        for table, name in ((usage.per_arm, unit.arm), (usage.per_model, unit.model)):
            entry = table.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += unit.bytes
    return usage


@dataclass
class PrunePlan:
    """What :func:`plan_prune` would delete: unit folders, claim files and shared training states, and what it
    skips (with why)."""

    units: list[UnitEntry]
    claims: list[Path]
    skipped: list[tuple[UnitEntry, str]]

    @property
    def bytes(self) -> int:
        """The size of the unit folders it deletes."""
        return sum(unit.bytes for unit in self.units)


def plan_prune(root: Path, units: list[UnitEntry], *, older_than_days: float | None = None,
               unused_by: list[Path] | None = None, now: float | None = None) -> PrunePlan:
    """The units to delete: finished more than ``older_than_days`` ago, or used by none of ``unused_by`` (both
    given: both must hold). Incomplete unit folders older than a day count as unused and old. A unit with a fresh
    claim file (younger than :data:`FRESH_CLAIM_S`) is skipped; stale claims of deleted units go with them, and
    stale claims without a unit folder too."""
    now = time.time() if now is None else now
    used: set[str] = set()
    for run in unused_by or []:
        used |= run_unit_folders(run)
    plan = PrunePlan([], [], [])
    for unit in units:
        age_days = (now - unit.mtime) / 86400
        if older_than_days is not None and age_days < older_than_days:
            continue
        if unused_by is not None and unit.folder.name in used:
            continue
        if not unit.complete and age_days < 1:
            continue  # perhaps being written right now
        claim = unit.claim
        claim_info = _stat(claim)
        if _is_file(claim_info):
            if now - claim_info.st_mtime < FRESH_CLAIM_S:
                plan.skipped.append((unit, "claimed by a process in the last hour"))
                continue
            plan.claims.append(claim)
        plan.units.append(unit)
        state = unit.folder.with_name(unit.folder.name + STATE_SUFFIX)
        if _is_file(_stat(state)):
            plan.claims.append(state)
    present = {unit.folder.name for unit in units}
    entries = sorted(_list(Path(root)) or [])
    for suffix in (CLAIM_SUFFIX, STATE_SUFFIX):  # stale claims and shared states whose unit never finished
        for path in entries:
            if not path.name.endswith(suffix) or path.name[: -len(suffix)] in present:
                continue
            info = _stat(path)
            if _is_file(info) and now - info.st_mtime >= FRESH_CLAIM_S:
                plan.claims.append(path)
    return plan


def _delete_error(path: Path, exc: OSError) -> WriteError:
    return WriteError(path, os_reason(exc), exc.errno, action="delete")


def delete(plan: PrunePlan) -> None:
    """Delete what ``plan`` lists: each unit's record first (so a reader never takes a half-deleted unit for a
    finished one), then its folder; then the stale claim files.

    The first file or folder that cannot be deleted (read-only file system, no permission) stops it with a
    :class:`~kdgen.errors.WriteError` naming it: what was deleted before stays deleted, and the same prune
    again deletes the rest."""
    def fail(function: object, path: str, exc: BaseException) -> None:
        if not isinstance(exc, FileNotFoundError):  # deleted meanwhile by someone else: fine
            raise _delete_error(Path(path), exc) from None

    for unit in plan.units:
        try:
            (unit.folder / RECORD_FILE).unlink(missing_ok=True)
        except OSError as exc:
            raise _delete_error(unit.folder / RECORD_FILE, exc) from None
        if sys.version_info >= (3, 12):
            shutil.rmtree(unit.folder, onexc=fail)
        else:  # the same callback, given (type, value, traceback)
            shutil.rmtree(unit.folder, onerror=lambda function, path, info: fail(function, path, info[1]))
    for claim in plan.claims:
        try:
            claim.unlink(missing_ok=True)
        except OSError as exc:
            raise _delete_error(claim, exc) from None


def human_size(size: float) -> str:
    """Bytes as a short human-readable size: ``1.1 MB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


def human_age(seconds: float) -> str:
    """An age as ``45s``, ``12m``, ``3h`` or ``5d``."""
    seconds = max(0.0, seconds)
    for limit, div, suffix in ((120, 1, "s"), (7200, 60, "m"), (172800, 3600, "h")):
        if seconds < limit:
            return f"{seconds / div:.0f}{suffix}"
    return f"{seconds / 86400:.0f}d"
