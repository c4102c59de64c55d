"""What a new user hits: awkward data and wrong flags get one clear line and a non-zero exit, and
no data is lost."""

from pathlib import Path

import pytest

import eval as eval_script
import inference
import train
from data import shapes
from utils.cli import run_cli


def cli(module, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:  # noqa: ANN001
    """Run a script's main in-process as the shell would; returns (status, stderr)."""
    try:
        status = run_cli(module.main, module.get_args_parser(), argv)
    except SystemExit as exit_:  # argparse refuses a flag
        status = exit_.code
    return status, capsys.readouterr().err


def test_shapes_refuses_a_non_empty_folder_without_overwrite(tmp_path: Path, capsys) -> None:
    user = tmp_path / "mine"
    (user / "ImageSets" / "Main").mkdir(parents=True)
    (user / "classes.txt").write_text("cat\ndog\n")
    status, err = cli(shapes, ["--out", str(user), "--train", "2", "--test", "1"], capsys)
    assert status == 2 and "is not empty" in err and "--overwrite" in err
    assert (user / "classes.txt").read_text() == "cat\ndog\n"  # untouched
    status, _ = cli(shapes, ["--out", str(user), "--train", "2", "--test", "1", "--overwrite"], capsys)
    assert status == 0 and (user / "classes.txt").read_text().split() == list(shapes.SHAPES_CLASSES)
    status, _ = cli(shapes, ["--out", str(tmp_path / "new"), "--train", "2", "--test", "1"], capsys)
    assert status == 0


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        (train, ["--width", "0"], "argument --width: 0 is out of range: need 0 < value <= 8"),
        (train, ["--width", "-1"], "argument --width: -1 is out of range"),
        (train, ["--batch_size", "0"], "argument --batch_size/--batch-size: 0 is out of range: need 1 <= value"),
        (train, ["--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
        (train, ["--max_expand", "0.5"], "argument --max_expand/--max-expand: 0.5 is out of range"),
        (
            eval_script,
            ["--dataset_root", "d", "--nms_thresh", "1.5"],
            "argument --nms_thresh/--nms-thresh: 1.5 is out of range",
        ),
        (eval_script, ["--dataset_root", "d", "--top_k", "0"], "argument --top_k/--top-k: 0 is out of range"),
        (inference, ["--batch_size", "-2"], "argument --batch_size/--batch-size: -2 is out of range"),
        (shapes, ["--size", "100000"], "argument --size: 100000 is out of range: need 158 <= value <= 4096"),
        (shapes, ["--frames", "-3", "--video", "v.mp4"], "argument --frames: -3 is out of range"),
        (shapes, ["--train", "x"], "argument --train: 'x' is not an integer"),
    ],
)
def test_numeric_flags_are_validated_at_parse_time(module, argv, message, capsys) -> None:  # noqa: ANN001
    status, err = cli(module, argv, capsys)
    assert status == 2 and message in err


def test_shapes_with_nothing_to_write_says_so(tmp_path: Path, capsys) -> None:
    status, err = cli(shapes, ["--out", str(tmp_path / "s"), "--train", "0", "--test", "0"], capsys)
    assert status == 2 and "nothing to write" in err


def test_the_decoded_image_size_wins_over_the_xml(tmp_path: Path, caplog) -> None:
    import logging

    import cv2
    import numpy as np
    from PIL import Image

    from data.voc import VOCFormatDataset
    from tests.fixtures import voc_xml, write_voc_folder

    folder = tmp_path / "d"
    write_voc_folder(folder, "test", {"big": (300, 300, [("cat", (201, 201, 290, 280), 0)])})
    (folder / "Annotations" / "big.xml").write_text(voc_xml(150, 150, [("cat", (201, 201, 290, 280), 0)]))
    # A JPEG stored 120 wide and 300 high, whose EXIF says to rotate it: decoded, it is 300 wide, 120 high.
    stored = np.random.default_rng(0).integers(0, 255, (300, 120, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displaying
    Image.fromarray(stored).save(folder / "JPEGImages" / "turned.jpg", exif=exif)
    assert cv2.imread(str(folder / "JPEGImages" / "turned.jpg")).shape[:2] == (120, 300)
    (folder / "Annotations" / "turned.xml").write_text(voc_xml(120, 300, [("cat", (141, 83, 287, 110), 0)]))
    (folder / "ImageSets" / "Main" / "test.txt").write_text("big\nturned\n")
    with caplog.at_level(logging.WARNING):
        dataset = VOCFormatDataset([(folder, "test")], ["cat"])
    big, turned = dataset.pull_anno(0), dataset.pull_anno(1)
    assert (big.width, big.height) == (300, 300) and (turned.width, turned.height) == (300, 120)
    np.testing.assert_array_equal(big.boxes, [[200, 200, 289, 279]])  # not dropped, not clipped at 149
    np.testing.assert_array_equal(turned.boxes, [[140, 82, 286, 109]])  # not clipped at 119
    warnings = [r.getMessage() for r in caplog.records]
    assert any("big.xml: <size> says 150x150 but the image is 300x300" in w for w in warnings)
    assert any("turned.xml: <size> says 120x300 but the image is 300x120" in w for w in warnings)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("circle\nCircle\n", "repeats ['Circle', 'circle'] (names are matched case-insensitively)"),
        ("cat/dog\nbird\n", "class 'cat/dog' contains a path separator"),
    ],
)
def test_class_files_refuse_names_that_would_collide(tmp_path: Path, lines: str, message: str) -> None:
    from data.config import read_class_names

    (tmp_path / "classes.txt").write_text(lines)
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)").replace("[", "\\[")):
        read_class_names(tmp_path / "classes.txt")


def test_a_byte_order_mark_is_not_part_of_the_first_class(tmp_path: Path) -> None:
    from data.config import read_class_names

    (tmp_path / "classes.txt").write_bytes("circle\nsquare\n".encode("utf-8-sig"))
    assert read_class_names(tmp_path / "classes.txt") == ("circle", "square")


def test_split_files_hold_one_id_per_line(tmp_path: Path) -> None:
    from data.voc import VOCFormatDataset
    from tests.fixtures import write_voc_folder

    folder = tmp_path / "d"
    write_voc_folder(folder, "trainval", {"a": (40, 40, [])})
    (folder / "ImageSets" / "Main" / "trainval.txt").write_bytes("\ufeffa\nmy photo\n".encode())
    with pytest.raises(
        ValueError, match="trainval.txt, line 2: 'my photo' is not one image id; .*cannot contain spaces"
    ):
        VOCFormatDataset([(folder, "trainval")], ["cat"])
    (folder / "ImageSets" / "Main" / "trainval.txt").write_bytes("\ufeffa\n".encode())  # a BOM is not part of the id
    assert VOCFormatDataset([(folder, "trainval")], ["cat"]).ids == ["a"]


def test_project_must_be_a_writable_folder(tmp_path: Path, capsys, monkeypatch) -> None:  # cases 8, 9
    import errno

    import utils.runs

    (tmp_path / "afile").write_text("x")
    common = ["--dataset", "Shapes", "--dataset_root", str(tmp_path), "--weights", str(tmp_path / "none.pth")]
    status, err = cli(eval_script, [*common, "--project", str(tmp_path / "afile")], capsys)
    assert status == 2 and f"error: --project {tmp_path / 'afile'} is a file" in err

    def read_only(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(utils.runs.tempfile, "TemporaryFile", read_only)
    # eval.py says so before any detection work (here: before even reading the weights).
    status, err = cli(eval_script, [*common, "--project", str(tmp_path / "ro")], capsys)
    assert status == 2 and f"error: cannot write to {tmp_path / 'ro'} (Read-only file system)" in err


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_device_names_the_accepted_forms(device: str, tmp_path: Path, capsys) -> None:
    status, err = cli(
        eval_script, ["--dataset_root", str(tmp_path), "--device", device, "--project", str(tmp_path)], capsys
    )
    assert status == 2 and err.strip() == f"error: --device {device} is not a device; use auto, cpu, cuda or cuda:N"
