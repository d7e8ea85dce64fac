"""torchrun: chains and data modes with 2 CPU processes over gloo, faults, and the pieces underneath.

Every multi-process test launches ``python -m torch.distributed.run --standalone`` (torchrun) with
tiny models. Every process runs one thread (OMP_NUM_THREADS=1, as torchrun sets it), and so do the
one-process references: results then do not depend on how many threads split a convolution.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from kdgen.checkpoint import save_model
from kdgen.cli import main
from kdgen.errors import ConfigError
from kdgen.running.run_folder import RunFolder
from kdgen.training import parallel

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

TINY = ["data.name=synthetic", "data.num_train=256", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=2", "train.batch_size=16", "seeds=[0,1]",
        "generations.count=1", "tolerance.k=3", "--no-progress",
        # a state after every epoch (the default saves at most every 30 s): the stops below wait for one
        "runtime.save_every_s=0"]
WORKER = Path(__file__).with_name("data_parallel_worker.py")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(nproc, *args, **popen):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.Popen(command, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def kdgen_run(out, *extra):
    return subprocess.run([sys.executable, "-m", "kdgen", "run", "--out", str(out), *TINY, *extra], env=ONE_THREAD,
                          capture_output=True, text=True)


def finish(process, timeout=240):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def wait_for(process, folder: Path, pattern: str, timeout: float = 120) -> None:
    """Until a file matching ``pattern`` appears in ``folder`` (a unit finished, or saved its state)."""
    deadline = time.time() + timeout
    while not any(folder.glob(pattern)) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)


def checkpoints_equal(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in (a / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (b / "checkpoints").iterdir())
    return all(all(torch.equal(x, load_file(b / "checkpoints" / n)[k]) for k, x in load_file(a / "checkpoints" / n).items())
               for n in names)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, the same config: what every multi-process run must reproduce."""
    out = tmp_path_factory.mktemp("parallel") / "one"
    done = kdgen_run(out)
    assert done.returncode == 0, done.stderr
    return out


# Long enough units that a kill or SIGTERM sent once a unit finished (or saved its state) lands while
# the others are still training.
LONGER = ["train.epochs=8"]


@pytest.fixture(scope="module")
def longer_reference(tmp_path_factory):
    """One process, uninterrupted, with LONGER units: what the stopped-and-resumed chains runs must end with."""
    out = tmp_path_factory.mktemp("parallel") / "longer"
    done = kdgen_run(out, *LONGER)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_chains_on_two_processes_write_the_one_process_folder(tmp_path, reference):
    out = tmp_path / "two"
    code, stdout, stderr = finish(torchrun(2, "-m", "kdgen", "run", "--out", str(out), *TINY, "runtime.parallel=chains"))
    assert code == 0, stderr
    assert (out / "results.json").read_bytes() == (reference / "results.json").read_bytes()
    assert checkpoints_equal(out, reference)
    assert not (out / "records").exists() and not (out / "state").exists()
    assert (out / "report.html").is_file()
    assert stdout.count("kdgen: synthetic") == 1  # rank 0 alone speaks
    assert json.loads((out / "timing.json").read_text())["processes"] == 2


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds worker processes through /proc")
def test_a_killed_worker_fails_the_run_and_resume_finishes_it(tmp_path, longer_reference):
    out = tmp_path / "killed"
    process = torchrun(2, "-m", "kdgen", "run", "--out", str(out), *TINY, *LONGER, "runtime.parallel=chains")
    wait_for(process, out / "records", "*.json")
    assert process.poll() is None, "the run ended before any unit could be killed"
    workers = _children(process.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    code, _, stderr = finish(process)
    assert code != 0
    assert sum(line.startswith("kdgen:") for line in stderr.splitlines()) == 1, stderr  # one line from kdgen
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False
    recorded = {p.stem for p in (out / "records").glob("*.json")}
    # nothing is marked done that is not: every record and every done unit has its checkpoint
    assert set(results["done"]) <= recorded
    assert all((out / "checkpoints" / f"{name}.safetensors").is_file() for name in recorded)
    assert len(recorded) < 12

    # resume with another process count (one), then compare with an uninterrupted run of this config
    resumed = subprocess.run([sys.executable, "-m", "kdgen", "run", "--resume", "--out", str(out), "--no-progress"],
                             env=ONE_THREAD, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "results.json").read_bytes() == (longer_reference / "results.json").read_bytes()


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_with_saved_state(tmp_path, longer_reference):
    out = tmp_path / "stopped"
    process = torchrun(2, "-m", "kdgen", "run", "--out", str(out), *TINY, *LONGER, "runtime.parallel=chains")
    wait_for(process, out / "state", "*.safetensors")
    process.send_signal(signal.SIGTERM)
    code, _, stderr = finish(process)
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.startswith("kdgen:")]
    assert len(lines) == 1 and "--resume" in lines[0], stderr
    states = list((out / "state").glob("*.safetensors"))
    assert states, "the units in progress saved their state"
    resumed = torchrun(2, "-m", "kdgen", "run", "--resume", "--out", str(out), "--no-progress")
    code, _, stderr = finish(resumed)
    assert code == 0, stderr
    assert (out / "results.json").read_bytes() == (longer_reference / "results.json").read_bytes()


