"""The synthetic shapes generator: determinism, the CLI's layout, the stated object statistics, and the fog
scenes (Koschmieder's law, the ground-plane geometry, the paired clean/foggy folders)."""

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import shapes
from data.config import SHAPES_CLASSES
from data.shapes import (
    D_MAX,
    D_NEAR,
    HORIZON,
    MAX_SIZE,
    MIN_SIZE,
    S_NEAR,
    SCENE_MIN_SIZE,
    SIZE_JITTER,
    add_fog,
    draw_sample,
    draw_scene,
    fog_airlight,
    generate,
    ground_depth,
)
from data.voc import VOCFormatDataset
from utils.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_cli_writes_voc_splits(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "data.shapes", "--out", str(tmp_path / "shapes"), "--train", "12", "--test", "4", "--seed", "0"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "wrote 12 train and 4 test images" in result.stdout
    main = tmp_path / "shapes" / "ImageSets" / "Main"
    assert len((main / "trainval.txt").read_text().split()) == 12 and len((main / "test.txt").read_text().split()) == 4
    train = VOCFormatDataset([(tmp_path / "shapes", "trainval")], SHAPES_CLASSES)
    test = VOCFormatDataset([(tmp_path / "shapes", "test")], SHAPES_CLASSES)
    assert not set(train.ids) & set(test.ids)


def test_same_seed_same_files(tmp_path: Path) -> None:
    generate(tmp_path / "a", 5, 2, seed=4)
    generate(tmp_path / "b", 5, 2, seed=4)
    generate(tmp_path / "c", 5, 2, seed=5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a/JPEGImages/trainval_000000.jpg").read_bytes() != (
        tmp_path / "c/JPEGImages/trainval_000000.jpg"
    ).read_bytes()


def test_object_statistics_over_many_images() -> None:
    counts, sizes, per_image, overlapping = np.zeros(len(SHAPES_CLASSES)), [], [], 0
    for index in range(300):
        image, boxes, labels = draw_sample(np.random.default_rng((0, 0, index)))
        assert image.shape == (300, 300, 3) and image.dtype == np.uint8
        assert ((boxes >= 0) & (boxes <= 299)).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        per_image.append(len(labels))
        np.add.at(counts, labels, 1)
        sizes.extend(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).tolist())
        for i in range(len(boxes)):
            for j in range(i):
                w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                overlapping += w > 0 and h > 0
    assert min(per_image) >= 1 and max(per_image) == 6
    assert (counts > 0.2 * counts.sum() / len(SHAPES_CLASSES)).all()  # every class is common
    assert MIN_SIZE * 0.75 <= min(sizes) and max(sizes) <= MAX_SIZE + 2
    assert overlapping > 50  # objects do overlap
    # The background is noisy: neighbouring pixels of an empty corner differ.
    assert np.abs(np.diff(image[:20, :20].astype(int), axis=1)).mean() > 2


