"""Claims on units of a shared unit cache: one process trains a unit at a time, however many share the cache.

Before a process trains a unit that will go to a :class:`~kdgen.running.unit_cache.UnitCache`, it creates
``DIR/<unit folder>.claim`` with ``O_CREAT | O_EXCL`` (atomic on local file systems and on NFS v3+): JSON
``{host, pid, started, renewed, token, boot}``. A daemon thread rewrites it (atomically, with a new ``renewed``)
every ``runtime.lease_s / 3`` seconds while the unit trains, independent of how long an epoch takes; the claim is
removed when the unit is in the cache, or when the process stops normally (SIGTERM, Ctrl-C, an error).

A process that finds a unit claimed polls (every ``min(1, lease_s / 4)`` s) until the unit is in the cache (it
takes it, as a reused unit) or the claim goes stale: its content did not change for ``lease_s`` seconds of the
*waiter's* clock (so clocks of different machines need not agree), or it names a process on this machine (same host
and boot id) that no longer exists. A stale claim is taken over by renaming it to a unique name (only one of
several waiters' renames can succeed: the others find no file) and then creating a new claim with ``O_EXCL``
(a process that finds no claim at all may win that create instead; either way exactly one holds the claim). A
waiter checks that what it renamed is the claim it judged stale; if a fresh claim was slipped in between, it
links it back. The worst outcome of any remaining race (a claimer suspended for longer than the lease) is a unit
trained twice: units are put in the cache atomically and equal keys give equal weights, so never a wrong unit.

The claimer also links its latest training state next to the claim (``DIR/<unit folder>.state.safetensors``), so
a process that takes over a dead claimer's unit continues from that state instead of from scratch.

A claim that cannot be made or read (a read-only or full file system, no permission, a file where the cache's
folder should be) is a :class:`~kdgen.errors.WriteError` or :class:`~kdgen.errors.ReadError` naming the path and
the cause: one line and exit code 2 on the command line. Renewals, releases and the shared state are best effort:
they never stop a unit that trains.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

from tqdm.auto import tqdm

from kdgen.checkpoint import link, write_error, write_json
from kdgen.config import Config
from kdgen.errors import CheckpointError, ReadError, WriteError, os_reason, read_error
from kdgen.running.unit_cache import CachedUnit, UnitCache
from kdgen.training.loop import StopFlag, TrainingInterrupted
from kdgen.training.resume import EpochState, load_state


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


HOST, BOOT = socket.gethostname(), _boot_id()


def _read(path: Path) -> bytes | None:
    """The claim's bytes, None if there is none; one that cannot be read is a :class:`~kdgen.errors.ReadError`."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:  # no permission, a folder of the claim's name, an I/O error: waiting would not help
        raise read_error(path, exc) from None


