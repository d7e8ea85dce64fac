"""Trained units shared between runs, keyed by the settings that can change them.

A unit (arm, seed, generation) depends on only part of the config:

- every unit: ``data`` (but ``data.root`` only for sources whose files it chooses, not for a published data set
  that may lie anywhere: :data:`LOCATED_SOURCES`), ``model`` (with ``generations.models``: the unit's own
  architecture, and the architecture of every generation its weights depend on when one differs; with
  ``model.pretrained``, the name of the patriarch's pretrained weights in the units that descend from it),
  ``train`` (not ``eval_batch_size``), the runtime settings that change the arithmetic, resolved where they run
  (``device``: ``auto`` as cpu or cuda; ``precision``: ``auto`` as what it means on that device;
  ``channels_last``), and its seed, arm and generation;
- under ``runtime.parallel=data`` on several processes with ``runtime.sync_batchnorm: false``, BatchNorm's
  statistics are computed per process over its share of each batch (another algorithm): the processes
  (``WORLD_SIZE``) join the key then, and only then;
- what its arm says it depends on (:meth:`kdgen.arms.Arm.unit_settings`): a student (generation
  >= 1) also on ``distill``; the tolerant arm also on ``tolerance`` (its patriarch is trained with
  it, and every later generation learns from that patriarch's line), but ``tolerance.apply_to``
  only from generation 1, and nothing of it when the term is inactive (strength 0, or ``none``).

Not the rest: ``compile`` and ``deterministic`` pick other kernels for the same maths; ``workers`` decode and
augment streamed image folders with per-sample random streams (:mod:`kdgen.data.imagefolder`), the same for any
number of them; ``save_every_s`` and ``lease_s`` say how often a unit is saved and how long a claim on it lasts.
``tests/test_unit_keys.py`` states, for every config key, whether it enters the key and why.

The rows' secondary-information metrics depend on a K (mass on ranks 2..K: TSD's ``tolerance.k``, else a fixed
default), which the weights do not: K is not in the key. The record keeps each row's mean probability at every rank
(``rank_mass``), and a run that reuses the unit recomputes ``secondary_mass`` for its own K from it
(:func:`kdgen.training.metrics.secondary_mass`), equal to what that run would have measured itself.

A unit also depends on the code that computed it. Arms, student methods and tolerance methods carry a
``revision`` (a class attribute, 1 to start with), and so does the training loop
(:data:`kdgen.training.loop.REVISION`); a fix that changes what one of them computes raises it. The revisions above 1
of what a unit uses join its key (revisions of 1 add nothing; an arm that runs a student method of its own choosing, as the snapshot arm runs
``kd``, names it in ``code_revisions(generation)``), so a unit trained before a fix is never reused after it.

So a baseline unit does not depend on ``tolerance.*`` or ``distill.*``, a strict unit not on
``tolerance.*``, and a tolerant patriarch not on ``distill.*``. Generation g's key covers its whole
teacher line (each teacher's settings are a subset of its student's), and a unit's own RNG stream
depends only on (seed, generation), so equal keys mean equal weights and equal rows.
``kdgen sweep`` keeps one cache for all of its grid points: a sweep over ``tolerance.eta`` or ``tolerance.k``
trains the baseline and strict arms once, and only the tolerant arm per point.

Layout: ``DIR/<unit name>-<key>/model.safetensors`` and ``record.json`` (rows and extras, the per-rank mass of each
row and the K its rows were measured with, and the checkpoint's ``sha256`` and ``bytes``). :meth:`UnitCache.get`
checks the checksum before reusing a unit: a unit whose checkpoint or record does not match is not reused but named in
one warning line on stderr and trained again (with ``KDGEN_STRICT_CACHE=1``: a one-line error instead). Records
written before checksums existed are reused unchecked (``kdgen cache verify`` calls them unverified). ``kdgen cache``
(:mod:`kdgen.running.cache_admin`) lists, verifies, measures and prunes a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from kdgen import arms
from kdgen.checkpoint import link, read_json, write_json
from kdgen.config import Config
from kdgen.errors import CheckpointError, ReadError
from kdgen.folders import Row
from kdgen.training.loop import REVISION as train_revision
from kdgen.training.runtime import resolve_precision

# Runtime settings that never change a unit's result beyond float rounding (compile and deterministic pick other
# kernels for the same maths; workers: per-sample augmentation streams, see kdgen.data.imagefolder), or that only say
# how often it is saved. lease_s: how long a claim on a unit lasts (kdgen.running.unit_claims), not what it computes.
# parallel and sync_batchnorm: only data mode on several processes without sync_batchnorm changes the result, and then
# :func:`runtime_settings` says so.
COSMETIC_RUNTIME = {"compile", "workers", "parallel", "sync_batchnorm", "deterministic", "save_every_s", "lease_s"}
# train settings that change no weight or row: evaluation's batch size (BatchNorm is folded; float rounding only).
COSMETIC_TRAIN = {"eval_batch_size"}
# Sources whose data.root says where one published data set lies, not which data: the same data anywhere. For the
# others (imagefolder, hf, a plug-in's sources) data.root chooses the data and enters the key.
LOCATED_SOURCES = {"digits", "synthetic", "fashion-mnist", "mnist", "cifar10", "cifar100"}


def runtime_settings(cfg: Config) -> dict[str, Any]:
    """The runtime settings a unit's result depends on, resolved as this process would run them.

    ``device: auto`` is the device it means here (cuda where CUDA is available, else cpu) and ``precision: auto``
    what it means on that device (as :class:`kdgen.training.runtime.Runtime` resolves them), so a unit trained on
    a GPU is never mistaken for one trained on a CPU. Under ``runtime.parallel=data`` on more than one process
    (torchrun's ``WORLD_SIZE``) with ``sync_batchnorm: false``, BatchNorm statistics are per process: the processes
    join the settings then.
    """
    runtime = cfg.runtime
    settings = {k: v for k, v in runtime.model_dump(mode="json").items() if k not in COSMETIC_RUNTIME}
    cuda = runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available())
    settings["device"] = "cuda" if cuda else "cpu"
    if runtime.precision == "auto" and (not cuda or torch.cuda.is_available()):  # else: left as given (no GPU here)
        settings["precision"] = resolve_precision("auto", torch.device(settings["device"]))
    world = _world_size()
    if runtime.parallel == "data" and world > 1 and not runtime.sync_batchnorm:
        settings["batchnorm"] = {"per_process": True, "processes": world}
    return settings


def _world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 without torchrun."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def unit_settings(cfg: Config, arm: str, seed: int, generation: int) -> dict[str, Any]:
    """The settings unit (arm, seed, generation) of ``cfg`` depends on, as a JSON-able dict."""
    full = cfg.to_dict()
    settings: dict[str, Any] = {"arm": arm, "seed": seed, "generation": generation}
    located = cfg.data.name in LOCATED_SOURCES  # data.root only says where the data set lies
    settings["data"] = {k: v for k, v in full["data"].items() if not (located and k == "root")}
    settings["model"] = full["model"]
    settings["train"] = {k: v for k, v in full["train"].items() if k not in COSMETIC_TRAIN}
    settings["runtime"] = runtime_settings(cfg)
    bound = arms.make(arm, cfg)
    if cfg.generations.models:  # a chain that may change architecture: the unit's own, and its line's
        own = cfg.model_of(generation)
        settings["model"] = {**full["model"], "name": own}
        line = [cfg.model_of(j) for j in bound.lineage(generation)]
        if any(name != own for name in line):  # else equal to a run of model.name=own: the same unit
            settings["lineage_models"] = line
    if settings["model"].pop("pretrained", None):
        # Which weights the patriarch started from, for the units whose weights descend from it.
        if 0 in bound.lineage(generation):
            from kdgen.models import weights_of

            settings["model"]["weights"] = weights_of(cfg.model_of(0))
    settings.update(bound.unit_settings(generation))
    raised = {name: revision for name, revision in code_revisions(cfg, arm, settings).items() if revision != 1}
    if raised:
        settings["code"] = raised
    return settings


def code_revisions(cfg: Config, arm: str, settings: dict[str, Any]) -> dict[str, int]:
    """The revision of every piece of code a unit with these ``settings`` ran: the loop, its arm, its student
    and tolerance methods when its settings show it used them, and what its arm names for its generation
    (``code_revisions(generation)``: e.g. the snapshot arm's students run the ``kd`` method whatever
    ``distill.method`` says)."""
    revisions = {"train": train_revision, f"arm.{arm}": arms.get(arm).revision}
    if "distill" in settings:
        revisions[f"distill.{cfg.distill.method}"] = type(cfg.distill).revision
    if "tolerance" in settings:
        revisions[f"tolerance.{cfg.tolerance.method}"] = type(cfg.tolerance).revision
    own = getattr(arms.make(arm, cfg), "code_revisions", None)
    if own is not None:
        revisions.update(own(settings["generation"]))
    return revisions


def unit_key(cfg: Config, arm: str, seed: int, generation: int) -> str:
    """A short hash of :func:`unit_settings`: equal keys, equal units."""
    return _key(unit_settings(cfg, arm, seed, generation))


def _key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


CHECKPOINT_FILE, RECORD_FILE = "model.safetensors", "record.json"  # inside a unit's folder
STRICT_ENV = "KDGEN_STRICT_CACHE"  # set (to anything but "" or "0"): a unit that fails its check is an error
_warned: set[str] = set()  # unit folders this process has warned about (one line each)


def file_sha256(path: Path) -> tuple[str, int]:
    """The sha256 (hex) and the size in bytes of a file, read in 1 MiB pieces."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def check_unit(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Read and check the unit in ``folder``: ``(record, None)`` if it can be reused, else ``(record or None, cause)``.

    The cause is a short phrase: an unreadable record, a missing checkpoint, or one whose size or sha256 differs from
    the record's. A record without ``sha256`` (written before checksums existed) passes unchecked.
    """
    folder = Path(folder)
    try:
        record = read_json(folder / RECORD_FILE)
    except ReadError as exc:
        return None, f"{RECORD_FILE} is unreadable ({exc.reason})"
    except CheckpointError:
        return None, f"{RECORD_FILE} is missing or not valid JSON"
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        return None, f"{RECORD_FILE} is not a unit record (no rows)"
    checkpoint = folder / CHECKPOINT_FILE
    if not checkpoint.is_file():
        return record, f"{CHECKPOINT_FILE} is missing"
    if record.get("sha256") is None:
        return record, None
    try:
        digest, size = file_sha256(checkpoint)
    except OSError as exc:
        return record, f"{CHECKPOINT_FILE} is unreadable ({exc.strerror or type(exc).__name__})"
    if record.get("bytes") is not None and size != record["bytes"]:
        return record, f"{CHECKPOINT_FILE} has {size} bytes, its record says {record['bytes']} (truncated or replaced)"
    if digest != record["sha256"]:
        return record, f"{CHECKPOINT_FILE} does not match its recorded sha256 (corrupted or replaced)"
    return record, None


def _distrust(folder: Path, cause: str) -> None:
    """A cached unit failed its check: an error under :data:`STRICT_ENV`, else one warning line (once per process)."""
    if os.environ.get(STRICT_ENV, "") not in ("", "0"):
        raise CheckpointError(f"unit cache: {folder}: {cause} ({STRICT_ENV} is set; remove the unit folder to "
                              "train it again, or see kdgen cache verify)")
    if str(folder) not in _warned:
        _warned.add(str(folder))
        print(f"kdgen: warning: unit cache: {folder}: {cause}; not reused, training it again", file=sys.stderr,
              flush=True)


@dataclass
class CachedUnit:
    """A finished unit in the cache: its checkpoint, rows and extras; ``rank_mass`` (``{"kind/split": mean
    probability at each rank}``) and ``secondary_k`` (the K its rows' ``secondary_mass`` was measured with) let a run
    with another K recompute that metric (None in records written before they existed)."""

    checkpoint: Path
    rows: list[Row]
    extras: dict[str, Any]
    rank_mass: dict[str, list[float]] | None = None
    secondary_k: int | None = None


class UnitCache:
    """A folder of finished units that several run folders draw on (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _folder(self, settings: dict[str, Any]) -> Path:
        """The unit's folder, from its :func:`unit_settings`."""
        return self.root / f"{settings['arm']}-seed{settings['seed']}-gen{settings['generation']}-{_key(settings)}"

    def claim_path(self, cfg: Config, arm: str, seed: int, generation: int) -> Path:
        """``DIR/<unit folder>.claim``: held by the process training the unit (:mod:`kdgen.running.unit_claims`)."""
        folder = self._folder(unit_settings(cfg, arm, seed, generation))
        return folder.with_name(f"{folder.name}.claim")

    def get(self, cfg: Config, arm: str, seed: int, generation: int) -> CachedUnit | None:
        """The unit if an earlier run trained it with the same settings, else None.

        A unit whose checkpoint does not match its recorded checksum (or whose record is unreadable) counts as
        missing, with one warning line on stderr (see :func:`check_unit` and :data:`STRICT_ENV`).
        """
        folder = self._folder(unit_settings(cfg, arm, seed, generation))
        record_path, checkpoint = folder / RECORD_FILE, folder / CHECKPOINT_FILE
        if not (record_path.is_file() and checkpoint.is_file()):
            return None
        record, problem = check_unit(folder)
        if problem is not None or record is None:
            _distrust(folder, problem or "unreadable")
            return None
        return CachedUnit(checkpoint, record["rows"], record.get("extras") or {}, record.get("rank_mass"),
                          record.get("secondary_k"))

    def put(self, cfg: Config, arm: str, seed: int, generation: int, checkpoint: Path, rows: list[Row],
            extras: dict[str, Any], *, rank_mass: dict[str, list[float]] | None = None,
            secondary_k: int | None = None) -> None:
        """Keep a finished unit: its checkpoint (hard-linked where possible) and its rows, with each row's mean
        probability at every rank (``rank_mass``, keyed ``"kind/split"``) and the K of their ``secondary_mass``.

        The record is written last, so a unit interrupted half-way in is simply not in the cache. It carries the
        checkpoint's sha256 and size. Both files are replaced by rename (a bad entry too), never written into: the
        cache's checkpoint may be a hard link to a run folder's.
        """
        settings = unit_settings(cfg, arm, seed, generation)
        folder = self._folder(settings)
        folder.mkdir(parents=True, exist_ok=True)
        sha256, size = file_sha256(checkpoint)  # the bytes this run wrote, before they are shared
        link(checkpoint, folder / CHECKPOINT_FILE)
        code = {"kdgen": _package_version(), **code_revisions(cfg, arm, settings)}  # provenance, not in the key
        write_json(folder / RECORD_FILE, {"settings": settings, "code": code, "sha256": sha256, "bytes": size,
                                          "rows": rows, "extras": extras, "rank_mass": rank_mass,
                                          "secondary_k": secondary_k})


def _package_version() -> str:
    try:
        return version("kdgen")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
