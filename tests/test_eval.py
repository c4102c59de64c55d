"""eval.py: evaluate() with known detections, the CLI end to end, its failures, and COCO vs pycocotools."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data.config import SHAPES_CLASSES
from data.shapes import generate
from data.voc import VOCFormatDataset
from tests.fixtures import oracle_ssd, save_detector, write_coco, write_voc_folder
from utils.checkpoint import DetectorInfo
from utils.evaluation.coco_eval import coco_results, eval_coco
from utils.evaluation.evaluate import evaluate
from utils.evaluation.voc_eval import SSD_PYTORCH
from utils.predict import Predictor
from utils.transforms import BaseTransform

ROOT = Path(__file__).resolve().parent.parent
BOX = (0.2, 0.3, 0.6, 0.9)  # what the oracle detects, relative


def fixture_folder(tmp_path: Path) -> Path:
    """Images of different sizes, each with one 'square' exactly at BOX (1-based XML) and one 'star' elsewhere."""
    samples = {}
    for k, (w, h) in enumerate([(100, 50), (60, 80), (300, 300)]):
        x0, y0, x1, y1 = BOX[0] * w, BOX[1] * h, BOX[2] * w, BOX[3] * h
        samples[f"img{k}"] = (w, h, [("square", (round(x0) + 1, round(y0) + 1, round(x1) + 1, round(y1) + 1), 0),
                                     ("star", (1, 1, 5, 5), 0)])  # fmt: skip
    write_voc_folder(tmp_path / "data", "test", samples)
    return tmp_path / "data"


def test_evaluate_scores_known_detections(tmp_path: Path) -> None:
    dataset = VOCFormatDataset([(fixture_folder(tmp_path), "test")], SHAPES_CLASSES, transform=BaseTransform(300))
    model = oracle_ssd(len(SHAPES_CLASSES) + 1, BOX, label=1 + SHAPES_CLASSES.index("square"))
    predictor = Predictor.for_model(model, DetectorInfo(model.config, SHAPES_CLASSES))
    result = evaluate(predictor, dataset, batch_size=2, progress=False)
    assert result["ap"]["square"] == pytest.approx(1.0) and result["ap"]["star"] == pytest.approx(0.0)
    assert result["missing_classes"] == ["circle", "triangle"]
    assert result["map"] == pytest.approx(0.5)
    # Boxes come back in each image's pixels.
    np.testing.assert_allclose(result["detections"][0]["boxes"], [[20, 15, 60, 45]], atol=1e-3)
    np.testing.assert_allclose(result["detections"][1]["boxes"], [[12, 24, 36, 72]], atol=1e-3)
    shifted = evaluate(predictor, dataset, batch_size=3, progress=False, metric="voc12", convention=SSD_PYTORCH)
    assert shifted["ap"]["square"] == pytest.approx(1.0)
    # The area mAP comes beside the 11-point one, from the same curves, and equals the voc12 metric's mAP.
    area = evaluate(predictor, dataset, batch_size=2, progress=False, metric="voc12")
    assert result["area_map"] == area["map"] == area["area_map"]
    assert result["area_ap"]["square"] == 1.0 and result["area_ap"]["star"] == 0.0
    assert np.isnan(result["area_ap"]["circle"])
    # Where the time went (eval.py's report of its stages): no stage counted twice, so none is negative
    # ("images" is what predicting took beyond the network and Detect).
    seconds = result["time_s"]
    assert set(seconds) == {"total", "annotations", "images", "network", "detect", "metric"}
    assert all(value >= 0 for value in seconds.values())


def test_compare_tool_tables_eval_runs(tmp_path: Path) -> None:
    from utils.evaluation.compare import comparison_table, read_run

    for name, (ap_a, ap_b) in {"one": (0.5, 0.25), "two": (1.0, float("nan"))}.items():
        (tmp_path / name).mkdir()
        summary = {"metric": "voc07", "map": 0.375, "ap": {"circle": ap_a, "star": ap_b}, "area_map": 0.4}
        (tmp_path / name / "ap.json").write_text(json.dumps(summary))
    table = comparison_table([read_run(f"{n}={tmp_path / n}") for n in ("one", "two")]).splitlines()
    assert table[0] == "| configuration | circle | star | mAP (voc07) | mAP (area) |"
    assert table[2] == "| one | 0.5000 | 0.2500 | 0.3750 | 0.4000 |" and table[3].endswith(
        "| 1.0000 | n/a | 0.3750 | 0.4000 |"
    )
    with pytest.raises(ValueError, match="NAME=FOLDER"):
        read_run(str(tmp_path / "one"))


def test_compare_tool_gives_mean_and_std_over_seeds(tmp_path: Path) -> None:
    from utils.evaluation.compare import read_seeds, seed_table

    maps = {"source-only": [0.60, 0.64, 0.62], "i3net": [0.70]}
    for config, values in maps.items():
        (tmp_path / config).mkdir()
        for seed, value in enumerate(values):
            summary = {"metric": "voc07", "map": value, "ap": {"circle": value + 0.1, "star": value - 0.1}}
            (tmp_path / config / f"seed{seed}.json").write_text(json.dumps(summary))
    table = seed_table(read_seeds(tmp_path)).splitlines()
    assert table[0] == "| configuration | seeds | circle | star | mAP (voc07) |"
    # the sample standard deviation of 0.60, 0.64, 0.62 is 0.02; one seed gives its value alone
    assert table[2] == "| i3net | 1 | 0.8000 | 0.6000 | 0.7000 |"
    assert table[3] == "| source-only | 3 | 0.7200 ± 0.0200 | 0.5200 ± 0.0200 | 0.6200 ± 0.0200 |"
    with pytest.raises(FileNotFoundError, match="seed"):
        read_seeds(tmp_path / "i3net")


def run_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), *args], cwd=cwd, capture_output=True, text=True)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The single 'error:' line of a failed run (progress logs may precede it; a traceback may not)."""
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_cli_end_to_end_on_shapes(tmp_path: Path) -> None:
    generate(tmp_path / "shapes", 0, 6, seed=1)
    weights = tmp_path / "oracle.pth"
    save_detector(oracle_ssd(5, BOX, 2), weights, SHAPES_CLASSES)
    result = run_eval("--weights", str(weights), "--dataset", "Shapes", "--dataset_root", str(tmp_path / "shapes"),
                      "--batch_size", "4", "--num_workers", "0", "--project", str(tmp_path / "runs"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "voc07 mAP = " in result.stdout and "square" in result.stdout
    assert "s from the annotations to the mAP: annotations (parsed or cached) " in result.stdout.splitlines()[-1]
    out = tmp_path / "runs" / "exp1"
    summary = json.loads((out / "ap.json").read_text())
    assert summary["metric"] == "voc07" and summary["num_images"] == 6 and summary["num_detections"] == 6
    assert summary["time_s"]["total"] > 0
    assert (out / "ap.csv").read_text().startswith("class,ap,num_gt")
    assert (out / "pr_curves.png").stat().st_size > 1000
    lines = (out / "results" / "det_test_square.txt").read_text().splitlines()
    assert len(lines) == 6 and lines[0].split()[0] == "test_000000"
    # 1-based pixels: 0.2 * 300 + 1 = 61
    assert [float(v) for v in lines[0].split()[2:]] == pytest.approx([61.0, 91.0, 181.0, 271.0], abs=0.1)
    assert (out / "results" / "det_test_circle.txt").read_text() == ""
    second = run_eval("--weights", str(weights), "--dataset", "Shapes", "--dataset_root", str(tmp_path / "shapes"),
                      "--num_workers", "0", "--metric", "voc12", "--amp", "--project", str(tmp_path / "runs"), cwd=tmp_path)  # fmt: skip
    assert second.returncode == 0, second.stderr
    mixed = json.loads((tmp_path / "runs" / "exp2" / "ap.json").read_text())
    assert mixed["metric"] == "voc12" and mixed["map"] == pytest.approx(summary["map"])  # bfloat16 finds the same


def test_cli_failures_are_one_line(tmp_path: Path) -> None:
    generate(tmp_path / "shapes", 0, 2, seed=1)
    common = [
        "--dataset",
        "Shapes",
        "--dataset_root",
        str(tmp_path / "shapes"),
        "--num_workers",
        "0",
        "--project",
        str(tmp_path / "runs"),
    ]
    missing = run_eval("--weights", str(tmp_path / "none.pth"), *common, cwd=tmp_path)
    assert (
        error_line(missing)
        == f"error: weights file {tmp_path / 'none.pth'} does not exist; check the path (docs/backbones.md, 'Weights')"
    )
    voc_weights = tmp_path / "voc.pth"
    save_detector(oracle_ssd(21, BOX, 2), voc_weights, ["x"] * 20)
    wrong = run_eval("--weights", str(voc_weights), *common, cwd=tmp_path)
    assert "trained for 20 classes but the dataset has 4" in error_line(wrong)
    raw = tmp_path / "raw.pth"
    torch.save(oracle_ssd(21, BOX, 2, width=1.0).state_dict(), raw)
    wrong_raw = run_eval("--weights", str(raw), *common, cwd=tmp_path)
    assert "conf.0.weight: file (84, 512, 3, 3) vs model (20, 512, 3, 3)" in error_line(wrong_raw)
    weights = tmp_path / "shapes.pth"
    save_detector(oracle_ssd(5, BOX, 2), weights, SHAPES_CLASSES)
    no_split = run_eval("--weights", str(weights), *common, "--image_set", "val", cwd=tmp_path)
    assert "val.txt does not exist" in error_line(no_split)
    size = run_eval("--weights", str(weights), *common, "--size", "512", cwd=tmp_path)  # would be ignored
    assert "is a 300x300 model and says so; --size 512 only describes raw ssd.pytorch state_dicts" in error_line(size)
    (tmp_path / "shapes" / "ImageSets" / "Main" / "test.txt").write_text("")
    empty = run_eval("--weights", str(weights), *common, cwd=tmp_path)
    assert "is empty" in error_line(empty)


def test_coco_metric_equals_pycocotools(tmp_path: Path) -> None:
    categories = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}]
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in (1, 2, 3)]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "iscrowd": 0, "area": 600},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [50, 40, 40, 30], "iscrowd": 0, "area": 1200},
        {"id": 3, "image_id": 2, "category_id": 5, "bbox": [5, 5, 80, 60], "iscrowd": 0, "area": 4800},
        {"id": 4, "image_id": 3, "category_id": 1, "bbox": [0, 0, 8, 8], "iscrowd": 0, "area": 64},
    ]
    write_coco(tmp_path, "val2017", images, annotations, categories)
    boxes = [
        np.array([[11.0, 9.0, 41.0, 31.0], [52.0, 40.0, 88.0, 72.0]]),
        np.array([[5.0, 5.0, 80.0, 70.0]]),
        np.array([[1.0, 1.0, 9.0, 9.0]]),
    ]
    labels = [np.array([0, 1]), np.array([1]), np.array([0])]
    scores = [np.array([0.9, 0.8]), np.array([0.7]), np.array([0.4])]
    results = coco_results([1, 2, 3], boxes, labels, scores, [1, 5])
    assert results[1] == {"image_id": 1, "category_id": 5, "bbox": [52.0, 40.0, 36.0, 32.0], "score": 0.8}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "annotations" / "instances_val2017.json"))
        direct = COCOeval(gt, gt.loadRes(results), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    ours = eval_coco(gt, results)
    np.testing.assert_allclose([ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")], direct.stats[:6])
    assert 0 < ours["AP"] < 1 and len(ours["per_class_ap"]) == 2