@pytest.mark.slow
def test_data_mode_matches_one_process_weights(tmp_path):
    """fp32, cross-rank BatchNorm: 2 processes end within 1e-5 of one process after 8 steps (float
    rounding of split sums); without it, each rank's BatchNorm sees half a batch and the weights move
    away by more than 1e-3. The evaluation gathered over the ranks equals one process's."""
    code, _, stderr = finish(torchrun(2, str(WORKER), str(tmp_path)))  # the one-process reference too
    assert code == 0, stderr
    reference, synced, unsynced = (load_file(tmp_path / f"{name}.safetensors") for name in ("one", "two1", "two0"))
    difference = {k: float((reference[k].double() - synced[k].double()).abs().max()) for k in reference}
    assert max(difference.values()) < 1e-5, difference
    assert max(float((reference[k].double() - unsynced[k].double()).abs().max()) for k in reference) > 1e-3
    assert bool(synced["bn_classes"].all())  # plain BatchNorm again after training (folding, checkpoints)


@pytest.mark.slow
def test_data_mode_run_completes_with_rank_zero_writing(tmp_path, reference):
    out = tmp_path / "data"
    code, stdout, stderr = finish(torchrun(2, "-m", "kdgen", "run", "--out", str(out), *TINY, "runtime.parallel=data",
                                           "runtime.precision=fp32"))
    assert code == 0, stderr
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == len(json.loads((reference / "results.json").read_text())["rows"])
    assert not (out / "records").exists()
    assert stdout.count("kdgen: synthetic") == 1


# Two units of 3 epochs (each data-mode step waits on collectives between the processes, so fewer steps
# save seconds per launch): a signal sent once the first epoch saved its state has 5 epochs left to land in.
DATA_STOP = [*TINY, "runtime.parallel=data", "runtime.precision=fp32", "seeds=[0]", "generations.arms=[strict]",
             "train.epochs=3"]


@pytest.mark.slow
def test_data_mode_stopped_and_resumed_equals_uninterrupted(tmp_path):
    """SIGTERM in data mode: the ranks agree on the step, rank 0 saves the state, and a resumed
    2-process run ends with the rows of an uninterrupted 2-process run (gloo's sums are deterministic)."""
    full = finish(torchrun(2, "-m", "kdgen", "run", "--out", str(tmp_path / "full"), *DATA_STOP))
    assert full[0] == 0, full[2]
    out = tmp_path / "stopped"
    process = torchrun(2, "-m", "kdgen", "run", "--out", str(out), *DATA_STOP)
    wait_for(process, out / "state", "*.safetensors")
    process.send_signal(signal.SIGTERM)
    code, _, stderr = finish(process)
    assert code != 0 and any((out / "state").glob("*.safetensors")), stderr
    assert sum(line.startswith("kdgen:") for line in stderr.splitlines()) == 1, stderr
    code, _, stderr = finish(torchrun(2, "-m", "kdgen", "run", "--resume", "--out", str(out), "--no-progress"))
    assert code == 0, stderr
    assert (out / "results.json").read_bytes() == (tmp_path / "full" / "results.json").read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds worker processes through /proc")
