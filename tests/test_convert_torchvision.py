"""torchvision interchange: its ssd300_vgg16 and ssdlite320_mobilenet_v3_large checkpoints give the same detections
here as in torchvision, from the same image files; models of this project run in torchvision; anything else is refused
in one line. The torchvision models are built with random weights (weights=None, weights_backbone=None): nothing is
downloaded."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.io import read_image
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large
from torchvision.transforms.functional import convert_image_dtype

import inference
import train
from data.build import build_dataset
from data.config import DatasetPreset, coco_names_by_id
from ssd import build_ssd
from tests.fixtures import calibrate_batch_norm, write_coco, write_scenes
from utils.checkpoint import DetectorInfo, load_detector, read_checkpoint, save_checkpoint
from utils.cli import parse_args, run_cli
from utils.deploy import convert_torchvision
from utils.deploy.convert_torchvision import DESIGNS, from_torchvision, to_torchvision
from utils.evaluation.evaluate import evaluate
from utils.predict import Predictor, TorchRunner, load_runner, predict_dataset

# A landscape photo size, a portrait one and a square one.
SIZES = [(500, 375), (427, 640), (300, 300)]
# torchvision 0.29 deprecates its image decoders, which are the reference here.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_scenes(tmp_path_factory.mktemp("scenes"), SIZES, seed=3)


def torchvision_inputs(paths: list[Path]) -> list[torch.Tensor]:
    """The images as torchvision's detection presets give them: decoded RGB, convert_image_dtype to [0, 1]."""
    return [convert_image_dtype(read_image(str(path)), torch.float) for path in paths]


def calibrated(model: nn.Module, paths: list[Path]) -> nn.Module:
    """``model`` (a torchvision SSD) with the BatchNorm statistics of ``paths``: scores that spread like a trained
    model's, instead of the flat ones of a fresh SSDLite."""
    batch = model.transform(torchvision_inputs(paths))[0].tensors
    calibrate_batch_norm(model, lambda: model.head(list(model.backbone(batch).values())))
    return model


def torchvision_ssdlite(paths: list[Path], reduced_tail: bool = True, num_classes: int = 91) -> nn.Module:
    """torchvision's ssdlite320_mobilenet_v3_large, random. The full tail is what its builder makes with ImageNet
    weights (a download), so that one is assembled here from the builder's own parts, as the builder does."""
    torch.manual_seed(1)
    if reduced_tail:
        return calibrated(
            ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes), paths
        )
    from torchvision.models.detection import _utils
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor

    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    base = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm_layer, reduced_tail=False)
    backbone = _mobilenet_extractor(base, 6, norm_layer)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    channels = _utils.retrieve_out_channels(backbone, (320, 320))
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes, norm_layer)
    model = SSD(backbone, anchors, (320, 320), num_classes, head=head, score_thresh=0.001, nms_thresh=0.55,
                detections_per_img=300, topk_candidates=300, image_mean=[0.5] * 3, image_std=[0.5] * 3)  # fmt: skip
    return calibrated(model, paths)


def torchvision_vgg() -> nn.Module:
    torch.manual_seed(0)
    return ssd300_vgg16(weights=None, weights_backbone=None).eval()


@pytest.fixture(scope="module")
def vgg(scenes: list[Path]) -> nn.Module:
    return torchvision_vgg()


@pytest.fixture(scope="module")
def lite(scenes: list[Path]) -> nn.Module:
    return torchvision_ssdlite(scenes)


def torchvision_detections(model: nn.Module, paths: list[Path]) -> list[dict[str, np.ndarray]]:
    with torch.no_grad():
        found = model(torchvision_inputs(paths))
    return [{key: value.numpy() for key, value in image.items()} for image in found]


def assert_same_detections(ours: list[dict[str, np.ndarray]], theirs: list[dict[str, np.ndarray]]) -> None:
    """The same detections: one for one, each with the same label after the mapping (this project's label + 1 is
    torchvision's), a box within 1e-3 px and a score within 1e-5 (matched greedily, nearest box first, so that
    equal or rounded scores in any order pair up)."""
    for mine, reference in zip(ours, theirs, strict=True):
        labels = reference["labels"] - 1
        assert len(mine["labels"]) == len(labels) > 0
        unused = np.ones(len(labels), dtype=bool)
        for box, score, label in zip(mine["boxes"], mine["scores"], mine["labels"], strict=True):
            distance = np.abs(reference["boxes"] - box).max(axis=1)
            fits = unused & (labels == label) & (np.abs(reference["scores"] - score) <= 1e-5) & (distance <= 1e-3)
            assert fits.any(), f"no torchvision detection matches label {label}, score {score}, box {box}"
            unused[np.flatnonzero(fits)[np.argmin(distance[fits])]] = False


