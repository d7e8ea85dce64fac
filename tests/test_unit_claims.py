"""Units claimed, not raced: processes sharing one unit cache train every unit once (kdgen.running.unit_claims)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import tiny_config

from kdgen.checkpoint import read_json
from kdgen.running.unit_cache import unit_key

TINY = ["data.name=synthetic", "data.num_train=320", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=3", "train.batch_size=16", "seeds=[0]",
        "generations.count=1", "generations.arms=[baseline,tolerant]", "tolerance.k=3", "--no-progress",
        "runtime.save_every_s=0"]
UNITS = 4  # 2 arms x (patriarch + 1 generation)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(out, units, *extra):
    return subprocess.Popen([sys.executable, "-m", "kdgen", "run", "--out", str(out), "--units", str(units), *TINY,
                             *extra], env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rows(out):
    return read_json(out / "results.json")["rows"]


def unit_folders(units):
    return sorted(p.name for p in units.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """One process with a cache of its own: the rows every sharing run must give, and the units' folder names."""
    folder = tmp_path_factory.mktemp("claims")
    process = start(folder / "alone", folder / "alone-units")
    assert process.wait(timeout=300) == 0, process.stderr.read()
    return folder


def test_two_processes_sharing_a_cache_train_each_unit_once(tmp_path, alone):
    units = tmp_path / "units"
    a, b = start(tmp_path / "a", units), start(tmp_path / "b", units)
    assert a.wait(timeout=300) == 0, a.stderr.read()
    assert b.wait(timeout=300) == 0, b.stderr.read()
    timings = [read_json(tmp_path / name / "timing.json") for name in ("a", "b")]
    assert sum(t["units_trained"] for t in timings) == UNITS, timings
    assert all(t["units_trained"] + t["units_reused"] == UNITS for t in timings), timings
    assert read_json(alone / "alone" / "timing.json")["units_trained"] == UNITS
    assert len(unit_folders(units)) == UNITS
    assert not list(units.glob("*.claim*")) and not list(units.glob("*.state.safetensors"))
    assert rows(tmp_path / "a") == rows(alone / "alone") == rows(tmp_path / "b")


def test_a_stale_claim_is_taken_over_after_the_lease(tmp_path, alone):
    """A claim left by a process on another machine, not renewed: taken over after runtime.lease_s."""
    name = next(n for n in unit_folders(alone / "alone-units") if n.startswith("baseline-seed0-gen0-"))
    units = tmp_path / "units"
    units.mkdir()
    claim = units / f"{name}.claim"
    claim.write_text(json.dumps({"host": "gone.example", "pid": 4242, "started": time.time() - 3600,
                                 "renewed": time.time() - 3600, "token": "x", "boot": "y"}))
    began = time.perf_counter()
    run = start(tmp_path / "run", units, "runtime.lease_s=2")
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert "waiting for baseline-seed0-gen0: claimed by gone.example:4242" in stderr
    assert "taking over baseline-seed0-gen0" in stderr
    assert time.perf_counter() - began > 2
    assert read_json(tmp_path / "run" / "timing.json")["units_trained"] == UNITS
    assert rows(tmp_path / "run") == rows(alone / "alone")
    assert claim.parent.joinpath(claim.name[:-len(".claim")], "record.json").is_file()
    assert not list(units.glob("*.claim*"))
    # Another chain first: the tolerant chain (not claimed) was trained while the baseline one waited on its claim.
    finished = {p.name.split("-")[0] + p.name.split("-")[2]: (p / "record.json").stat().st_mtime_ns
                for p in units.iterdir() if p.is_dir()}
    assert finished["tolerantgen1"] < finished["baselinegen0"], finished


def test_a_killed_claimer_is_taken_over_and_its_state_resumed(tmp_path, alone):
    """SIGKILL the process training a unit: a waiting process takes its claim over, continues from the state it
    shared next to the claim, and ends with a one-process run's rows."""
    units = tmp_path / "units"
    first = start(tmp_path / "first", units, "runtime.lease_s=2")

    def mid_unit():  # a state shared next to the claim of a unit not yet in the cache
        return units.is_dir() and any(not (units / s.name[:-len(".state.safetensors")] / "record.json").exists()
                                      for s in units.glob("*.state.safetensors"))

    deadline = time.time() + 120
    while not mid_unit() and time.time() < deadline and first.poll() is None:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = start(tmp_path / "second", units, "runtime.lease_s=2")
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert "taking over" in stderr and f"from {socket.gethostname()}:{first.pid}" in stderr, stderr
    assert "from the state its last claimer left" in stderr, stderr
    assert rows(tmp_path / "second") == rows(alone / "alone")
    assert len(unit_folders(units)) == UNITS
    assert not list(units.glob("*.claim*")) and not list(units.glob("*.state.safetensors"))


