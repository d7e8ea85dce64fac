"""Plug-ins from another package: examples/plugin is installed (pip, offline) and its method and arm run,
validated like built-ins; a broken plug-in is skipped with a warning that names it."""

import os
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


def python(site, *args):
    """A fresh interpreter that sees the installed plug-in (and kdgen: installed, or this checkout)."""
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN.parents[1])]), "PATH": os.environ.get("PATH", ""),
           "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)


def test_the_installed_plugin_adds_a_method_and_an_arm_that_run(installed, tmp_path):
    out = tmp_path / "run"
    done = python(installed, "-m", "kdgen", "run", *TINY, "generations.count=2",
                  "generations.arms=[strict,patriarch-taught]", "distill.method=mse-logits", "distill.weight=0.3",
                  "--out", str(out))
    assert done.returncode == 0, done.stderr
    config = (out / "config.yaml").read_text()
    assert "method: mse-logits" in config and "patriarch-taught" in config
    assert "patriarch-taught" in (out / "report.md").read_text()


CHECKS = """
from kdgen import arms
from kdgen.config import load_config
from kdgen.errors import ConfigError
print("arms:", " ".join(arms.names()))
for overrides in (["distill.method=mse-logits", "distill.wieght=0.3"], ["distill.method=mse-logits", "distill.weight=3"]):
    try:
        load_config(None, overrides)
    except ConfigError as exc:
        print("error:", exc)
"""


def test_a_plugins_config_section_is_checked_like_a_builtin(installed):
    done = python(installed, "-c", CHECKS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "patriarch-taught" in lines[0].split()
    assert "unknown key 'distill.wieght' (did you mean 'distill.weight'?)" in lines[1]
    assert "distill.weight" in lines[2] and "less than or equal to 1" in lines[2]


def test_a_broken_plugin_is_skipped_with_a_warning_naming_it(tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin").mkdir(parents=True)
    (site / "broken_plugin" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kdgen.arms]\nbroken = broken_plugin\n")
    done = python(site, "-m", "kdgen", "arms")
    assert done.returncode == 0 and "strict" in done.stdout
    assert "plug-in 'broken' (kdgen.arms, broken_plugin) failed to load: RuntimeError: boom" in done.stderr
