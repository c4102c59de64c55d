"""The VOC metric: a hand-worked example with exact APs, and agreement with the per-detection loop."""

import numpy as np
import pytest

from tests.reference import loop_voc_eval
from utils.evaluation.voc_eval import DEVKIT, SSD_PYTORCH, eval_detection_voc, voc_ap


def hand_worked() -> dict:
    """Two images, four classes (cat, dog, bird, cow).

    cat: image A has g1 [0,0,9,9] and a difficult g2 [20,20,29,29]; image B has g3 [0,0,19,19]. Ranked
      detections: d1 hits g1 (TP), d2 hits g1 again (duplicate: FP), d3 hits the difficult g2 (ignored),
      d4 hits g3 (TP) and d5 misses (FP), d4 and d5 tied at 0.6 and d4 listed first.
      recall .5 .5 .5 1 1, precision 1 .5 .5 2/3 .5 -> AP07 = (6 * 1 + 5 * 2/3) / 11 = 28/33,
      AP10+ = .5 * 1 + .5 * 2/3 = 5/6.
    dog: h1 [0,0,9,19] in image A. e1 [0,0,9,9] has IoU exactly 0.5 with +1 pixels (100 / 200): not > 0.5,
      FP; e2 [0,0,9,18] has IoU 0.95: TP. recall 0 1, precision 0 .5 -> AP = 0.5 for both metrics.
    bird: no ground truth, one detection -> nan, missing.
    cow: ground truth in image B, no detection -> 0.
    """
    cat, dog, bird, cow = 0, 1, 2, 3
    pred_boxes = [
        np.array([[0, 0, 9, 9], [0, 0, 9, 9], [20, 20, 29, 29], [0, 0, 9, 9], [0, 0, 9, 18], [5, 5, 15, 15]], float),
        np.array([[0, 0, 19, 19], [50, 50, 60, 60]], float),
    ]
    pred_labels = [np.array([cat, cat, cat, dog, dog, bird]), np.array([cat, cat])]
    pred_scores = [np.array([0.9, 0.8, 0.7, 0.95, 0.5, 0.3]), np.array([0.6, 0.6])]
    gt_boxes = [
        np.array([[0, 0, 9, 9], [20, 20, 29, 29], [0, 0, 9, 19]], float),
        np.array([[0, 0, 19, 19], [30, 30, 40, 40]], float),
    ]
    gt_labels = [np.array([cat, cat, dog]), np.array([cat, cow])]
    gt_difficults = [np.array([False, True, False]), np.array([False, False])]
    return {
        "pred_boxes": pred_boxes, "pred_labels": pred_labels, "pred_scores": pred_scores,
        "gt_boxes": gt_boxes, "gt_labels": gt_labels, "gt_difficults": gt_difficults, "num_classes": 4,
    }  # fmt: skip


def test_hand_worked_voc07() -> None:
    result = eval_detection_voc(**hand_worked(), use_07_metric=True)
    np.testing.assert_allclose(result["ap"][[0, 1, 3]], [28 / 33, 0.5, 0.0], rtol=0, atol=1e-12)
    assert np.isnan(result["ap"][2]) and result["missing_classes"] == [2]
    assert result["map"] == pytest.approx((28 / 33 + 0.5 + 0.0) / 3, abs=1e-12)
    assert result["num_positives"].tolist() == [2, 1, 0, 1]
    np.testing.assert_allclose(result["recall"][0], [0.5, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(result["precision"][0], [1, 0.5, 0.5, 2 / 3, 0.5])


def test_hand_worked_voc12() -> None:
    result = eval_detection_voc(**hand_worked(), use_07_metric=False)
    np.testing.assert_allclose(result["ap"][[0, 1, 3]], [5 / 6, 0.5, 0.0], rtol=0, atol=1e-12)
    assert result["map"] == pytest.approx((5 / 6 + 0.5) / 3, abs=1e-12)


def test_ties_keep_image_then_detection_order() -> None:
    example = hand_worked()
    example["pred_boxes"][1] = example["pred_boxes"][1][::-1].copy()  # the miss is now listed before the hit
    result = eval_detection_voc(**example)
    assert result["ap"][0] == pytest.approx((6 * 1 + 5 * 0.5) / 11, abs=1e-12)


def test_voc_ap_curves() -> None:
    assert voc_ap(np.array([1.0]), np.array([1.0]), True) == pytest.approx(1.0)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]), False) == pytest.approx(0.75)


