"""train.py across "machines": two torchrun nodes on localhost meet through the c10d rendezvous (gloo, CPU) and
train to the same weights as one process with the same global batch (docs/training.md, "Several machines")."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_train import args_for, losses, run_main, shapes, weights  # noqa: F401 - shapes is a fixture

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_through_c10d_equal_one_process(shapes: Path, tmp_path: Path) -> None:  # noqa: F811
    sgd = ("--optimizer", "sgd", "--lr", "1e-3", "--end_epoch", "2")
    assert run_main(args_for(shapes, tmp_path / "single", *sgd)) == 0
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={rank}",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint={endpoint}",
                "--rdzv_id=ssd-test",
                str(ROOT / "train.py"),
                *args_for(shapes, tmp_path / "multi", *sgd),
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert losses(tmp_path / "multi" / "exp1") == pytest.approx(losses(tmp_path / "single" / "exp1"), rel=1e-4)
    wa, wb = weights(tmp_path / "single" / "exp1" / "last.pth"), weights(tmp_path / "multi" / "exp1" / "last.pth")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-3, atol=1e-5, msg=key)
    assert not (tmp_path / "multi" / "exp2").exists()  # one run folder, written by global rank 0 alone
