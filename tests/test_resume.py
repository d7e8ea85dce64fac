"""Exact resume: SIGKILL a real run at random moments, resume, and get a bit-identical results.json."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_config

from kdgen.checkpoint import load_state
from kdgen.models import build
from kdgen.training.loop import StopFlag, TrainHooks, TrainingInterrupted, train_generation
from kdgen.training.objective import GenerationObjective

TINY = ["data.name=synthetic", "data.num_train=640", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=3", "train.batch_size=16", "seeds=[0]",
        "generations.count=2", "tolerance.k=3", "--no-progress",
        # a state after every epoch (the default saves at most every 30 s): the kills below land between saves
        "runtime.save_every_s=0"]


def start(out, *extra):
    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "kdgen", "run", "--out", str(out), *TINY, *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process.started = started  # after_progress waits for this process's own saves, not an earlier one's
    return process


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run's folder, shared by the tests that stop and resume the same run."""
    out = tmp_path_factory.mktemp("resume") / "reference"
    assert start(out).wait(timeout=300) == 0
    return out


def after_progress(out, process, finished_units, rng):
    """Wait until the run in ``out`` has finished ``finished_units`` units and saved an epoch of the next,
    then a random fraction of a second more (so a kill lands anywhere in an epoch, whatever the machine's
    load). The saved epoch must be ``process``'s own (a state file written since it started), not one an
    earlier, stopped process left: a signal then reaches a process that is training, with its handlers in
    place. False if the process ended first."""
    def own_state(path):
        try:
            return path.stat().st_mtime >= process.started
        except FileNotFoundError:  # replaced or removed between the listing and the stat
            return False

    def progressed():
        done = len(list((out / "checkpoints").glob("*.safetensors"))) if (out / "checkpoints").is_dir() else 0
        return done >= finished_units and (out / "state").is_dir() and any(
            own_state(path) for path in (out / "state").glob("*.safetensors"))

    while not progressed():
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.3))
    return process.poll() is None


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_results(tmp_path, reference):
    expected = (reference / "results.json").read_bytes()

    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    process = start(out)
    for finished_units in range(2):
        # Each kill lands inside a unit's training, after at least one of its epochs was saved.
        if not after_progress(out, process, finished_units, rng):
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        process = start(out, "--resume")
    assert process.wait(timeout=300) == 0, process.stderr.read()
    assert kills == 2
    assert (out / "results.json").read_bytes() == expected
    for checkpoint in (reference / "checkpoints").iterdir():
        # safetensors orders header metadata arbitrarily, so compare contents, not bytes
        resumed, original = load_state(out / "checkpoints" / checkpoint.name), load_state(checkpoint)
        assert resumed[1] == original[1] and resumed[0].keys() == original[0].keys()
        assert all(torch.equal(resumed[0][k], original[0][k]) for k in original[0])
    leftover = [p.name for p in out.glob("state/*")] + [p.name for p in out.glob("records/*")]
    assert not (out / "state").exists() and not (out / "records").exists(), leftover  # a finished run keeps neither


@pytest.mark.slow
def test_signals_save_mid_epoch_state_and_resume_exactly(tmp_path, reference):
    out = tmp_path / "stopped"
    rng = random.Random(99)
    process = start(out)
    for finished_units, sig in enumerate((signal.SIGINT, signal.SIGTERM)):
        assert after_progress(out, process, finished_units, rng)
        process.send_signal(sig)
        assert process.wait(timeout=120) == 130, process.stderr.read()
        assert "--resume" in process.stderr.read()
        assert any((out / "state").glob("*.safetensors"))
        process = start(out, "--resume")
    assert process.wait(timeout=300) == 0, process.stderr.read()
    assert (out / "results.json").read_bytes() == (reference / "results.json").read_bytes()


def test_resume_with_a_different_config_is_refused(tmp_path, kdgen_cli):
    out = tmp_path / "run"
    args = [a for a in TINY if a != "train.epochs=3"] + ["train.epochs=1", "seeds=[0]", "generations.count=1"]
    done = kdgen_cli("run", "--out", str(out), *args)
    assert done.returncode == 0, done.stderr
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = kdgen_cli("run", "--resume", "--out", str(out), "train.epochs=2", "tolerance.eta=0.9")
    assert result.returncode == 2 and "train.epochs" in result.stderr and "tolerance.eta" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # the same config (even with changes that do not alter results) resumes a finished run without training
    again = kdgen_cli("run", "--resume", "--out", str(out), "log.progress=false", "runtime.compile=true")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(before["results.json"])["rows"]


@pytest.mark.parametrize("stop_after", [4, 5, 6])  # 3 steps an epoch: inside epoch 2 twice, then at its end
def test_stop_mid_epoch_then_resume_equals_uninterrupted_training(tiny_data, stop_after):
    """A stop request at a step boundary saves a state from which training ends bit-identical."""
    cfg = tiny_config(train={"epochs": 3})
    steps_per_epoch = len(tiny_data.train) // cfg.train.batch_size
    assert steps_per_epoch * cfg.train.epochs > stop_after
    objective = GenerationObjective()

    def fresh():
        torch.manual_seed(0)
        return build("cnn-tiny", 4, 1)

    reference = fresh()
    train_generation(reference, tiny_data, cfg.train, objective, seed=3)

    calls = {"n": 0}
    stop = StopFlag()

    class Counting(GenerationObjective):
        def forward(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == stop_after:
                stop.set()  # as the signal handler does
            return super().forward(*args, **kwargs)

    states = []
    interrupted = fresh()
    with pytest.raises(TrainingInterrupted):
        train_generation(interrupted, tiny_data, cfg.train, Counting(),
                         hooks=TrainHooks(on_state=states.append, stop=stop), seed=3)
    saved = states[-1]
    assert saved.epoch * steps_per_epoch + saved.step == stop_after
    resumed = fresh()
    train_generation(resumed, tiny_data, cfg.train, objective, seed=3, resume_from=saved)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