def test_data_mode_worker_killed_is_one_line_and_resumable(tmp_path):
    out = tmp_path / "killed"
    process = torchrun(2, "-m", "kdgen", "run", "--out", str(out), *DATA_STOP)
    wait_for(process, out / "state", "*.safetensors")
    os.kill(_children(process.pid)[1], signal.SIGKILL)
    code, _, stderr = finish(process)
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.startswith("kdgen:")]
    assert len(lines) == 1 and "--resume" in lines[0], stderr
    assert "[rank0]" not in stderr  # no traceback from the surviving process
    code, _, stderr = finish(torchrun(2, "-m", "kdgen", "run", "--resume", "--out", str(out), "--no-progress"))
    assert code == 0, stderr
    assert json.loads((out / "results.json").read_text())["complete"] is True


def test_peer_failures_are_recognised_and_summarised():
    gloo = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:8861. This is typically caused by a remote worker hanging")
    assert parallel.is_peer_lost(gloo)
    assert parallel.peer_failure_summary(gloo) == "Connection closed by peer [127.0.0.1]:8861"
    assert not parallel.is_peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


API_SCRIPT = """
import sys, torch
from torch import nn
import kdgen
g = torch.Generator().manual_seed(0)
labels = torch.arange(200) % 4
images = (labels.view(-1, 1, 1, 1) * 50 + torch.randint(0, 60, (200, 1, 8, 8), generator=g)).to(torch.uint8)
data = kdgen.bundle_from_tensors(images[:160], labels[:160], images[160:], labels[160:], val_fraction=0.25)
cfg = kdgen.Config(seeds=[0, 1], generations={"count": 1}, train={"epochs": 2, "batch_size": 32},
                   tolerance={"k": 2}, log={"progress": False}, runtime={"parallel": "chains"})
make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
kdgen.train_generations(make, data, cfg, out_dir=sys.argv[1])
"""


def test_heartbeat_tells_a_silent_process_from_a_live_one():
    """Two processes' heartbeats through one store: while both beat, none is silent; once one stops (as SIGSTOP or
    a lost machine would stop it), the other names it after the lease, and not before."""
    store = dist.HashStore()
    lease = 0.6
    beats = [parallel.Heartbeat(store, rank, 2, lease, ["node-a", "node-b"]) for rank in (0, 1)]
    try:
        time.sleep(lease * 1.5)
        assert beats[0].silent() is None and beats[1].silent() is None
        beats[1].stop()
        stopped = time.monotonic()
        while beats[0].silent() is None:
            assert time.monotonic() - stopped < lease * 5, "a stopped process was never found silent"
            time.sleep(0.02)
        assert time.monotonic() - stopped >= lease * 0.8  # not before the lease (its last beat may be lease/6 old)
        assert "process 1 on node-b has not answered for" in beats[0].silent()
        assert parallel.is_peer_lost(parallel.PeerSilent(beats[0].silent()))
    finally:
        for beat in beats:
            beat.stop()


@pytest.mark.slow
def test_python_api_under_torchrun_chains_equals_one_process(tmp_path):
    script = tmp_path / "api.py"
    script.write_text(API_SCRIPT)
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=ONE_THREAD, capture_output=True,
                         text=True)
    assert one.returncode == 0, one.stderr
    code, _, stderr = finish(torchrun(2, str(script), str(tmp_path / "two")))
    assert code == 0, stderr
    assert (tmp_path / "two" / "results.json").read_bytes() == (tmp_path / "one" / "results.json").read_bytes()


@pytest.mark.parametrize("mistake, named", [([], "runtime.parallel"),
                                            (["runtime.parallel=data", "train.batch_size=15"], "multiple of 2")])
def test_a_mistake_under_torchrun_is_one_line_from_rank_zero(tmp_path, mistake, named):
    code, _, stderr = finish(torchrun(2, "-m", "kdgen", "run", "--out", str(tmp_path / "x"), *TINY, *mistake))
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.startswith("kdgen:")]
    assert len(lines) == 1 and named in lines[0], stderr
    assert not (tmp_path / "x").exists()  # found before anything was written


class _Numbered(torch.utils.data.Dataset):
    """Image i is filled with i: a batch shows which samples it holds."""

    def __init__(self, samples, train):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return torch.full((1, 2, 2), self.samples[i][0], dtype=torch.uint8), self.samples[i][1]


