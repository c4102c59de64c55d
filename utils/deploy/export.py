"""Export an SSD for deployment: ONNX (raw network, decoded, or end to end with NMS inside; float32, float16
or INT8), a ``torch.export`` program (``.pt2``) or TorchScript, each checked against PyTorch.

    python -m utils.deploy.export --weights runs/train/exp1/best.pth --format onnx --nms        # end to end
    python -m utils.deploy.export --weights runs/train/exp1/best.pth --format onnx --nms --int8 --calib data/shapes
    python -m utils.deploy.export --weights runs/train/exp1/best.pth --format torch_export
    python -m utils.deploy.export --weights weights/ssd300_mAP_77.43_v2.pth --dataset VOC --format onnx   # raw (loc, conf)

A graph takes the preprocessed batch ``[B, 3, S, S]`` (see :class:`utils.transforms.BaseTransform`), or with ``--include_preprocess``
uint8 BGR images ``[B, H, W, 3]``. It returns the raw ``(loc [B, P, 4], conf [B, P, C])``; with ``--decoded``
``(boxes [B, P, 4] relative xyxy, scores [B, P, C] softmax)``; with ``--nms`` the detections in TensorRT
EfficientNMS's padded layout: ``num_detections [B]``, ``boxes [B, K, 4]`` (relative xyxy), ``scores [B, K]``,
``labels [B, K]`` (0-based classes, -1 for padding), ``K = keep_top_k``. The file carries its
:class:`utils.export_metadata.ExportMetadata` (the checkpoint's network config, class names, preprocessing and
Detect settings, and what the graph takes and returns), so ``inference.py --weights <file>`` runs every kind. ONNX
needs the optional packages onnx, onnxscript and onnxruntime.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from data.build import build_dataset
from data.config import DatasetPreset
from layers.box_utils import decode
from layers.detection import DetectSettings, PaddedDetect
from ssd import SSD
from utils.checkpoint import DetectorInfo, load_detector
from utils.cli import POSITIVE_INT, add_hyphen_aliases, add_verbose_flag, make_parser, run_cli
from utils.export_metadata import OUTPUT_NAMES, ExportMetadata
from utils.flags import (
    add_dataset_flags,
    add_detect_flags,
    add_raw_weights_flags,
    add_weights_flag,
    dataset_preset,
    detect_settings,
    raw_weights,
)
from utils.predict import PixelDetections, Predictor, TorchRunner, load_runner
from utils.transforms import Preprocess

logger = logging.getLogger(__name__)


OPSET = 18
FORMAT_SUFFIXES = {"onnx": ".onnx", "torch_export": ".pt2", "torchscript": ".torchscript.pt"}


@dataclass(frozen=True)
class ExportSpec:
    """What an exported graph computes.

    Args:
        outputs: ``raw`` ``(loc [B, P, 4], conf [B, P, C])``; ``decoded`` (relative xyxy boxes [B, P, 4], softmax
            scores [B, P, C]); ``detections``: the end-to-end graph, NMS inside, in TensorRT EfficientNMS's padded
            layout (:class:`layers.detection.PaddedDetect`).
        settings: the Detect settings (stored in the metadata; a ``detections`` graph applies them); None: the
            model's own (``DetectorInfo.postprocess``).
        include_preprocess: the graph takes uint8 BGR images ``[B, H, W, 3]`` (as ``cv2.imread`` gives, all of one
            size) and resizes and normalises them itself; else the preprocessed batch ``[B, 3, S, S]``.
        half: the network in float16 (for GPUs); inputs and outputs stay float32 (or uint8 in).
        static_batch: a fixed batch size instead of a dynamic one. OpenCV's DNN module needs it: it cannot run the
            dynamic graph (the shape arithmetic of the heads' Reshape ends in a Concat that cv2.dnn 5.0 refuses,
            "inputs[i] == inputs[0] in function 'getTypes'").
    """

    outputs: str = "raw"
    settings: DetectSettings | None = None
    include_preprocess: bool = False
    half: bool = False
    static_batch: int | None = None

    def __post_init__(self) -> None:
        if self.outputs not in OUTPUT_NAMES:
            raise ValueError(f"outputs must be one of {sorted(OUTPUT_NAMES)}, got {self.outputs!r}")


class GraphPreprocess(nn.Module):
    """The model's preprocessing in tensor operations, for graphs that take images (uint8 BGR ``[B, H, W, 3]``):

    * ``Preprocess.resize == "opencv"`` (:class:`utils.transforms.BaseTransform`): bilinear resize to ``size``
      (half-pixel centres and rounding, as OpenCV's INTER_LINEAR on uint8), then ``(pixel - mean) / std``;
    * ``"torchvision"`` (:class:`utils.transforms.TorchvisionTransform`): ``(pixel - mean) / std`` first, then
      the bilinear resize in float, as torchvision's detection models do.

    Returns RGB ``[B, 3, size, size]``.
    """

    def __init__(self, size: int, preprocess: Preprocess) -> None:
        super().__init__()
        self.size, self.resize_first = size, preprocess.resize != "torchvision"
        std = preprocess.std or (1.0, 1.0, 1.0)
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).float()  # [B, 3, H, W] BGR
        if self.resize_first:
            x = (
                F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
                .round()
                .clamp(0, 255)
            )
            return ((x - self.mean) * self.inv_std).flip(1)  # [B, 3, S, S] RGB
        x = ((x - self.mean) * self.inv_std).flip(1)
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


class ExportGraph(nn.Module):
    """The exported computation: (preprocessing) -> network -> (decode | end-to-end Detect), per ``spec``."""

    def __init__(self, model: SSD, info: DetectorInfo, spec: ExportSpec) -> None:
        super().__init__()
        self.spec = spec
        self.preprocess = GraphPreprocess(info.config.size, info.preprocess) if spec.include_preprocess else None
        self.settings = spec.settings or info.postprocess
        self.register_buffer("priors", model.priors.float().clone(), persistent=False)  # post-processing: float32
        self.model = copy.deepcopy(model).eval().half() if spec.half else model.eval()  # the caller's stays float32
        self.detect = (
            PaddedDetect(info.num_classes, self.settings, self.priors) if spec.outputs == "detections" else None
        )

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        if self.preprocess is not None:
            images = self.preprocess(images)
        loc_preds, conf_preds = self.model(images.half() if self.spec.half else images)
        loc_preds, conf_preds = loc_preds.float(), conf_preds.float()
        if self.detect is not None:
            return self.detect(loc_preds, conf_preds)
        if self.spec.outputs == "decoded":
            boxes = decode(loc_preds, self.priors, clamp=self.settings.decode_clamp)  # as Detect decodes
            return (boxes.clamp(0.0, 1.0) if self.settings.clip_boxes else boxes), conf_preds.softmax(dim=-1)
        return loc_preds, conf_preds

    def example(self, batch_size: int = 1) -> Tensor:
        size = self.model.config.size
        if self.preprocess is not None:
            return torch.zeros(batch_size, size + 20, size + 40, 3, dtype=torch.uint8)
        return torch.zeros(batch_size, 3, size, size)

    def dynamic_shapes(self) -> dict[str, dict[int, torch.export.Dim]] | None:
        if self.spec.static_batch is not None and self.preprocess is None:
            return None
        dims = {} if self.spec.static_batch is not None else {0: torch.export.Dim("batch", min=1, max=4096)}
        if self.preprocess is not None:  # any image size
            dims |= {1: torch.export.Dim("height", min=16, max=16384), 2: torch.export.Dim("width", min=16, max=16384)}
        return {"images": dims}


def metadata(info: DetectorInfo, spec: ExportSpec) -> ExportMetadata:
    """What a graph of ``spec`` records: ``info`` with the export-time Detect settings as its ``postprocess`` (a
    ``detections`` graph applies them), what the graph takes, returns and computes in."""
    return ExportMetadata(
        replace(info, postprocess=spec.settings or info.postprocess),
        spec.outputs,
        "uint8_bgr_hwc" if spec.include_preprocess else "preprocessed",
        spec.static_batch,
        "fp16" if spec.half else "fp32",
    )


def _require(module: str):  # noqa: ANN202
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ValueError(
            f"ONNX export needs the optional package {module}: pip install onnx onnxscript onnxruntime"
        ) from error


def _onnx_nms(boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):  # noqa: ANN001, ANN202
    """:func:`layers.nms.multiclass_nms` as ONNX's NonMaxSuppression (same semantics: scores strictly
    above the threshold, suppression where IoU exceeds it; ONNX Runtime computes the IoU in float32)."""
    op = importlib.import_module("onnxscript").opset18
    return op.NonMaxSuppression(boxes, scores, op.Constant(value_ints=[max_per_class]),
                                op.Constant(value_floats=[iou_threshold]), op.Constant(value_floats=[score_threshold]))  # fmt: skip


def export_onnx(model: SSD, info: DetectorInfo, path: str | Path, spec: ExportSpec = ExportSpec()) -> Path:
    """Write an ONNX file with a dynamic batch (and image size with ``include_preprocess``) and the metadata,
    through PyTorch's torch.export-based exporter; returns its path.

    A raw or decoded graph falls back to the TorchScript-based exporter, with a warning saying why, if the
    current exporter fails; the end-to-end graph has no such fallback.
    """
    onnx = _require("onnx")
    _require("onnxscript")
    path = Path(path)
    graph = ExportGraph(model, info, spec).eval()
    names = OUTPUT_NAMES[spec.outputs]
    try:
        torch.onnx.export(
            graph,
            (graph.example(spec.static_batch or 2),),
            str(path),
            input_names=["images"],
            output_names=list(names),
            dynamic_shapes=graph.dynamic_shapes(),
            opset_version=OPSET,
            dynamo=True,
            custom_translation_table={torch.ops.ssd.multiclass_nms.default: _onnx_nms},
            verbose=False,
            optimize=False,
        )  # fmt: skip  (its optimiser drops L2Norm's "+ 1e-10"; onnxruntime optimises at load)
    except Exception as error:  # the exporter raises many types; the fallback names the first line of the reason
        if spec.outputs == "detections":
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        logger.warning(
            "the torch.export-based ONNX exporter failed (%s); using the legacy TorchScript exporter", reason
        )
        dims = (graph.dynamic_shapes() or {}).get("images", {})
        axes = {"images": {axis: dim.__name__ for axis, dim in dims.items()}} if dims else None
        if axes and 0 in dims:
            axes |= {name: {0: "batch"} for name in names}
        torch.onnx.export(graph, (graph.example(spec.static_batch or 1),), str(path), input_names=["images"],
                          output_names=list(names), dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
    proto = onnx.load(str(path))
    for key, value in metadata(info, spec).to_strings().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def export_program(model: SSD, info: DetectorInfo, path: str | Path, spec: ExportSpec = ExportSpec()) -> Path:
    """Write a ``torch.export`` ExportedProgram (``.pt2``) with the metadata as the extra file ``ssd.json``."""
    path = Path(path)
    graph = ExportGraph(model, info, spec).eval()
    program = torch.export.export(
        graph, (graph.example(spec.static_batch or 2),), dynamic_shapes=graph.dynamic_shapes()
    )
    torch.export.save(program, str(path), extra_files={"ssd.json": json.dumps(metadata(info, spec).to_strings())})
    return path


def export_torchscript(model: SSD, info: DetectorInfo, path: str | Path, spec: ExportSpec = ExportSpec()) -> Path:
    """Trace the model to TorchScript (deprecated by PyTorch in favour of ``torch.export``: prefer
    ``--format torch_export``); metadata go into the archive's extra files. Raw or decoded outputs only."""
    if spec.outputs == "detections":
        raise ValueError("--nms is not available for --format torchscript; use --format onnx or torch_export")
    path = Path(path)
    graph = ExportGraph(model, info, spec).eval()
    traced = torch.jit.trace(graph, graph.example(1))
    torch.jit.save(traced, str(path), _extra_files=metadata(info, spec).to_strings())
    return path


