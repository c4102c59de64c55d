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
import glob
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from data.build import build_dataset
from data.config import get_preset
from layers.detection import Detect
from utils.augmentations import CAFFE_MEAN_BGR, BaseTransform
from utils.cli import run_cli
from utils.runs import increment_run_dir, select_device
from utils.runtime import InferenceModel
from utils.visualization import draw_detections, summarize
from utils.weights import load_detector

logger = logging.getLogger("inference")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv"}


@dataclass
class Sources:
    """What ``--source`` names: image files, video files, or a webcam index."""

    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    webcam: int | None = None
    rejected: list[str] = field(default_factory=list)  # "file: reason" for files that cannot be read at all


def resolve_sources(text: str) -> Sources:
    """Classify ``text``: a webcam index, a folder, a glob, an image or a video file."""
    if text.isdigit():
        return Sources(webcam=int(text))
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
    elif any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"the pattern {text!r} matches no file")
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            raise ValueError(
                f"{path}: unsupported extension {path.suffix!r}; use an image ({', '.join(sorted(IMAGE_SUFFIXES))}) or a video"
            )
        files = [path]
    else:
        raise FileNotFoundError(
            f"source {text} does not exist (give an image, a folder, a glob, a video or a webcam index)"
        )
    sources = Sources()
    for file in files:
        suffix = file.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            sources.images.append(file)
        elif suffix in VIDEO_SUFFIXES:
            sources.videos.append(file)
        else:
            sources.rejected.append(f"{file}: unsupported extension {file.suffix!r}")
    return sources


class TorchRunner:
    """An SSD in PyTorch behind the runner interface: ``runner(batch) -> (loc, conf)`` plus metadata."""

    def __init__(
        self,
        weights: str | Path,
        num_classes: int,
        size: int,
        priors: str,
        device: torch.device,
        amp: bool = False,
    ) -> None:
        model, checkpoint = load_detector(weights, num_classes, size, priors, device, check_classes=False)
        self.network = InferenceModel(model, amp, cuda_graph=True)  # graphs on a GPU only
        self.priors = model.priors
        self.num_classes = model.num_classes
        self.size = model.config.size
        self.class_names: list[str] | None = checkpoint.get("class_names")
        self.preprocess: dict = checkpoint.get("preprocess", {})

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network(batch)


@dataclass
class Timer:
    """Accumulated milliseconds per stage and the number of images."""

    preprocess: float = 0.0
    network: float = 0.0
    detect: float = 0.0
    images: int = 0

    def line(self) -> str:
        n = max(self.images, 1)
        return (f"{self.preprocess / n:.1f} ms preprocess, {self.network / n:.1f} ms network, "
                f"{self.detect / n:.1f} ms Detect ({self.images} images)")  # fmt: skip


@dataclass
class SpeedLog:
    """Per-image timings, with the first batch of each size kept apart: it pays the start-up (cuDNN's
    autotuning, a CUDA graph's capture, the CPU library's kernel set-up), which later batches do not."""

    steady: Timer = field(default_factory=Timer)
    startup: Timer = field(default_factory=Timer)
    batch_sizes: set[int] = field(default_factory=set)

    def timer_for(self, batch_size: int) -> Timer:
        if batch_size in self.batch_sizes:
            return self.steady
        self.batch_sizes.add(batch_size)
        return self.startup

    def line(self) -> str:
        if not self.steady.images:
            return f"speed per image (first batches only, start-up included): {self.startup.line()}"
        return f"speed per image: {self.steady.line()}; the first batch of each size is not counted"


