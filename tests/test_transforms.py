"""The test-time transforms: ssd.pytorch's preprocessing, torchvision's bit for bit, and Preprocess, which a
checkpoint stores and which picks between them."""

import cv2
import numpy as np
import pytest
import torch

from utils.transforms import BaseTransform, Preprocess


def test_base_transform_is_ssd_pytorch_preprocessing() -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out, boxes, labels = BaseTransform(300)(image, np.array([[5.0, 10.0, 53.0, 37.0]]), np.array([2]))
    expected = cv2.resize(image, (300, 300)).astype(np.float32) - np.array([104, 117, 123], np.float32)
    np.testing.assert_allclose(out, expected[:, :, ::-1].transpose(2, 0, 1), atol=1e-4)
    np.testing.assert_allclose(boxes, [[5 / 53, 10 / 37, 1.0, 1.0]], rtol=1e-6)
    assert labels.tolist() == [2]
    with_std = BaseTransform(300, mean=(0, 0, 0), std=(2, 2, 2))(image)[0]
    np.testing.assert_allclose(with_std, cv2.resize(image, (300, 300))[:, :, ::-1].transpose(2, 0, 1) / 2, atol=1e-4)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="expected an \\[H, W, 3\\] BGR image"):
        BaseTransform()(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="expected boxes \\[N, 4\\] and labels \\[N\\]"):
        BaseTransform()(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 4)), np.zeros(3))


@pytest.mark.parametrize(
    ("mean", "std", "size"), [((0.48235, 0.45882, 0.40784), (1 / 255,) * 3, 300), ((0.5,) * 3, (0.5,) * 3, 320)]
)  # ssd300_vgg16's and ssdlite320_mobilenet_v3_large's normalisations
def test_torchvision_resize_is_generalized_rcnn_transform_bit_for_bit(mean: tuple, std: tuple, size: int) -> None:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    image = np.random.default_rng(5).integers(0, 256, (375, 500, 3), dtype=np.uint8)  # BGR, as cv2 decodes
    theirs = GeneralizedRCNNTransform(size, size, list(mean), list(std), size_divisible=1, fixed_size=(size, size))
    rgb = torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).contiguous()
    expected = theirs.eval()([rgb.float() / 255.0])[0].tensors[0]  # convert_image_dtype: uint8 -> / 255
    preprocess = Preprocess(
        tuple(m * 255 for m in reversed(mean)), tuple(s * 255 for s in reversed(std)), "torchvision"
    )
    out, boxes, _ = preprocess.transform(size)(image, np.array([[50.0, 75.0, 500.0, 375.0]]), np.array([1]))
    assert torch.equal(torch.from_numpy(out), expected)
    np.testing.assert_allclose(boxes, [[0.1, 0.2, 1.0, 1.0]], rtol=1e-6)
    assert Preprocess.from_dict(preprocess.to_dict()) == preprocess
    assert Preprocess.from_dict({"mean": [104, 117, 123], "std": None}).resize == "opencv"  # older checkpoints
    with pytest.raises(ValueError, match="resize must be one of"):
        Preprocess(resize="pillow")