def convert(tv_model: nn.Module, folder: Path, name: str) -> Path:
    """torchvision's state_dict in a file, through the command line; returns the checkpoint it writes."""
    source, output = folder / f"{name}.pth", folder / f"{name}_converted.pth"
    torch.save(tv_model.state_dict(), source)
    status = run_cli(convert_torchvision.main, convert_torchvision.get_args_parser(),
                     ["--input", str(source), "--output", str(output)])  # fmt: skip
    assert status == 0
    return output


@pytest.mark.parametrize("which", ["vgg", "lite"])
def test_converted_checkpoints_give_torchvisions_detections(
    which: str, vgg: nn.Module, lite: nn.Module, scenes: list[Path], tmp_path: Path
) -> None:
    tv_model = vgg if which == "vgg" else lite
    scenes = scenes[:2] if which == "vgg" else scenes  # VGG-16 costs seconds per image on a CPU
    checkpoint = convert(tv_model, tmp_path, which)
    theirs = torchvision_detections(tv_model, scenes)
    # inference.py's path: the checkpoint's runner and Predictor on the decoded files
    predictor = Predictor(load_runner(checkpoint, torch.device("cpu")))
    assert_same_detections(predictor([cv2.imread(str(path)) for path in scenes]), theirs)
    if which == "vgg":
        return
    # inference.py itself: predictions.json (boxes to 0.001 px, scores to 6 decimals) names the classes
    argv = ["--weights", str(checkpoint), "--source", str(scenes[0].parent), "--save_json", "--thresh", "0",
            "--device", "cpu", "--project", str(tmp_path / "runs")]  # fmt: skip
    assert run_cli(inference.main, inference.get_args_parser(), argv) == 0
    records = json.loads((tmp_path / "runs" / "exp1" / "predictions.json").read_text())
    names = list(predictor.runner.info.class_names)
    by_source = {Path(record["source"]).name: record for record in records}
    written = [{"boxes": np.array(by_source[p.name]["boxes"]), "scores": np.array(by_source[p.name]["scores"]),
                "labels": np.array([names.index(n) for n in by_source[p.name]["labels"]])} for p in scenes]  # fmt: skip
    assert_same_detections(written, theirs)
    # eval.py's path: a dataset of the same files through the loader, in one batch
    folder = tmp_path / "voc"
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    (folder / "JPEGImages").mkdir()
    (folder / "Annotations").mkdir()
    for path in scenes:
        (folder / "JPEGImages" / path.name).write_bytes(path.read_bytes())
        width, height = (int(v) for v in path.stem.split("_")[1].split("x"))
        (folder / "Annotations" / f"{path.stem}.xml").write_text(
            f"<annotation><size><width>{width}</width><height>{height}</height></size><object><name>person</name>"
            "<difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
            "</object></annotation>"
        )
    (folder / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{p.stem}\n" for p in scenes))
    dataset = build_dataset(DatasetPreset("Custom", ("person",)), folder, "test", predictor.transform)
    sizes = [(a.width, a.height) for a in map(dataset.pull_anno, range(len(dataset)))]
    assert_same_detections(predict_dataset(predictor, dataset, sizes, batch_size=3, progress=False), theirs)


def test_what_a_converted_checkpoint_carries(lite: nn.Module, tmp_path: Path) -> None:
    model, info = load_detector(convert(lite, tmp_path, "lite"))
    assert info.config.backbone == "mobilenet_v3_large" and info.config.reduced_tail and info.num_classes == 91
    assert (
        info.class_names == coco_names_by_id()
        and info.class_names[0] == "person"
        and info.class_names[11] == "unused_12"
    )
    assert info.preprocess.resize == "torchvision" and info.preprocess.mean == (127.5,) * 3
    settings = info.postprocess
    assert (settings.conf_thresh, settings.nms_thresh, settings.top_k, settings.keep_top_k) == (0.001, 0.55, 300, 300)
    assert settings.clip_boxes and settings.decode_clamp == pytest.approx(np.log(1000 / 16))
    # the tensors are torchvision's, renamed
    assert torch.equal(model.conf[3][1].weight, lite.state_dict()["head.classification_head.module_list.3.1.weight"])


def test_full_tail_ssdlite_is_recognised_and_converted(scenes: list[Path]) -> None:
    tv_model = torchvision_ssdlite(scenes, reduced_tail=False)
    model, info = from_torchvision(tv_model.state_dict())
    assert info.config.backbone == "mobilenet_v3_large" and not info.config.reduced_tail
    predictor = Predictor(TorchRunner(model, info))
    assert_same_detections(predictor([cv2.imread(str(p)) for p in scenes]), torchvision_detections(tv_model, scenes))


@pytest.mark.parametrize("which", ["vgg", "lite"])
def test_round_trip_gives_torchvisions_state_dict(which: str, vgg: nn.Module, lite: nn.Module, tmp_path: Path) -> None:
    tv_model = vgg if which == "vgg" else lite
    checkpoint = convert(tv_model, tmp_path, which)
    back = tmp_path / "back.pth"
    status = run_cli(convert_torchvision.main, convert_torchvision.get_args_parser(),
                     ["--to", "torchvision", "--input", str(checkpoint), "--output", str(back)])  # fmt: skip
    assert status == 0
    state, original = torch.load(back, weights_only=True), tv_model.state_dict()
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in original)
    assert back.with_suffix(".classes.txt").read_text().splitlines() == list(coco_names_by_id())


