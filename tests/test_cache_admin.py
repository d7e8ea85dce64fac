"""The unit cache's checksums and ``kdgen cache ls|verify|prune|du``, on a real cache of two tiny runs."""

import io
import os
import shutil
import sys
import time

import pytest
import torch

from kdgen.checkpoint import read_json, write_json
from kdgen.config import load_config
from kdgen.folders import saved_config
from kdgen.running import cache_admin
from kdgen.running.runner import run_experiment
from kdgen.running.unit_cache import UnitCache, check_unit, unit_key

TINY = ["data.name=synthetic", "data.num_train=96", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=1", "train.batch_size=16", "seeds=[0]",
        "generations.count=1", "generations.arms=[tolerant]", "log.progress=false"]


def cfg(eta):
    return load_config(None, TINY + [f"tolerance.eta={eta}"])


def unit_folder(root, eta, generation):
    """The cache folder of the tolerant unit of run a (eta 0.5) or b (0.7), by the key of its resolved config."""
    key = unit_key(saved_config(root / {0.5: "a", 0.7: "b"}[eta]), "tolerant", 0, generation)
    return root / "units" / f"tolerant-seed0-gen{generation}-{key}"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """runs a (eta 0.5) and b (eta 0.7) sharing units/: 4 units, two per generation, differing in tolerance.eta."""
    torch.set_num_threads(int(os.environ.get("KDGEN_TEST_THREADS", "2")))
    root = tmp_path_factory.mktemp("cache")
    cache = UnitCache(root / "units")
    for name, eta in (("a", 0.5), ("b", 0.7)):
        run_experiment(cfg(eta), root / name, echo=False, unit_cache=cache)
    return root


@pytest.fixture
def copy(base, tmp_path):
    shutil.copytree(base, tmp_path / "c")
    return tmp_path / "c"


@pytest.fixture
def no_tty(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


def test_records_carry_checksums_and_each_kind_of_damage_is_named(copy):
    folder = unit_folder(copy, 0.5, 0)
    record = read_json(folder / "record.json")
    assert len(record["sha256"]) == 64 and record["bytes"] == (folder / "model.safetensors").stat().st_size
    assert check_unit(folder) == (record, None)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").unlink()  # (a hard link to a's checkpoint: leave that alone)
    (folder / "model.safetensors").write_bytes(data[:-10])
    assert "bytes" in check_unit(folder)[1]
    (folder / "record.json").write_text("{not json")
    assert "record.json" in check_unit(folder)[1]
    old = unit_folder(copy, 0.7, 0)  # a record from before checksums: reused, but unverified
    write_json(old / "record.json", {k: v for k, v in read_json(old / "record.json").items() if k not in ("sha256", "bytes")})
    assert check_unit(old)[1] is None
    status = {v.unit.folder: v.status for v in cache_admin.verify(cache_admin.scan(copy / "units"))}
    assert status[folder] == "bad" and status[old] == "unverified" and list(status.values()).count("ok") == 2


def test_a_flipped_byte_is_named_by_verify_then_retrained_once_with_a_warning(copy, kdgen_cli):
    folder = unit_folder(copy, 0.5, 1)
    cached = folder / "model.safetensors"
    original = read_json(folder / "record.json")
    run_checkpoint = copy / "a" / "checkpoints" / "tolerant-seed0-gen1.safetensors"
    run_checkpoint.unlink()
    os.link(cached, run_checkpoint)  # as kdgen left it (copytree broke the hard link)
    with open(cached, "r+b") as handle:
        handle.seek(cached.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x01]))
    damaged = cached.read_bytes()
    result = kdgen_cli("cache", "verify", str(copy / "units"))
    assert result.returncode == 1 and f"bad: {folder.name}: " in result.stdout and "sha256" in result.stdout
    assert result.stdout.count("bad:") == 1

    result = kdgen_cli("run", "--out", str(copy / "again"), "--units", str(copy / "units"), *TINY, "tolerance.eta=0.5")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and folder.name in warnings[0] and "sha256" in warnings[0]
    timing = read_json(copy / "again" / "timing.json")
    assert timing["units_trained"] == 1 and timing["units_reused"] == 1
    assert read_json(folder / "record.json")["rows"] == original["rows"]  # retrained: the same numbers
    assert check_unit(folder)[1] is None
    assert run_checkpoint.read_bytes() == damaged  # the new file replaced the link; it was never written into
    assert kdgen_cli("cache", "verify", str(copy / "units")).returncode == 0


def test_ls_shows_differing_settings_and_users_and_du_totals(base, kdgen_cli):
    result = kdgen_cli("cache", "ls", str(base / "units"), "--runs", str(base / "a"))
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 4
    for generation, eta, users in ((0, 0.5, "a"), (1, 0.7, "-")):
        line = next(line for line in lines if unit_folder(base, eta, generation).name.split("-")[-1] in line)
        assert line.startswith(f"tolerant-seed0-gen{generation}") and "cnn-tiny" in line and "kB" in line
        assert f"tolerance.eta={eta}" in line and "train." not in line
        assert line.endswith("used by: " + (str(base / users) if users != "-" else "-"))
    result = kdgen_cli("cache", "du", str(base / "units"))
    total = sum(p.stat().st_size for p in (base / "units").rglob("*") if p.is_file())
    assert result.returncode == 0 and f"{cache_admin.human_size(total)} in 4 units" in result.stdout
    assert "arm tolerant: 4 units" in result.stdout and "model cnn-tiny: 4 units" in result.stdout


