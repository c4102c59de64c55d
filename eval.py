"""Evaluate an SSD: VOC07/VOC12 mAP (devkit-exact or ssd.pytorch-compatible) or COCO AP.

    python eval.py --trained_model weights/ssd300_mAP_77.43_v2.pth --dataset VOC --dataset_root ~/data/VOCdevkit
    python eval.py --weights runs/train/exp1/best.pth --dataset FoggyCityscapes --dataset_root data/foggy_cityscapes_in_voc

Outputs go to ``runs/eval/exp<N>/``: the AP table (``ap.json``, ``ap.csv``), ``pr_curves.png``, the devkit
result files ``results/det_test_<class>.txt`` (1-based pixels) and, for COCO, ``coco_results.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.base import DetectionDataset, detection_collate
from data.build import build_dataset
from data.config import get_preset
from layers.detection import Detect
from ssd import SSD
from utils.augmentations import CAFFE_MEAN_BGR, BaseTransform
from utils.cli import run_cli
from utils.plots import plot_pr_curves
from utils.runs import increment_run_dir, select_device
from utils.runtime import InferenceModel
from utils.voc_eval import DEVKIT, SSD_PYTORCH, IoUConvention, eval_detection_voc
from utils.weights import load_detector

logger = logging.getLogger(__name__)

METRICS = ("voc07", "voc12", "coco")


@torch.inference_mode()
def run_detection(
    network: InferenceModel,
    dataset: DetectionDataset,
    detect: Detect,
    image_sizes: Sequence[tuple[int, int]],
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
) -> list[dict[str, np.ndarray]]:
    """Detect objects in every image of ``dataset`` (whose transform must give fixed-size images).

    Args:
        image_sizes: ``(width, height)`` of each original image, to scale the relative boxes to pixels.

    Returns:
        Per image: ``boxes`` [K, 4] pixel xyxy (relative boxes times the image size, unclipped),
        ``scores`` [K] and ``labels`` [K] as 0-based foreground classes.
    """
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=detection_collate
    )
    outputs: list[dict[str, np.ndarray]] = []
    for images, _ in tqdm(loader, desc="detect", unit="batch", disable=not progress, leave=False):
        loc_preds, conf_preds = network(images)
        for found in detect(loc_preds, conf_preds, network.priors):
            width, height = image_sizes[len(outputs)]
            scale = np.array([width, height, width, height], np.float64)
            outputs.append(
                {
                    "boxes": found["boxes"].cpu().double().numpy() * scale,
                    "scores": found["scores"].cpu().double().numpy(),
                    "labels": found["labels"].cpu().numpy() - 1,
                }
            )
    return outputs


def evaluate(
    model: SSD,
    dataset: DetectionDataset,
    detect: Detect | None = None,
    device: torch.device | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    metric: str = "voc07",
    convention: IoUConvention = DEVKIT,
    iou_thresh: float = 0.5,
    progress: bool = True,
    amp: bool = False,
) -> dict:
    """Detect on ``dataset`` and score the detections.

    Args:
        model: the SSD (its class count must match ``dataset.class_names``).
        dataset: test split with a fixed-size transform such as ``BaseTransform``.
        detect: post-processing; Caffe SSD's test settings by default.
        metric: ``voc07`` (11-point), ``voc12`` (area) or ``coco`` (needs a COCO dataset).
        convention: IoU convention of the VOC metrics (:data:`DEVKIT` or :data:`SSD_PYTORCH`).
        amp: run the network in mixed precision (see :class:`utils.runtime.InferenceModel`).

    Returns:
        ``{"metric", "map", "ap": {class: AP}, "missing_classes", "num_images", "num_detections",
        "recall", "precision", "detections"}``, plus ``"coco": {AP, AP50, ...}`` for COCO. ``map`` is the VOC
        mAP or COCO's AP@[.5:.95].
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if model.num_classes != len(dataset.class_names) + 1:
        raise ValueError(
            f"the model has {model.num_classes - 1} classes but the dataset has {len(dataset.class_names)}"
        )
    device = device or next(model.parameters()).device
    detect = detect or Detect(model.num_classes)
    annotations = [dataset.pull_anno(i) for i in range(len(dataset))]  # read once: sizes here, ground truth below
    sizes = [(a.width, a.height) for a in annotations]
    network = InferenceModel(model.to(device), amp)
    detections = run_detection(network, dataset, detect, sizes, batch_size, num_workers, progress)
    names = list(dataset.class_names)
    result: dict = {"metric": metric, "num_images": len(dataset), "detections": detections,
                    "num_detections": int(sum(len(d["scores"]) for d in detections))}  # fmt: skip
    if metric == "coco":
        from data.coco import COCODetection
        from utils.coco_eval import coco_results, eval_coco

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
        ap = voc["ap"]
        result.update(map=voc["map"], recall=voc["recall"], precision=voc["precision"],
                      num_positives=dict(zip(names, voc["num_positives"].tolist(), strict=True)))  # fmt: skip
    result["ap"] = dict(zip(names, ap.tolist(), strict=True))
    result["missing_classes"] = [n for n, v in result["ap"].items() if np.isnan(v)]
    return result


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
    names = list(dataset.class_names)
    summary = {k: result[k] for k in ("metric", "map", "ap", "missing_classes", "num_images", "num_detections")}
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
    write_devkit_results(out_dir / "results", dataset.ids, result["detections"], names)
    if "coco_results" in result:
        (out_dir / "coco_results.json").write_text(json.dumps(result["coco_results"]))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate an SSD checkpoint (VOC mAP or COCO AP).")
    parser.add_argument("--trained_model", "--weights", "--trained-model", dest="weights",
                        default="weights/ssd300_mAP_77.43_v2.pth", help="project checkpoint or ssd.pytorch state_dict")  # fmt: skip
    parser.add_argument("--dataset", default="VOC", help="VOC, COCO, Cityscapes, FoggyCityscapes, Shapes or Custom")
    parser.add_argument("--dataset_root", "--dataset-root", "--voc_root", dest="dataset_root", required=True,
                        help="VOCdevkit, COCO root or VOC-format folder")  # fmt: skip
    parser.add_argument("--classes", default=None, help="class-names file (one per line), for Custom")
    parser.add_argument(
        "--image_set", "--image-set", default=None, help="override the test split: 2007:test, val2014, test"
    )
    parser.add_argument(
        "--size", type=int, default=300, choices=[300, 512], help="input size of a raw ssd.pytorch state_dict"
    )
    parser.add_argument("--metric", choices=METRICS, default=None, help="default: coco for COCO, else voc07")
    parser.add_argument("--ssd_pytorch", "--ssd-pytorch", action="store_true",
                        help="score as ssd.pytorch's eval.py did (continuous IoU, detections 1 px off; Detect top_k 200, no cap)")  # fmt: skip
    parser.add_argument("--iou_thresh", type=float, default=0.5)
    parser.add_argument("--conf_thresh", type=float, default=0.01)
    parser.add_argument("--nms_thresh", type=float, default=0.45)
    parser.add_argument(
        "--top_k", type=int, default=None, help="candidates per class into NMS (default 400; 200 with --ssd_pytorch)"
    )
    parser.add_argument(
        "--keep_top_k",
        type=int,
        default=None,
        help="detections kept per image, 0 = all (default 200; all with --ssd_pytorch)",
    )
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32)
    parser.add_argument("--num_workers", "--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: float16 on a GPU, bfloat16 on a CPU (about 2x faster on CPUs with "
                             "bfloat16 instructions; check the mAP it gives)")  # fmt: skip
    parser.add_argument("--project", default="runs/eval", help="outputs go to <project>/<name><N>")
    parser.add_argument("--name", default="exp")
    return parser