class CalibrationImages:
    """onnxruntime's CalibrationDataReader over a dataset's images, as the graph takes them."""

    def __init__(self, images: Iterator[np.ndarray]) -> None:
        self.images = images

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.images, None)
        return None if image is None else {"images": image[None]}


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: Iterator[np.ndarray]) -> Path:
    """Static INT8 quantization with onnxruntime (QDQ, per-channel weights) of the convolutions of an exported
    graph, calibrated on ``calibration`` (inputs as the graph takes them, one image each). Activation ranges are
    the 99.999th percentiles (onnxruntime's Percentile calibration), which cost less accuracy than min-max ranges
    (docs/deploy.md, "Deploy", has the figures). Post-processing (decode, softmax, NMS) stays in float32. The metadata
    are kept; ``precision`` becomes ``int8``."""
    quantization = _require("onnxruntime.quantization")
    onnx = _require("onnx")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantization.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantization.quantize_static(
            str(prepared), str(int8_path), CalibrationImages(calibration), quant_format=quantization.QuantFormat.QDQ,
            per_channel=True, op_types_to_quantize=["Conv"], activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, calibrate_method=quantization.CalibrationMethod.Percentile,
        )  # fmt: skip
    fp32_meta = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    int8_meta = replace(ExportMetadata.from_strings(fp32_meta, fp32_path), precision="int8")
    proto = onnx.load(str(int8_path))
    del proto.metadata_props[:]
    for key, value in int8_meta.to_strings().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(int8_path))
    return int8_path