def build_from_printout(code: str, path: Path) -> nn.Module:
    """Run the line ``--to torchvision`` prints, as a user would paste it."""
    namespace = {"torch": torch, "torchvision": torchvision}
    exec(code.replace("<output>", repr(str(path))), namespace)  # noqa: S102 - the converter's own output
    return namespace["model"].eval()


@pytest.mark.parametrize("backbone", ["vgg16", "mobilenet_v3_large"])
def test_a_model_of_this_project_runs_in_torchvision(backbone: str, scenes: list[Path], tmp_path: Path) -> None:
    # A 5-class model as train.py makes it (random weights), with torchvision's test-time semantics in its checkpoint:
    # the torchvision model built as the converter says gives its detections.
    torch.manual_seed(2)
    lite = backbone == "mobilenet_v3_large"
    scenes = scenes if lite else scenes[:1]
    model = build_ssd(num_classes=5, backbone=backbone, priors=None if lite else "TORCHVISION", reduced_tail=lite)
    if lite:
        batch = torch.from_numpy(np.stack([DESIGNS["ssdlite320_mobilenet_v3_large"].preprocess().transform(320)(
            cv2.imread(str(p)))[0] for p in scenes]))  # fmt: skip
        calibrate_batch_norm(model, lambda: model(batch))
    design = DESIGNS["ssdlite320_mobilenet_v3_large" if lite else "ssd300_vgg16"]
    info = DetectorInfo(model.config, ("a", "b", "c", "d"), design.preprocess(), design.settings)
    save_checkpoint(tmp_path / "ours.pth", model, info)
    state, code, notes = to_torchvision(*load_detector(tmp_path / "ours.pth"))
    assert not notes
    torch.save(state, tmp_path / "tv.pth")
    tv_model = build_from_printout(code, tmp_path / "tv.pth")
    ours = Predictor(TorchRunner(model.eval(), info))([cv2.imread(str(p)) for p in scenes])
    assert_same_detections(ours, torchvision_detections(tv_model, scenes))


def test_voc_priors_run_in_torchvision_with_their_default_boxes(tmp_path: Path) -> None:
    # ssd.pytorch's VOC priors: torchvision builds them with other scales; it cannot clip their centres as
    # ssd.pytorch does, which the converter says.
    model = build_ssd(300, 21).eval()
    state, code, notes = to_torchvision(model, DetectorInfo(model.config, tuple("abcdefghijklmnopqrst")))
    assert len(notes) == 2 and "does not clip prior centres" in notes[0]
    torch.save(state, tmp_path / "tv.pth")
    tv_model = build_from_printout(code, tmp_path / "tv.pth")
    grids = [[f, f] for f in model.config.priors.feature_maps]
    theirs = tv_model.anchor_generator._grid_default_boxes(grids, [300, 300], torch.float32)
    outside = (theirs[:, :2] > 1).any(dim=1)
    assert outside.sum() == 114 and torch.allclose(theirs[~outside], model.priors[~outside], atol=1e-7, rtol=0)
    assert all(torch.equal(tv_model.state_dict()[k], v) for k, v in state.items())


