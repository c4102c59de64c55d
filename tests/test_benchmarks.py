"""The benchmark scripts run and write their JSON (tiny sizes; no timing is asserted)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--rounds", "1", "--warmup", "0"]


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("bench_detect.py", ["--batch", "1"]),
        ("bench_loss.py", ["--batch", "2"]),
        ("bench_voc_eval.py", ["--images", "60", "--dets", "30"]),  # also asserts agreement with the loop
        ("bench_augmentation.py", ["--number", "5"]),
    ],
)
def test_benchmark_runs_and_reports(script: str, args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, *QUICK, "--out", str(out)],
                            cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    assert payload["baseline"] in payload["results"] and len(payload["results"]) >= 2
    assert all(stats["speedup_vs_baseline"] > 0 for stats in payload["results"].values())


def test_measure_fills_each_round_from_the_last_warmup() -> None:
    from benchmarks.common import measure

    counts = {"fast": 0, "slow": 0}

    def fast() -> None:
        counts["fast"] += 1

    def slow() -> None:
        counts["slow"] += 1
        time.sleep(0.03)

    results = measure({"fast": fast, "slow": slow}, rounds=3, warmup=0, number=None, min_round_s=0.05)
    # One warm-up round is forced (one call each); then every round repeats the calibrated count.
    assert results["fast"]["calls_per_round"] > 1000
    assert results["slow"]["calls_per_round"] == 2  # ceil(0.05 s / >= 0.03 s), as long as a call stays under 50 ms
    for name, stats in results.items():
        assert counts[name] == 1 + 3 * stats["calls_per_round"] and stats["rounds"] == 3
    assert measure({"fast": fast}, rounds=2, warmup=0, number=4)["fast"]["calls_per_round"] == 4


def test_train_step_benchmark_profiles_the_step(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    args = ["--batch", "2", "--width", "0.125", "--batch_norm", "--profile", *QUICK, "--out", str(out)]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train_step.py"), *args],
                            cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert set(json.loads(out.read_text())["results"]) == {"plain eager step", "train.py step"}
    assert "convolution_backward" in result.stdout and "Self CPU" in result.stdout  # the profiler's table
