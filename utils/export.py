"""Export an SSD to ONNX or TorchScript and check the ONNX file against PyTorch through the prediction path.

    python -m utils.export --weights runs/train/exp1/best.pth --format onnx
    python -m utils.export --weights weights/ssd300_mAP_77.43_v2.pth --dataset VOC --format onnx --decoded

The graph takes the preprocessed image batch [B, 3, S, S] (see ``BaseTransform``) and returns the raw
``(loc [B, P, 4], conf [B, P, C])`` or, with ``--decoded``, ``(boxes [B, P, 4] relative xyxy, scores [B, P, C]
softmax)``. The ONNX file carries the checkpoint's :class:`utils.checkpoint.DetectorInfo` (network config,
class names, preprocessing, Detect settings) as metadata, so ``inference.py --weights model.onnx`` needs
nothing else. onnx and onnxruntime are optional dependencies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from layers.box_utils import decode
from ssd import SSD
from utils.checkpoint import DetectorInfo, load_detector
from utils.cli import (
    add_dataset_flags,
    add_hyphen_aliases,
    add_raw_weights_flags,
    add_verbose_flag,
    add_weights_flag,
    dataset_preset,
    make_parser,
    raw_weights,
    run_cli,
)
from utils.predict import OnnxRunner, Predictor, TorchRunner

OPSET = 17


class ExportWrapper(nn.Module):
    """The network with an optional decode + softmax, as exported."""

    def __init__(self, model: SSD, decoded: bool = False) -> None:
        super().__init__()
        self.model = model
        self.decoded = decoded

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        loc_preds, conf_preds = self.model(images)
        if self.decoded:
            return decode(loc_preds, self.model.priors), conf_preds.softmax(dim=-1)
        return loc_preds, conf_preds


def metadata(info: DetectorInfo, decoded: bool) -> dict[str, str]:
    """The :class:`DetectorInfo` entries as JSON strings, and what the graph outputs."""
    return {key: json.dumps(value) for key, value in info.to_dict().items()} | {
        "outputs": "boxes,scores" if decoded else "loc,conf"
    }


def _require_onnx():  # noqa: ANN202
    try:
        import onnx
    except ImportError as error:
        raise ValueError("ONNX export needs the optional packages onnx and onnxruntime: pip install onnx onnxruntime") from error
    return onnx


def export_onnx(model: SSD, info: DetectorInfo, path: str | Path, decoded: bool = False) -> Path:
    """Write an ONNX file with a dynamic batch dimension and metadata; returns its path."""
    onnx = _require_onnx()
    path = Path(path)
    wrapper = ExportWrapper(model.eval(), decoded)
    size = model.config.size
    names = ["boxes", "scores"] if decoded else ["loc", "conf"]
    torch.onnx.export(
        wrapper, (torch.zeros(1, 3, size, size),), str(path), input_names=["images"], output_names=names,
        dynamic_axes={"images": {0: "batch"}, names[0]: {0: "batch"}, names[1]: {0: "batch"}},
        opset_version=OPSET, dynamo=False,
    )  # fmt: skip
    proto = onnx.load(str(path))
    for key, value in metadata(info, decoded).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def export_torchscript(model: SSD, info: DetectorInfo, path: str | Path, decoded: bool = False) -> Path:
    """Trace the model to TorchScript; metadata go into the archive's extra files."""
    path = Path(path)
    size = model.config.size
    traced = torch.jit.trace(ExportWrapper(model.eval(), decoded), torch.zeros(1, 3, size, size))
    torch.jit.save(traced, str(path), _extra_files=metadata(info, decoded))
    return path


def check_onnx(model: SSD, info: DetectorInfo, path: str | Path, batch: Tensor) -> dict[str, float]:
    """onnxruntime against PyTorch on ``batch``, through the prediction path.

    Returns:
        The largest absolute differences of the raw outputs (``loc``, ``conf``) and of the detections' pixel
        boxes and scores at a 300-px image size, matched in (label, score) order (``boxes``, ``scores``;
        infinite when the two give different numbers of detections or different labels).
    """
    torch_predictor = Predictor(TorchRunner(model, info))
    onnx_predictor = Predictor(OnnxRunner(path))
    with torch.inference_mode():
        loc, conf = torch_predictor.runner(batch)
    onnx_loc, onnx_conf = onnx_predictor.runner(batch)
    diffs = {"loc": float((onnx_loc - loc.cpu()).abs().max()), "conf": float((onnx_conf - conf.cpu()).abs().max())}
    sizes = [(300, 300)] * len(batch)
    with torch.inference_mode():
        expected = torch_predictor.detect_batch(batch, sizes)
    got = onnx_predictor.detect_batch(batch, sizes)
    diffs["boxes"] = diffs["scores"] = 0.0
    for a, b in zip(expected, got, strict=True):
        a, b = ({k: v[np.lexsort((-d["scores"], d["labels"]))] for k, v in d.items()} for d in (a, b))
        if len(a["labels"]) != len(b["labels"]) or not np.array_equal(a["labels"], b["labels"]):
            return diffs | {"boxes": float("inf"), "scores": float("inf")}
        if len(a["labels"]):
            diffs["boxes"] = max(diffs["boxes"], float(np.abs(a["boxes"] - b["boxes"]).max()))
            diffs["scores"] = max(diffs["scores"], float(np.abs(a["scores"] - b["scores"]).max()))
    return diffs


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser("Export an SSD to ONNX or TorchScript.")
    add_weights_flag(parser)
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    add_dataset_flags(parser, "test")
    add_raw_weights_flags(parser)
    parser.add_argument("--decoded", action="store_true",
                        help="export boxes and softmax scores instead of raw (loc, conf)")  # fmt: skip
    parser.add_argument("--output", default=None,
                        help="output file (default: the weights path with .onnx / .torchscript.pt)")  # fmt: skip
    add_verbose_flag(parser)
    return add_hyphen_aliases(parser)


def main(args: argparse.Namespace) -> int:
    model, info = load_detector(args.weights, "cpu", raw_weights(args, dataset_preset(args)))
    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    output = Path(args.output or Path(args.weights).with_suffix(suffix))
    if args.format == "torchscript":
        export_torchscript(model, info, output, args.decoded)
        print(f"wrote {output}")
        return 0
    export_onnx(model, info, output, args.decoded)
    if not args.decoded:
        size = model.config.size
        batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 50
        diffs = check_onnx(model, info, output, batch)
        ok = max(diffs["loc"], diffs["conf"], diffs["scores"]) < 1e-4 and diffs["boxes"] < 1e-2
        print(f"wrote {output}; onnxruntime vs PyTorch max abs diff: loc {diffs['loc']:.2e}, conf {diffs['conf']:.2e}, "
              f"detections: boxes {diffs['boxes']:.2e} px, scores {diffs['scores']:.2e} ({'ok' if ok else 'MISMATCH'})")  # fmt: skip
        return 0 if ok else 1
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
