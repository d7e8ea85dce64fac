"""Several processes under ``torchrun``: how ``runtime.parallel`` shares one run among them.

torchrun starts N copies of the same command and tells each where it stands through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR/PORT``,
single node or multi-node through its c10d rendezvous). :func:`start` joins them in one
torch.distributed process group (NCCL when the run is on GPUs, gloo on CPUs) and returns the
registered mode that decides what each process does:

- ``none``: one process does everything (the default).
- ``chains``: the (seed, arm) chains are shared out; each process trains its chains' units in
  order and writes their checkpoints and records itself, so every file has one writer. Rank 0
  writes config.yaml, merges results.json and writes the report.
- ``data``: all processes train every unit together with DistributedDataParallel, each on its
  share of every global batch; rank 0 writes every file.

Decisions (did any rank fail a check? stop now? is everyone done?) travel over a separate gloo
group with a long timeout: on GPUs they never synchronise the device, and a process that finishes
its chains early can wait for the others for hours, still answering SIGTERM. While it waits, a
heartbeat through torchrun's store tells a slow process from a frozen one or a lost machine (whose
sockets stay open, so gloo alone would wait out the timeout): one silent for ``runtime.lease_s``
seconds ends the wait as a lost process.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from kdgen.errors import ConfigError, UserError

# How long a process may wait for the others (e.g. for the last chain of a long run) before gloo gives up.
WAIT_TIMEOUT = timedelta(days=30)
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class PeerFailed(UserError):
    """Another process reported a mistake (it printed the line); this one stops without repeating it."""


class PeerLost(Exception):
    """A collective failed because another process is gone (killed, out of memory, a lost node)."""


class PeerSilent(RuntimeError):
    """Another process stopped answering the heartbeat (frozen, or its machine lost) while this one waited."""


def is_peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a torch.distributed failure to reach another process (gloo raises plain
    RuntimeErrors naming its transport; NCCL and the c10d store raise ``DistError``s), or a silent one."""
    if isinstance(exc, (PeerSilent, getattr(dist, "DistError", ()))):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and "gloo" in text and ("peer" in text or "Connection" in text)


def peer_failure_summary(exc: BaseException) -> str:
    """The first sentence of a transport error, without its source location: "Connection closed by peer ..."."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return text.split(". ")[0][:160]


class Heartbeat:
    """Every process bumps its counter in torchrun's store every ``lease_s / 6`` seconds and reads the others'.

    A process whose counter has not moved for ``lease_s`` seconds of *this* process's clock (counters, not
    timestamps: the machines' clocks need not agree) is silent: SIGSTOP, a hung machine, a lost network. A store
    that stops answering (the machine hosting it is gone) makes every other process silent, which is as true.
    The thread is a daemon: a store call that never returns cannot keep the process from exiting.
    """

    def __init__(self, store: "dist.Store", rank: int, world_size: int, lease_s: float,
                 hosts: list[str] | None = None) -> None:
        self.store, self.rank, self.lease_s = store, rank, lease_s
        self.hosts = hosts or ["?"] * world_size
        self.others = [r for r in range(world_size) if r != rank]
        now = time.monotonic()
        self.seen = {r: now for r in self.others}  # when each counter last moved, on this clock
        self.counts: dict[int, int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="kdgen-heartbeat")
        self.thread.start()

    @staticmethod
    def _key(rank: int) -> str:
        return f"kdgen/heartbeat/{rank}"

    def _beat(self) -> None:
        while True:
            try:
                self.store.add(self._key(self.rank), 1)
                for other in self.others:
                    count = self.store.add(self._key(other), 0)
                    if count != self.counts.get(other):
                        self.counts[other], self.seen[other] = count, time.monotonic()
            except Exception:  # noqa: BLE001 - the store is gone or failing: the counters stop moving, which says so
                pass
            if self.done.wait(self.lease_s / 6):
                return

    def silent(self) -> str | None:
        """The first process silent for ``lease_s`` seconds, in words; None while all answer."""
        now = time.monotonic()
        for other in self.others:
            quiet = now - self.seen[other]
            if quiet >= self.lease_s:
                return (f"process {other} on {self.hosts[other]} has not answered for {quiet:.0f} s (frozen, or its "
                        f"machine lost; a slow process is given runtime.lease_s={self.lease_s:g} s)")
        return None

    def stop(self) -> None:
        self.done.set()


_heartbeat: Heartbeat | None = None  # one per process, for as long as its process group lives
_abandoned: list[object] = []  # collectives a silent process will never complete (see wait_for_all)


@dataclass(frozen=True)
class Place:
    """Where this process stands among the ones torchrun started."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> "Place":
        """From torchrun's environment variables (one process when they are absent)."""
        try:
            values = {key: int(os.environ[key]) for key in ENV_KEYS if key in os.environ}
        except ValueError:
            raise UserError(f"torchrun environment: {', '.join(ENV_KEYS)} must be integers") from None
        world = values.get("WORLD_SIZE", 1)
        if world > 1 and "RANK" not in values:
            raise UserError(f"torchrun environment: WORLD_SIZE is {world} but RANK is not set; start several "
                            "processes with torchrun (torchrun --nproc_per_node=N -m kdgen ...)")
        return cls(rank=values.get("RANK", 0), world_size=world, local_rank=values.get("LOCAL_RANK", 0),
                   local_world_size=values.get("LOCAL_WORLD_SIZE", world))