def _digest(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()


def _tree_digest(root: Path) -> str:
    """One hash of every file's relative path and bytes under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_the_fog_free_generator_is_unchanged(tmp_path: Path) -> None:
    # The demo's figures are drawn from these images: without --fog the generator must draw and write exactly what
    # it did before the fog scenes existed. The hashes were taken from that code (commit c51183d); a new OpenCV or
    # NumPy that draws differently changes them too, and then the demo's figures change with them.
    image, boxes, labels = draw_sample(np.random.default_rng((0, 0, 0)))
    assert int(image.astype(np.int64).sum()) == 32352717 and labels.tolist() == [0, 3, 1, 3, 3, 3]
    assert _digest(image, boxes, labels) == "26332c996fbfd830fc2b2faa394825802d03181530ee2e3199deeadc3e7e6cb7"
    assert _digest(*draw_sample(np.random.default_rng((1, 0, 2)), 200)) == (
        "c09674c8d358c4a46b23f53d9339da360485934d7f6a833967dc8dbe20359ae0"
    )
    generate(tmp_path / "plain", 2, 1, seed=0, size=200)
    assert not (tmp_path / "plain" / "clean").exists() and not (tmp_path / "plain" / "fog.json").exists()
    assert _tree_digest(tmp_path / "plain") == "e158cbaf9440ebd09baf4eb8419af04ce2c8228de0ded1d27d28085cafc74f60"


def test_add_fog_is_koschmieders_law() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    depth = rng.uniform(0, 200, (5, 4)).astype(np.float32)
    beta, airlight = 0.02, 210.3
    expected = np.empty_like(image)
    for y in range(5):
        for x in range(4):
            t = math.exp(-beta * float(depth[y, x]))
            for c in range(3):
                expected[y, x, c] = min(255, max(0, round(float(image[y, x, c]) * t + airlight * (1 - t))))
    np.testing.assert_array_equal(add_fog(image, depth, beta, airlight), expected)
    np.testing.assert_array_equal(add_fog(image, np.zeros((5, 4)), beta, airlight), image)  # t = 1: no fog
    assert (add_fog(image, np.full((5, 4), 1e6), beta, airlight) == 210).all()  # t -> 0: only the airlight
    with pytest.raises(ValueError, match="depth map"):
        add_fog(image, np.zeros((4, 5)), beta, airlight)


def test_fog_writes_paired_clean_and_foggy_folders(tmp_path: Path) -> None:
    generate(tmp_path / "fog", 3, 2, seed=1, size=160, fog=0.02)
    clean, foggy = tmp_path / "fog" / "clean", tmp_path / "fog" / "foggy"
    shared = sorted(p.relative_to(clean) for p in clean.rglob("*") if p.is_file() and p.suffix != ".jpg")
    assert len(shared) == 5 + 2 + 1  # annotations, the two split files, classes.txt
    assert all((clean / f).read_bytes() == (foggy / f).read_bytes() for f in shared)
    names = sorted(p.name for p in (clean / "JPEGImages").iterdir())
    assert names == sorted(p.name for p in (foggy / "JPEGImages").iterdir()) and len(names) == 5
    settings = json.loads((tmp_path / "fog" / "fog.json").read_text())
    assert settings["beta_per_m"] == 0.02 and settings["d_near_m"] == D_NEAR and settings["generator_version"] >= 1
    assert len(VOCFormatDataset([(foggy, "test")], SHAPES_CLASSES)) == 2
    # The files hold the scene drawn from (seed, split, index) and that scene under fog, as JPEG encodes them.
    image, boxes, _, depth = draw_scene(np.random.default_rng((1, 1, 1)), 160)
    fogged = add_fog(image, depth, 0.02, fog_airlight(1, "test", 1))
    for root, expected in ((clean, image), (foggy, fogged)):
        encoded = cv2.imencode(".jpg", expected, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        assert (root / "JPEGImages/test_000001.jpg").read_bytes() == encoded
    assert np.abs(fogged.astype(int) - image).mean() > 10
    assert 1 <= len(boxes) == len(VOCFormatDataset([(clean, "test")], SHAPES_CLASSES)[1][1])
    # A val split is other scenes, and adds nothing to the other splits.
    generate(tmp_path / "with_val", 3, 2, seed=1, size=160, fog=0.02, num_val=2)
    for split in ("trainval", "test"):
        listing = f"ImageSets/Main/{split}.txt"
        assert (tmp_path / "with_val" / "foggy" / listing).read_text() == (foggy / listing).read_text()
    val = tmp_path / "with_val" / "foggy" / "JPEGImages"
    assert (val / "val_000000.jpg").read_bytes() != (foggy / "JPEGImages/test_000000.jpg").read_bytes()
    assert len(VOCFormatDataset([(tmp_path / "with_val" / "foggy", "val")], SHAPES_CLASSES)) == 2
    # The clean scenes do not depend on the fog: another beta writes the same clean folder.
    generate(tmp_path / "thinner", 3, 2, seed=1, size=160, fog=0.01)
    assert _tree_digest(tmp_path / "thinner" / "clean") == _tree_digest(clean)


def test_scene_objects_stand_on_the_ground_plane() -> None:
    size, horizon = 300, HORIZON * 300
    rows = ground_depth(np.arange(size), size)
    assert rows[0] == D_MAX and rows[int(horizon)] == D_MAX and rows[-1] == pytest.approx(D_NEAR, rel=0.01)
    for seed in range(25):
        image, boxes, labels, depth = draw_scene(np.random.default_rng((seed, 0, 0)), size)
        assert image.shape == (size, size, 3) and depth.shape == (size, size) and depth.dtype == np.float32
        assert len(boxes) == len(labels) >= 1 and (boxes[:, 1] >= horizon).all()  # every box below the horizon
        # An object stands in front of the ground behind it (OpenCV's anti-aliasing may fill the row just below a
        # shape's exact bottom, hence the comparison with the row above), and the sky is at D_MAX.
        assert (depth[1:] <= rows[:-1, None].astype(np.float32) * (1 + 1e-6)).all()
        assert (depth[: int(horizon) + 1] == D_MAX).all()
        for box in boxes:
            object_depth = float(ground_depth(box[3], size))
            extent = max(box[2] - box[0], box[3] - box[1])  # the exact extent: boxes this far in are never clipped
            perspective = S_NEAR * D_NEAR / object_depth
            low = np.clip(perspective * (1 - SIZE_JITTER), SCENE_MIN_SIZE, MAX_SIZE)
            high = np.clip(perspective * (1 + SIZE_JITTER), SCENE_MIN_SIZE, MAX_SIZE)
            assert low - 1e-3 <= extent <= high + 1e-3
            # The depth map holds the object's depth where it is drawn (nearer objects hide at most a quarter).
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            drawn = np.isclose(depth[y0 : y1 + 1, x0 : x1 + 1], object_depth, rtol=1e-5).mean()
            assert drawn > 0.1, (seed, box.tolist())


def test_far_objects_fade_more() -> None:
    beta, airlight = 0.02, 0.85 * 255
    faded = {"far": [], "near": []}
    for seed in range(12):
        image, boxes, _, depth = draw_scene(np.random.default_rng((seed, 1, 3)))
        change = np.abs(add_fog(image, depth, beta, airlight).astype(float) - image).mean(2)  # [H, W]
        for box in boxes:
            object_depth = float(ground_depth(box[3], 300))
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            if object_depth > 3.5 * D_NEAR or object_depth < 1.8 * D_NEAR:
                far = object_depth > 3.5 * D_NEAR
                faded["far" if far else "near"].append(change[y0 : y1 + 1, x0 : x1 + 1].mean())
    assert len(faded["far"]) >= 5 and len(faded["near"]) >= 5
    assert np.mean(faded["far"]) > 1.5 * np.mean(faded["near"])


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the generator's main in-process as the shell would; returns (status, stdout, stderr)."""
    try:
        status = run_cli(shapes.main, shapes.get_args_parser(), argv)
    except SystemExit as exit_:  # argparse refuses a flag
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("beta", ["0", "1.5", "-0.02"])
def test_cli_refuses_a_fog_outside_0_to_1(beta: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status, _, err = _cli(["--out", str(tmp_path / "s"), "--train", "1", "--fog", beta], capsys)
    assert status == 2 and f"argument --fog: {beta} is out of range: need 0 < value <= 1" in err
    assert not (tmp_path / "s").exists()


def test_cli_fog_names_both_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s"
    status, stdout, _ = _cli(
        ["--out", str(out), "--train", "2", "--test", "1", "--size", "160", "--fog", "0.01"], capsys
    )
    assert status == 0 and len(stdout.splitlines()) == 1
    assert str(out / "clean") in stdout and str(out / "foggy") in stdout and "objects in each" in stdout
    status, _, err = _cli(["--out", str(out), "--train", "2", "--fog", "0.01"], capsys)  # OUT is not empty now
    assert status == 2 and "--overwrite" in err