def _make_folder(folder: Path) -> None:
    """The cache folder, made if missing; a :class:`~kdgen.errors.WriteError` if it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if folder.exists() and not folder.is_dir():
            raise WriteError(folder, "not a folder (a file of that name is in the way of the unit cache)",
                             exc.errno) from None
        raise write_error(folder, exc) from None


def _parse(raw: bytes) -> dict:
    try:
        info = json.loads(raw)
    except ValueError:  # created, not yet written (O_EXCL create, then write)
        return {}
    return info if isinstance(info, dict) else {}


def _dead_here(info: dict) -> bool:
    """The claim names a process of this machine (same host and boot) that no longer runs."""
    if not BOOT or info.get("host") != HOST or info.get("boot") != BOOT or not isinstance(info.get("pid"), int):
        return False
    if info["pid"] == os.getpid():
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


class _Held:
    """A claim this process holds, renewed by a daemon thread until released."""

    def __init__(self, path: Path, info: dict, lease_s: float, name: str) -> None:
        self.path, self.info, self.name = path, info, name
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._renew, args=(lease_s / 3,), daemon=True,
                                       name=f"kdgen-claim-{name}")
        self.thread.start()

    def ours(self) -> bool:
        raw = _read(self.path)
        return raw is not None and _parse(raw).get("token") == self.info["token"]

    def _renew(self, every: float) -> None:
        while not self.done.wait(every):
            try:
                if not self.ours():
                    tqdm.write(f"kdgen: lost the claim on {self.name} (taken over after a missed renewal); "
                               "training it anyway", file=sys.stderr)
                    return
                self.info["renewed"] = time.time()
                write_json(self.path, self.info)
            except (OSError, ReadError, WriteError):  # a full disk or a network hiccup: try again at the next renewal
                continue

    def release(self) -> None:
        self.done.set()
        self.thread.join()
        try:
            if self.ours():
                self.path.unlink()
        except (OSError, ReadError):  # left behind: stale after the lease (at once on this machine)
            pass


class Claims:
    """Claims on the units of ``cache`` for one process (see the module docstring)."""

    def __init__(self, cache: UnitCache, cfg: Config, *, lease_s: float, stop: StopFlag | None = None) -> None:
        self.cache, self.cfg, self.lease_s, self.stop = cache, cfg, lease_s, stop
        self.poll_s = min(1.0, lease_s / 4)
        self.held: dict[str, _Held] = {}

    def path(self, unit) -> Path:
        return self.cache.claim_path(self.cfg, unit.arm, unit.seed, unit.generation)

    def state_path(self, unit) -> Path:
        claim = self.path(unit)
        return claim.with_name(claim.name[: -len(".claim")] + ".state.safetensors")

    def claimed_elsewhere(self, unit) -> bool:
        """Whether another process holds a claim on ``unit`` now (stale or not: :meth:`acquire` judges that)."""
        return unit.name not in self.held and self.path(unit).exists()

    def acquire(self, unit, bar: tqdm | None = None) -> CachedUnit | None:
        """Claim ``unit`` (None: this process trains it), or wait until another process put it in the cache
        (that unit is returned) or its claim went stale (taken over: None)."""
        path = self.path(unit)
        _make_folder(path.parent)
        seen, seen_at, told = None, 0.0, False
        while True:
            hit = self.cache.get(self.cfg, unit.arm, unit.seed, unit.generation)
            if hit is not None:
                return hit
            if self._create(path, unit.name):
                return None
            raw = _read(path)
            if raw is None:
                continue  # released just now: the unit is in the cache, or free to claim
            now = time.monotonic()
            if raw != seen:
                seen, seen_at = raw, now
            info = _parse(raw)
            if now - seen_at >= self.lease_s or _dead_here(info):
                if self._take_over(path, raw):
                    who = f"{info.get('host', '?')}:{info.get('pid', '?')}"
                    tqdm.write(f"kdgen: taking over {unit.name} from {who} (claim not renewed for {self.lease_s:g} s, "
                               "or its process is gone)", file=sys.stderr)
                continue
            if not told:
                started = info.get("started")
                since = datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S") \
                    if isinstance(started, (int, float)) else "just now"
                message = (f"waiting for {unit.name}: claimed by {info.get('host', '?')}:{info.get('pid', '?')} "
                           f"since {since}")
                tqdm.write(f"kdgen: {message}", file=sys.stderr)
                if bar is not None:
                    bar.set_description(f"waiting for {unit.name}")
                told = True
            if self.stop is not None and self.stop.requested:
                raise TrainingInterrupted(f"stopped while waiting for {unit.name}")
            time.sleep(self.poll_s)

    def _create(self, path: Path, name: str) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:  # read-only or full file system, no permission
            raise write_error(path, exc) from None
        now = time.time()
        info = {"host": HOST, "pid": os.getpid(), "started": now, "renewed": now, "token": uuid.uuid4().hex,
                "boot": BOOT}
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(info, indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # disk full after the create: leave no empty claim behind for others to wait on
            try:
                path.unlink()
            except OSError:
                pass
            raise write_error(path, exc) from None
        self.held[name] = _Held(path, info, self.lease_s, name)
        return True

    def _take_over(self, path: Path, judged: bytes) -> bool:
        """Move the stale claim ``judged`` out of the way; False if what was there was another, fresh claim."""
        aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return True  # another waiter moved it first: whoever creates the new claim next wins
        except OSError as exc:  # read-only file system, no permission: the claim can never be taken over
            raise WriteError(path, f"cannot take over this stale claim ({os_reason(exc)})", exc.errno,
                             action="move") from None
        try:
            if _read(aside) == judged:
                return True
            try:  # a fresh claim replaced the stale one between our read and our rename: put it back
                os.link(aside, path)
            except FileExistsError:
                pass
            except OSError as exc:
                raise write_error(path, exc) from None
            return False
        finally:
            try:
                aside.unlink(missing_ok=True)
            except OSError:
                pass  # a leftover ``.claim.stale-*`` file, harmless

    def share_state(self, unit, state_file: Path) -> None:
        """Link the claimed unit's latest training state next to its claim (for a process that takes it over)."""
        if unit.name in self.held and state_file.exists():
            try:
                link(state_file, self.state_path(unit))
            except OSError:
                pass  # only a convenience: a taker then trains from scratch

    def shared_state(self, unit) -> EpochState | None:
        """The training state a dead claimer of ``unit`` left next to its claim, if any."""
        path = self.state_path(unit)
        try:
            if unit.name not in self.held or not path.exists():
                return None
            state = load_state(path)
        except (CheckpointError, OSError):  # unreadable: the unit is trained from the start
            return None
        if state.unit != unit.name:
            return None
        tqdm.write(f"kdgen: continuing {unit.name} from the state its last claimer left (epoch {state.epoch}, "
                   f"step {state.step})", file=sys.stderr)
        return state

    def release(self, unit, *, finished: bool) -> None:
        """Give up the claim on ``unit``; a ``finished`` unit (in the cache now) also drops its shared state."""
        held = self.held.pop(unit.name, None)
        if held is None:
            return
        if finished:
            try:
                self.state_path(unit).unlink(missing_ok=True)
            except OSError:  # left over next to a unit in the cache: nobody takes it up; kdgen cache prune removes it
                pass
        held.release()

    def release_all(self) -> None:
        for name in list(self.held):
            held = self.held.pop(name)
            held.release()
