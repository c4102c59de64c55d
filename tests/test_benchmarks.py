"""The benchmark scripts run as modules and write their JSON (tiny sizes). Nothing that depends on the machine's
load (a time, a page-fault count, a calibrated call count) is asserted: the benchmarks report those."""

import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import common

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--rounds", "1", "--warmup", "0"]


def run_benchmark(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m benchmarks.<module> args`` in ``cwd``, with the repository on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", f"benchmarks.{module}", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("bench_detect", ["--batch", "1"]),  # also asserts agreement with the loop
        ("bench_loss", ["--batch", "2"]),
        ("bench_voc_eval", ["--images", "60", "--dets", "30"]),  # also asserts agreement with the loop
        ("bench_augmentation", ["--number", "5"]),
        ("bench_loader", ["--images", "8", "--batch", "4", "--workers", "0", "1"]),
        ("bench_deploy", ["--width", "0.125", "--calib_images", "2"]),
        # SSDLite320 against torchvision's, with the same weights (21 classes: quicker)
        ("bench_forward", ["--backbone", "mobilenet_v3_large", "--classes", "21", "--no_compile", "--no_onnx"]),
        ("bench_end_to_end", ["--backbone", "mobilenet_v3_large", "--classes", "21"]),
    ],
)
def test_benchmark_runs_and_reports(module: str, args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = run_benchmark(module, [*args, *QUICK, "--out", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    assert payload["baseline"] in payload["results"] and len(payload["results"]) >= 2
    assert all(stats["speedup_vs_baseline"] > 0 for stats in payload["results"].values())


class FakeClock:
    """``time.perf_counter`` for :func:`benchmarks.common.measure`: each call of a candidate advances it by that
    candidate's fixed cost, so the calibration is exact whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def candidate(self, counts: dict[str, int], name: str, cost_s: float) -> Callable[[], None]:
        def call() -> None:
            counts[name] += 1
            self.now += cost_s

        return call


def test_measure_fills_each_round_from_the_last_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    counts = {"fast": 0, "slow": 0}
    # Powers of two: the per-call times and the ratios are exact in floating point.
    candidates = {"fast": clock.candidate(counts, "fast", 2**-10), "slow": clock.candidate(counts, "slow", 2**-5)}
    results = common.measure(candidates, rounds=3, warmup=0, number=None, min_round_s=2**-4)
    # One warm-up round is forced (one call each); then every round repeats the calibrated count.
    assert results["fast"]["calls_per_round"] == 64  # 2**-4 / 2**-10
    assert results["slow"]["calls_per_round"] == 2
    for name, stats in results.items():
        assert counts[name] == 1 + 3 * stats["calls_per_round"] and stats["rounds"] == 3
    assert results["fast"]["median_s"] == 2**-10 and results["slow"]["max_s"] == 2**-5
    assert common.measure({"fast": candidates["fast"]}, rounds=2, warmup=0, number=4)["fast"]["calls_per_round"] == 4


def test_page_fault_diagnostic_reports_both_allocators(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    args = ["--batch", "1", "--width", "0.125", "--rounds", "2", "--warmup", "1", "--threads", "1", "--out", str(out)]
    result = run_benchmark("bench_page_faults", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    assert set(payload["results"]) == {"glibc default", "keep_freed_memory"}
    for stats in payload["results"].values():
        assert len(stats["page_faults"]) == 2 and all(count >= 0 for count in stats["page_faults"])
    assert payload["keep_freed_memory_took"]["glibc default"] is False
    assert "page faults per forward" in result.stdout


def test_train_step_benchmark_profiles_the_step(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    args = ["--batch", "2", "--width", "0.125", "--batch_norm", "--profile", *QUICK, "--out", str(out)]
    result = run_benchmark("bench_train_step", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(out.read_text())["results"]) == {"plain eager step", "train.py step"}
    assert "convolution_backward" in result.stdout and "Self CPU" in result.stdout  # the profiler's table
