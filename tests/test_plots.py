"""utils/evaluation/plots.py: figures are written without pyplot or a backend choice, and the PR curves draw the envelope."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from utils.evaluation.plots import plot_pr_curves, plot_training
from utils.evaluation.voc_eval import precision_envelope

ROOT = Path(__file__).resolve().parent.parent


def test_import_selects_no_backend() -> None:
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use = lambda *args, **kwargs: sys.exit('matplotlib.use called at import')\n"
        "import utils.evaluation.plots, utils.visualization, utils.figures\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_precision_envelope_is_monotone_from_the_right() -> None:
    precision = np.array([1.0, 0.5, 0.67, 0.5, 0.6, 0.2])
    np.testing.assert_array_equal(precision_envelope(precision), [1.0, 0.67, 0.67, 0.6, 0.6, 0.2])


def test_figures_are_written(tmp_path: Path) -> None:
    recalls = [np.array([0.5, 0.5, 1.0]), np.array([]), np.array([])]
    precisions = [np.array([1.0, 0.5, 0.67]), np.array([]), np.array([])]
    plot_pr_curves(tmp_path / "pr.png", ["a", "b", "c"], recalls, precisions, [0.83, 0.0, float("nan")], title="t")
    records = [{"epoch": e, "loss": 3.0 - e, "loss_l": 1.0, "loss_c": 2.0 - e, "lr": 1e-3, "map": 0.5} for e in (1, 2)]
    plot_training(tmp_path / "results.png", records)
    for name in ("pr.png", "results.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
