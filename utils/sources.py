"""What inference.py reads: ``--source`` resolved to image files, video files or a webcam, read in batches."""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from data.base import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")


@dataclass
class Sources:
    """What ``--source`` names: image files, video files, or a webcam index."""

    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    webcam: int | None = None


def is_media(path: Path) -> bool:
    """Whether ``path`` has an image or video extension (any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


def resolve_sources(text: str) -> Sources:
    """Classify ``text``: a webcam index, a folder, a glob, an image or a video file.

    A folder or a glob contributes its image and video files only (a stray ``notes.txt`` is not an input); a
    file named explicitly must be an image or a video. Naming no input at all is an error.
    """
    if text.isdigit():
        return Sources(webcam=int(text))
    path = Path(text)
    kinds = f"images ({', '.join(IMAGE_SUFFIXES)}) or videos ({', '.join(VIDEO_SUFFIXES)})"
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_media(p))
        if not files:
            raise FileNotFoundError(f"folder {path} holds no {kinds}")
    elif not path.is_file() and any(c in text for c in "*?["):  # a file named img[1].jpg is a file, not a pattern
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file() and is_media(Path(p)))
        if not files:
            raise FileNotFoundError(f"the pattern {text!r} matches no {kinds}")
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            raise ValueError(f"{path}: unsupported extension {path.suffix!r}; use {kinds}")
        files = [path]
    else:
        raise FileNotFoundError(
            f"source {text} does not exist (give an image, a folder, a glob, a video or a webcam index)"
        )
    sources = Sources()
    for file in files:
        (sources.images if file.suffix.lower() in IMAGE_SUFFIXES else sources.videos).append(file)
    return sources


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_frames(capture: cv2.VideoCapture, batch_size: int) -> Iterator[list[np.ndarray]]:
    """Batches of up to ``batch_size`` BGR frames until the stream ends."""
    while True:
        batch = []
        while len(batch) < batch_size:
            ok, frame = capture.read()
            if not ok:
                break
            batch.append(frame)
        if not batch:
            return
        yield batch
