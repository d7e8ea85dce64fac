import os

import pytest
import torch

# Under pytest-xdist every worker is one of several processes sharing the cores: one thread each, and so are the
# kdgen processes the tests start (they inherit OMP_NUM_THREADS). Tests compare runs at equal thread counts.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("KDGEN_TEST_THREADS", "1")

from kdgen.config import build_config  # noqa: E402
from kdgen.data import load_bundle  # noqa: E402


def tiny_config(**sections):
    """A config small enough for a unit test: synthetic 8x8 data, 2 epochs, 1 seed."""
    raw = {
        "seeds": [0],
        "data": {"name": "synthetic", "num_train": 80, "num_test": 24, "image_size": 8, "channels": 1,
                 "num_classes": 4, "val_fraction": 0.25},
        "model": {"name": "cnn-tiny"},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "generations": {"count": 2},
        "tolerance": {"k": 3},
        "log": {"progress": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return build_config(raw)


@pytest.fixture
def tiny_cfg():
    return tiny_config()


@pytest.fixture
def tiny_data(tiny_cfg):
    return load_bundle(tiny_cfg.data)


@pytest.fixture(autouse=True)
def _two_threads():
    # KDGEN_TEST_THREADS=1 leaves a core free (e.g. for an experiment running beside the suite).
    torch.set_num_threads(int(os.environ.get("KDGEN_TEST_THREADS", "2")))


@pytest.fixture
def kdgen_cli(capsys):
    """``kdgen ARGS`` through the command's entry point in this process (no interpreter start-up): its exit code
    and captured stdout/stderr."""
    from types import SimpleNamespace

    from kdgen.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    return run
