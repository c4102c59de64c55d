"""What inference.py writes: drawn images and videos at the original resolution, and the detections as text
(``labels/<name>.txt``) and JSON (``predictions.json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.predict import PixelDetections, Predictor
from utils.sources import batched, read_frames
from utils.visualization import draw_detections, summarize


class Writer:
    """Writes the drawn outputs and the optional text/JSON detections of one run."""

    def __init__(
        self, out_dir: Path, class_names: Sequence[str], thresh: float, save_txt: bool, save_json: bool
    ) -> None:
        self.out_dir, self.class_names, self.thresh = out_dir, list(class_names), thresh
        self.save_txt, self.save_json = save_txt, save_json
        self.records: list[dict] = []

    def record(self, name: str, result: PixelDetections, frame: int | None = None) -> None:
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
) -> Iterator[str]:
    """Detect in each image and write the drawn image and the records; yields one summary line per image.
    Unreadable images are added to ``failures`` and skipped."""
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
            yield f"{path}: {summarize(result['labels'], result['scores'], writer.class_names, writer.thresh)}"


def process_stream(
    capture: cv2.VideoCapture, name: str, out_path: Path, predictor: Predictor, writer: Writer, batch_size: int
) -> str:
    """Detect in every frame and write a video of the same size, frame rate and frame count; returns a summary."""
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    video = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    frames = 0
    counts = np.zeros(len(writer.class_names), np.int64)
    try:
        for batch in read_frames(capture, batch_size):
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
    return f"{name}: {frames} frames ({width}x{height} at {fps:.2f} fps), {found}"
