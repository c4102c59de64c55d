"""The one prediction path: a batch of decoded images -> network -> Detect -> pixel-space detections.

    runner = load_runner("best.pth", device)          # or an exported .onnx file
    predictor = Predictor(runner)                      # Detect with the model's own test settings
    detections = predictor([cv2.imread("a.jpg")])      # per image: boxes [K, 4] pixels, scores, labels

eval.py, inference.py, training-time evaluation and the export check all go through :class:`Predictor`.
A :class:`Runner` is whatever computes the network: the PyTorch SSD (eager or CUDA graphs, see
:class:`utils.runtime.InferenceModel`) or an onnxruntime session. A runner returns the raw
``(loc_preds, conf_preds)``, to which the predictor applies :class:`layers.detection.Detect`, or, when its
graph already contains NMS (``returns_detections``), the final per-image detections.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.export.passes import move_to_device_pass
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.base import DetectionDataset, detection_collate
from layers.detection import Detect, Detections, DetectSettings
from layers.prior_box import prior_boxes
from ssd import SSD
from utils.checkpoint import DetectorInfo, RawWeights, load_detector
from utils.export_metadata import ExportMetadata
from utils.runtime import InferenceModel

logger = logging.getLogger(__name__)

# Per image, in pixels of the original image: boxes float64 [K, 4] xyxy (unclipped), scores float64 [K]
# (descending), labels int64 [K] as 0-based foreground classes (``class_names[label]``).
PixelDetections = dict[str, np.ndarray]


class Runner(Protocol):
    """Computes the network on a preprocessed batch ``[B, 3, S, S]`` (see :class:`utils.transforms.BaseTransform`).

    Attributes:
        info: what the model is (classes, input size, preprocessing, its test-time Detect settings).
        priors (Tensor[P, 4]): cxcywh, for decoding raw outputs.
        returns_detections: whether ``__call__`` returns final detections (a graph with NMS inside) rather than
            the raw ``(loc_preds [B, P, 4], conf_preds [B, P, C])``.
        input_kind: ``preprocessed`` (``[B, 3, S, S]`` from ``info.preprocess``) or ``uint8_bgr_hwc`` (images as
            ``cv2.imread`` gives them, ``[B, H, W, 3]``: the graph preprocesses).
        device: where the outputs are.
    """

    info: DetectorInfo
    priors: Tensor
    returns_detections: bool
    input_kind: str
    device: torch.device

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor] | list[Detections]: ...


class TorchRunner:
    """The PyTorch SSD behind :class:`Runner`, run by :class:`utils.runtime.InferenceModel`."""

    returns_detections = False
    input_kind = "preprocessed"

    def __init__(self, model: SSD, info: DetectorInfo, amp: bool = False, cuda_graph: bool = False) -> None:
        self.info = info
        # A checkpoint with torchvision's preprocessing (converted from torchvision) runs the network as torchvision
        # does, to give its detections to the last bit (utils/deploy/convert_torchvision.py).
        self.network = InferenceModel(model, amp, cuda_graph, exact=info.preprocess.resize == "torchvision")
        self.priors = self.network.priors
        self.device = self.network.device

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.network(images)


def padded_to_detections(num: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor) -> list[Detections]:
    """An end-to-end graph's padded outputs (:class:`layers.detection.PaddedDetect`) as Detect's per-image dicts."""
    return [
        {"boxes": boxes[i, :k], "scores": scores[i, :k], "labels": labels[i, :k] + 1}
        for i, k in enumerate(num.tolist())
    ]


class ExportedRunner:
    """Shared by the runners of exported files: what their :class:`ExportMetadata` means for running them."""

    def _read_metadata(self, path: Path, entries: Mapping[str, str]) -> None:
        metadata = ExportMetadata.from_strings(entries, path)
        if metadata.outputs == "decoded":
            raise ValueError(f"{path} returns decoded boxes (--decoded); export it raw or with --nms for inference.py")
        self.info = metadata.info
        self.returns_detections = metadata.outputs == "detections"
        self.input_kind = metadata.input_kind
        self.static_batch = metadata.static_batch or 0  # 0: dynamic
        self.precision = metadata.precision
        self.priors = prior_boxes(self.info.config.priors)


class OnnxRunner(ExportedRunner):
    """An ONNX file exported by ``utils.deploy.export`` (raw, end to end, float32/float16/INT8), run by onnxruntime: on
    the GPU with the CUDA execution provider when ``device`` is a GPU and onnxruntime-gpu is installed, else on
    the CPU."""

    def __init__(self, path: str | Path, device: torch.device | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ValueError(
                "running ONNX models needs the optional package onnxruntime: pip install onnxruntime"
            ) from error
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        self.providers = onnx_providers(device or torch.device("cpu"), ort.get_available_providers())
        options = ort.SessionOptions()
        # onnxruntime's idle threads spin by default: beside PyTorch's threads in one process (export checks,
        # benchmarks) they starve them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"{path} is not a loadable ONNX model ({first}); re-export it") from error
        self._read_metadata(path, self.session.get_modelmeta().custom_metadata_map)
        self.device = torch.device("cpu")  # outputs come back as CPU tensors

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor] | list[Detections]:
        feed = images.cpu().numpy()
        step = self.static_batch or len(feed)
        parts = []
        for start in range(0, len(feed), step):  # a fixed-batch graph takes chunks of its size, the last one padded
            chunk = feed[start : start + step]
            padded = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            parts.append([torch.from_numpy(o[: len(chunk)]) for o in self.session.run(None, {"images": padded})])
        outputs = [torch.cat(tensors) for tensors in zip(*parts, strict=True)]
        return padded_to_detections(*outputs) if self.returns_detections else (outputs[0], outputs[1])


def onnx_providers(device: torch.device, available: Sequence[str]) -> list[str]:
    """onnxruntime's execution providers for ``device``: CUDA first on a GPU when onnxruntime-gpu offers it."""
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device.type == "cuda":
        logger.warning("onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu): running on the CPU")
    return ["CPUExecutionProvider"]