class ParallelMode:
    """What one process does in a run shared by ``place.world_size`` processes (one process by default).

    A mode answers: which chains does this process train (:meth:`assign`), does it write unit
    files (:attr:`writes_units`), and how is one model trained and evaluated across the processes
    (:meth:`prepare`, :attr:`batch_share`, :meth:`any_stop`, :meth:`epoch_totals`, :meth:`gather`).
    The base class is the single-process behaviour.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Whether the processes train one model together, each on a share of every batch: only the model's
    # gradients are then averaged across them (not those of a loss with parameters of its own).
    splits_batches: ClassVar[bool] = False

    def __init__(self, place: Place = Place(), control: dist.ProcessGroup | None = None, *,
                 device: torch.device = torch.device("cpu"), sync_batchnorm: bool = True) -> None:
        self.place = place
        self.control = control  # gloo group for decisions; None in one process
        self.device = device  # this process's device (cuda:LOCAL_RANK on GPUs)
        self.sync_batchnorm = sync_batchnorm  # only the data mode has batches split over processes
        self.owns_group = False

    @property
    def rank(self) -> int:
        return self.place.rank

    @property
    def world_size(self) -> int:
        return self.place.world_size

    @property
    def is_leader(self) -> bool:
        """Rank 0 writes config.yaml, results.json and the report, and prints the summary."""
        return self.place.rank == 0

    @property
    def writes_units(self) -> bool:
        """Whether this process writes the checkpoints, records and training states of the units it trains."""
        return True

    def assign(self, costs: list[int]) -> list[int]:
        """Indices of the chains (whose remaining costs in steps are ``costs``) this process trains, in order."""
        return list(range(len(costs)))

    # One model's training.
    def prepare(self, model: nn.Module) -> tuple[nn.Module, Callable[[], None]]:
        """The module to train ``model`` through, and a function to call when its training ends."""
        return model, lambda: None

    @property
    def batch_share(self) -> tuple[int, int]:
        """(index, count): this process trains on part ``index`` of ``count`` equal parts of every batch."""
        return 0, 1

    def any_stop(self, requested: bool) -> bool:
        """Whether any process was asked to stop (processes training one model stop at the same step)."""
        return requested

    def epoch_totals(self, sums: dict[str, torch.Tensor], first_bad: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """An epoch's loss sums and first non-finite step, over every process training the model."""
        return sums, first_bad

    def gather(self, predict: Callable[[object], torch.Tensor], split: object) -> torch.Tensor:
        """``predict(split)`` (softmax outputs, on the CPU), computed by whichever processes share the model."""
        return predict(split)

    # Coordination.
    def agree(self, error: UserError | None) -> None:
        """Raise if this process or any other met a mistake; the others stop quietly (:class:`PeerFailed`)."""
        if error is not None:
            raise error

    def leader_value(self, value: object) -> object:
        """Rank 0's ``value``, on every process (e.g. the name of a new run folder)."""
        return value

    def wait_for_all(self, stop_requested: Callable[[], bool] = lambda: False) -> bool:
        """Block until every process got here; return False early if ``stop_requested()`` turns true."""
        return True

    def sum_over_processes(self, values: list[int]) -> list[int]:
        """``values`` summed element-wise over every process (e.g. units each trained, per run of a sweep)."""
        return list(values)

    def close(self) -> None:
        global _heartbeat
        if self.owns_group and dist.is_initialized():
            if _heartbeat is not None:
                _heartbeat.stop()
                _heartbeat = None
            dist.destroy_process_group()


MODES: dict[str, type[ParallelMode]] = {}


def register(cls: type[ParallelMode]) -> type[ParallelMode]:
    MODES[cls.name] = cls
    return cls


def names() -> list[str]:
    return list(MODES)


@register
class OneProcess(ParallelMode):
    name = "none"
    description = "one process trains every unit (the default)"