def one_error_line(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    status = run_cli(convert_torchvision.main, convert_torchvision.get_args_parser(), argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_other_files_are_refused_in_one_line(vgg: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Recognised by keys and shapes, not by name: torchvision's VGG under an SSDLite file name converts as what it is.
    misnamed = tmp_path / "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
    torch.save(vgg.state_dict(), misnamed)
    assert run_cli(convert_torchvision.main, convert_torchvision.get_args_parser(),
                   ["--input", str(misnamed), "--output", str(tmp_path / "out.pth")]) == 0  # fmt: skip
    assert load_detector(tmp_path / "out.pth")[1].config.backbone == "vgg16"
    capsys.readouterr()
    resnet = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), resnet)
    line = one_error_line(["--input", str(resnet), "--output", str(tmp_path / "x.pth")], capsys)
    assert "is not a state_dict of torchvision's ssd300_vgg16 or ssdlite320_mobilenet_v3_large" in line
    truncated = {k: v for k, v in vgg.state_dict().items() if "extra.4" not in k}  # a layer short
    torch.save(truncated, tmp_path / "short.pth")
    assert "is not a state_dict" in one_error_line(
        ["--input", str(tmp_path / "short.pth"), "--output", "x.pth"], capsys
    )
    line = one_error_line(["--input", str(tmp_path / "out.pth"), "--output", str(tmp_path / "x.pth")], capsys)
    assert "already a checkpoint of this project; to go the other way pass --to torchvision" in line
    assert not (tmp_path / "x.pth").exists()
    ours = tmp_path / "resnet_ssd.pth"
    model = build_ssd(backbone="resnet50", num_classes=3)
    save_checkpoint(ours, model, DetectorInfo(model.config, ("a", "b")))
    line = one_error_line(["--to", "torchvision", "--input", str(ours), "--output", str(tmp_path / "x.pth")], capsys)
    assert "is a resnet50 SSD300" in line and "torchvision has only ssd300_vgg16" in line


def test_a_torchvision_file_given_as_weights_says_to_convert(vgg: nn.Module, tmp_path: Path) -> None:
    torch.save(vgg.state_dict(), tmp_path / "ssd300_vgg16_coco.pth")
    with pytest.raises(ValueError, match="is a torchvision SSD state_dict; convert it first: python -m utils.deploy.convert_torchvision"):
        load_detector(tmp_path / "ssd300_vgg16_coco.pth")


def test_a_coco_model_is_scored_on_cocos_classes(lite: nn.Module, scenes: list[Path], tmp_path: Path) -> None:
    # 91 outputs by category id against a COCO file of two categories: detections map by name, others are dropped.
    model, info = from_torchvision(lite.state_dict())
    root = tmp_path / "coco"
    images = [{"id": 7, "file_name": "a.png", "width": 500, "height": 375}]
    annotations = [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 20, 100, 80], "area": 8000, "iscrowd": 0}]
    write_coco(root, "val2017", images, annotations, [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}])
    (root / "val2017" / "a.png").write_bytes(scenes[0].read_bytes())
    from data.coco import COCODetection

    predictor = Predictor(TorchRunner(model, info))
    dataset = COCODetection(root, "val2017", predictor.transform)
    result = evaluate(predictor, dataset, metric="coco", progress=False)
    every = predictor([cv2.imread(str(scenes[0]))])[0]
    kept = np.isin(every["labels"], [0, 2])  # person (id 1) and car (id 3)
    assert result["num_detections"] == kept.sum() > 0
    assert {r["category_id"] for r in result["coco_results"]} <= {1, 3}
    assert set(result["ap"]) == {"person", "car"}


def test_finetuning_a_converted_coco_model(lite: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from data.shapes import generate

    generate(tmp_path / "shapes", 8, 4, seed=2)
    checkpoint = convert(lite, tmp_path, "lite")
    argv = ["--dataset", "Shapes", "--dataset_root", str(tmp_path / "shapes"), "--finetune", str(checkpoint),
            "--batch_size", "4", "--num_workers", "0", "--optimizer", "adamw", "--lr", "1e-12", "--device", "cpu",
            "--end_epoch", "1", "--eval_interval", "1", "--no_channels_last", "--project", str(tmp_path / "runs")]  # fmt: skip
    assert train.main(parse_args(train.get_args_parser(), argv)) == 0
    model, info = load_detector(tmp_path / "runs" / "exp1" / "last.pth")
    # the converted network, normalisation and test settings, with 4 classes now; resized as training resizes
    assert info.config.backbone == "mobilenet_v3_large" and info.config.reduced_tail and info.num_classes == 5
    assert info.preprocess.mean == (127.5,) * 3 and info.preprocess.resize == "opencv"
    assert info.postprocess.clip_boxes and info.postprocess.top_k == 300
    source = lite.state_dict()
    torch.testing.assert_close(model.state_dict()["base.1.0.1.0.weight"], source["backbone.features.1.0.1.0.weight"])
    assert model.conf[0][1].weight.shape[0] == 6 * 5
    log = read_checkpoint(tmp_path / "runs" / "exp1" / "last.pth")["args"]
    assert log["backbone"] == "mobilenet_v3_large" and log["size"] == 320 and log["priors"] == "SSDLITE"
    # A --backbone that does not fit the checkpoint: one line.
    status = run_cli(train.main, train.get_args_parser(), [*argv, "--backbone", "vgg16"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        status == 2 and lines[-1].startswith("error: --finetune") and "so --backbone vgg16 does not fit it" in lines[-1]
    )
