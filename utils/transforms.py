"""The test-time transforms, and the pixel normalisation a network was trained with (:class:`Preprocess`).

Every transform of this project, these and the training augmentation of :mod:`utils.augmentations`, takes
``(image, boxes, labels)`` and returns ``(image, boxes, labels)``:

* in: ``image`` uint8 [H, W, 3] BGR (as ``cv2.imread`` gives); ``boxes`` float [N, 4] pixel xyxy; ``labels``
  int [N];
* out: ``image`` float32 [3, size, size] RGB, mean-subtracted (and divided by ``std`` when one is given);
  ``boxes`` float32 [N', 4] relative xyxy in [0, 1]; ``labels`` int64 [N'].

The mean is given in BGR order, the order of the image file; the output is reordered to RGB, which is what
ssd.pytorch's released weights were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)  # ssd.pytorch / Caffe VGG-16 (vgg16_reducedfc.pth)


def resize_normalise(image: np.ndarray, mean_bgr: np.ndarray, inv_std_bgr: np.ndarray | None, size: int) -> np.ndarray:
    """Resize a uint8/float BGR image [H, W, 3] to ``size`` x ``size`` (cv2 INTER_LINEAR) and normalise it,
    ``(pixel - mean_bgr) * inv_std_bgr``, into float32 [3, size, size] RGB."""
    if image.shape[0] != size or image.shape[1] != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    out = np.empty((3, size, size), dtype=np.float32)
    # Plane by plane: contiguous reads, much faster than casting a transposed [H, W, 3] view.
    for k, plane in enumerate(cv2.split(image)):  # B, G, R
        channel = out[2 - k]  # RGB order
        np.subtract(plane, mean_bgr[k], out=channel, dtype=np.float32)
        if inv_std_bgr is not None:
            channel *= inv_std_bgr[k]
    return out


def check_sample(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> None:
    """Raise a ValueError unless ``image`` is [H, W, 3] and ``boxes`` [N, 4] with ``labels`` [N]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] BGR image, got shape {image.shape}")
    if boxes.shape != (labels.shape[0], 4):
        raise ValueError(f"expected boxes [N, 4] and labels [N], got {boxes.shape} and {labels.shape}")


def _relative_targets(
    image: np.ndarray, boxes: np.ndarray | None, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The test-time transforms' targets: pixel boxes [N, 4] (none: empty) as relative xyxy, labels as int64."""
    boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
    labels = np.zeros((0,), np.int64) if labels is None else np.asarray(labels, np.int64)
    check_sample(image, boxes, labels)
    height, width = image.shape[:2]
    return boxes / np.array([width, height, width, height], dtype=np.float32), labels


class BaseTransform:
    """Test-time preprocessing: resize to ``size`` x ``size``, subtract the BGR ``mean``, reorder to RGB.

    This is exactly the preprocessing ssd.pytorch's released weights expect. ``std`` (BGR, 0-255 units) is
    for bases trained with a standard deviation, such as torchvision's VGG-16.
    """

    def __init__(
        self, size: int = 300, mean: tuple[float, ...] = CAFFE_MEAN_BGR, std: tuple[float, ...] | None = None
    ) -> None:
        self.size = size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.inv_std = None if std is None else 1.0 / np.asarray(std, dtype=np.float32)

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deterministic; ``rng`` is accepted (and ignored) so every transform has one call form."""
        relative, labels = _relative_targets(image, boxes, labels)
        return resize_normalise(image, self.mean, self.inv_std, self.size), relative, labels


class TorchvisionTransform:
    """Test-time preprocessing exactly as torchvision's detection models do it (``GeneralizedRCNNTransform`` with a
    fixed size): the RGB image as float in [0, 1] (``convert_image_dtype``: uint8 / 255), normalised by ``mean``
    and ``std``, then resized to ``size`` x ``size`` by bilinear ``F.interpolate`` (no antialiasing, half-pixel
    centres), in that order, in float32. Checkpoints converted from torchvision use it, so that they give
    torchvision's detections (``utils.deploy.convert_torchvision``).

    Args:
        size: output side.
        mean, std: BGR, 0-255 units, as in :class:`Preprocess` (``std`` None: 1).
    """

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...] | None = None) -> None:
        self.size = size
        # torchvision's units: RGB in [0, 1]. mean / 255 gives back torchvision's float exactly for its constants
        # (0.48235 * 255 / 255 == 0.48235 in float64), and float32 rounds both alike.
        self.mean = torch.tensor([v / 255.0 for v in reversed(mean)], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor([v / 255.0 for v in reversed(std or (1.0, 1.0, 1.0))], dtype=torch.float32)
        self.std = self.std.view(3, 1, 1)

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deterministic; ``rng`` is accepted (and ignored) so every transform has one call form."""
        relative, labels = _relative_targets(image, boxes, labels)
        # A contiguous [3, H, W] tensor, as torchvision's decoders give: the interpolation then runs the same kernel.
        rgb = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[::-1]))  # [3, H, W] uint8
        with torch.inference_mode():
            x = (rgb.float() / 255.0 - self.mean) / self.std  # [3, H, W]
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        return x.numpy(), relative, labels


# How Preprocess resizes: "opencv" (BaseTransform: cv2 INTER_LINEAR on the uint8 image, then normalise; as training
# does) or "torchvision" (TorchvisionTransform: normalise, then F.interpolate; checkpoints converted from torchvision).
RESIZES = ("opencv", "torchvision")


@dataclass(frozen=True)
class Preprocess:
    """The pixel normalisation a network was trained with: ``(pixel - mean) / std`` on 0-255 BGR values, in
    the BGR order of the image file (see the module docstring). ``std`` None divides by nothing. ``resize``
    (one of :data:`RESIZES`) says how test images are brought to the network's size.

    A checkpoint stores it (``utils.checkpoint.DetectorInfo``); :data:`PIXEL_NORMS` names the ones
    training uses (``--pixel_norm``).
    """

    mean: tuple[float, float, float] = CAFFE_MEAN_BGR
    std: tuple[float, float, float] | None = None
    resize: str = "opencv"

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {self.resize!r}")

    def transform(self, size: int) -> BaseTransform | TorchvisionTransform:
        """The test-time transform to ``size`` x ``size`` with this normalisation."""
        if self.resize == "torchvision":
            return TorchvisionTransform(size, self.mean, self.std)
        return BaseTransform(size, self.mean, self.std)

    def to_dict(self) -> dict[str, list[float] | str | None]:
        return {"mean": list(self.mean), "std": None if self.std is None else list(self.std), "resize": self.resize}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        mean, std = data.get("mean"), data.get("std")
        return cls(CAFFE_MEAN_BGR if not mean else tuple(float(v) for v in mean),
                   None if not std else tuple(float(v) for v in std), str(data.get("resize", "opencv")))  # fmt: skip


# torchvision's ImageNet normalisation expressed on 0-255 pixels, BGR order (for utils/deploy/convert_vgg.py weights).
TORCHVISION_MEAN_BGR = (0.406 * 255, 0.456 * 255, 0.485 * 255)
TORCHVISION_STD_BGR = (0.225 * 255, 0.224 * 255, 0.229 * 255)
# The pixel normalisations by name (train.py's --pixel_norm; ssd.Backbone.pixel_norm): caffe for ssd.pytorch's
# vgg16_reducedfc.pth, torchvision for torchvision's ImageNet weights and bases converted from them.
PIXEL_NORMS: dict[str, Preprocess] = {
    "caffe": Preprocess(CAFFE_MEAN_BGR),
    "torchvision": Preprocess(TORCHVISION_MEAN_BGR, TORCHVISION_STD_BGR),
}
