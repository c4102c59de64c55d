"""Drawing detections on images at their original resolution (used by inference, eval figures and the demo)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np


def class_color(label: int) -> tuple[int, int, int]:
    """A fixed, well-separated BGR colour for class ``label`` (golden-ratio hues)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    thresh: float = 0.5,
    line_width: int | None = None,
) -> np.ndarray:
    """Draw every detection scoring at least ``thresh``: a box, and ``name score`` on a filled label.

    Args:
        image: uint8 [H, W, 3] BGR, drawn on in place and returned.
        boxes: [K, 4] pixel xyxy in this image's coordinates.
        scores: [K].
        labels: [K] 0-based foreground class.
        class_names: names for the labels.
        thresh: display threshold.
        line_width: box thickness; by default 0.15% of width + height, at least 2 px.
    """
    height, width = image.shape[:2]
    thickness = line_width or max(2, round(0.0015 * (height + width)))
    font_scale = max(0.35, thickness / 3)
    order = np.argsort(scores)  # draw the best last, on top
    for k in order:
        if scores[k] < thresh:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in np.clip(boxes[k], 0, [width - 1, height - 1, width - 1, height - 1]))
        color = class_color(int(labels[k]))
        cv2.rectangle(image, (x0, y0), (x1, y1), color, thickness, cv2.LINE_AA)
        name = class_names[int(labels[k])] if 0 <= int(labels[k]) < len(class_names) else str(int(labels[k]))
        text = f"{name} {scores[k]:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, max(1, thickness // 2))
        top = y0 - text_h - baseline - 2 if y0 - text_h - baseline - 2 >= 0 else y0  # inside the box at the top edge
        cv2.rectangle(image, (x0, top), (x0 + text_w + 2, top + text_h + baseline + 2), color, -1)
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(image, text, (x0 + 1, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_color,
                    max(1, thickness // 2), cv2.LINE_AA)  # fmt: skip
    return image


def summarize(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str], thresh: float) -> str:
    """``"2 dog, 1 person"`` for the detections at or above ``thresh``; ``"no detections"`` otherwise."""
    shown = labels[scores >= thresh]
    if len(shown) == 0:
        return "no detections"
    counts = np.bincount(shown, minlength=len(class_names))
    return ", ".join(f"{n} {class_names[c]}" for c, n in enumerate(counts) if n)


def make_grid(images: Sequence[np.ndarray], columns: int, cell: int = 300, gap: int = 4) -> np.ndarray:
    """Tile images (each resized to fit ``cell`` x ``cell``) into one BGR picture with a white gap."""
    rows = (len(images) + columns - 1) // columns
    grid = np.full((rows * (cell + gap) - gap, columns * (cell + gap) - gap, 3), 255, np.uint8)
    for k, image in enumerate(images):
        scale = cell / max(image.shape[:2])
        resized = cv2.resize(
            image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA
        )
        r, c = divmod(k, columns)
        y, x = r * (cell + gap), c * (cell + gap)
        grid[y : y + resized.shape[0], x : x + resized.shape[1]] = resized
    return grid
