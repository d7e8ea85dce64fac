"""Two nodes simulated on one machine: two torchrun agents (``--nnodes=2``, one process each) meet through a c10d
rendezvous on 127.0.0.1 and share one run folder (as nodes share a filesystem); rows equal one process's.

Every process runs one thread, and so does the one-process reference (OMP_NUM_THREADS=1).
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

TINY = ["data.name=synthetic", "data.num_train=128", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=1", "train.batch_size=16", "seeds=[0,1]",
        "generations.count=1", "generations.arms=[strict,tolerant]", "tolerance.k=3", "--no-progress"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(*kdgen_args: str, timeout: float = 240) -> None:
    """``kdgen ARGS`` under two torchrun agents of one process each, joined by a c10d rendezvous on loopback."""
    port = free_port()
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                                "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=kdgen-{port}",
                                "-m", "kdgen", *kdgen_args], env=ONE_THREAD, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for agent in agents:
        _, stderr = agent.communicate(timeout=timeout)
        assert agent.returncode == 0, stderr[-2000:]


def one_process(*kdgen_args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "kdgen", *kdgen_args], env=ONE_THREAD, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]


def rows(run_dir) -> list[dict]:
    return json.loads((run_dir / "results.json").read_text())["rows"]


def test_run_on_two_nodes_gives_one_process_rows(tmp_path):
    one_process("run", "--out", str(tmp_path / "one"), *TINY)
    two_nodes("run", "--out", str(tmp_path / "two"), *TINY, "runtime.parallel=chains")
    assert rows(tmp_path / "two") == rows(tmp_path / "one")
    timing = json.loads((tmp_path / "two" / "timing.json").read_text())
    assert timing["processes"] == 2 and timing["units_trained"] == 2 * 2 * 2


def test_sweep_on_two_nodes_gives_one_process_rows(tmp_path):
    sweep = ["sweep", *TINY, "seeds=[0]", "--grid", "tolerance.eta=0.3,0.6"]
    one_process(*sweep, "--out", str(tmp_path / "one"))
    two_nodes(*sweep, "--out", str(tmp_path / "two"))
    points = sorted(p.name for p in (tmp_path / "one" / "runs").iterdir())
    assert points == sorted(p.name for p in (tmp_path / "two" / "runs").iterdir()) and len(points) == 2
    for point in points:
        assert rows(tmp_path / "two" / "runs" / point) == rows(tmp_path / "one" / "runs" / point)