def compare_detections(
    expected: PixelDetections, got: PixelDetections, settings: DetectSettings, size: tuple[int, int]
) -> dict[str, float]:
    """How far ``got`` is from ``expected`` (one image, pixel detections), detection by detection.

    Each expected detection is matched to the nearest of ``got`` with its label. Unmatched detections on either
    side count as ``differ`` unless they are ambiguous by construction: a score within 1e-5 of the score
    threshold or of the last detection kept under the per-image cap, or an IoU with a detection of its class
    within 1e-5 of the NMS threshold (float32 and float64 IoUs may decide those otherwise).

    Returns:
        ``boxes`` (px) and ``scores``: the largest differences over matched detections; ``differ``: how many
        detections are in one set only without such an excuse.
    """
    scale = np.array([*size, *size], np.float64)
    out = {"boxes": 0.0, "scores": 0.0, "differ": 0.0}
    unmatched = [np.ones(len(expected["scores"]), bool), np.ones(len(got["scores"]), bool)]
    for i, (box, label) in enumerate(zip(expected["boxes"], expected["labels"], strict=True)):
        candidates = np.flatnonzero((got["labels"] == label) & unmatched[1])
        if not len(candidates):
            continue
        distance = np.abs(got["boxes"][candidates] - box).max(1)
        j = candidates[distance.argmin()]
        if distance.min() <= 1e-2 * scale.max():
            unmatched[0][i], unmatched[1][j] = False, False
            out["boxes"] = max(out["boxes"], float(distance.min()))
            out["scores"] = max(out["scores"], float(abs(got["scores"][j] - expected["scores"][i])))
    for side, detections in zip(unmatched, (expected, got), strict=True):
        cap = (
            detections["scores"][-1]
            if settings.keep_top_k and len(detections["scores"]) >= settings.keep_top_k
            else None
        )
        for k in np.flatnonzero(side):
            score = detections["scores"][k]
            near_score = abs(score - settings.conf_thresh) < 1e-5 or (cap is not None and abs(score - cap) < 1e-5)
            same = (detections["labels"] == detections["labels"][k]) & (np.arange(len(side)) != k)
            ious = box_iou(torch.from_numpy(detections["boxes"][k : k + 1] / scale),
                           torch.from_numpy(detections["boxes"][same] / scale)).numpy()  # fmt: skip
            near_iou = bool((np.abs(ious - settings.nms_thresh) < 1e-5).any())
            out["differ"] += 0.0 if near_score or near_iou else 1.0
    return out


