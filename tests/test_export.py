"""Deployment: end-to-end ONNX with NMS in the graph, the torch.export program, INT8, float16, preprocessing in the
graph, OpenCV's DNN module, and every exported kind through inference.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import inference
from data.config import SHAPES_CLASSES
from layers.detection import Detect, DetectSettings, PaddedDetect
from ssd import SSD, build_ssd
from tests.fixtures import oracle_ssd, save_detector
from utils.checkpoint import DetectorInfo, load_detector
from utils.cli import run_cli
from utils.deploy.export import (
    ExportSpec,
    check_export,
    compare_detections,
    export_onnx,
    export_program,
    quantize_int8,
)
from utils.predict import OnnxRunner, Predictor, ProgramRunner, TorchRunner, onnx_providers

ROOT = Path(__file__).resolve().parent.parent
MODULE_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # python -m utils.deploy.export from another folder
SETTINGS = DetectSettings(conf_thresh=0.05, nms_thresh=0.45, top_k=100, keep_top_k=50)


@pytest.fixture(scope="module")
def peaked() -> tuple[SSD, DetectorInfo]:
    """Random weights whose class scores spread out (a near-uniform softmax makes every cut a tie)."""
    torch.manual_seed(0)
    model = build_ssd(300, len(SHAPES_CLASSES) + 1, width=0.125, batch_norm=True).eval()  # Xavier-initialised
    with torch.no_grad():
        for head in model.conf:
            head.weight.mul_(0.3)
    return model, DetectorInfo(model.config, SHAPES_CLASSES, postprocess=SETTINGS)


@pytest.fixture(scope="module")
def exported(peaked, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    model, info = peaked
    folder = tmp_path_factory.mktemp("exported")
    paths = {"raw": folder / "raw.onnx", "nms": folder / "nms.onnx", "program": folder / "nms.pt2"}
    export_onnx(model, info, paths["raw"])
    export_onnx(model, info, paths["nms"], ExportSpec("detections", SETTINGS))
    export_program(model, info, paths["program"], ExportSpec("detections", SETTINGS))
    return paths


def images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 300, 300, generator=torch.Generator().manual_seed(seed)) * 50


def test_padded_detect_equals_detect(peaked) -> None:
    model, _ = peaked
    with torch.no_grad():
        loc, conf = model(images(3, 1))
    for settings in (SETTINGS, DetectSettings(), DetectSettings(top_k=30, keep_top_k=None)):
        expected = Detect.from_settings(model.num_classes, settings)(loc, conf, model.priors)
        num, boxes, scores, labels = PaddedDetect(model.num_classes, settings, model.priors)(loc, conf)
        assert boxes.shape[1] == (settings.keep_top_k or (model.num_classes - 1) * settings.top_k)
        for i, want in enumerate(expected):
            k = int(num[i])
            assert k == len(want["scores"]) and (labels[i, k:] == -1).all() and (scores[i, k:] == 0).all()
            got = {"boxes": boxes[i, :k], "scores": scores[i, :k], "labels": labels[i, :k] + 1}
            # The same detections up to the order of equal scores; of candidates whose score equals the last one
            # kept under the cap, which are kept is arbitrary (Detect keeps the lower priors).
            cut = want["scores"].min() if settings.keep_top_k and k == settings.keep_top_k else -1.0
            above = [row for row in by_score_label_box(got) if row[0] > cut]
            assert above == [row for row in by_score_label_box(want) if row[0] > cut]


def by_score_label_box(found: dict[str, torch.Tensor]) -> list[tuple]:
    rows = zip(found["scores"].tolist(), found["labels"].tolist(), map(tuple, found["boxes"].tolist()), strict=True)
    return sorted(rows, key=lambda row: (-row[0], row[1], row[2]))


def test_end_to_end_onnx_gives_detects_detections(peaked, exported) -> None:
    model, info = peaked
    onnx_runner = OnnxRunner(exported["nms"])
    assert onnx_runner.returns_detections and onnx_runner.info.postprocess == SETTINGS
    onnx_predictor = Predictor(onnx_runner, SETTINGS)
    torch_predictor = Predictor(TorchRunner(model, info), SETTINGS)
    for batch in (1, 3):  # one InferenceSession for both: the batch is dynamic
        num, boxes, _, labels = onnx_runner.session.run(None, {"images": images(batch, batch).numpy()})
        assert num.shape == (batch,) and boxes.shape == (batch, SETTINGS.keep_top_k, 4) and labels.dtype == np.int64
        got = onnx_predictor.detect_batch(images(batch, batch), [(300, 300)] * batch)
        with torch.inference_mode():
            expected = torch_predictor.detect_batch(images(batch, batch), [(300, 300)] * batch)
        for a, b in zip(expected, got, strict=True):
            diffs = compare_detections(a, b, SETTINGS, (300, 300))
            assert len(a["scores"]) > 0 and diffs["differ"] == 0
            assert diffs["scores"] <= 1e-5 and diffs["boxes"] <= 1e-4 * 300  # 1e-4 of the image


def test_torch_export_program_gives_detects_detections(peaked, exported) -> None:
    model, info = peaked
    diffs = check_export(model, info, exported["program"], images(2, 5))
    assert diffs["differ"] == 0 and diffs["scores"] <= 1e-5 and diffs["boxes"] <= 1e-4 * 300


def test_raw_onnx_and_metadata_round_trip(peaked, exported) -> None:
    model, info = peaked
    runner = OnnxRunner(exported["raw"])
    assert runner.info == info and not runner.returns_detections and runner.input_kind == "preprocessed"
    diffs = check_export(model, info, exported["raw"], images(2, 7))
    assert diffs["loc"] < 1e-4 and diffs["conf"] < 1e-4 and diffs["differ"] == 0


def test_compare_detections_excuses_only_ambiguous_differences() -> None:
    settings = DetectSettings(conf_thresh=0.1, nms_thresh=0.5, keep_top_k=None)
    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    a = {"boxes": box, "scores": np.array([0.9]), "labels": np.array([0])}
    missing = {"boxes": box[:0], "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
    assert compare_detections(a, a, settings, (300, 300)) == {"boxes": 0.0, "scores": 0.0, "differ": 0.0}
    assert compare_detections(a, missing, settings, (300, 300))["differ"] == 1.0
    at_threshold = {"boxes": box, "scores": np.array([0.1 + 1e-7]), "labels": np.array([0])}
    assert compare_detections(at_threshold, missing, settings, (300, 300))["differ"] == 0.0
    # A box of IoU 0.5 (up to 1e-6) with a box of its class: NMS in float32 may keep or drop it.
    pair = {"boxes": np.array([[0.0, 0, 10, 10], [0, 0, 5.00001, 10]]), "scores": np.array([0.9, 0.8]),
            "labels": np.array([0, 0])}  # fmt: skip
    assert compare_detections(pair, a, settings, (300, 300))["differ"] == 0.0


def test_preprocessing_in_the_graph_takes_images(tmp_path: Path) -> None:
    model = oracle_ssd(len(SHAPES_CLASSES) + 1, (0.25, 0.2, 0.75, 0.6), 2)
    info = DetectorInfo(model.config, SHAPES_CLASSES)
    export_onnx(model, info, tmp_path / "e2e.onnx", ExportSpec("detections", include_preprocess=True))
    runner = OnnxRunner(tmp_path / "e2e.onnx")
    assert runner.input_kind == "uint8_bgr_hwc"
    scenes = [np.full((360, 640, 3), 128, np.uint8), np.full((100, 80, 3), 30, np.uint8)]
    found = Predictor(runner)(scenes)
    expected = Predictor(TorchRunner(model, info))(scenes)
    for got, want in zip(found, expected, strict=True):
        assert got["labels"].tolist() == want["labels"].tolist() == [1]
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-2)


def test_int8_export_runs_and_overlaps_float32(tmp_path: Path) -> None:
    model = oracle_ssd(len(SHAPES_CLASSES) + 1, (0.25, 0.2, 0.75, 0.6), 2)
    info = DetectorInfo(model.config, SHAPES_CLASSES)
    export_onnx(model, info, tmp_path / "fp32.onnx", ExportSpec("detections"))
    calibration = (np.random.default_rng(k).normal(0, 50, (3, 300, 300)).astype(np.float32) for k in range(4))
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration)
    runner = OnnxRunner(tmp_path / "int8.onnx")
    assert runner.precision == "int8" and runner.returns_detections
    ops = {node.op_type for node in __import__("onnx").load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "NonMaxSuppression"} <= ops
    found = Predictor(runner)([np.full((300, 300, 3), 128, np.uint8)])[0]
    assert found["labels"][0] == 1 and np.abs(found["boxes"][0] - [75, 60, 225, 180]).max() < 6  # 2% of the image


def test_opencv_dnn_runs_the_raw_onnx(peaked, tmp_path: Path) -> None:
    model, info = peaked
    export_onnx(model, info, tmp_path / "static.onnx", ExportSpec(static_batch=1))  # cv2.dnn: a fixed batch
    net = cv2.dnn.readNetFromONNX(str(tmp_path / "static.onnx"))
    batch = images(1, 11)
    net.setInput(batch.numpy())
    loc, conf = (net.forward(name) for name in ("loc", "conf"))
    with torch.no_grad():
        want_loc, want_conf = model(batch)
    np.testing.assert_allclose(loc, want_loc.numpy(), atol=1e-3)
    np.testing.assert_allclose(conf, want_conf.numpy(), atol=1e-3)


def test_every_exported_kind_runs_in_inference(peaked, exported, tmp_path: Path, capsys) -> None:
    model, info = peaked
    cv2.imwrite(str(tmp_path / "scene.jpg"), np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8))
    save_detector(model, tmp_path / "m.pth", SHAPES_CLASSES)
    records = {}
    for name, weights in {"checkpoint": tmp_path / "m.pth", **exported}.items():
        argv = ["--weights", str(weights), "--source", str(tmp_path / "scene.jpg"), "--save_json", "--device", "cpu",
                "--project", str(tmp_path / "runs"), "--name", name, "--thresh", "0.2", *(
                    ["--conf_thresh", "0.05", "--top_k", "100", "--keep_top_k", "50"] if name == "checkpoint" else [])]  # fmt: skip
        assert run_cli(inference.main, inference.get_args_parser(), argv) == 0, capsys.readouterr().err
        records[name] = json.loads((tmp_path / "runs" / f"{name}1" / "predictions.json").read_text())[0]
    for name, record in records.items():
        assert record["labels"] == records["checkpoint"]["labels"], name
        np.testing.assert_allclose(record["boxes"], records["checkpoint"]["boxes"], atol=0.01, err_msg=name)


def test_export_cli_checks_and_names_bad_files(tmp_path: Path) -> None:
    weights = tmp_path / "oracle.pth"
    save_detector(oracle_ssd(len(SHAPES_CLASSES) + 1, (0.25, 0.2, 0.75, 0.6), 2), weights, SHAPES_CLASSES)
    result = subprocess.run([sys.executable, "-m", "utils.deploy.export", "--weights", str(weights), "--nms", "--output",
                             str(tmp_path / "m.onnx")], cwd=tmp_path, capture_output=True, text=True, env=MODULE_ENV)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(ok)" in result.stdout and "0 in one only" in result.stdout
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="broken.onnx is not a loadable ONNX model"):
        OnnxRunner(tmp_path / "broken.onnx")
    foreign = tmp_path / "foreign.onnx"
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])  # fmt: skip
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(ValueError, match="foreign.onnx lacks this project's metadata"):
        OnnxRunner(foreign)
    with pytest.raises(ValueError, match="is not a torch.export program"):
        ProgramRunner(tmp_path / "broken.onnx")
    model, info = load_detector(weights)
    with pytest.raises(ValueError, match="--nms is not available for --format torchscript"):
        from utils.deploy.export import export_torchscript

        export_torchscript(model, info, tmp_path / "m.pt", ExportSpec("detections"))


def test_onnx_providers_choose_cuda_only_when_asked_and_available() -> None:
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers(torch.device("cuda"), both) == both
    assert onnx_providers(torch.device("cpu"), both) == ["CPUExecutionProvider"]
    assert onnx_providers(torch.device("cuda"), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_torchscript_export_still_works(tmp_path: Path) -> None:
    weights = tmp_path / "oracle.pth"
    save_detector(oracle_ssd(len(SHAPES_CLASSES) + 1, (0.25, 0.2, 0.75, 0.6), 2), weights, SHAPES_CLASSES)
    result = subprocess.run([sys.executable, "-m", "utils.deploy.export", "--weights", str(weights), "--format", "torchscript",
                             "--decoded", "--output", str(tmp_path / "m.pt")], cwd=tmp_path, capture_output=True,
                            text=True, env=MODULE_ENV)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "deprecated" in result.stdout
    extra = {"class_names": "", "outputs": ""}
    module = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    boxes, scores = module(torch.zeros(1, 3, 300, 300))
    assert json.loads(extra["class_names"]) == list(SHAPES_CLASSES) and extra["outputs"] == b"boxes,scores"
    best = scores[0, :, 1:].max(dim=-1).values.argmax()
    torch.testing.assert_close(boxes[0, best], torch.tensor([0.25, 0.2, 0.75, 0.6]), atol=1e-4, rtol=0)


def test_half_precision_graph_has_float16_weights_and_runs(tmp_path: Path) -> None:
    import onnx

    model = oracle_ssd(len(SHAPES_CLASSES) + 1, (0.25, 0.2, 0.75, 0.6), 2)
    info = DetectorInfo(model.config, SHAPES_CLASSES)
    export_onnx(model, info, tmp_path / "half.onnx", ExportSpec("detections", half=True))
    weights = onnx.load(str(tmp_path / "half.onnx")).graph.initializer
    assert {w.data_type for w in weights if len(w.dims) == 4} == {onnx.TensorProto.FLOAT16}  # the conv kernels
    runner = OnnxRunner(tmp_path / "half.onnx")
    assert runner.precision == "fp16"
    found = Predictor(runner)([np.full((300, 300, 3), 128, np.uint8)])[0]
    assert found["labels"][0] == 1 and np.abs(found["boxes"][0] - [75, 60, 225, 180]).max() < 1


def test_eval_scores_exported_models_like_the_checkpoint(tmp_path: Path, capsys) -> None:
    import eval as eval_script
    from tests.test_eval import BOX, fixture_folder

    model = oracle_ssd(len(SHAPES_CLASSES) + 1, BOX, 1 + SHAPES_CLASSES.index("square"))
    info = DetectorInfo(model.config, SHAPES_CLASSES)
    save_detector(model, tmp_path / "m.pth", SHAPES_CLASSES)
    export_onnx(model, info, tmp_path / "raw.onnx")
    export_onnx(model, info, tmp_path / "nms.onnx", ExportSpec("detections"))
    folder = fixture_folder(tmp_path)
    maps = {}
    for weights in ("m.pth", "raw.onnx", "nms.onnx"):
        argv = ["--weights", str(tmp_path / weights), "--dataset", "Shapes", "--dataset_root", str(folder),
                "--num_workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs"), "--name", weights]  # fmt: skip
        assert run_cli(eval_script.main, eval_script.get_args_parser(), argv) == 0
        maps[weights] = json.loads((tmp_path / "runs" / f"{weights}1" / "ap.json").read_text())["map"]
    assert maps["m.pth"] == pytest.approx(0.5) and maps["raw.onnx"] == maps["nms.onnx"] == maps["m.pth"]
    capsys.readouterr()
    argv = ["--weights", str(tmp_path / "nms.onnx"), "--dataset", "Shapes", "--dataset_root", str(folder),
            "--conf_thresh", "0.2", "--project", str(tmp_path / "runs")]  # fmt: skip
    assert run_cli(eval_script.main, eval_script.get_args_parser(), argv) == 2
    assert "has its Detect settings built in" in capsys.readouterr().err


def test_a_converted_torchvision_ssdlite_exports_end_to_end_with_its_semantics(tmp_path: Path) -> None:
    # Boxes clipped before NMS, the dw/dh clamp and torchvision's preprocessing, inside the exported graph.
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from tests.fixtures import calibrate_batch_norm, write_scenes
    from utils.deploy.convert_torchvision import from_torchvision

    torch.manual_seed(0)
    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    paths = write_scenes(tmp_path / "scenes", [(320, 240), (200, 300)])
    scenes = [cv2.imread(str(p)) for p in paths]
    tensors = [torch.from_numpy(s[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255 for s in scenes]
    calibrate_batch_norm(tv, lambda: tv.backbone(tv.transform(tensors)[0].tensors))
    model, info = from_torchvision(tv.state_dict(), SHAPES_CLASSES)
    settings = DetectSettings(0.2, info.postprocess.nms_thresh, 50, 20, info.postprocess.clip_boxes,
                              info.postprocess.decode_clamp)  # fmt: skip
    assert settings.clip_boxes and settings.decode_clamp is not None and info.preprocess.resize == "torchvision"
    export_onnx(model, info, tmp_path / "lite.onnx", ExportSpec("detections", settings, include_preprocess=True))
    got = Predictor(OnnxRunner(tmp_path / "lite.onnx"))(scenes[:1]) + Predictor(OnnxRunner(tmp_path / "lite.onnx"))(
        scenes[1:]
    )
    expected = Predictor(TorchRunner(model, info), settings)(scenes)
    for a, b, scene in zip(expected, got, scenes, strict=True):
        diffs = compare_detections(a, b, settings, (scene.shape[1], scene.shape[0]))
        assert len(a["scores"]) and diffs["differ"] == 0 and diffs["scores"] < 1e-4 and diffs["boxes"] < 0.05
        assert (b["boxes"] >= 0).all() and (b["boxes"][:, 2] <= scene.shape[1] + 1e-3).all()  # clipped