class ProgramRunner(ExportedRunner):
    """A ``torch.export`` program (``.pt2``) written by ``utils.deploy.export --format torch_export``."""

    def __init__(self, path: str | Path, device: torch.device | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"exported program {path} does not exist")
        extra = {"ssd.json": ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as error:  # torch raises several types for a foreign or corrupt archive
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"{path} is not a torch.export program ({first}); re-export it") from error
        self._read_metadata(path, json.loads(extra["ssd.json"] or "{}"))
        self.device = device or torch.device("cpu")
        # Tensors the graph creates carry the export's device (CPU); the pass moves those too.
        self.module = move_to_device_pass(program, self.device).module()

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor] | list[Detections]:
        outputs = self.module(images.to(self.device))
        return padded_to_detections(*outputs) if self.returns_detections else (outputs[0], outputs[1])


def load_runner(
    path: str | Path,
    device: torch.device,
    raw: RawWeights | None = None,
    amp: bool = False,
    prepare: Callable[[SSD, DetectorInfo], None] | None = None,
) -> TorchRunner | OnnxRunner | ProgramRunner:
    """The runner of a weights file: an ``.onnx`` or ``.pt2`` export, or a checkpoint (CUDA graphs on a GPU).

    ``prepare(model, info)`` changes a checkpoint's network before it runs (eval.py's ``--adabn``); exports are
    fixed, so it refuses them."""
    suffix = Path(path).suffix.lower()
    if amp and suffix in (".onnx", ".pt2"):
        raise ValueError(
            f"--amp applies to PyTorch checkpoints; {path} has its precision fixed at export (--half, --int8)"
        )
    if prepare is not None and suffix in (".onnx", ".pt2"):
        raise ValueError(f"{path} is an export, whose network is fixed; give the checkpoint it was exported from")
    if suffix == ".onnx":
        return OnnxRunner(path, device)
    if suffix == ".pt2":
        return ProgramRunner(path, device)
    model, info = load_detector(path, device, raw)
    if prepare is not None:
        prepare(model, info)
    return TorchRunner(model, info, amp, cuda_graph=True)


@dataclass
class Timer:
    """Accumulated milliseconds per stage and the number of images."""

    preprocess: float = 0.0
    network: float = 0.0
    detect: float = 0.0
    images: int = 0

    def line(self) -> str:
        n = max(self.images, 1)
        return (f"{self.preprocess / n:.1f} ms preprocess, {self.network / n:.1f} ms network, "
                f"{self.detect / n:.1f} ms Detect ({self.images} images)")  # fmt: skip


@dataclass
class SpeedLog:
    """Per-image timings, with the first batch of each size kept apart: it pays the start-up (cuDNN's
    autotuning, a CUDA graph's capture, the CPU library's kernel set-up), which later batches do not."""

    steady: Timer = field(default_factory=Timer)
    startup: Timer = field(default_factory=Timer)
    batch_sizes: set[int] = field(default_factory=set)

    def timer_for(self, batch_size: int) -> Timer:
        if batch_size in self.batch_sizes:
            return self.steady
        self.batch_sizes.add(batch_size)
        return self.startup

    def add(self, batch_size: int, preprocess_s: float, network_s: float, detect_s: float) -> None:
        """Log one batch's seconds per stage."""
        timer = self.timer_for(batch_size)
        timer.preprocess += preprocess_s * 1e3
        timer.network += network_s * 1e3
        timer.detect += detect_s * 1e3
        timer.images += batch_size

    def total_s(self) -> dict[str, float]:
        """Seconds per stage over every batch, the first ones included."""
        stages = ("preprocess", "network", "detect")
        return {stage: (getattr(self.steady, stage) + getattr(self.startup, stage)) / 1e3 for stage in stages}

    def line(self) -> str:
        if not self.steady.images:
            return f"speed per image (first batches only, start-up included): {self.startup.line()}"
        return f"speed per image: {self.steady.line()}; the first batch of each size is not counted"


