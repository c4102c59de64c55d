"""What inference.py writes: drawn images and videos at the original resolution, and the detections as text
(``labels/<name>.txt``) and JSON (``predictions.json``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.predict import PixelDetections, Predictor
from utils.sources import batched, read_frames
from utils.visualization import draw_detections, summarize

# predictions.json precision: 0.001 px for boxes, 6 decimals for scores (documented in the README).
BOX_DECIMALS, SCORE_DECIMALS = 3, 6


def output_names(paths: Sequence[Path]) -> dict[Path, Path]:
    """A unique output path, relative to the run folder, for each input: its path relative to the inputs'
    common folder (so ``a/img.jpg`` and ``b/img.jpg`` stay apart)."""
    if not paths:
        return {}
    resolved = [path.resolve() for path in paths]
    root = Path(os.path.commonpath([path.parent for path in resolved]))
    return {path: full.relative_to(root) for path, full in zip(paths, resolved, strict=True)}


def label_names(names: Sequence[Path]) -> dict[Path, Path]:
    """``labels/`` file of each output name: ``x.txt`` for ``x.jpg``, or ``x.jpg.txt`` when another input
    of the same folder has the stem ``x`` too (``x.png``), so no two inputs share a file."""
    stems = Counter(name.with_suffix("") for name in names)
    return {
        name: name.with_suffix(".txt") if stems[name.with_suffix("")] == 1 else name.with_name(name.name + ".txt")
        for name in names
    }


class Writer:
    """Writes the drawn outputs and the optional text/JSON detections of one run.

    ``labels/<name>.txt`` has one line per shown detection, ``class_index score xmin ymin xmax ymax``: a 0-based
    index into ``labels/classes.txt`` and pixel corners clipped to the image. ``predictions.json`` lists, per
    input (and frame), its path as given, the clipped boxes, scores and class names; it is written when the
    run ends, also by Ctrl-C.
    """

    def __init__(
        self, out_dir: Path, class_names: Sequence[str], thresh: float, save_txt: bool, save_json: bool
    ) -> None:
        self.out_dir, self.class_names, self.thresh = out_dir, list(class_names), thresh
        self.save_txt, self.save_json = save_txt, save_json
        self.records: list[dict] = []
        if save_txt:
            (out_dir / "labels").mkdir(parents=True, exist_ok=True)
            (out_dir / "labels" / "classes.txt").write_text("".join(f"{name}\n" for name in self.class_names))

    def shown(self, result: PixelDetections, width: int, height: int) -> PixelDetections:
        """The detections scoring at least ``thresh``, boxes clipped to the ``width`` x ``height`` image."""
        keep = result["scores"] >= self.thresh
        boxes = np.clip(result["boxes"][keep], 0, [width, height, width, height])
        return {"boxes": boxes, "scores": result["scores"][keep], "labels": result["labels"][keep]}

    def record(
        self, source: Path, labels_file: Path | None, result: PixelDetections, size: tuple[int, int],
        frame: int | None = None,
    ) -> None:  # fmt: skip
        """Write ``source``'s detections (``size``: its width and height) to ``labels/<labels_file>`` and the JSON."""
        found = self.shown(result, *size)
        if self.save_txt and labels_file is not None:
            path = self.out_dir / "labels" / labels_file
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [
                f"{c} {s:.{SCORE_DECIMALS}f} {x0:.{BOX_DECIMALS}f} {y0:.{BOX_DECIMALS}f} {x1:.{BOX_DECIMALS}f} {y1:.{BOX_DECIMALS}f}\n"
                for (x0, y0, x1, y1), s, c in zip(found["boxes"], found["scores"], found["labels"], strict=True)
            ]
            path.write_text("".join(lines))
        if self.save_json:
            self.records.append({"source": str(source), **({"frame": frame} if frame is not None else {}),
                                 "boxes": found["boxes"].round(BOX_DECIMALS).tolist(),
                                 "scores": found["scores"].round(SCORE_DECIMALS).tolist(),
                                 "labels": [self.class_names[c] for c in found["labels"]]})  # fmt: skip

    def close(self) -> None:
        if self.save_json:
            (self.out_dir / "predictions.json").write_text(json.dumps(self.records, indent=1))


def process_images(
    paths: Sequence[Path], predictor: Predictor, writer: Writer, batch_size: int, failures: list[str]
) -> Iterator[str]:
    """Detect in each image and write the drawn image and the records; yields one summary line per image.

    Unreadable images are added to ``failures`` and skipped. An image with nothing to draw is copied byte for
    byte (not re-encoded).
    """
    names = output_names(paths)
    labels = label_names(list(names.values()))
    for group in batched(paths, batch_size):
        images, readable = [], []
        for path in group:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                failures.append(f"{path}: not a readable image")
                print(f"{path}: cannot be read, skipped", file=sys.stderr)
                continue
            images.append(image)
            readable.append(path)
        if not images:
            continue
        for path, image, result in zip(readable, images, predictor(images), strict=True):
            out = writer.out_dir / names[path]
            out.parent.mkdir(parents=True, exist_ok=True)
            if (result["scores"] >= writer.thresh).any():
                drawn = draw_detections(
                    image, result["boxes"], result["scores"], result["labels"], writer.class_names, writer.thresh
                )
                if not cv2.imwrite(str(out), drawn):
                    raise OSError(f"cannot write {out}")
            else:
                shutil.copyfile(path, out)
            writer.record(path, labels[names[path]], result, (image.shape[1], image.shape[0]))
            yield f"{path}: {summarize(result['labels'], result['scores'], writer.class_names, writer.thresh)}"


def process_stream(
    capture: cv2.VideoCapture,
    source: Path | str,
    out_name: Path,
    predictor: Predictor,
    writer: Writer,
    batch_size: int,
) -> str:
    """Detect in every frame and write a video of the same size, frame rate and frame count to ``out_name``
    (relative to the run folder; labels go to ``<stem>_<frame>.txt``); returns a summary line."""
    out_path = writer.out_dir / out_name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    # The writer takes the first frame's size: a webcam may report 0, and a rotated video its stored size.
    video: cv2.VideoWriter | None = None
    width = height = frames = 0
    counts = np.zeros(len(writer.class_names), np.int64)
    try:
        for batch in read_frames(capture, batch_size):
            if video is None:
                height, width = batch[0].shape[:2]
                video = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            for frame, result in zip(batch, predictor(batch), strict=True):
                shown = result["scores"] >= writer.thresh
                counts += np.bincount(result["labels"][shown], minlength=len(counts))
                video.write(
                    draw_detections(
                        frame, result["boxes"], result["scores"], result["labels"], writer.class_names, writer.thresh
                    )
                )
                labels_file = out_name.with_name(f"{out_name.stem}_{frames}.txt")
                writer.record(Path(source), labels_file, result, (width, height), frame=frames)
                frames += 1
    finally:
        if video is not None:
            video.release()
    found = ", ".join(f"{n} {writer.class_names[c]}" for c, n in enumerate(counts) if n) or "no detections"
    return f"{source}: {frames} frames ({width}x{height} at {fps:.2f} fps), {found}"
