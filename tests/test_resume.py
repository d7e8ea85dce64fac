"""Exact resume: SIGKILL a real run at random moments, resume, and get a bit-identical results.json."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from kdgen.checkpoint import load_state
from kdgen.resume import load_state as load_epoch_state

TINY = ["data.name=synthetic", "data.num_train=640", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=3", "train.batch_size=16", "seeds=[0]",
        "generations.count=2", "tolerance.k=3", "--no-progress"]


def start(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "kdgen", "run", "--out", str(out), *TINY, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def reference_run(tmp_path):
    """An uninterrupted run: its folder and how long it took (kill times are drawn as fractions of it)."""
    reference = tmp_path / "reference"
    began = time.perf_counter()
    assert start(reference).wait(timeout=300) == 0
    return reference, time.perf_counter() - began


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_results(tmp_path):
    reference, duration = reference_run(tmp_path)
    expected = (reference / "results.json").read_bytes()

    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    process = start(out)
    for _ in range(3):
        # Each kill lands somewhere in the first half of a (resumed) run, after interpreter start-up.
        time.sleep(rng.uniform(0.25, 0.5) * duration)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        process = start(out, "--resume")
    assert process.wait(timeout=300) == 0, process.stderr.read()
    assert kills >= 2
    assert (out / "results.json").read_bytes() == expected
    for checkpoint in (reference / "checkpoints").iterdir():
        # safetensors orders header metadata arbitrarily, so compare contents, not bytes
        resumed, original = load_state(out / "checkpoints" / checkpoint.name), load_state(checkpoint)
        assert resumed[1] == original[1] and resumed[0].keys() == original[0].keys()
        assert all(torch.equal(resumed[0][k], original[0][k]) for k in original[0])
    assert not (out / "state" / "current.safetensors").exists()


@pytest.mark.slow
def test_signals_save_mid_epoch_state_and_resume_exactly(tmp_path):
    reference, duration = reference_run(tmp_path)
    out = tmp_path / "stopped"
    rng = random.Random(99)
    mid_epoch_states = 0
    process = start(out)
    for sig in (signal.SIGINT, signal.SIGTERM):
        time.sleep(rng.uniform(0.3, 0.5) * duration)
        process.send_signal(sig)
        assert process.wait(timeout=120) == 130, process.stderr.read()
        assert "--resume" in process.stderr.read()
        state = load_epoch_state(out / "state" / "current.safetensors")
        mid_epoch_states += state.step > 0
        process = start(out, "--resume")
    assert process.wait(timeout=300) == 0, process.stderr.read()
    assert mid_epoch_states >= 1  # 32 steps an epoch: a random signal lands inside one
    assert (out / "results.json").read_bytes() == (reference / "results.json").read_bytes()


def test_resume_with_a_different_config_is_refused(tmp_path):
    out = tmp_path / "run"
    args = [a for a in TINY if a != "train.epochs=3"] + ["train.epochs=1", "seeds=[0]", "generations.count=1"]
    done = subprocess.run([sys.executable, "-m", "kdgen", "run", "--out", str(out), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = subprocess.run([sys.executable, "-m", "kdgen", "run", "--resume", "--out", str(out), "train.epochs=2",
                             "tolerance.eta=0.9"], capture_output=True, text=True)
    assert result.returncode == 2 and "train.epochs" in result.stderr and "tolerance.eta" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # the same config (even with a cosmetic change) resumes a finished run without training anything
    again = subprocess.run([sys.executable, "-m", "kdgen", "run", "--resume", "--out", str(out), "log.progress=false"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(before["results.json"])["rows"]