class _Shared(ParallelMode):
    """Behaviour common to the modes that run on several processes."""

    def agree(self, error: UserError | None) -> None:
        if self.control is None:
            return super().agree(error)
        messages: list[object] = [None] * self.world_size
        dist.all_gather_object(messages, None if error is None else str(error), group=self.control)
        if error is not None:
            raise error
        failed = [m for m in messages if m is not None]
        if failed:
            raise PeerFailed(f"another process stopped: {failed[0]}")

    def leader_value(self, value: object) -> object:
        if self.control is None:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def wait_for_all(self, stop_requested: Callable[[], bool] = lambda: False) -> bool:
        if self.control is None:
            return True
        work = dist.barrier(group=self.control, async_op=True)
        while not work.is_completed():
            if stop_requested():
                return False
            silent = _heartbeat.silent() if _heartbeat is not None else None
            if silent is not None:
                # Freeing a collective that can never complete, or its group, blocks (gloo joins the thread that
                # waits in it): both are kept for good, and the command line ends with os._exit.
                _abandoned.extend([work, self.control])
                raise PeerSilent(silent)
            time.sleep(0.05)
        work.wait()
        return True

    def sum_over_processes(self, values: list[int]) -> list[int]:
        if self.control is None:
            return list(values)
        every: list[object] = [None] * self.world_size
        dist.all_gather_object(every, list(values), group=self.control)
        return [sum(int(v[i]) for v in every) for i in range(len(values))]  # type: ignore[index]


@register
class Chains(_Shared):
    name = "chains"
    description = "each process trains whole (seed, arm) chains, spread over the processes"

    def assign(self, costs: list[int]) -> list[int]:
        """Longest chains first, each to the least-loaded process (deterministic: every rank computes the same)."""
        loads = [0] * self.world_size
        owner = [0] * len(costs)
        for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
            rank = min(range(self.world_size), key=lambda r: (loads[r], r))
            owner[index] = rank
            loads[rank] += costs[index]
        return [i for i in range(len(costs)) if owner[i] == self.rank]


@register
class DataParallel(_Shared):
    name = "data"
    splits_batches = True
    description = "every model is trained by all processes (DistributedDataParallel), each on a share of every batch"
    _vote: tuple[dist.Work, torch.Tensor] | None = None  # the stop vote in flight (any_stop)

    @property
    def writes_units(self) -> bool:
        return self.is_leader

    def prepare(self, model: nn.Module) -> tuple[nn.Module, Callable[[], None]]:
        if self.world_size == 1:
            return model, lambda: None
        from torch.nn.parallel import DistributedDataParallel

        from kdgen.training import sync_batchnorm

        if self.sync_batchnorm:
            # statistics over the whole global batch, as in one process (nn.SyncBatchNorm on CUDA)
            sync_batchnorm.convert(model, device=self.device)
        # A 1-channel first conv's weight gradient is equally valid in either stride layout; DDP warns
        # that it does not match its bucket's. Harmless (one copy), and noise on every run of grey images.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=device_ids)
        return wrapped, lambda: sync_batchnorm.revert(model)

    @property
    def batch_share(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def any_stop(self, requested: bool) -> bool:
        """The vote cast one step earlier, read now: it travelled over the gloo control group in the background
        while that step ran, so no step waits for a round trip (and none reads the device). Every process
        reads the same vote at the same step, so they all stop together, one step after the request."""
        if self.control is None:
            return requested
        decided = False
        if self._vote is not None:
            work, flag = self._vote
            work.wait()
            decided = bool(flag.item())  # a CPU tensor: no device sync
        flag = torch.tensor([int(requested)])
        self._vote = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control, async_op=True), flag)
        return decided

    def close(self) -> None:
        vote, self._vote = self._vote, None
        if vote is not None:
            try:
                vote[0].wait()  # every process cast the same votes: the last one completes where all are alive
            except RuntimeError as exc:
                if not is_peer_lost(exc):
                    raise  # a process is gone otherwise: the run is stopping on that, nothing is left to agree
        super().close()

    def epoch_totals(self, sums: dict[str, torch.Tensor], first_bad: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self.control is None:
            return sums, first_bad
        keys = sorted(sums)
        packed = torch.stack([torch.as_tensor(sums[n], dtype=torch.float64).cpu() for n in keys]) \
            if keys else torch.zeros(0, dtype=torch.float64)
        dist.all_reduce(packed, group=self.control)
        bad = first_bad.detach().cpu().clone()
        dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=self.control)
        device = first_bad.device
        return ({n: (packed[i] / self.world_size).to(device) for i, n in enumerate(keys)}, bad.to(device))

    def gather(self, predict: Callable[[object], torch.Tensor], split: object) -> torch.Tensor:
        """Each process predicts a contiguous share of the split; the shares are gathered in order."""
        if self.control is None:
            return predict(split)
        total = len(split)  # type: ignore[arg-type]
        bounds = [total * r // self.world_size for r in range(self.world_size + 1)]
        mine = predict(shard(split, bounds[self.rank], bounds[self.rank + 1]))
        longest = max(bounds[r + 1] - bounds[r] for r in range(self.world_size))
        padded = torch.zeros(longest, *mine.shape[1:], dtype=mine.dtype)
        padded[:len(mine)] = mine
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.control)
        return torch.cat([parts[r][:bounds[r + 1] - bounds[r]] for r in range(self.world_size)])


