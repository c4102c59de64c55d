"""inference.py on images, folders, globs and videos; drawing at original resolution."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.config import SHAPES_CLASSES
from tests.fixtures import oracle_ssd, save_detector
from utils.predict import SpeedLog
from utils.visualization import class_color, draw_detections, make_grid, summarize

ROOT = Path(__file__).resolve().parent.parent
MODULE_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # python -m utils.<tool> from another folder
BOX = (0.25, 0.2, 0.75, 0.6)  # relative xyxy the oracle detects
LABEL = 2  # network class 2 = "square"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "oracle.pth"
    model = oracle_ssd(len(SHAPES_CLASSES) + 1, BOX, LABEL)
    save_detector(model, path, SHAPES_CLASSES)
    return path


def grey(width: int, height: int, level: int = 128) -> np.ndarray:
    return np.full((height, width, 3), level, np.uint8)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "inference.py"), *args, "--device", "cpu", "--project", str(cwd / "runs")],
                          cwd=cwd, capture_output=True, text=True)  # fmt: skip


def colored_columns(image: np.ndarray, row: int, color: tuple[int, int, int]) -> np.ndarray:
    return np.flatnonzero(np.abs(image[row].astype(int) - color).sum(1) < 40)


def test_single_image_is_drawn_at_original_resolution(weights: Path, tmp_path: Path) -> None:
    width, height = 640, 360
    cv2.imwrite(str(tmp_path / "scene.png"), grey(width, height))
    result = run(
        "--weights", str(weights), "--image", str(tmp_path / "scene.png"), "--save_txt", "--save_json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path / 'scene.png'}: 1 square" in result.stdout
    assert "speed per image" in result.stdout and "ms network" in result.stdout
    out = cv2.imread(str(tmp_path / "runs" / "exp1" / "scene.png"))
    assert out.shape == (height, width, 3)
    x0, y0, x1, y1 = BOX[0] * width, BOX[1] * height, BOX[2] * width, BOX[3] * height
    columns = colored_columns(out, int((y0 + y1) / 2), class_color(LABEL - 1))
    assert abs(columns.min() - x0) <= 2 and abs(columns.max() - x1) <= 2
    label = (tmp_path / "runs" / "exp1" / "labels" / "scene.txt").read_text().split()
    classes = (tmp_path / "runs" / "exp1" / "labels" / "classes.txt").read_text().splitlines()
    assert classes[int(label[0])] == "square" and [float(v) for v in label[2:]] == pytest.approx(
        [x0, y0, x1, y1], abs=0.2
    )
    predictions = json.loads((tmp_path / "runs" / "exp1" / "predictions.json").read_text())
    assert predictions[0]["labels"] == ["square"] and predictions[0]["source"] == str(tmp_path / "scene.png")


def test_below_threshold_images_are_written_unchanged(weights: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "noise.png"), image)
    result = run("--weights", str(weights), "--source", str(tmp_path / "noise.png"), "--thresh", "1.01", cwd=tmp_path)
    assert result.returncode == 0 and "no detections" in result.stdout
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "runs" / "exp1" / "noise.png")), image)


def test_folder_with_a_corrupt_file_processes_the_rest(weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"ok{k}.jpg"), grey(100 + 20 * k, 80))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    result = run("--weights", str(weights), "--source", str(folder), "--batch_size", "2", cwd=tmp_path)
    assert result.returncode == 1
    assert sorted(p.name for p in (tmp_path / "runs" / "exp1").glob("*.jpg")) == ["ok0.jpg", "ok1.jpg", "ok2.jpg"]
    assert "1 input(s) failed:" in result.stderr and "broken.jpg: not a readable image" in result.stderr
    assert "notes.txt" not in result.stderr and "Traceback" not in result.stderr  # a folder's non-images are not inputs
    globbed = run("--weights", str(weights), "--source", str(folder / "ok*.jpg"), cwd=tmp_path)
    assert globbed.returncode == 0 and len(list((tmp_path / "runs" / "exp2").glob("*.jpg"))) == 3


def test_video_keeps_size_fps_and_frame_count(weights: Path, tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (160, 96))
    for k in range(17):
        writer.write(grey(160, 96, 60 + 5 * k))
    writer.release()
    result = run("--weights", str(weights), "--video", str(path), "--batch_size", "4", "--save_json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "clip.mp4: 17 frames (160x96 at 12.00 fps), 17 square" in result.stdout
    out = cv2.VideoCapture(str(tmp_path / "runs" / "exp1" / "clip.mp4"))
    frames = 0
    while out.read()[0]:
        frames += 1
    assert frames == 17
    assert (out.get(cv2.CAP_PROP_FRAME_WIDTH), out.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (160, 96)
    assert out.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert len(json.loads((tmp_path / "runs" / "exp1" / "predictions.json").read_text())) == 17


def test_bad_sources_and_weights_are_one_line(weights: Path, tmp_path: Path) -> None:
    (tmp_path / "doc.pdf").write_text("x")
    unsupported = run("--weights", str(weights), "--source", str(tmp_path / "doc.pdf"), cwd=tmp_path)
    assert unsupported.returncode == 2 and unsupported.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'doc.pdf'}: unsupported extension '.pdf'; use images (.jpg, .jpeg, .png, .bmp, .tif, .tiff, "
        ".webp) or videos (.mp4, .avi, .mov, .mkv, .m4v, .webm, .mpg, .mpeg, .wmv)"
    ]
    missing = run("--weights", str(weights), "--source", str(tmp_path / "nothing.jpg"), cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    cv2.imwrite(str(tmp_path / "a.png"), grey(10, 10))
    no_weights = run("--weights", str(tmp_path / "none.pth"), "--source", str(tmp_path / "a.png"), cwd=tmp_path)
    assert no_weights.returncode == 2 and "weights file" in no_weights.stderr and "Traceback" not in no_weights.stderr
    (tmp_path / "fake.mp4").write_bytes(b"not a video")
    bad_video = run("--weights", str(weights), "--source", str(tmp_path / "fake.mp4"), cwd=tmp_path)
    assert bad_video.returncode == 1 and "fake.mp4: not a readable video" in bad_video.stderr


def test_dataset_root_runs_on_the_test_split(weights: Path, tmp_path: Path) -> None:
    from data.shapes import generate

    generate(tmp_path / "shapes", 0, 3, seed=5)
    result = run(
        "--weights", str(weights), "--dataset", "Shapes", "--dataset_root", str(tmp_path / "shapes"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "exp1").glob("*.jpg")) == [
        f"test_00000{k}.jpg" for k in range(3)
    ]


def test_drawing_helpers() -> None:
    image = grey(50, 40)
    drawn = draw_detections(
        image.copy(),
        np.array([[5.0, 5.0, 30.0, 30.0], [0, 0, 10, 10]]),
        np.array([0.9, 0.2]),
        np.array([1, 0]),
        ["a", "b"],
        0.5,
    )
    assert (drawn != image).any() and (drawn[35:, 35:] == 128).all()  # only near the shown box
    assert summarize(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1]), ["a", "b"], 0.5) == "2 b"
    assert summarize(np.array([0]), np.array([0.1]), ["a"], 0.5) == "no detections"
    assert class_color(3) == class_color(3) and class_color(0) != class_color(1)
    assert make_grid([grey(300, 300), grey(150, 300)], columns=2).shape == (300, 604, 3)


def test_speed_log_keeps_the_first_batch_of_each_size_apart() -> None:
    speed = SpeedLog()
    assert speed.timer_for(4) is speed.startup  # start-up: autotuning, graph capture
    speed.startup.network, speed.startup.images = 400.0, 4
    assert "start-up included" in speed.line() and "100.0 ms network" in speed.line()
    for size in (4, 4, 2, 2):
        timer = speed.timer_for(size)
        timer.network += 2.0 * size
        timer.images += size
    assert speed.startup.images == 4 + 2 and speed.steady.images == 4 + 4 + 2  # the first 2-image batch: start-up
    assert speed.line() == (
        "speed per image: 0.0 ms preprocess, 2.0 ms network, 0.0 ms Detect (10 images); "
        "the first batch of each size is not counted"
    )


def test_outputs_are_unique_per_input(weights: Path, tmp_path: Path) -> None:
    for folder, name, width in (("a", "img.jpg", 100), ("b", "img.jpg", 140), ("a", "x.jpg", 90), ("a", "x.png", 120)):
        (tmp_path / "in" / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "in" / folder / name), grey(width, 80))
    result = run("--weights", str(weights), "--source", str(tmp_path / "in" / "**" / "*.*"), "--save_txt",
                 "--save_json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "exp1"
    assert cv2.imread(str(run_dir / "a" / "img.jpg")).shape[1] == 100
    assert cv2.imread(str(run_dir / "b" / "img.jpg")).shape[1] == 140
    labels = sorted(str(p.relative_to(run_dir / "labels")) for p in (run_dir / "labels").rglob("*.txt"))
    assert labels == ["a/img.txt", "a/x.jpg.txt", "a/x.png.txt", "b/img.txt", "classes.txt"]
    sources = [r["source"] for r in json.loads((run_dir / "predictions.json").read_text())]
    assert sorted(sources) == sorted(str(tmp_path / "in" / f) for f in ("a/img.jpg", "b/img.jpg", "a/x.jpg", "a/x.png"))


def test_interrupted_folder_run_keeps_its_predictions(weights: Path, tmp_path: Path, monkeypatch) -> None:
    import inference
    import utils.writers
    from utils.cli import run_cli

    for k in range(5):
        cv2.imwrite(str(tmp_path / f"im{k}.jpg"), grey(100, 80))
    calls = []

    def interrupted_draw(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third image is drawn
        return args[0]

    monkeypatch.setattr(utils.writers, "draw_detections", interrupted_draw)
    argv = ["--weights", str(weights), "--source", str(tmp_path), "--batch_size", "1", "--save_json", "--device", "cpu",
            "--project", str(tmp_path / "runs")]  # fmt: skip
    assert run_cli(inference.main, inference.get_args_parser(), argv) == 130
    records = json.loads((tmp_path / "runs" / "exp1" / "predictions.json").read_text())
    assert [Path(r["source"]).name for r in records] == ["im0.jpg", "im1.jpg"]


def test_empty_folder_and_no_detection_copies(weights: Path, tmp_path: Path) -> None:  # cases 17, 25, 23
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    empty = run("--weights", str(weights), "--source", str(tmp_path / "empty"), cwd=tmp_path)
    assert empty.returncode == 2 and f"error: folder {tmp_path / 'empty'} holds no images" in empty.stderr
    noise = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "noise.jpg"), noise)
    result = run("--weights", str(weights), "--source", str(tmp_path / "noise.jpg"), "--thresh", "1.01", cwd=tmp_path)
    assert result.returncode == 0
    assert (tmp_path / "runs" / "exp1" / "noise.jpg").read_bytes() == (tmp_path / "noise.jpg").read_bytes()


def test_labels_are_clipped_to_the_image() -> None:
    from utils.writers import Writer

    writer = Writer(Path("unused"), ["a"], 0.5, save_txt=False, save_json=False)
    result = {"boxes": np.array([[-4.2, 10.0, 130.0, 50.0]]), "scores": np.array([0.9]), "labels": np.array([0])}
    np.testing.assert_array_equal(writer.shown(result, 120, 90)["boxes"], [[0.0, 10.0, 120.0, 50.0]])