def random_problem(seed: int, num_images: int = 40, num_classes: int = 5):
    rng = np.random.default_rng(seed)
    data = {k: [] for k in ("pred_boxes", "pred_labels", "pred_scores", "gt_boxes", "gt_labels", "gt_difficults")}
    for _ in range(num_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (n, 2)).round()
        gt = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2)).round()], 1)
        data["gt_boxes"].append(gt)
        data["gt_labels"].append(rng.integers(0, num_classes - 1, n))  # the last class never has ground truth
        data["gt_difficults"].append(rng.random(n) < 0.15)
        k = int(rng.integers(0, 25))
        # Detections near the ground truth (jittered, duplicated) and random ones.
        source = gt[rng.integers(0, n, k)] if n else np.zeros((k, 4))
        jitter = rng.normal(0, 4, (k, 4)) * (rng.random((k, 1)) < 0.8)
        boxes = np.where(
            rng.random((k, 1)) < 0.7, source + jitter, np.concatenate([xy2 := rng.uniform(0, 90, (k, 2)), xy2 + 15], 1)
        )
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        data["pred_boxes"].append(boxes)
        data["pred_labels"].append(rng.integers(0, num_classes, k))
        scores = rng.integers(0, 20, k) / 20 if rng.random() < 0.5 else rng.random(k)  # many ties, or none
        data["pred_scores"].append(scores)
    return data


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_07", [True, False])
@pytest.mark.parametrize("convention", [DEVKIT, SSD_PYTORCH], ids=["devkit", "ssd.pytorch"])
def test_equals_the_per_detection_loop(seed: int, use_07: bool, convention) -> None:
    data = random_problem(seed)
    result = eval_detection_voc(**data, use_07_metric=use_07, num_classes=5, convention=convention)
    for cls in range(5):
        expected = loop_voc_eval(**data, cls=cls, use_07_metric=use_07, pixel_offset=convention.pixel_offset,
                                 detection_shift=convention.detection_shift, via_results_file=convention is SSD_PYTORCH)  # fmt: skip
        if np.isnan(expected):
            assert np.isnan(result["ap"][cls])
        else:
            assert result["ap"][cls] == pytest.approx(expected, abs=1e-9)
    assert result["missing_classes"] == [4]


def test_ssd_pytorch_convention_scores_shifted_detections() -> None:
    """A detection equal to the ground truth is 1 px off under ssd.pytorch's convention."""
    gt = [np.array([[10.0, 10.0, 19.0, 19.0]])]
    det = [np.array([[10.0, 10.0, 19.0, 19.0]])]
    args = dict(pred_labels=[np.array([0])], pred_scores=[np.array([1.0])], gt_boxes=gt, gt_labels=[np.array([0])])
    assert eval_detection_voc(det, **args, iou_thresh=0.85)["ap"][0] == pytest.approx(1.0)
    # continuous IoU of two 9x9 boxes offset by (1, 1): 64 / (81 + 81 - 64) = 0.653
    assert eval_detection_voc(det, **args, iou_thresh=0.65, convention=SSD_PYTORCH)["ap"][0] == pytest.approx(1.0)
    assert eval_detection_voc(det, **args, iou_thresh=0.66, convention=SSD_PYTORCH)["ap"][0] == pytest.approx(0.0)


def test_empty_inputs() -> None:
    result = eval_detection_voc(
        [np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0)], [np.zeros((0, 4))], [np.zeros(0, int)], num_classes=2
    )
    assert np.isnan(result["ap"]).all() and np.isnan(result["map"]) and result["missing_classes"] == [0, 1]
    with pytest.raises(ValueError, match="one entry per image"):
        eval_detection_voc([np.zeros((0, 4))], [], [], [], [])


def test_stable_rank_equals_a_stable_argsort() -> None:
    from utils.evaluation.voc_eval import _stable_rank

    rng = np.random.default_rng(0)
    for keys in (rng.integers(0, 5, 1000).astype(float), rng.random(1000), np.zeros(10), np.zeros(0)):
        np.testing.assert_array_equal(_stable_rank(keys), np.argsort(keys, kind="stable"))
