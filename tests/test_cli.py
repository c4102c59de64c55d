"""utils/cli.py: the allocator settings every script applies. What they save (page faults, time) depends on the
machine's load and is measured by benchmarks/bench_page_faults.py, not asserted here."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)
def test_keep_freed_memory_takes_on_glibc() -> None:
    # In a child process: the settings are process-wide and would stay for the rest of the test session.
    code = "from utils.cli import keep_freed_memory\nassert keep_freed_memory() is True"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_scripts_turn_on_cudnn_autotuning() -> None:
    import argparse

    import torch

    from utils.cli import run_cli

    seen = []
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        assert run_cli(lambda _: seen.append(torch.backends.cudnn.benchmark), argparse.ArgumentParser(), []) == 0
    finally:
        torch.backends.cudnn.benchmark = before
    assert seen == [True]
