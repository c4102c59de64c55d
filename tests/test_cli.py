"""utils/cli.py: the allocator settings every script applies."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Three forwards of a narrow SSD300 after five warm-ups; prints the page faults they caused.
PROGRAM = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from ssd import build_ssd
from utils.runtime import InferenceModel
from utils.cli import keep_freed_memory
if {keep}:
    assert keep_freed_memory()
network, images = InferenceModel(build_ssd(300, 5, width=0.125)), torch.randn(4, 3, 300, 300)
for _ in range(5):  # the heap reaches its steady state (by the 3rd or 4th forward, by the fragmentation)
    network(images)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    network(images)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(keep: bool) -> int:
    code = PROGRAM.format(root=str(ROOT), keep=keep)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1])


def test_freed_activations_are_reused_without_page_faults() -> None:
    # By default glibc returns each multi-MiB activation to the OS and faults fresh pages in for the next.
    assert page_faults(keep=False) > 1000
    assert page_faults(keep=True) < 50


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
