"""Compose figures from inference outputs: a grid of drawn images, and a GIF from a drawn video.

python -m utils.figures grid --images "runs/detect/exp1/*.jpg" --columns 4 --out figures/demo.jpg
python -m utils.figures gif --video runs/detect/exp2/clip.mp4 --out figures/demo.gif --width 360
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import cv2
from PIL import Image  # Pillow comes with matplotlib

from utils.cli import POSITIVE_INT, bounded, run_cli
from utils.visualization import make_grid


def write_grid(pattern: str, out: str | Path, columns: int, cell: int = 300) -> Path:
    paths = sorted(glob.glob(pattern))
    images = [image for image in (cv2.imread(p) for p in paths) if image is not None]
    if not images:
        raise FileNotFoundError(f"no readable image matches {pattern!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), make_grid(images, columns, cell), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return out


def write_gif(video: str | Path, out: str | Path, width: int = 360, every: int = 1) -> Path:
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ValueError(f"{video} cannot be opened as a video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 12.0
    frames = []
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % every == 0:
            height = round(frame.shape[0] * width / frame.shape[1])
            small = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            frames.append(Image.fromarray(cv2.cvtColor(small, cv2.COLOR_BGR2RGB)))
        index += 1
    capture.release()
    if not frames:
        raise ValueError(f"{video} has no frames")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        out, save_all=True, append_images=frames[1:], duration=round(1000 * every / fps), loop=0, optimize=True
    )
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compose figures from inference outputs.")
    sub = parser.add_subparsers(dest="command", required=True)
    grid = sub.add_parser("grid", help="tile images into one picture")
    grid.add_argument("--images", required=True, help="glob of images")
    grid.add_argument("--columns", type=POSITIVE_INT, default=4)
    grid.add_argument("--cell", type=bounded(int, 16, 4096), default=300, help="side of each tile in pixels")
    grid.add_argument("--out", required=True)
    gif = sub.add_parser("gif", help="turn a video into an animated GIF")
    gif.add_argument("--video", required=True)
    gif.add_argument("--width", type=bounded(int, 16, 4096), default=360)
    gif.add_argument("--every", type=POSITIVE_INT, default=1, help="keep every N-th frame")
    gif.add_argument("--out", required=True)
    return parser


def main(args: argparse.Namespace) -> int:
    if args.command == "grid":
        print(f"wrote {write_grid(args.images, args.out, args.columns, args.cell)}")
    else:
        print(f"wrote {write_gif(args.video, args.out, args.width, args.every)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