def test_prune_unused_asks_for_yes_and_spares_fresh_claims(copy, kdgen_cli, no_tty, monkeypatch):
    units = copy / "units"
    unused = [unit_folder(copy, 0.7, 0), unit_folder(copy, 0.7, 1)]
    result = kdgen_cli("cache", "prune", str(units), "--unused-by", str(copy / "a"))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "--yes" in result.stderr
    assert all(folder.name in result.stdout for folder in unused) and all(folder.is_dir() for folder in unused)

    monkeypatch.setattr(sys, "stdin", type("Tty", (io.StringIO,), {"isatty": lambda self: True})(""))
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert kdgen_cli("cache", "prune", str(units), "--unused-by", str(copy / "a")).returncode == 0
    assert all(folder.is_dir() for folder in unused)

    fresh, stale = (folder.with_name(folder.name + ".claim") for folder in unused)
    fresh.write_text("{}")
    stale.write_text("{}")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    result = kdgen_cli("cache", "prune", str(units), "--unused-by", str(copy / "a"), "--yes")
    assert result.returncode == 0 and f"skip {unused[0].name}" in result.stdout and "deleted 1 units" in result.stdout
    assert unused[0].is_dir() and fresh.is_file() and not unused[1].exists() and not stale.exists()
    assert unit_folder(copy, 0.5, 0).is_dir() and unit_folder(copy, 0.5, 1).is_dir()


def test_a_folder_that_is_not_a_cache_is_one_line_and_exit_2(base, tmp_path, kdgen_cli):
    for folder in (tmp_path / "missing", base / "a"):
        for action in ("ls", "verify", "du"):
            result = kdgen_cli("cache", action, str(folder))
            assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "not a unit cache" in result.stderr
    (tmp_path / "empty").mkdir()
    assert kdgen_cli("cache", "verify", str(tmp_path / "empty")).returncode == 0


# Faults of the file system: one line naming the path and the cause, exit code 2, never a traceback.

def one_line(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(needle in lines[0] for needle in needles), lines[0]


def deny(monkeypatch, method, path, code=None):
    """``Path.<method>`` on ``path`` fails as a permission denial (or ``code``) would: chmod does not stop root."""
    import errno
    from pathlib import Path

    code = errno.EACCES if code is None else code
    real = getattr(Path, method)

    def failing(self, *args, **kwargs):
        if self == path:
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, failing)


def test_an_unreadable_cache_folder_is_one_line(base, kdgen_cli, monkeypatch):
    deny(monkeypatch, "iterdir", base / "units")
    for action in ("ls", "verify", "du"):
        one_line(kdgen_cli("cache", action, str(base / "units")), f"could not read {base / 'units'}: Permission denied")
    one_line(kdgen_cli("cache", "prune", str(base / "units"), "--older-than", "0", "--yes"), "could not read")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="runs as root, whom folder modes do not stop (test_an_unreadable_cache_folder covers it)")
def test_a_cache_folder_without_read_permission_is_one_line(copy, kdgen_cli):
    (copy / "units").chmod(0o300)
    try:
        result = kdgen_cli("cache", "ls", str(copy / "units"))
    finally:
        (copy / "units").chmod(0o755)
    one_line(result, f"could not read {copy / 'units'}: Permission denied")


def test_an_unreadable_record_is_named_by_verify(copy, kdgen_cli, monkeypatch):
    folder = unit_folder(copy, 0.5, 0)
    deny(monkeypatch, "read_text", folder / "record.json")
    result = kdgen_cli("cache", "verify", str(copy / "units"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    bad = [line for line in result.stdout.splitlines() if line.startswith("bad:")]
    assert len(bad) == 1 and folder.name in bad[0] and "Permission denied" in bad[0], result.stdout
    assert kdgen_cli("cache", "ls", str(copy / "units")).returncode == 0


def test_an_unreadable_record_in_a_run_is_one_warning_and_the_unit_retrained(copy, kdgen_cli, monkeypatch):
    folder = unit_folder(copy, 0.5, 0)
    deny(monkeypatch, "read_text", folder / "record.json")
    result = kdgen_cli("run", "--out", str(copy / "again"), "--units", str(copy / "units"), *TINY, "tolerance.eta=0.5")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and folder.name in warnings[0] and "Permission denied" in warnings[0], warnings


def test_prune_on_a_read_only_cache_is_one_line_and_can_be_repeated(copy, kdgen_cli, monkeypatch):
    import errno

    units = copy / "units"
    victim = unit_folder(copy, 0.7, 0)
    deny(monkeypatch, "unlink", victim / "record.json", errno.EROFS)
    result = kdgen_cli("cache", "prune", str(units), "--unused-by", str(copy / "a"), "--yes")
    one_line(result, f"could not delete {victim / 'record.json'}: Read-only file system", "run the same command again")
    assert victim.is_dir() and (victim / "record.json").is_file()
    monkeypatch.undo()
    result = kdgen_cli("cache", "prune", str(units), "--unused-by", str(copy / "a"), "--yes")
    assert result.returncode == 0 and "deleted 2 units" in result.stdout and not victim.exists()


def test_a_unit_folder_that_cannot_be_emptied_stops_prune_with_one_line(copy, kdgen_cli, monkeypatch):
    """rmtree meets a checkpoint it cannot delete (it used to pass over it, and prune said "deleted")."""
    import errno

    first = unit_folder(copy, 0.7, 0)  # the first of the two units to delete
    real_unlink = os.unlink

    def read_only(path, *args, **kwargs):  # shutil.rmtree deletes through os.unlink (by name, with dir_fd)
        if os.path.basename(path) == "model.safetensors":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", read_only)
    result = kdgen_cli("cache", "prune", str(copy / "units"), "--unused-by", str(copy / "a"), "--yes")
    one_line(result, f"could not delete {first / 'model.safetensors'}: Read-only file system")
    assert "deleted" not in result.stdout and (first / "model.safetensors").is_file()