def test_lease_does_not_change_unit_keys():
    base, other = tiny_config(), tiny_config(runtime={"lease_s": 2.0})
    assert base.runtime.lease_s == 60.0 and other.runtime.lease_s == 2.0
    for arm in ("baseline", "strict", "tolerant"):
        for generation in (0, 1, 2):
            assert unit_key(base, arm, 0, generation) == unit_key(other, arm, 0, generation)


def test_a_config_without_lease_loads(tmp_path):
    from kdgen.config import load_config

    path = tmp_path / "config.yaml"
    raw = tiny_config().to_dict()
    raw["runtime"].pop("lease_s")
    import yaml

    path.write_text(yaml.safe_dump(raw))
    assert load_config(path, []).runtime.lease_s == 60.0


# Faults of the file system: one line naming the path and the cause, exit code 2, never a traceback.

def claim_path(units, arm="baseline", seed=0, generation=0):
    """Where a run with TINY puts its claim on a unit in the cache ``units``."""
    from kdgen.config import load_config
    from kdgen.running.unit_cache import UnitCache

    cfg = load_config(None, [item for item in TINY if not item.startswith("--")])
    return UnitCache(units).claim_path(cfg, arm, seed, generation)


def one_line(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(needle in lines[0] for needle in needles), lines[0]
    return lines[0]


def test_a_file_where_the_cache_folder_should_be_is_one_line(tmp_path, kdgen_cli):
    units = tmp_path / "units"
    units.write_text("not a folder")
    result = kdgen_cli("run", "--out", str(tmp_path / "run"), "--units", str(units), *TINY)
    line = one_line(result, f"could not write {units}: not a folder", "--resume")
    assert line.startswith("kdgen: error: ")


def test_a_claim_on_a_read_only_file_system_is_one_line(tmp_path, kdgen_cli, monkeypatch):
    """The create of the claim fails as on a read-only mount (EROFS): chmod cannot show it to root."""
    import errno

    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".claim"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    claim = claim_path(tmp_path / "units")
    result = kdgen_cli("run", "--out", str(tmp_path / "run"), "--units", str(tmp_path / "units"), *TINY)
    one_line(result, f"could not write {claim}: Read-only file system")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="runs as root, whom a read-only folder mode does not stop (the EROFS test covers it)")
def test_a_claim_in_a_folder_without_write_permission_is_one_line(tmp_path, kdgen_cli):
    units = tmp_path / "units"
    units.mkdir()
    units.chmod(0o555)
    try:
        result = kdgen_cli("run", "--out", str(tmp_path / "run"), "--units", str(units), *TINY)
    finally:
        units.chmod(0o755)
    one_line(result, f"could not write {claim_path(units)}: Permission denied")


def test_a_folder_where_a_claim_should_be_is_one_line(tmp_path, kdgen_cli):
    claim = claim_path(tmp_path / "units")
    claim.mkdir(parents=True)
    result = kdgen_cli("run", "--out", str(tmp_path / "run"), "--units", str(tmp_path / "units"), *TINY)
    one_line(result, f"could not read {claim}: Is a directory")


def test_a_claim_that_cannot_be_written_out_is_not_left_behind(tmp_path, monkeypatch):
    """Disk full between the create and the write: no empty claim stays for others to wait on for a lease."""
    import errno
    from types import SimpleNamespace

    from kdgen.config import load_config
    from kdgen.errors import WriteError
    from kdgen.running.unit_cache import UnitCache
    from kdgen.running.unit_claims import Claims

    cfg = load_config(None, [item for item in TINY if not item.startswith("--")])
    claims = Claims(UnitCache(tmp_path / "units"), cfg, lease_s=60)
    unit = SimpleNamespace(arm="baseline", seed=0, generation=0, name="baseline-seed0-gen0")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError) as caught:
        claims.acquire(unit)
    assert str(caught.value) == f"could not write {claims.path(unit)}: No space left on device"
    assert not claims.path(unit).exists() and not claims.held
    monkeypatch.undo()
    assert claims.acquire(unit) is None  # a later attempt claims it
    claims.release_all()
    assert not claims.path(unit).exists()
