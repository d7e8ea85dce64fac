"""A full disk (or another write fault) is one line naming the file and the cause, exit 2, nothing half-written
left where a reader would trust it, and --resume finishes with the results of an uninterrupted run."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors import SafetensorError

import kdgen.checkpoint
from kdgen.checkpoint import atomic_write, check_safetensors, read_json, write_json
from kdgen.errors import UserError, WriteError

TINY = ["data.name=synthetic", "data.num_train=160", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=2", "train.batch_size=16", "seeds=[0]",
        "generations.count=1", "tolerance.k=3", "runtime.save_every_s=0", "--no-progress"]
FULL = "No space left on device"


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"rows": [1]})

    def half_then_full(tmp):
        tmp.write_text('{"rows": [1, 2', encoding="utf-8")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError) as caught:
        atomic_write(path, half_then_full)
    assert isinstance(caught.value, UserError) and caught.value.errno == errno.ENOSPC
    assert str(caught.value) == f"could not write {path}: {FULL}"
    assert read_json(path) == {"rows": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_safetensors_io_errors_are_write_errors_too():
    wrapped = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    error = kdgen.checkpoint.write_error("x.safetensors", wrapped)
    assert error.errno == errno.ENOSPC and str(error) == f"could not write x.safetensors: {FULL}"


def _files(out):
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def _check_trustworthy(out):
    """No temporary file, and every checkpoint, state and JSON file a reader would trust is whole."""
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], _files(out)
    for path in out.rglob("*.safetensors"):
        check_safetensors(path, "safetensors file")
    for path in out.rglob("*.json"):
        read_json(path)


def test_disk_full_while_saving_a_checkpoint_is_one_line_and_resume_finishes_exactly(tmp_path, kdgen_cli, monkeypatch):
    reference = tmp_path / "reference"
    assert kdgen_cli("run", "--out", str(reference), *TINY).returncode == 0

    real_save = kdgen.checkpoint.save_file
    calls = {"n": 0}

    def fills_the_disk(state, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the second unit's checkpoint: half written, then the disk is full
            with open(filename, "wb") as handle:
                handle.write(b"\0" * 100)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(state, filename, metadata=metadata)

    monkeypatch.setattr(kdgen.checkpoint, "save_file", fills_the_disk)
    out = tmp_path / "full"
    failed = kdgen_cli("run", "--out", str(out), *TINY)
    assert failed.returncode == 2, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr
    assert lines[0].startswith(f"kdgen: error: could not write {out / 'checkpoints'}")
    assert f"{FULL}; free space and run again with --resume --out {out}" in lines[0]
    _check_trustworthy(out)
    assert len(list((out / "checkpoints").glob("*.safetensors"))) == 1  # the first unit's, whole

    monkeypatch.setattr(kdgen.checkpoint, "save_file", real_save)
    resumed = kdgen_cli("run", "--resume", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert read_json(out / "results.json")["rows"] == read_json(reference / "results.json")["rows"]
    assert (out / "report.md").is_file()


def test_a_stop_during_start_up_exits_130_before_anything_is_written(tmp_path, kdgen_cli, monkeypatch):
    import kdgen.cli

    real = kdgen.cli._stop_on_signals

    def stopped_at_once():
        stop, restore = real()
        stop.set()  # as the SIGTERM handler does, before the config and data are read
        return stop, restore

    monkeypatch.setattr(kdgen.cli, "_stop_on_signals", stopped_at_once)
    out = tmp_path / "run"
    result = kdgen_cli("run", "--out", str(out), *TINY)
    assert result.returncode == 130
    assert len(result.stderr.strip().splitlines()) == 1 and f"--resume --out {out}" in result.stderr
    assert not out.exists()


def _mount(where, size):
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_a_real_full_file_system_then_more_space_and_resume(tmp_path):
    """On a tmpfs too small for the run (needs root and mount): exit 2 naming a file under --out; after a
    remount with room, --resume finishes with the rows of an uninterrupted run."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount command to make a tiny file system")
    small = tmp_path / "small"
    small.mkdir()
    mounted = _mount(small, "256k")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not permitted'})")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def kdgen(out, *extra):
        return subprocess.run([sys.executable, "-m", "kdgen", "run", "--out", str(out), *TINY, *extra],
                              capture_output=True, text=True, env=env, timeout=300)

    try:
        reference = tmp_path / "reference"
        assert kdgen(reference).returncode == 0
        out = small / "run"
        failed = kdgen(out)
        assert failed.returncode == 2, failed.stderr
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
        assert lines[0].startswith(f"kdgen: error: could not write {out}/") and FULL in lines[0], lines[0]
        assert "--resume" in lines[0]
        _check_trustworthy(out)

        remounted = subprocess.run(["mount", "-o", "remount,size=32m", str(small)], capture_output=True, text=True)
        assert remounted.returncode == 0, remounted.stderr
        resumed = kdgen(out, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads((out / "results.json").read_text())["rows"] == \
            json.loads((reference / "results.json").read_text())["rows"]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_a_finished_run_folder_keeps_no_temporary_file_of_a_killed_writer(tmp_path):
    """A process killed inside an atomic write of results.json leaves ``.results.json.*.tmp``; the run that
    finishes the folder (a --resume) removes it with the other leftovers."""
    from kdgen.running.run_folder import RunFolder

    (tmp_path / "run").mkdir()
    folder = RunFolder(tmp_path / "run")
    stale = tmp_path / "run" / ".results.json.k1ll3d.tmp"
    stale.write_text("{half", encoding="utf-8")
    folder.write_results(complete=True)
    assert not stale.exists() and (tmp_path / "run" / "results.json").is_file()