def check_export(model: SSD, info: DetectorInfo, path: str | Path, images: Tensor) -> dict[str, float]:
    """An exported file against PyTorch on ``images`` (a preprocessed batch), through the prediction path, with
    the exported file's own Detect settings on both sides.

    Returns:
        The largest differences of the raw outputs relative to their largest magnitude (``loc``, ``conf``; raw graphs
        only) and :func:`compare_detections`' figures over the batch at a 300-px image size.
    """
    exported = load_runner(path, torch.device("cpu"))
    if exported.input_kind != "preprocessed":
        raise ValueError(f"{path} takes images (--include_preprocess); check_export takes a preprocessed batch")
    settings = exported.info.postprocess
    torch_predictor = Predictor(TorchRunner(model, info), settings)
    diffs: dict[str, float] = {}
    if not exported.returns_detections:
        with torch.inference_mode():
            loc, conf = torch_predictor.runner(images)
        exported_loc, exported_conf = exported(images)
        # Relative to the largest output (at least 1): an untrained deep base can output values in the hundreds.
        diffs |= {name: float((got - want.cpu()).abs().max() / want.abs().max().clamp(min=1))
                  for name, got, want in (("loc", exported_loc, loc), ("conf", exported_conf, conf))}  # fmt: skip
    sizes = [(300, 300)] * len(images)
    with torch.inference_mode():
        expected = torch_predictor.detect_batch(images, sizes)
    got = Predictor(exported, settings).detect_batch(images, sizes)
    per_image = [compare_detections(a, b, settings, (300, 300)) for a, b in zip(expected, got, strict=True)]
    return diffs | {key: max(d[key] for d in per_image) if key != "differ" else sum(d[key] for d in per_image)
                    for key in ("boxes", "scores", "differ")}  # fmt: skip


