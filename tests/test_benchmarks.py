"""The benchmark scripts run and write their JSON (tiny sizes; no timing is asserted)."""

import json
import subprocess
import sys
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
