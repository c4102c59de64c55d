"""Scoring a detector on a dataset: VOC07/VOC12 mAP (devkit-exact or ssd.pytorch-compatible) or COCO AP,
and the files eval.py writes. eval.py and training-time evaluation both call :func:`evaluate`."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.base import DetectionDataset
from utils.checkpoint import match_classes
from utils.evaluation.plots import plot_pr_curves
from utils.evaluation.voc_eval import DEVKIT, IoUConvention, eval_detection_voc, voc_ap
from utils.predict import PixelDetections, Predictor, predict_dataset

METRICS = ("voc07", "voc12", "coco")


def default_metric(dataset_name: str) -> str:
    """The metric a dataset is scored with unless one is asked for: COCO's AP for COCO, else VOC07 mAP."""
    return "coco" if dataset_name.lower() == "coco" else "voc07"


def evaluate(
    predictor: Predictor,
    dataset: DetectionDataset,
    batch_size: int = 32,
    num_workers: int = 0,
    metric: str = "voc07",
    convention: IoUConvention = DEVKIT,
    iou_thresh: float = 0.5,
    progress: bool = True,
) -> dict:
    """Detect on ``dataset`` and score the detections.

    Args:
        predictor: the model and its Detect. Its classes are mapped to the dataset's by name
            (:func:`utils.checkpoint.match_classes`): detections of classes the dataset lacks are dropped, and only
            the classes both have are scored (a VOC model on Watercolor2k: its 6 classes of 20).
        dataset: test split whose transform is ``predictor.transform`` (fixed-size images).
        metric: ``voc07`` (11-point), ``voc12`` (area) or ``coco`` (needs a COCO dataset).
        convention: IoU convention of the VOC metrics (:data:`DEVKIT` or :data:`SSD_PYTORCH`).

    Returns:
        ``{"metric", "map", "ap": {class: AP}, "missing_classes", "classes", "num_images", "num_detections",
        "recall", "precision", "detections", "time_s"}``, plus ``"coco": {AP, AP50, ...}`` for COCO. ``ap`` holds
        the scored classes (the dataset's that the model has); ``classes`` says which those are: ``{"scored",
        "model_only", "dataset_only"}``. ``map`` is the VOC mAP or COCO's AP@[.5:.95] over them; ``time_s`` the
        seconds per stage (:func:`format_time`).

    Raises:
        ValueError: the model and the dataset share no class name, or COCO's metric is asked for a model that lacks
            some of the dataset's classes (COCOeval averages over every category).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    match = match_classes(predictor.runner.info.class_names, dataset.class_names)
    if metric == "coco" and match.dataset_only:
        raise ValueError(f"--metric coco averages over every category, and the model lacks {list(match.dataset_only)}; "
                         "score the classes it has with --metric voc07 or voc12")  # fmt: skip
    start = time.perf_counter()
    annotations = [dataset.pull_anno(i) for i in range(len(dataset))]  # read once: sizes here, ground truth below
    sizes = [(a.width, a.height) for a in annotations]
    read = time.perf_counter()
    before = predictor.speed.total_s()
    detections = predict_dataset(predictor, dataset, sizes, batch_size, num_workers, progress)
    predicted = time.perf_counter()
    stages = {stage: seconds - before[stage] for stage, seconds in predictor.speed.total_s().items()}
    if match.to_dataset is not None:
        detections = [relabel(found, match.to_dataset) for found in detections]
    names = list(dataset.class_names)
    scored = [names.index(name) for name in match.scored]  # the dataset labels that are scored
    result: dict = {"metric": metric, "num_images": len(dataset), "detections": detections,
                    "num_detections": int(sum(len(d["scores"]) for d in detections)),
                    "classes": {"scored": list(match.scored), "model_only": list(match.model_only),
                                "dataset_only": list(match.dataset_only)}}  # fmt: skip
    if metric == "coco":
        from data.coco import COCODetection
        from utils.evaluation.coco_eval import coco_results, eval_coco

        if not isinstance(dataset, COCODetection):
            raise ValueError("--metric coco needs a COCO dataset (instances JSON); use voc07/voc12 for VOC-format data")
        results = coco_results(
            dataset.coco_ids,
            [d["boxes"] for d in detections],
            [d["labels"] for d in detections],
            [d["scores"] for d in detections],
            dataset.category_ids,
        )
        stats = eval_coco(dataset.coco, results, dataset.coco_ids)
        ap = np.asarray(stats.pop("per_class_ap"))
        result.update(coco=stats, coco_results=results, map=stats["AP"], recall=None, precision=None)
    else:
        voc = eval_detection_voc(
            [d["boxes"] for d in detections], [d["labels"] for d in detections], [d["scores"] for d in detections],
            [a.boxes for a in annotations], [a.labels for a in annotations], [a.difficult for a in annotations],
            iou_thresh=iou_thresh, use_07_metric=metric == "voc07", num_classes=len(names), convention=convention,
        )  # fmt: skip
        # Only the classes the model has are scored: the others' ground truth would only add zeros to the mean.
        ap = voc["ap"][scored]
        recall, precision = [voc["recall"][c] for c in scored], [voc["precision"][c] for c in scored]
        names = list(match.scored)
        # The area under the curve (VOC2010+) beside the 11-point AP, from the same curves: papers report either.
        area_ap = np.array([np.nan if np.isnan(a) else voc_ap(r, p, use_07_metric=False) if len(r) else 0.0
                            for r, p, a in zip(recall, precision, ap, strict=True)])  # fmt: skip
        result.update(area_ap=dict(zip(names, area_ap.tolist(), strict=True)), area_map=nan_mean(area_ap))
        result.update(map=nan_mean(ap), recall=recall, precision=precision,
                      num_positives=dict(zip(names, voc["num_positives"][scored].tolist(), strict=True)))  # fmt: skip
    result["ap"] = dict(zip(names, ap.tolist(), strict=True))
    result["missing_classes"] = [n for n, v in result["ap"].items() if np.isnan(v)]
    end = time.perf_counter()
    # Where the time went: what predict_dataset spent outside the network and Detect, it waited for the loader.
    result["time_s"] = {"total": end - start, "annotations": read - start,
                        "images": predicted - read - stages["network"] - stages["detect"], "network": stages["network"],
                        "detect": stages["detect"], "metric": end - predicted}  # fmt: skip
    return result


def nan_mean(values: np.ndarray) -> float:
    """The mean of the finite values (a class without ground truth is nan and left out), nan when there is none."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def format_time(seconds: dict[str, float], num_workers: int) -> str:
    """:func:`evaluate`'s ``time_s`` as one line."""
    readers = f"{num_workers} loader workers" if num_workers else "the main process"
    return (f"{seconds['total']:.2f} s from the annotations to the mAP: annotations (parsed or cached) "
            f"{seconds['annotations']:.2f} s, waiting for images (decoded and resized by {readers}) "
            f"{seconds['images']:.2f} s, network {seconds['network']:.2f} s, Detect and scaling "
            f"{seconds['detect']:.2f} s, metric {seconds['metric']:.2f} s")  # fmt: skip