def shard(split: object, start: int, stop: int) -> object:
    """Examples ``start:stop`` of a resident or streaming split."""
    from dataclasses import replace

    from kdgen.data.base import Split

    if isinstance(split, Split):
        return Split(split.images[start:stop], split.labels[start:stop])
    return replace(split, samples=split.samples[start:stop])  # type: ignore[type-var]


def gpu_for(mode: str, place: Place, gpus: int) -> int:
    """The GPU of this process: its local rank, round-robin when a node runs more processes than it has GPUs
    (chains mode: several small models per GPU keep it busy). Data mode needs a GPU per process (NCCL)."""
    if gpus < 1:
        raise UserError("runtime.device is 'cuda' but no CUDA device is available")
    if mode == "data" and place.local_world_size > gpus:
        raise ConfigError(f"runtime.parallel=data needs one GPU per process: torchrun started "
                          f"{place.local_world_size} processes on a node with {gpus} GPU{'s' if gpus > 1 else ''}; "
                          "start at most that many, or use runtime.parallel=chains")
    return place.local_rank % gpus


def start(mode: str, device_name: str = "auto", *, sync_batchnorm: bool = True, lease_s: float = 60.0) -> ParallelMode:
    """Join the processes torchrun started (if any) and return this process's ``runtime.parallel`` mode.

    ``lease_s``: how long another process may be silent (see :class:`Heartbeat`) before a process waiting for it
    takes it as lost.

    Under torchrun with more than one process, ``none`` is refused (every process would train the
    whole run into the same folder). A parallel mode without torchrun runs as one process.
    """
    place = Place.from_env()
    if mode not in MODES:
        raise ConfigError(f"runtime.parallel: unknown mode {mode!r}; choose from {', '.join(names())}")
    if place.world_size > 1 and mode == "none":
        raise ConfigError(f"torchrun started {place.world_size} processes but runtime.parallel is 'none'; "
                          "set runtime.parallel=chains (many models) or runtime.parallel=data (one model over all)")
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", gpu_for(mode, place, torch.cuda.device_count())) if use_cuda else torch.device("cpu")
    if use_cuda and place.world_size > 1:
        torch.cuda.set_device(device)
    if "OMP_NUM_THREADS" not in os.environ and place.local_world_size > 1:
        # Share the cores among the processes of this node instead of each taking all of them.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // place.local_world_size))
    control = None
    owns = False
    if place.world_size > 1:
        if not dist.is_initialized():
            # NCCL only where gradients travel (data mode). Chains mode exchanges small control messages, and
            # NCCL refuses two ranks on one GPU ("Duplicate GPU detected"), which is how chains fill a GPU.
            nccl = use_cuda and mode == "data"
            dist.init_process_group("nccl" if nccl else "gloo", device_id=device if nccl else None)
            owns = True
        control = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
        _start_heartbeat(place, control, lease_s)
    instance = MODES[mode](place, control, device=device, sync_batchnorm=sync_batchnorm)
    instance.owns_group = owns
    return instance


def leave_if_stranded(code: int) -> None:
    """End this process now (``os._exit(code)``) if it left a collective with a silent process (see
    :meth:`_Shared.wait_for_all`): a normal exit frees that group, and gloo would wait for the frozen peer forever."""
    if _abandoned:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _start_heartbeat(place: Place, control: dist.ProcessGroup, lease_s: float) -> None:
    """This process's :class:`Heartbeat`, once per process group (torchrun's store; none without one)."""
    global _heartbeat
    hosts: list[object] = [None] * place.world_size
    dist.all_gather_object(hosts, socket.gethostname(), group=control)
    if _heartbeat is not None:
        _heartbeat.lease_s = lease_s
        return
    try:
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):  # no store to beat through: waits rely on gloo's timeout
        return
    _heartbeat = Heartbeat(store, place.rank, place.world_size, lease_s, [str(h) for h in hosts])