@pytest.mark.parametrize("streaming", [False, True])
def test_data_mode_shares_are_the_one_process_batches(streaming):
    """Each process gets its part of every global batch (resident: augmented as one process would;
    streaming: only its part is decoded), and the parts make up one process's batches."""
    from kdgen.data.base import AugmentSpec, Split, StreamingSplit
    from kdgen.training.batches import TrainBatches

    samples = [(i, i % 4) for i in range(40)]
    split = StreamingSplit(samples, _Numbered) if streaming else \
        Split(torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous(),
              torch.tensor([s[1] for s in samples]))
    spec = AugmentSpec() if streaming else AugmentSpec(translate=1)

    def epoch(share):
        batches = TrainBatches(split, spec, 8, torch.device("cpu"), torch.Generator().manual_seed(5), share=share)
        return [(images, labels) for images, labels in batches]

    whole, first, second = epoch((0, 1)), epoch((0, 2)), epoch((1, 2))
    assert len(whole) == len(first) == len(second) == 5
    for (images, labels), (a, la), (b, lb) in zip(whole, first, second):
        assert len(a) == len(b) == 4
        assert torch.equal(torch.cat([a, b]), images) and torch.equal(torch.cat([la, lb]), labels)
    with pytest.raises(ConfigError, match="multiple of 3"):
        TrainBatches(split, spec, 8, torch.device("cpu"), torch.Generator(), share=(0, 3))


def test_chains_are_shared_out_longest_first_and_completely():
    costs = [5, 1, 3, 3, 8, 2]
    shares = [parallel.Chains(parallel.Place(rank=r, world_size=3)).assign(costs) for r in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(6))
    assert [sum(costs[i] for i in share) for share in shares] == [8, 7, 7]
    assert all(share == sorted(share) for share in shares)  # each process keeps the run's order


def test_one_process_mode_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="runtime.parallel=chains"):
        parallel.start("none", "cpu")


@pytest.mark.parametrize("mode, backend", [("chains", "gloo"), ("data", "nccl")])
def test_only_data_mode_joins_over_nccl_on_gpus(monkeypatch, mode, backend):
    """Chains mode shares a GPU between processes, which NCCL refuses ("Duplicate GPU detected", seen on an H200):
    its processes join over gloo; data mode, whose gradients travel, over NCCL with its device named."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    joined = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, device_id=None: joined.update(
        backend=backend, device_id=device_id))
    monkeypatch.setattr(dist, "new_group", lambda **kwargs: None)
    monkeypatch.setattr(parallel, "_start_heartbeat", lambda *args: None)
    parallel.start(mode, "auto")
    assert joined["backend"] == backend
    assert (joined["device_id"] is None) == (backend == "gloo")


def test_unknown_mode_and_a_half_set_torchrun_environment_are_one_line_errors(monkeypatch, capsys, tmp_path):
    assert main(["config", "runtime.parallel=pipeline"]) == 2
    assert "chains" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as if torchrun had started us, without the rest of its environment
    for command in (["sweep", "--grid", "tolerance.eta=0,1"], ["run"]):
        assert main([*command, "--out", str(tmp_path / "nowhere"), *TINY]) == 2
        err = capsys.readouterr().err
        assert "RANK is not set" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "nowhere").exists()


def test_records_merge_in_training_order_whoever_finished_first(tmp_path):
    order = ["a-seed0-gen0", "a-seed0-gen1", "b-seed0-gen0"]
    row = lambda arm, g: {"arm": arm, "seed": 0, "generation": g, "kind": "single", "split": "test"}  # noqa: E731
    worker = RunFolder(tmp_path, order=order, leader=False)
    worker._mark_done("b-seed0-gen0", [row("b", 0)], None)
    assert not (tmp_path / "results.json").exists()  # only the leader writes it
    leader = RunFolder(tmp_path, order=order, leader=True)
    leader._mark_done("a-seed0-gen1", [row("a", 1)], None)
    leader._mark_done("a-seed0-gen0", [row("a", 0)], {"x": 1})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["done"] == order and [r["arm"] for r in saved["rows"]] == ["a", "a", "b"]
    assert [r["generation"] for r in saved["rows"]] == [0, 1, 0]
    for name in order:  # resume reads every finished unit's checkpoint header
        save_model(torch.nn.Linear(1, 1), leader.checkpoint_path(name), {})
    resumed = RunFolder(tmp_path, resume=True, order=order)
    assert resumed.done == order and resumed.rows == saved["rows"]
