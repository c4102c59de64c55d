"""Detect objects in images, folders, globs, videos or a webcam, and draw them at the original resolution.

    python inference.py --image photo.jpg
    python inference.py --video clip.mp4
    python inference.py --weights runs/train/exp1/best.pth --dataset Shapes --source data/shapes/JPEGImages --thresh 0.5
    python inference.py --weights model.onnx --source "images/*.png"
    python inference.py --source 0          # webcam 0, until Ctrl-C
    python inference.py --weights best.pth --dataset Shapes --dataset_root data/shapes   # its test split

Outputs go to ``runs/detect/exp<N>/``: drawn images and videos, and with ``--save_txt`` / ``--save_json`` the
detections as text (``labels/<name>.txt``: class score xmin ymin xmax ymax, pixels) or ``predictions.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

from data.build import build_dataset
from utils.cli import NON_NEGATIVE_FLOAT, POSITIVE_INT, add_hyphen_aliases, make_parser, run_cli
from utils.flags import (
    add_dataset_flags,
    add_detect_flags,
    add_device_flags,
    add_raw_weights_flags,
    add_run_flags,
    add_weights_flag,
    check_size_flag,
    dataset_preset,
    detect_settings,
    raw_weights,
)
from utils.predict import Predictor, load_runner
from utils.runs import increment_run_dir, select_device
from utils.sources import Sources, resolve_sources
from utils.writers import Writer, output_names, process_images, process_stream


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser("Run SSD on images, folders, globs, videos or a webcam.")
    parser.add_argument("--source", default=None, help="image, folder, glob, video file or webcam index")
    parser.add_argument("--image", default=None, help="an image file (same as --source)")
    parser.add_argument("--video", default=None, help="a video file (same as --source)")
    add_weights_flag(parser)
    add_dataset_flags(parser, "test")
    add_raw_weights_flags(parser)
    parser.add_argument("--thresh", type=NON_NEGATIVE_FLOAT, default=0.5, help="display threshold on the score")
    add_detect_flags(parser)
    parser.add_argument("--batch_size", type=POSITIVE_INT, default=8, help="images or frames per forward pass")
    add_device_flags(parser)
    parser.add_argument("--save_txt", action="store_true", help="write labels/<name>.txt")
    parser.add_argument("--save_json", action="store_true", help="write predictions.json")
    add_run_flags(parser, "runs/detect")
    return add_hyphen_aliases(parser)


def check_args(args: argparse.Namespace) -> str | None:
    """inference.py's refusals of flag combinations, before the model is loaded (``--size`` is checked against
    the loaded model: :func:`utils.flags.check_size_flag`). Returns the one source given, None for
    ``--dataset_root``'s test split."""
    given = [s for s in (args.source, args.image, args.video) if s is not None]
    if len(given) > 1 or (not given and args.dataset_root is None):
        raise ValueError("give exactly one of --source, --image or --video (or --dataset_root for its test split)")
    return given[0] if given else None


def main(args: argparse.Namespace) -> int:
    source = check_args(args)
    preset = dataset_preset(args)
    if source is not None:
        sources = resolve_sources(source)
    else:
        split = build_dataset(preset, args.dataset_root, "test", image_set=args.image_set)
        sources = Sources(images=[split.image_path(i) for i in range(len(split))])
    device = select_device(args.device)
    runner = load_runner(args.weights, device, raw_weights(args, preset), args.amp)
    check_size_flag(args, runner.info.config.size)
    predictor = Predictor(runner, detect_settings(args, runner.info.postprocess))
    out_dir = increment_run_dir(args.project, args.name)
    writer = Writer(out_dir, runner.info.class_names, args.thresh, args.save_txt, args.save_json)
    failures: list[str] = []
    try:
        run_sources(sources, predictor, writer, args.batch_size, failures)
    finally:  # Ctrl-C too: what was detected so far is written
        writer.close()
    print(predictor.speed.line())
    print(f"results in {out_dir}")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def run_sources(sources: Sources, predictor: Predictor, writer: Writer, batch_size: int, failures: list[str]) -> None:
    """Images, then videos, then the webcam; each summary line printed as it is done."""
    for line in process_images(sources.images, predictor, writer, batch_size, failures):
        print(line)
    video_names = output_names(sources.videos)
    for path in sources.videos:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened() or capture.get(cv2.CAP_PROP_FRAME_WIDTH) <= 0:
            failures.append(f"{path}: not a readable video")
            print(f"{path}: cannot be opened as a video, skipped", file=sys.stderr)
            continue
        try:
            print(process_stream(capture, path, video_names[path].with_suffix(".mp4"), predictor, writer, batch_size))
        finally:
            capture.release()
    if sources.webcam is not None:
        capture = cv2.VideoCapture(sources.webcam)
        if not capture.isOpened():
            raise ValueError(f"webcam {sources.webcam} cannot be opened; check the index and permissions")
        try:
            name = f"webcam{sources.webcam}"
            print(process_stream(capture, name, Path(f"{name}.mp4"), predictor, writer, 1))
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        finally:
            capture.release()


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
