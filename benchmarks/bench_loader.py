"""(j) The data loader: images/s of train.py's loader (decode + SSDAugmentation + collate) and of eval.py's
(decode + BaseTransform), per number of worker processes, on VOC-sized JPEGs (500x375, VOC's typical size).

Can the loader feed the network? Compare its images/s with the training step's (bench_train_step) on the
same machine: on a GPU that trains at N img/s, the loader needs about N / (img/s per worker) workers.

    python -m benchmarks.bench_loader                         # 256 images written to a temporary folder
    python -m benchmarks.bench_loader --images 4952 --data /tmp/voc_sized --workers 0 1 2 4 8
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import DataLoader

from benchmarks.common import get_args_parser, measure, report, setup
from data.base import detection_collate
from data.config import VOC_CLASSES
from data.voc import VOCFormatDataset, write_voc_annotation
from utils.augmentations import SSDAugmentation
from utils.cli import NON_NEGATIVE_INT, POSITIVE_INT
from utils.transforms import Preprocess

WIDTH, HEIGHT = 500, 375


def write_voc_sized_set(folder: Path, num_images: int, split: str = "test", seed: int = 0) -> Path:
    """``num_images`` JPEGs of 500x375 (smooth backgrounds with 1-6 filled boxes of VOC classes, JPEG quality 90,
    so they decode like photographs rather than like noise) with VOC XMLs, as a VOC-format folder."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    gradient = np.linspace(0, 1, WIDTH, dtype=np.float32)[None, :, None]
    for k in range(num_images):
        image_id = f"{k:06d}"
        low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        image = np.broadcast_to(low + (high - low) * gradient, (HEIGHT, WIDTH, 3)).astype(np.uint8).copy()
        objects = []
        for _ in range(int(rng.integers(1, 7))):
            w, h = rng.uniform(30, 300), rng.uniform(30, 250)
            x0, y0 = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            cv2.rectangle(image, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), rng.uniform(0, 255, 3).tolist(), -1)
            objects.append((VOC_CLASSES[int(rng.integers(len(VOC_CLASSES)))], (x0 + 1, y0 + 1, x0 + w, y0 + h)))
        cv2.imwrite(str(folder / "JPEGImages" / f"{image_id}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        write_voc_annotation(folder / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", WIDTH, HEIGHT, objects)
        ids.append(image_id)
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder


def loader_pass(loader: DataLoader) -> None:
    for _ in loader:
        pass


def main() -> None:
    parser = get_args_parser("Data loader images/s per worker, VOC-sized JPEGs.", batch=32)
    parser.add_argument("--images", type=POSITIVE_INT, default=256, help="JPEGs in the set (one pass per call)")
    parser.add_argument(
        "--workers", type=NON_NEGATIVE_INT, nargs="+", default=[0, 1, 2], help="worker counts to measure"
    )
    parser.add_argument("--data", type=Path, default=None, help="folder for the set (default: a temporary one)")
    args = parser.parse_args()
    args.rounds, args.warmup = min(args.rounds, 3), max(args.warmup, 1)  # one pass is seconds long
    device = setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or Path(tmp) / "voc_sized"
        if not (folder / "ImageSets" / "Main" / "test.txt").is_file():
            write_voc_sized_set(folder, args.images)
        candidates = build_candidates(folder, args)
        results = measure(candidates, rounds=args.rounds, warmup=args.warmup, number=1, device=device)
    images = len((folder / "ImageSets" / "Main" / "test.txt").read_text().split()) if args.data else args.images
    for name, stats in results.items():
        workers = int(name.split(", ")[1].split()[0])
        stats["images_per_s_per_worker"] = images / stats["median_s"] / max(workers, 1)
    report("bench_loader", results, f"eval, {args.workers[0]} workers", args, device, per_call_items=images)
    for name, stats in results.items():
        print(f"{name:<28}{stats['images_per_s_per_worker']:>10.1f} img/s per worker (0 workers: the main process)")


def build_candidates(folder: Path, args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    """One full pass of each loader; workers persist across passes (the first, unmeasured, pays their start)."""
    preprocess = Preprocess()
    transforms = {"eval": preprocess.transform(300), "train": SSDAugmentation(300, preprocess.mean)}
    candidates = {}
    for workers in args.workers:
        extra = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
        for kind, transform in transforms.items():
            dataset = VOCFormatDataset([(folder, "test")], VOC_CLASSES, transform=transform)
            loader = DataLoader(dataset, args.batch, shuffle=kind == "train", num_workers=workers,
                                collate_fn=detection_collate, drop_last=kind == "train", **extra)  # fmt: skip
            candidates[f"{kind}, {workers} workers"] = lambda loader=loader: loader_pass(loader)
    return candidates


if __name__ == "__main__":
    main()
