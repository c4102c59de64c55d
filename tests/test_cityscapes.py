"""The Cityscapes -> VOC converter on a gtFine fixture with clear and foggy PNG trees."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.build import build_dataset
from data.config import get_preset
from data.unlabeled import TARGET_SPLIT, UnlabeledImages
from tests.fixtures import write_cityscapes_image, write_gtfine
from utils.augmentations import TargetViews
from utils.prepare_cityscapes_to_voc import get_args_parser, main

ROOT = Path(__file__).resolve().parent.parent
W, H = 64, 32


@pytest.fixture
def cityscapes(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    train_objects = [
        {"label": "car", "polygon": [[10, 5], [30, 4], [28, 20], [12, 22]]},
        {"label": "person", "polygon": [[-5, 10], [6, 8], [4, 40]]},  # runs off the image: clipped
        {"label": "road", "polygon": [[0, 0], [63, 0], [63, 31]]},  # not a detection class
        {"label": "cargroup", "polygon": [[40, 5], [50, 5], [50, 15]]},  # crowd: skipped
        {"label": "bicycle", "polygon": [[20, 10], [20, 10], [20, 18]]},  # zero width: dropped
        {"label": "rider", "polygon": []},
    ]
    write_gtfine(root, "train", "aachen", "aachen_000000_000019", W, H, train_objects)
    write_gtfine(root, "train", "bremen", "bremen_000001_000019", W, H, [{"label": "bus", "polygon": [[1, 1], [9, 9]]}])
    write_gtfine(
        root, "val", "frankfurt", "frankfurt_000000_000294", W, H, [{"label": "truck", "polygon": [[2, 3], [40, 30]]}]
    )
    for split, city, image_id in (("train", "aachen", "aachen_000000_000019"), ("train", "bremen", "bremen_000001_000019"),
                                  ("val", "frankfurt", "frankfurt_000000_000294")):  # fmt: skip
        write_cityscapes_image(root, "leftImg8bit", split, city, f"{image_id}_leftImg8bit.png", W, H)
        if image_id != "bremen_000001_000019":  # this foggy image is missing
            write_cityscapes_image(
                root, "leftImg8bit_foggy", split, city, f"{image_id}_leftImg8bit_foggy_beta_0.02.png", W, H
            )
    return root


def run(cityscapes: Path, tmp_path: Path) -> int:
    args = get_args_parser().parse_args(
        [
            "--cityscapes-root",
            str(cityscapes),
            "--out-dir",
            str(tmp_path / "cs"),
            "--foggy-out-dir",
            str(tmp_path / "foggy"),
        ]
    )
    return main(args)


def test_conversion_writes_loadable_voc_folders(
    cityscapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run(cityscapes, tmp_path) == 1  # a foggy image is missing
    captured = capsys.readouterr()
    assert "bremen_000001_000019_leftImg8bit_foggy_beta_0.02.png" in captured.err
    assert "train (trainval): person 1, rider 0, car 1, truck 0, bus 1" in captured.out

    clear = build_dataset(get_preset("Cityscapes"), tmp_path / "cs", "train")
    assert clear.ids == ["aachen_000000_000019", "bremen_000001_000019"]
    anno = clear.pull_anno(0)
    names = [clear.class_names[i] for i in anno.labels]
    assert names == ["car", "person"]
    np.testing.assert_array_equal(anno.boxes, [[10, 4, 30, 22], [0, 8, 6, 31]])
    assert clear.pull_image(0).shape == (H, W, 3)
    test = build_dataset(get_preset("Cityscapes"), tmp_path / "cs", "test")
    assert test.ids == ["frankfurt_000000_000294"]

    foggy = build_dataset(get_preset("FoggyCityscapes"), tmp_path / "foggy", "train")
    assert foggy.ids == ["aachen_000000_000019"]
    np.testing.assert_array_equal(foggy.pull_anno(0).boxes, anno.boxes)
    foggy_source = cityscapes / "leftImg8bit_foggy/train/aachen/aachen_000000_000019_leftImg8bit_foggy_beta_0.02.png"
    assert foggy.image_path(0).read_bytes() == foggy_source.read_bytes()
    # The domain-adaptation target: Foggy Cityscapes train at beta 0.02 is the foggy folder's trainval split, read
    # by train.py --target_root without its annotations.
    shutil.rmtree(tmp_path / "foggy" / "Annotations")
    target = UnlabeledImages([(tmp_path / "foggy", TARGET_SPLIT)], TargetViews(300))
    assert [p.name for p in target.paths] == ["aachen_000000_000019.png"] and target[0].shape == (1, 3, 300, 300)


def test_rerun_is_safe(cityscapes: Path, tmp_path: Path) -> None:
    run(cityscapes, tmp_path)
    first = sorted(p.read_bytes() for p in (tmp_path / "cs").rglob("*") if p.is_file())
    run(cityscapes, tmp_path)
    assert sorted(p.read_bytes() for p in (tmp_path / "cs").rglob("*") if p.is_file()) == first
    assert not list((tmp_path / "cs").rglob("*.tmp"))


@pytest.mark.parametrize("how", ["file", "module"])
def test_cli_runs_from_any_directory_with_relative_paths(cityscapes: Path, tmp_path: Path, how: str) -> None:
    """`python -m utils.prepare_cityscapes_to_voc` and the fork's `python utils/prepare_cityscapes_to_voc.py`
    (which re-runs itself as the module) both work in the user's directory, with the user's arguments."""
    work = tmp_path / "work"
    work.mkdir()
    args = ["--cityscapes-root", "../cityscapes", "--out-dir", "cs", "--foggy-out-dir", "foggy", "--beta", "0.02"]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # the repository is not on it
    if how == "file":
        launch = [str(ROOT / "utils" / "prepare_cityscapes_to_voc.py")]
    else:
        launch, env["PYTHONPATH"] = ["-m", "utils.prepare_cityscapes_to_voc"], str(ROOT)
    result = subprocess.run([sys.executable, *launch, *args], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr  # the missing foggy image
    assert "train (trainval): person 1, rider 0, car 1, truck 0, bus 1" in result.stdout
    trainval = (work / "cs/ImageSets/Main/trainval.txt").read_text().split()
    assert trainval == ["aachen_000000_000019", "bremen_000001_000019"]
    assert (work / "foggy/ImageSets/Main/test.txt").read_text().split() == ["frankfurt_000000_000294"]


def test_cli_without_gtfine_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "utils.prepare_cityscapes_to_voc", "--cityscapes-root", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'gtFine'} does not exist; unzip gtFine_trainvaltest.zip under --cityscapes-root"
    ]