def main(args: argparse.Namespace) -> int:
    preset = get_preset(args.dataset, args.classes)
    device = select_device(args.device)
    model, checkpoint = load_detector(args.weights, preset.num_classes, args.size, preset.prior_family, device)
    preprocess = checkpoint.get("preprocess", {})
    transform = BaseTransform(model.config.size, tuple(preprocess.get("mean", CAFFE_MEAN_BGR)), preprocess.get("std"))
    dataset = build_dataset(preset, args.dataset_root, "test", transform, image_set=args.image_set)
    metric = args.metric or ("coco" if preset.name == "COCO" else "voc07")
    top_k = args.top_k or (200 if args.ssd_pytorch else 400)
    keep_top_k = args.keep_top_k if args.keep_top_k is not None else (0 if args.ssd_pytorch else 200)
    detect = Detect(model.num_classes, args.conf_thresh, args.nms_thresh, top_k, keep_top_k or None)
    convention = SSD_PYTORCH if args.ssd_pytorch else DEVKIT
    logger.info("evaluating %s on %d %s images (%s, %s IoU)", args.weights, len(dataset), preset.name, metric,
                "ssd.pytorch" if args.ssd_pytorch else "devkit")  # fmt: skip
    result = evaluate(model, dataset, detect, device, args.batch_size, args.num_workers, metric, convention,
                      args.iou_thresh, amp=args.amp)  # fmt: skip

    out_dir = increment_run_dir(args.project, args.name)
    settings = {"weights": str(args.weights), "dataset": preset.name, "dataset_root": str(args.dataset_root),
                "metric": metric, "convention": "ssd.pytorch" if args.ssd_pytorch else "devkit",
                "iou_thresh": args.iou_thresh, "conf_thresh": args.conf_thresh, "nms_thresh": args.nms_thresh,
                "top_k": top_k, "keep_top_k": keep_top_k or None}  # fmt: skip
    save_outputs(out_dir, result, dataset, settings)
    print(format_table(result))
    if "coco" in result:
        print(result["coco"]["summary"])
    if result["missing_classes"]:
        print(f"classes without ground truth (left out of the mean): {', '.join(result['missing_classes'])}")
    label = "mAP" if metric != "coco" else "AP@[.5:.95]"
    print(f"{metric} {label} = {result['map']:.4f} over {len(dataset)} images; results in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