def calibration_images(
    preset: DatasetPreset, root: str, count: int, info: DetectorInfo, include_preprocess: bool
) -> Iterator[np.ndarray]:
    """The first ``count`` images of ``root``'s training split, as the exported graph takes them: uint8 BGR
    [H, W, 3] with ``include_preprocess``, else the preprocessed float32 [3, S, S]."""
    transform = None if include_preprocess else info.preprocess.transform(info.config.size)
    dataset = build_dataset(preset, root, "train", transform)
    for index in range(min(count, len(dataset))):
        yield dataset.pull_image(index) if include_preprocess else dataset[index][0].numpy()


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser("Export an SSD: ONNX (raw, decoded or end to end with NMS; float32, float16 or INT8), "
                         "a torch.export program (.pt2) or TorchScript.")  # fmt: skip
    add_weights_flag(parser)
    parser.add_argument("--format", choices=sorted(FORMAT_SUFFIXES), default="onnx")
    add_dataset_flags(parser, "test")
    add_raw_weights_flags(parser)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--nms", action="store_true",
                      help="end to end: decode, softmax, per-class top-k, NMS and the per-image cap inside the graph")  # fmt: skip
    kind.add_argument("--decoded", action="store_true", help="boxes and softmax scores instead of raw (loc, conf)")
    add_detect_flags(parser)
    parser.add_argument("--include_preprocess", action="store_true",
                        help="the graph takes uint8 BGR images [B, H, W, 3] and resizes and normalises them itself")  # fmt: skip
    parser.add_argument("--half", action="store_true", help="float16 network, for GPUs (onnx and torch_export)")
    parser.add_argument("--static_batch", type=POSITIVE_INT, default=None,
                        help="a fixed batch size instead of a dynamic one (OpenCV's DNN module needs it: 1)")  # fmt: skip
    parser.add_argument("--int8", action="store_true", help="onnx: also write an INT8 model (<output>.int8.onnx)")
    parser.add_argument("--calib", default=None, help="--int8: a dataset root (of --dataset) to calibrate on")
    parser.add_argument("--calib_images", type=POSITIVE_INT, default=200, help="--int8: calibration images")
    parser.add_argument("--output", default=None,
                        help="output file (default: the weights path with .onnx / .pt2 / .torchscript.pt)")  # fmt: skip
    add_verbose_flag(parser)
    return add_hyphen_aliases(parser)