class Predictor:
    """Images in, pixel-space detections out, through one runner and one Detect.

    Args:
        runner: the network (:class:`TorchRunner`, :class:`OnnxRunner`).
        settings: Detect's settings; by default the model's own (``runner.info.postprocess``).
    """

    def __init__(self, runner: Runner, settings: DetectSettings | None = None) -> None:
        self.runner = runner
        self.settings = settings or runner.info.postprocess
        if runner.returns_detections and self.settings != runner.info.postprocess:
            raise ValueError(
                f"this exported graph has its Detect settings built in ({runner.info.postprocess}); export it again "
                "with the detection flags you want (python -m utils.deploy.export --nms --conf_thresh ...)"
            )
        self.detect = Detect.from_settings(runner.info.num_classes, self.settings)
        self.transform = runner.info.preprocess.transform(runner.info.config.size)
        self.speed = SpeedLog()

    @classmethod
    def for_model(
        cls, model: SSD, info: DetectorInfo, settings: DetectSettings | None = None, amp: bool = False
    ) -> Predictor:
        """A predictor over an in-memory SSD (training-time evaluation, tests)."""
        return cls(TorchRunner(model, info, amp), settings)

    def detect_batch(self, images: Tensor, sizes: Sequence[tuple[int, int]]) -> list[PixelDetections]:
        """Detect on a preprocessed batch.

        Args:
            images (Tensor[B, 3, S, S]): from ``self.transform``.
            sizes: ``(width, height)`` of each original image, to scale the relative boxes to pixels.
        """
        start = time.perf_counter()
        outputs = self.runner(images)
        if self.runner.device.type == "cuda":  # the network's time, not its launch's
            torch.cuda.synchronize(self.runner.device)
        net = time.perf_counter()
        found = outputs if self.runner.returns_detections else self.detect(*outputs, self.runner.priors)
        results = [to_pixels(detection, width, height) for detection, (width, height) in zip(found, sizes, strict=True)]
        self.speed.add(len(images), 0.0, net - start, time.perf_counter() - net)
        return results

    def __call__(self, images: Sequence[np.ndarray]) -> list[PixelDetections]:
        """Detect in BGR uint8 images ``[H, W, 3]`` of any sizes (as ``cv2.imread`` gives), timing each stage."""
        if not images:
            return []
        start = time.perf_counter()
        if self.runner.input_kind == "uint8_bgr_hwc":  # the graph preprocesses; images of any sizes go one by one
            batches = [torch.from_numpy(image[None]) for image in images]
        else:
            batches = [torch.from_numpy(np.stack([self.transform(image)[0] for image in images]))]
        mid = time.perf_counter()
        outputs = [self.runner(batch) for batch in batches]
        if self.runner.device.type == "cuda":
            torch.cuda.synchronize(self.runner.device)
        net = time.perf_counter()
        if self.runner.returns_detections:
            found = [detection for output in outputs for detection in output]
        else:
            found = [d for loc, conf in outputs for d in self.detect(loc, conf, self.runner.priors)]
        results = [to_pixels(d, image.shape[1], image.shape[0]) for d, image in zip(found, images, strict=True)]
        self.speed.add(len(images), mid - start, net - mid, time.perf_counter() - net)
        return results


def to_pixels(detection: Detections, width: int, height: int) -> PixelDetections:
    """One image's Detect output (relative boxes, labels 1..C-1) in pixels with 0-based labels."""
    scale = np.array([width, height, width, height], np.float64)
    return {
        "boxes": detection["boxes"].cpu().double().numpy() * scale,
        "scores": detection["scores"].cpu().double().numpy(),
        "labels": detection["labels"].cpu().numpy() - 1,
    }


@torch.inference_mode()
def predict_dataset(
    predictor: Predictor,
    dataset: DetectionDataset,
    image_sizes: Sequence[tuple[int, int]],
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
) -> list[PixelDetections]:
    """Detect in every image of ``dataset``, whose transform must be ``predictor.transform``'s (fixed size).

    Args:
        image_sizes: ``(width, height)`` of each original image.
    """
    pin = predictor.runner.device.type == "cuda"  # pinned batches copy to the GPU asynchronously
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=detection_collate, pin_memory=pin)  # fmt: skip
    outputs: list[PixelDetections] = []
    for images, _ in tqdm(loader, desc="detect", unit="batch", disable=not progress, leave=False):
        outputs += predictor.detect_batch(images, image_sizes[len(outputs) : len(outputs) + len(images)])
    return outputs