class Predictor:
    """Preprocess a batch of BGR images, run the network and Detect, scale boxes to each image's pixels."""

    def __init__(self, runner, detect: Detect, transform: BaseTransform, device: torch.device) -> None:  # noqa: ANN001
        self.runner, self.detect, self.transform, self.device = runner, detect, transform, device
        self.speed = SpeedLog()

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        start = time.perf_counter()
        batch = torch.from_numpy(np.stack([self.transform(image)[0] for image in images]))
        mid = time.perf_counter()
        loc_preds, conf_preds = self.runner(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        net = time.perf_counter()
        found = self.detect(loc_preds, conf_preds, self.runner.priors.to(loc_preds.device))
        results = []
        for image, detection in zip(images, found, strict=True):
            height, width = image.shape[:2]
            scale = np.array([width, height, width, height], np.float32)
            results.append({"boxes": detection["boxes"].cpu().numpy() * scale, "scores": detection["scores"].cpu().numpy(),
                            "labels": detection["labels"].cpu().numpy() - 1})  # fmt: skip
        end = time.perf_counter()
        timer = self.speed.timer_for(len(images))
        timer.preprocess += (mid - start) * 1e3
        timer.network += (net - mid) * 1e3
        timer.detect += (end - net) * 1e3
        timer.images += len(images)
        return results


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Writer:
    """Writes the drawn outputs and the optional text/JSON detections of one run."""

    def __init__(
        self, out_dir: Path, class_names: Sequence[str], thresh: float, save_txt: bool, save_json: bool
    ) -> None:
        self.out_dir, self.class_names, self.thresh = out_dir, list(class_names), thresh
        self.save_txt, self.save_json = save_txt, save_json
        self.records: list[dict] = []

    def record(self, name: str, result: dict[str, np.ndarray], frame: int | None = None) -> None:
        keep = result["scores"] >= self.thresh
        boxes, scores, labels = result["boxes"][keep], result["scores"][keep], result["labels"][keep]
        if self.save_txt:
            folder = self.out_dir / "labels"
            folder.mkdir(exist_ok=True)
            stem = Path(name).stem + (f"_{frame}" if frame is not None else "")
            lines = [
                f"{self.class_names[c]} {s:.4f} {x0:.1f} {y0:.1f} {x1:.1f} {y1:.1f}"
                for (x0, y0, x1, y1), s, c in zip(boxes, scores, labels, strict=True)
            ]
            (folder / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
        if self.save_json:
            self.records.append({"source": name, **({"frame": frame} if frame is not None else {}), "boxes": boxes.round(2).tolist(),
                                 "scores": scores.round(4).tolist(), "labels": [self.class_names[c] for c in labels]})  # fmt: skip

    def close(self) -> None:
        if self.save_json:
            (self.out_dir / "predictions.json").write_text(json.dumps(self.records, indent=1))


def process_images(
    paths: Sequence[Path], predictor: Predictor, writer: Writer, batch_size: int, failures: list[str]
) -> None:
    for group in batched(paths, batch_size):
        images, names = [], []
        for path in group:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                failures.append(f"{path}: not a readable image")
                print(f"{path}: cannot be read, skipped", file=sys.stderr)
                continue
            images.append(image)
            names.append(path)
        if not images:
            continue
        for path, image, result in zip(names, images, predictor(images), strict=True):
            drawn = draw_detections(
                image, result["boxes"], result["scores"], result["labels"], writer.class_names, writer.thresh
            )
            cv2.imwrite(str(writer.out_dir / path.name), drawn)
            writer.record(path.name, result)
            print(f"{path}: {summarize(result['labels'], result['scores'], writer.class_names, writer.thresh)}")


def process_stream(
    capture: cv2.VideoCapture, name: str, out_path: Path, predictor: Predictor, writer: Writer, batch_size: int
) -> int:
    """Detect in every frame and write a video of the same size, frame rate and frame count; returns frames."""
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    video = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    frames = 0
    counts = np.zeros(len(writer.class_names), np.int64)
    try:
        while True:
            batch = []
            while len(batch) < batch_size:
                ok, frame = capture.read()
                if not ok:
                    break
                batch.append(frame)
            if not batch:
                break
            for frame, result in zip(batch, predictor(batch), strict=True):
                shown = result["scores"] >= writer.thresh
                counts += np.bincount(result["labels"][shown], minlength=len(counts))
                video.write(
                    draw_detections(
                        frame, result["boxes"], result["scores"], result["labels"], writer.class_names, writer.thresh
                    )
                )
                writer.record(name, result, frame=frames)
                frames += 1
    finally:
        video.release()
    found = ", ".join(f"{n} {writer.class_names[c]}" for c, n in enumerate(counts) if n) or "no detections"
    print(f"{name}: {frames} frames ({width}x{height} at {fps:.2f} fps), {found}")
    return frames


def load_runner(args: argparse.Namespace, num_classes: int, prior_family: str, device: torch.device):  # noqa: ANN201
    if str(args.weights).endswith(".onnx"):
        from utils.export import OnnxRunner

        return OnnxRunner(args.weights)
    return TorchRunner(args.weights, num_classes, args.size, prior_family, device, args.amp)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run SSD on images, folders, globs, videos or a webcam.")
    parser.add_argument("--source", default=None, help="image, folder, glob, video file or webcam index")
    parser.add_argument("--image", default=None, help="an image file (same as --source)")
    parser.add_argument("--video", default=None, help="a video file (same as --source)")
    parser.add_argument("--weights", "--trained_model", dest="weights", default="weights/ssd300_mAP_77.43_v2.pth",
                        help="project checkpoint, ssd.pytorch state_dict, or .onnx file")  # fmt: skip
    parser.add_argument("--dataset", default="VOC", help="class names: VOC, COCO, Cityscapes, FoggyCityscapes, Shapes")
    parser.add_argument("--dataset_root", "--dataset-root", default=None,
                        help="without --source: run on this dataset's test split (as eval.py reads it)")  # fmt: skip
    parser.add_argument("--image_set", "--image-set", default=None, help="with --dataset_root: another split")
    parser.add_argument("--classes", default=None, help="class-names file (one per line)")
    parser.add_argument(
        "--size", type=int, default=300, choices=[300, 512], help="input size of a raw ssd.pytorch state_dict"
    )
    parser.add_argument("--thresh", type=float, default=0.5, help="display threshold on the score")
    parser.add_argument("--conf_thresh", type=float, default=0.01)
    parser.add_argument("--nms_thresh", type=float, default=0.45)
    parser.add_argument("--top_k", type=int, default=400)
    parser.add_argument("--keep_top_k", type=int, default=200)
    parser.add_argument("--batch_size", "--batch-size", type=int, default=8, help="images or frames per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: float16 on a GPU, bfloat16 on a CPU (about 2x faster on CPUs with "
                             "bfloat16 instructions)")  # fmt: skip
    parser.add_argument("--save_txt", action="store_true", help="write labels/<name>.txt")
    parser.add_argument("--save_json", action="store_true", help="write predictions.json")
    parser.add_argument("--project", default="runs/detect")
    parser.add_argument("--name", default="exp")
    return parser


def main(args: argparse.Namespace) -> int:
    given = [s for s in (args.source, args.image, args.video) if s is not None]
    preset = get_preset(args.dataset, args.classes)
    if len(given) > 1 or (not given and args.dataset_root is None):
        raise ValueError("give exactly one of --source, --image or --video (or --dataset_root for its test split)")
    if given:
        sources = resolve_sources(given[0])
    else:
        split = build_dataset(preset, args.dataset_root, "test", image_set=args.image_set)
        sources = Sources(images=[split.image_path(i) for i in range(len(split))])
    device = select_device(args.device)
    runner = load_runner(args, preset.num_classes, preset.prior_family, device)
    class_names = list(runner.class_names or preset.class_names)
    if len(class_names) != runner.num_classes - 1:
        raise ValueError(
            f"{args.weights} predicts {runner.num_classes - 1} classes but {len(class_names)} names were given; pass --dataset or --classes"
        )
    preprocess = runner.preprocess
    transform = BaseTransform(runner.size, tuple(preprocess.get("mean") or CAFFE_MEAN_BGR), preprocess.get("std"))
    detect = Detect(runner.num_classes, args.conf_thresh, args.nms_thresh, args.top_k, args.keep_top_k or None)
    predictor = Predictor(runner, detect, transform, device)
    out_dir = increment_run_dir(args.project, args.name)
    writer = Writer(out_dir, class_names, args.thresh, args.save_txt, args.save_json)
    failures = list(sources.rejected)
    for line in sources.rejected:
        print(line, file=sys.stderr)

    process_images(sources.images, predictor, writer, args.batch_size, failures)
    for path in sources.videos:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened() or capture.get(cv2.CAP_PROP_FRAME_WIDTH) <= 0:
            failures.append(f"{path}: not a readable video")
            print(f"{path}: cannot be opened as a video, skipped", file=sys.stderr)
            continue
        try:
            process_stream(capture, path.name, out_dir / f"{path.stem}.mp4", predictor, writer, args.batch_size)
        finally:
            capture.release()
    if sources.webcam is not None:
        capture = cv2.VideoCapture(sources.webcam)
        if not capture.isOpened():
            raise ValueError(f"webcam {sources.webcam} cannot be opened; check the index and permissions")
        try:
            process_stream(
                capture, f"webcam{sources.webcam}", out_dir / f"webcam{sources.webcam}.mp4", predictor, writer, 1
            )
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        finally:
            capture.release()
    writer.close()
    print(predictor.speed.line())
    print(f"results in {out_dir}")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
