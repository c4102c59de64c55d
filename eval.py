"""Evaluate an SSD: VOC07/VOC12 mAP (devkit-exact or ssd.pytorch-compatible) or COCO AP.

    python eval.py --trained_model weights/ssd300_mAP_77.43_v2.pth --dataset VOC --dataset_root ~/data/VOCdevkit
    python eval.py --weights runs/train/exp1/best.pth --dataset FoggyCityscapes --dataset_root data/foggy_cityscapes_in_voc

Outputs go to ``runs/eval/exp<N>/``: the AP table (``ap.json``, ``ap.csv``), ``pr_curves.png``, the devkit
result files ``results/det_test_<class>.txt`` (1-based pixels) and, for COCO, ``coco_results.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

import torch

from data.build import build_dataset
from data.config import DatasetPreset
from layers.detection import SSD_PYTORCH_SETTINGS
from ssd import SSD
from utils.adabn import adapt_batchnorm
from utils.checkpoint import ClassMatch, DetectorInfo, require_classes
from utils.cli import POSITIVE_INT, add_hyphen_aliases, bounded, make_parser, run_cli
from utils.evaluation.evaluate import METRICS, default_metric, evaluate, format_table, format_time, save_outputs
from utils.evaluation.voc_eval import DEVKIT, SSD_PYTORCH
from utils.flags import (
    add_dataset_flags,
    add_detect_flags,
    add_device_flags,
    add_raw_weights_flags,
    add_run_flags,
    add_weights_flag,
    add_workers_flag,
    check_size_flag,
    dataset_preset,
    detect_settings,
    raw_weights,
)
from utils.predict import Predictor, Runner, load_runner
from utils.runs import check_writable, increment_run_dir, select_device

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser("Evaluate an SSD checkpoint (VOC mAP or COCO AP).")
    add_weights_flag(parser)
    add_dataset_flags(parser, "test", root_required=True)
    add_raw_weights_flags(parser)
    parser.add_argument("--metric", choices=METRICS, default=None, help="default: coco for COCO, else voc07")
    parser.add_argument("--ssd_pytorch", action="store_true",
                        help="score as ssd.pytorch's eval.py did (continuous IoU, detections 1 px off; Detect top_k 200, no cap)")  # fmt: skip
    parser.add_argument(
        "--iou_thresh", type=bounded(float, 0, 1, low_open=True), default=0.5, help="IoU at which a detection matches"
    )
    parser.add_argument("--adabn", default=None, metavar="DIR",
                        help="AdaBN: first re-estimate the BatchNorm statistics on the target domain's images in DIR: "
                             "a VOC-format folder's trainval split (or its train split), or every image of a plain folder "
                             "(annotations are not read)")  # fmt: skip
    add_detect_flags(parser)
    parser.add_argument("--batch_size", type=POSITIVE_INT, default=32, help="images per forward pass")
    add_workers_flag(parser)
    add_device_flags(parser)
    add_run_flags(parser, "runs/eval")
    return add_hyphen_aliases(parser)


def adabn_step(args: argparse.Namespace, device: torch.device) -> Callable[[SSD, DetectorInfo], None] | None:
    """``--adabn DIR``: re-estimate the network's BatchNorm statistics on DIR's trainval images before evaluating."""
    if not args.adabn:
        return None

    def prepare(model: SSD, info: DetectorInfo) -> None:
        seen = adapt_batchnorm(model, info, args.adabn, args.batch_size, args.num_workers, device)
        logger.info("adabn: BatchNorm statistics re-estimated on %d images of %s", seen, args.adabn)

    return prepare


def check_args(args: argparse.Namespace, runner: Runner, preset: DatasetPreset) -> ClassMatch:
    """eval.py's refusals, once the model is loaded (what they check is what it says of itself): a typed ``--size``
    it would ignore, a dataset that shares no class name with it, and an export eval.py cannot feed or score.
    Returns how the model's classes map to the dataset's: the classes both have are scored."""
    check_size_flag(args, runner.info.config.size)
    match = require_classes(runner.info, preset.class_names, args.weights)
    if runner.input_kind != "preprocessed" or (runner.returns_detections and args.ssd_pytorch):
        raise ValueError(f"{args.weights} preprocesses in its graph or has its own Detect with --ssd_pytorch; "
                         "evaluate an export without --include_preprocess (and without --nms for --ssd_pytorch)")  # fmt: skip
    return match


def main(args: argparse.Namespace) -> int:
    preset = dataset_preset(args)
    check_writable(args.project)  # before the detection work, not after it
    device = select_device(args.device)
    start = time.perf_counter()
    runner = load_runner(args.weights, device, raw_weights(args, preset), args.amp, prepare=adabn_step(args, device))
    startup = time.perf_counter() - start  # with the CUDA context's creation on a GPU
    info = runner.info
    match = check_args(args, runner, preset)
    settings = detect_settings(args, SSD_PYTORCH_SETTINGS if args.ssd_pytorch else info.postprocess)
    predictor = Predictor(runner, settings)
    start = time.perf_counter()
    dataset = build_dataset(preset, args.dataset_root, "test", predictor.transform, image_set=args.image_set)
    indexing = time.perf_counter() - start  # VOC and COCO parse their annotations here
    metric = args.metric or default_metric(preset.name)
    convention = SSD_PYTORCH if args.ssd_pytorch else DEVKIT
    logger.info("evaluating %s on %d %s images (%s, %s IoU)", args.weights, len(dataset), preset.name, metric,
                "ssd.pytorch" if args.ssd_pytorch else "devkit")  # fmt: skip
    result = evaluate(predictor, dataset, args.batch_size, args.num_workers, metric, convention, args.iou_thresh)

    start = time.perf_counter()
    out_dir = increment_run_dir(args.project, args.name)
    run_settings = {"weights": str(args.weights), "dataset": preset.name, "dataset_root": str(args.dataset_root),
                    "metric": metric, "convention": "ssd.pytorch" if args.ssd_pytorch else "devkit",
                    "iou_thresh": args.iou_thresh, "adabn": args.adabn, **settings.to_dict()}  # fmt: skip
    save_outputs(out_dir, result, dataset, run_settings)
    writing = time.perf_counter() - start
    print(format_table(result))
    if "coco" in result:
        print(result["coco"]["summary"])
    if result["missing_classes"]:
        print(f"classes without ground truth (left out of the mean): {', '.join(result['missing_classes'])}")
    if scored := match.describe():  # a model of other classes (a VOC model on Watercolor2k): what was scored
        print(scored)
    label = "mAP" if metric != "coco" else "AP@[.5:.95]"
    area = f" (area mAP {result['area_map']:.4f})" if metric == "voc07" else ""
    print(f"{metric} {label} = {result['map']:.4f}{area} over {len(dataset)} images; results in {out_dir}")
    loading = "loading the model" + (" and re-estimating its BatchNorm (--adabn)" if args.adabn else "")
    print(f"time: {format_time(result['time_s'], args.num_workers)}; before it, {startup:.2f} s {loading} "
          f"and {indexing:.2f} s reading the dataset's index and annotations; after it, {writing:.2f} s writing the "
          "results")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
