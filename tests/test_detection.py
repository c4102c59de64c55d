"""Detect: agreement with a per-class loop NMS, caps, empty outputs."""

import pytest
import torch

from layers.detection import Detect
from layers.prior_box import prior_boxes, prior_config
from tests.reference import plain_detect


@pytest.fixture(scope="module")
def priors() -> torch.Tensor:
    return prior_boxes(prior_config("VOC", 300))


def predictions(batch: int, num_priors: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, num_priors, 4, generator=g) * 0.5
    # Background-heavy logits: a few hundred priors per class pass 0.01, as in a trained model.
    conf = torch.randn(batch, num_priors, num_classes, generator=g) * 1.5
    conf[..., 0] += 4.0
    return loc, conf


def assert_same(result: dict[str, torch.Tensor], expected: list[tuple[float, int, list[float]]]) -> None:
    """The same detections, in any order among near-equal scores (a GPU's softmax may differ from a CPU's in the
    last bit, which can swap two near-equal candidates): each expected detection is found, once, by label and box.
    Boxes that survive NMS in one class overlap by less than the threshold, so a label and a box name one detection."""
    assert result["boxes"].shape == (len(expected), 4)
    assert (result["scores"][:-1] >= result["scores"][1:]).all()
    if not expected:
        return
    want_scores = torch.tensor([e[0] for e in expected])
    want_labels = torch.tensor([e[1] for e in expected])
    want_boxes = torch.tensor([e[2] for e in expected])
    boxes, labels = result["boxes"].cpu(), result["labels"].cpu()
    distance = (boxes[:, None] - want_boxes[None]).abs().amax(-1)  # [K, K] largest coordinate difference
    distance[labels[:, None] != want_labels[None]] = float("inf")
    nearest = distance.argmin(1)
    assert (distance.gather(1, nearest[:, None]) <= 1e-5).all()
    assert sorted(nearest.tolist()) == list(range(len(expected)))  # one to one
    torch.testing.assert_close(result["scores"].cpu(), want_scores[nearest])


@pytest.mark.parametrize(
    ("top_k", "keep_top_k", "num_classes"), [(200, None, 21), (400, 200, 21), (50, 30, 5), (8732, None, 3)]
)
def test_detect_equals_per_class_loop(
    priors: torch.Tensor, top_k: int, keep_top_k: int | None, num_classes: int, device: torch.device
) -> None:
    loc, conf = predictions(2, priors.shape[0], num_classes, seed=top_k)
    detect = Detect(num_classes, conf_thresh=0.01, nms_thresh=0.45, top_k=top_k, keep_top_k=keep_top_k)
    results = detect(loc.to(device), conf.to(device), priors.to(device))
    assert all(tensor.device.type == device.type for result in results for tensor in result.values())
    expected = plain_detect(loc, conf, priors, 0.01, 0.45, top_k, keep_top_k)
    assert len(results) == 2
    for result, reference in zip(results, expected, strict=True):
        assert_same(result, reference)


def test_candidates_pass_the_threshold_per_class(priors: torch.Tensor) -> None:
    loc, conf = predictions(1, priors.shape[0], 21, seed=5)
    scores = conf.softmax(-1)[0, :, 1:]
    passing = (scores > 0.01).sum(0)
    assert passing.float().mean() > 100  # realistic load for the comparison above


def test_keep_top_k_caps_each_image(priors: torch.Tensor) -> None:
    loc, conf = predictions(3, priors.shape[0], 21, seed=6)
    results = Detect(21, keep_top_k=25)(loc, conf, priors)
    for result in results:
        assert result["scores"].shape == (25,)
        assert (result["scores"][:-1] >= result["scores"][1:]).all()
        assert result["labels"].min() >= 1 and result["labels"].max() <= 20


def test_nothing_above_threshold_gives_empty_tensors(priors: torch.Tensor) -> None:
    loc = torch.zeros(2, priors.shape[0], 4)
    conf = torch.zeros(2, priors.shape[0], 21)
    conf[..., 0] = 20.0  # every prior is confidently background
    results = Detect(21)(loc, conf, priors)
    for result in results:
        assert result["boxes"].shape == (0, 4)
        assert result["scores"].shape == (0,) and result["labels"].shape == (0,)
        assert result["labels"].dtype == torch.int64


def test_images_do_not_suppress_each_other(priors: torch.Tensor) -> None:
    loc, conf = predictions(1, priors.shape[0], 4, seed=7)
    single = Detect(4)(loc, conf, priors)[0]
    pair = Detect(4)(loc.repeat(2, 1, 1), conf.repeat(2, 1, 1), priors)
    for result in pair:
        torch.testing.assert_close(result["boxes"], single["boxes"])
        torch.testing.assert_close(result["scores"], single["scores"])


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="nms_thresh"):
        Detect(21, nms_thresh=1.5)
    with pytest.raises(ValueError, match="keep_top_k"):
        Detect(21, keep_top_k=0)


def test_keep_top_k_cap_is_exact_when_images_need_different_amounts_of_nms(device: torch.device) -> None:
    """Detect runs NMS on growing prefixes of each image's candidates until keep_top_k survive; the result must
    equal the full NMS truncated. Image 0 is 10 tight clusters of 100 near-identical boxes (each (cluster, class)
    keeps one box, and a cluster's candidates rank together, so only the whole list yields 30 survivors); image 1 is scattered boxes,
    where the first prefix already suffices."""
    g = torch.Generator().manual_seed(11)
    centres = torch.rand(10, 2, generator=g) * 0.8 + 0.1
    clustered = torch.cat([centres.repeat_interleave(100, 0), torch.full((1000, 2), 0.1)], 1)
    clustered[:, :2] += torch.randn(1000, 2, generator=g) * 0.001
    scattered = torch.cat([torch.rand(1000, 2, generator=g), torch.rand(1000, 2, generator=g) * 0.1 + 0.02], 1)
    loc = torch.zeros(2, 1000, 4)
    # Decoding adds each image's own offsets to shared priors: encode image 1's boxes relative to image 0's.
    loc[1, :, :2] = (scattered[:, :2] - clustered[:, :2]) / (0.1 * clustered[:, 2:])
    loc[1, :, 2:] = torch.log(scattered[:, 2:] / clustered[:, 2:]) / 0.2
    conf = torch.randn(2, 1000, 4, generator=g)
    conf[0, :, 0] += (9 - torch.arange(1000) // 100) * 0.4  # clusters rank roughly one after another
    detect = Detect(4, conf_thresh=0.01, nms_thresh=0.45, top_k=1000, keep_top_k=30)
    results = detect(loc.to(device), conf.to(device), clustered.to(device))
    expected = plain_detect(loc, conf, clustered, 0.01, 0.45, 1000, 30)
    assert len(expected[0]) == 30 and len(expected[1]) == 30
    for result, reference in zip(results, expected, strict=True):
        assert_same(result, reference)