def relabel(found: PixelDetections, to_dataset: np.ndarray) -> PixelDetections:
    """One image's detections in a dataset's labels (``to_dataset[label]``), without those the dataset lacks (-1)."""
    labels = to_dataset[found["labels"]]
    keep = labels >= 0
    return {"boxes": found["boxes"][keep], "scores": found["scores"][keep], "labels": labels[keep]}


def format_table(result: dict) -> str:
    """The per-class AP table as text."""
    counts = result.get("num_positives", {})
    lines = [f"{'class':<20}{'AP':>8}{'#gt':>8}"]
    for name, ap in result["ap"].items():
        lines.append(f"{name:<20}{'n/a' if np.isnan(ap) else f'{ap:.4f}':>8}{counts.get(name, ''):>8}")
    lines.append(f"{'mAP' if result['metric'] != 'coco' else 'AP@[.5:.95]':<20}{result['map']:>8.4f}")
    return "\n".join(lines)


def write_devkit_results(
    folder: Path, image_ids: Sequence[str], detections: Sequence[dict], class_names: Sequence[str]
) -> None:
    """``det_test_<class>.txt`` files: ``<image_id> <score> <xmin> <ymin> <xmax> <ymax>``, 1-based pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    handles = {c: (folder / f"det_test_{name}.txt").open("w") for c, name in enumerate(class_names)}
    try:
        for image_id, found in zip(image_ids, detections, strict=True):
            for box, score, label in zip(found["boxes"], found["scores"], found["labels"], strict=True):
                x0, y0, x1, y1 = box + 1.0
                handles[int(label)].write(f"{image_id} {score:.6f} {x0:.1f} {y0:.1f} {x1:.1f} {y1:.1f}\n")
    finally:
        for handle in handles.values():
            handle.close()


def save_outputs(out_dir: Path, result: dict, dataset: DetectionDataset, settings: dict) -> None:
    names = list(result["ap"])  # the scored classes
    keys = ("metric", "map", "ap", "area_map", "area_ap", "missing_classes", "classes", "num_images", "num_detections",
            "time_s")  # fmt: skip
    summary = {k: result[k] for k in keys if k in result}
    summary.update(settings=settings, **({"coco": result["coco"]} if "coco" in result else {}))
    (out_dir / "ap.json").write_text(json.dumps(summary, indent=2, default=float))
    with (out_dir / "ap.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "ap", "num_gt"])
        for name, ap in result["ap"].items():
            writer.writerow([name, "" if np.isnan(ap) else f"{ap:.6f}", result.get("num_positives", {}).get(name, "")])
        writer.writerow(["mean", f"{result['map']:.6f}", ""])
    if result.get("recall") is not None:
        plot_pr_curves(
            out_dir / "pr_curves.png",
            names,
            result["recall"],
            result["precision"],
            list(result["ap"].values()),
            title=result["metric"],
        )
    write_devkit_results(out_dir / "results", dataset.ids, result["detections"], list(dataset.class_names))
    if "coco_results" in result:
        (out_dir / "coco_results.json").write_text(json.dumps(result["coco_results"]))
