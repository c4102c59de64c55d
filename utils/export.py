"""Export an SSD to ONNX or TorchScript, check ONNX against PyTorch, and run ONNX models for inference.

    python utils/export.py --weights runs/train/exp1/best.pth --format onnx
    python utils/export.py --weights weights/ssd300_mAP_77.43_v2.pth --dataset VOC --format onnx --decoded

The graph takes the preprocessed image batch [B, 3, S, S] (see ``BaseTransform``) and returns the raw
``(loc [B, P, 4], conf [B, P, C])`` or, with ``--decoded``, ``(boxes [B, P, 4] relative xyxy, scores [B, P, C]
softmax)``. The ONNX file carries the model config, class names and preprocessing as metadata, so
``inference.py --weights model.onnx`` needs nothing else. onnx and onnxruntime are optional dependencies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python utils/export.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from data.config import get_preset  # noqa: E402
from layers.box_utils import decode  # noqa: E402
from layers.prior_box import prior_boxes  # noqa: E402
from ssd import SSD, model_config_from_dict, model_config_to_dict  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.weights import load_detector  # noqa: E402

OPSET = 17


def _require(module: str):  # noqa: ANN202
    try:
        return __import__(module)
    except ImportError as error:
        raise ValueError(f"ONNX support needs the optional package {module!r}: pip install onnx onnxruntime") from error


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


def metadata(model: SSD, class_names: list[str], preprocess: dict, decoded: bool) -> dict[str, str]:
    return {
        "model_config": json.dumps(model_config_to_dict(model.config)),
        "class_names": json.dumps(class_names),
        "preprocess": json.dumps(preprocess),
        "outputs": "boxes,scores" if decoded else "loc,conf",
    }


def export_onnx(model: SSD, path: str | Path, class_names: list[str], preprocess: dict, decoded: bool = False) -> Path:
    """Write an ONNX file with a dynamic batch dimension and metadata; returns its path."""
    onnx = _require("onnx")
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
    for key, value in metadata(model, class_names, preprocess, decoded).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def export_torchscript(
    model: SSD, path: str | Path, class_names: list[str], preprocess: dict, decoded: bool = False
) -> Path:
    """Trace the model to TorchScript; metadata go into the archive's extra files."""
    path = Path(path)
    size = model.config.size
    traced = torch.jit.trace(ExportWrapper(model.eval(), decoded), torch.zeros(1, 3, size, size))
    torch.jit.save(traced, str(path), _extra_files=metadata(model, class_names, preprocess, decoded))
    return path


class OnnxRunner:
    """An exported ONNX SSD behind inference.py's runner interface: ``runner(batch) -> (loc, conf)``."""

    def __init__(self, path: str | Path) -> None:
        ort = _require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise ValueError(f"{path} is not a loadable ONNX model ({str(error).splitlines()[0]})") from error
        meta = self.session.get_modelmeta().custom_metadata_map
        if "model_config" not in meta:
            raise ValueError(f"{path} lacks this project's metadata; export it with utils/export.py")
        if meta.get("outputs") != "loc,conf":
            raise ValueError(f"{path} returns decoded boxes; export it without --decoded for inference.py")
        config = model_config_from_dict(json.loads(meta["model_config"]))
        self.num_classes = config.num_classes
        self.size = config.size
        self.priors = prior_boxes(config.priors)
        self.class_names: list[str] | None = json.loads(meta["class_names"]) if "class_names" in meta else None
        self.preprocess: dict = json.loads(meta.get("preprocess", "{}"))

    def __call__(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        loc, conf = self.session.run(None, {"images": batch.cpu().numpy().astype(np.float32)})
        return torch.from_numpy(loc), torch.from_numpy(conf)


def check_onnx(model: SSD, path: str | Path, batch: Tensor) -> tuple[float, float]:
    """Max absolute difference between onnxruntime and PyTorch on ``batch``: (loc, conf)."""
    runner = OnnxRunner(path)
    with torch.inference_mode():
        loc, conf = model.eval()(batch)
    onnx_loc, onnx_conf = runner(batch)
    return float((onnx_loc - loc).abs().max()), float((onnx_conf - conf).abs().max())


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export an SSD to ONNX or TorchScript.")
    parser.add_argument("--weights", required=True, help="project checkpoint or ssd.pytorch state_dict")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument(
        "--size", type=int, default=300, choices=[300, 512], help="input size of a raw ssd.pytorch state_dict"
    )
    parser.add_argument("--dataset", default="VOC", help="class set of a raw state_dict")
    parser.add_argument("--classes", default=None, help="class-names file")
    parser.add_argument(
        "--decoded", action="store_true", help="export boxes and softmax scores instead of raw (loc, conf)"
    )
    parser.add_argument(
        "--output", default=None, help="output file (default: the weights path with .onnx / .torchscript.pt)"
    )
    return parser


def main(args: argparse.Namespace) -> int:
    preset = get_preset(args.dataset, args.classes)
    model, checkpoint = load_detector(
        args.weights, preset.num_classes, args.size, preset.prior_family, check_classes=False
    )
    class_names = list(checkpoint.get("class_names") or preset.class_names)
    preprocess = checkpoint.get("preprocess") or {}
    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    output = Path(args.output or Path(args.weights).with_suffix(suffix))
    if args.format == "torchscript":
        export_torchscript(model, output, class_names, preprocess, args.decoded)
        print(f"wrote {output}")
        return 0
    export_onnx(model, output, class_names, preprocess, args.decoded)
    if not args.decoded:
        batch = torch.randn(2, 3, model.config.size, model.config.size, generator=torch.Generator().manual_seed(0)) * 50
        loc_diff, conf_diff = check_onnx(model, output, batch)
        status = "ok" if max(loc_diff, conf_diff) < 1e-4 else "MISMATCH"
        print(
            f"wrote {output}; onnxruntime vs PyTorch max abs diff: loc {loc_diff:.2e}, conf {conf_diff:.2e} ({status})"
        )
        return 0 if status == "ok" else 1
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