def check_args(args: argparse.Namespace) -> None:
    """The export command's refusals of flag combinations, before anything is loaded (``--nms`` with TorchScript
    is refused by :func:`export_torchscript` itself)."""
    if args.int8 and (args.format != "onnx" or args.calib is None):
        raise ValueError("--int8 needs --format onnx and --calib <dataset root> to calibrate on")
    if args.half and args.int8:
        raise ValueError("--half and --int8 are two precisions; give one")
    if args.int8 and args.static_batch not in (None, 1):
        raise ValueError("--int8 calibrates one image at a time: use --static_batch 1 or a dynamic batch")


def main(args: argparse.Namespace) -> int:
    check_args(args)
    model, info = load_detector(args.weights, "cpu", raw_weights(args, dataset_preset(args)))
    outputs = "detections" if args.nms else "decoded" if args.decoded else "raw"
    spec = ExportSpec(outputs, detect_settings(args, info.postprocess), args.include_preprocess, args.half,
                      args.static_batch)  # fmt: skip
    output = Path(args.output or Path(args.weights).with_suffix(FORMAT_SUFFIXES[args.format]))
    exporters = {"onnx": export_onnx, "torch_export": export_program, "torchscript": export_torchscript}
    exporters[args.format](model, info, output, spec)
    if args.format == "torchscript":
        print(f"wrote {output} (TorchScript is deprecated by PyTorch: prefer --format torch_export)")
        return 0
    line = f"wrote {output}"
    if not (args.include_preprocess or args.half or args.decoded):
        # Random images through the model's own preprocessing: inputs in the range the network was trained on.
        rng = np.random.default_rng(0)
        transform = info.preprocess.transform(model.config.size)
        images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(args.static_batch or 2)]
        batch = torch.from_numpy(np.stack([transform(image)[0] for image in images]))
        diffs = check_export(model, info, output, batch)
        ok = max(diffs.get("loc", 0.0), diffs.get("conf", 0.0), diffs["scores"]) < 1e-4 and diffs["boxes"] < 0.3
        ok = ok and diffs["differ"] == 0
        raw = f"loc {diffs['loc']:.2e}, conf {diffs['conf']:.2e}, " if "loc" in diffs else ""
        line += (f"; {args.format} vs PyTorch, max diff: {raw}detections: boxes {diffs['boxes']:.2e} px, "
                 f"scores {diffs['scores']:.2e}, {int(diffs['differ'])} in one only ({'ok' if ok else 'MISMATCH'})")  # fmt: skip
        if not ok:
            print(line)
            return 1
    print(line)
    if args.int8:
        images = calibration_images(dataset_preset(args), args.calib, args.calib_images, info, args.include_preprocess)
        int8 = quantize_int8(output, output.with_suffix(".int8.onnx"), images)
        print(f"wrote {int8} (INT8, calibrated on {args.calib_images} images of {args.calib})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
