"""Plug-ins from another package: examples/plugin is installed (pip, offline) and its method and arm run,
validated like built-ins; a broken plug-in is skipped with a warning that names it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin"
TINY = ["data.name=synthetic", "data.num_train=80", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=1", "train.batch_size=16", "seeds=[0]",
        "tolerance.k=3", "--no-progress"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """examples/plugin installed into a folder of its own (a copy is built, so the tree stays clean)."""
    root = tmp_path_factory.mktemp("plugin")
    shutil.copytree(PLUGIN, root / "src")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(root / "site"), str(root / "src")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return root / "site"


def kdgen(site, *args, cwd=None):
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "kdgen", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_the_installed_plugin_adds_a_method_and_an_arm_that_run(installed, tmp_path):
    out = tmp_path / "run"
    done = kdgen(installed, "run", *TINY, "generations.count=2", "generations.arms=[strict,patriarch-taught]",
                 "distill.method=mse-logits", "distill.weight=0.3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    config = (out / "config.yaml").read_text()
    assert "method: mse-logits" in config and "patriarch-taught" in config
    assert "patriarch-taught" in (out / "report.md").read_text()
    assert "patriarch-taught" in kdgen(installed, "arms").stdout


def test_a_plugins_config_section_is_checked_like_a_builtin(installed, tmp_path):
    bad = kdgen(installed, "run", *TINY, "distill.method=mse-logits", "distill.wieght=0.3", "--out", str(tmp_path / "a"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "unknown key 'distill.wieght' (did you mean 'distill.weight'?)" in bad.stderr
    too_big = kdgen(installed, "run", *TINY, "distill.method=mse-logits", "distill.weight=3", "--out", str(tmp_path / "b"))
    assert too_big.returncode == 2 and "distill.weight" in too_big.stderr
    without = subprocess.run([sys.executable, "-m", "kdgen", "run", *TINY, "distill.method=mse-logits",
                              "--out", str(tmp_path / "c")], capture_output=True, text=True)
    assert without.returncode == 2 and "choose one of kd, dkd" in without.stderr  # not installed: not known


def test_a_broken_plugin_is_skipped_with_a_warning_naming_it(tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin").mkdir(parents=True)
    (site / "broken_plugin" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kdgen.arms]\nbroken = broken_plugin\n")
    done = kdgen(site, "arms")
    assert done.returncode == 0 and "strict" in done.stdout
    assert "plug-in 'broken' (kdgen.arms, broken_plugin) failed to load: RuntimeError: boom" in done.stderr
