"""Detect: exactly a float64 per-class loop NMS with a per-image cap, for any boxes and wherever an image sits in a
batch; agreement with ssd.pytorch's loop, caps, empty outputs; the helper that names the pairs a float32 NMS may
decide otherwise."""

import pytest
import torch
from torchvision.ops import nms

import layers.nms
from layers.detection import Detect, DetectSettings
from layers.nms import greedy_fixed_point, nms_within_groups, static_detect
from layers.prior_box import prior_boxes, prior_config
from tests.reference import (
    detections_outside_pairs,
    float64_detect,
    float64_nms,
    near_threshold_pairs,
    plain_detect,
)


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


@pytest.mark.parametrize("static", [False, True])
def test_nothing_above_threshold_gives_empty_tensors(priors: torch.Tensor, static: bool) -> None:
    loc = torch.zeros(2, priors.shape[0], 4)
    conf = torch.zeros(2, priors.shape[0], 21)
    conf[..., 0] = 20.0  # every prior is confidently background
    results = Detect(21, static=static)(loc, conf, priors)
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


# --- Exactness: Detect equals tests.reference.float64_detect on any input ---


def assert_equals_float64_loop(results: list[dict[str, torch.Tensor]], expected: list[dict[str, torch.Tensor]]) -> None:
    """What "Detect equals the reference" means: per image, the same detections (class and prior; a prior shows
    as its decoded box) in the same order, bit-equal scores, and boxes equal to float32 precision, which on the
    CPU, where both decode with the same float32 operations, is bit-equal."""
    assert len(results) == len(expected)
    for result, reference in zip(results, expected, strict=True):
        assert torch.equal(result["labels"].cpu(), reference["labels"])
        assert torch.equal(result["scores"].cpu(), reference["scores"])
        assert torch.equal(result["boxes"].cpu(), reference["boxes"])
        assert result["boxes"].dtype == result["scores"].dtype == torch.float32


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(a[key], b[key]) for key in ("boxes", "scores", "labels"))


def exact_priors(boxes: list[list[float]]) -> torch.Tensor:
    """cxcywh priors that zero offsets decode back to exactly these xyxy boxes (float32)."""
    xyxy = torch.tensor(boxes, dtype=torch.float64)
    priors = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1).float()
    decoded = torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    assert torch.equal(decoded.double(), xyxy), "choose coordinates that float32 decoding reproduces"
    return priors


def varied_predictions(
    batch: int, priors: torch.Tensor, num_classes: int, seed: int, active_classes: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Logits for boxes of every kind: a quarter tiny (a fraction of a pixel, those of one position overlapping
    each other), a quarter huge (thousands of images wide), a quarter moved far into negative coordinates, the
    rest as a trained model gives. Candidates come from the last ``active_classes`` classes (default: all), a few
    hundred per class and image when all are active."""
    g = torch.Generator().manual_seed(seed)
    num_priors = priors.shape[0]
    loc = torch.randn(batch, num_priors, 4, generator=g) * 0.5
    kind = torch.randint(0, 4, (batch, num_priors), generator=g)
    loc[..., :2][kind == 0] *= 0.0025  # centres and sizes x exp(-6)
    loc[..., 2:][kind == 0] -= 30.0
    loc[..., 2:][kind == 1] += 40.0  # sizes x exp(8)
    loc[..., :2][kind == 2] -= 200.0  # centres 20 prior sizes to the left of and above the prior
    conf = torch.randn(batch, num_priors, num_classes, generator=g) * 1.5
    conf[..., 0] += 4.0 - 0.6 * torch.log(torch.tensor(num_classes / 21))  # as many candidates per class for any C
    if active_classes is not None:
        conf[..., 1 : num_classes - active_classes] -= 8.0
    return loc, conf, priors


@pytest.mark.parametrize(
    ("num_classes", "top_k", "keep_top_k", "num_priors", "active_classes", "static"),
    [
        (81, 400, 200, 600, None, False),
        (81, 60, None, 2000, None, False),
        (81, 100, None, 1500, 5, False),
        (21, 200, None, 8732, None, False),
        (21, 400, 200, 4000, None, False),
        (3, 8732, None, 4000, None, False),
        # The static path where it settles (tests below check its fallback).
        (81, 400, 200, 600, None, True),
        (81, 100, None, 1500, 5, True),
        (21, 400, 200, 4000, None, True),
    ],
)
def test_detect_equals_the_float64_loop(
    priors: torch.Tensor,
    num_classes: int,
    top_k: int,
    keep_top_k: int | None,
    num_priors: int,
    active_classes: int | None,
    static: bool,
) -> None:
    """Boxes tiny, huge and far negative; 81 classes; with and without the per-image cap; thousands of candidates
    per image, or (5 active classes) fewer than 1,000 in the batch: the old batched_nms switched methods there."""
    loc, conf, priors = varied_predictions(2, priors[:num_priors], num_classes, num_classes + top_k, active_classes)
    detect = Detect(num_classes, conf_thresh=0.01, nms_thresh=0.45, top_k=top_k, keep_top_k=keep_top_k, static=static)
    expected = float64_detect(loc, conf, priors, 0.01, 0.45, top_k, keep_top_k)
    assert min(len(reference["labels"]) for reference in expected) > 100
    if static:
        results, settled = static_results(detect, loc, conf, priors)
        assert settled.all()
        assert_equals_float64_loop(results, expected)
    assert_equals_float64_loop(detect(loc, conf, priors), expected)


@pytest.mark.parametrize("static", [False, True])
def test_a_box_far_into_negative_coordinates_does_not_suppress_another_class(
    device: torch.device, static: bool
) -> None:
    """One prior decoded to [-8.3, -8.3, 0.3, 0.3] with classes 1 and 2 above the threshold: per-class NMS keeps
    both (shifting class 2 by 1 x (max coordinate + 1) = 1.3 made it overlap class 1's box)."""
    priors = torch.tensor([[-4.0, -4.0, 8.6, 8.6]])
    conf = torch.tensor([[[0.0, 3.0, 2.5]]])
    results = Detect(3, static=static)(torch.zeros(1, 1, 4).to(device), conf.to(device), priors.to(device))
    assert results[0]["labels"].tolist() == [1, 2]
    torch.testing.assert_close(results[0]["boxes"].cpu(), torch.tensor([[-8.3, -8.3, 0.3, 0.3]] * 2))
    assert_equals_float64_loop(
        Detect(3, static=static)(torch.zeros(1, 1, 4), conf, priors), float64_detect(torch.zeros(1, 1, 4), conf, priors)
    )


# 3-pixel boxes (SSD300) of COCO's last class, with float64 IoU 0.449908, below the 0.45 threshold. The
# coordinates lie on a 2^-20 grid, two of them just off multiples of 2^-12: shifted by 158 (the old offset of
# class 80 in image 0) or by 2,558 (image 15 of 16) and rounded to float32's grid there, the overlap widens and
# the IoU becomes 0.45098, so that one box suppressed the other.
G, V = 2.0**-12, 2.0**-20
TINY_PAIR = [
    [0.25, 0.5, 0.25 + 37 * G - 7 * V, 0.5 + 37 * G],
    [0.25 + 14 * G + 7 * V, 0.5, 0.25 + 51 * G, 0.5 + 37 * G],
]


def tiny_pair_image(fillers: int, seed: int, with_pair: bool = True) -> tuple[torch.Tensor, ...]:
    """One image of 81 classes: TINY_PAIR in class 80, the best two scores, and ``fillers`` boxes scattered over
    the image (the same for any seed; one reaches 1.0, the old offsets' maximum coordinate), each a candidate of
    one other class drawn with ``seed``."""
    corners = torch.randint(0, 924, (fillers, 2), generator=torch.Generator().manual_seed(0)).double() / 1024
    filler_boxes = torch.cat([corners, corners + 100 / 1024], 1)
    filler_boxes[0] = torch.tensor([0.5, 0.5, 1.0, 1.0])
    priors = exact_priors(TINY_PAIR + filler_boxes.tolist())
    conf = torch.zeros(1, fillers + 2, 81)
    if with_pair:
        conf[0, 0, 80], conf[0, 1, 80] = 10.0, 9.5
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(1, 80, (fillers,), generator=g)
    conf[0, 2 + torch.arange(fillers), classes] = 5.0 + torch.rand(fillers, generator=g)
    conf[0, 2, classes[0]] = 7.0
    return torch.zeros(1, fillers + 2, 4), conf, priors


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("keep_top_k", [200, None])
def test_tiny_boxes_near_the_threshold_both_survive_with_many_candidates(keep_top_k: int | None, static: bool) -> None:
    """1,100 other candidates: with the cap Detect runs NMS on the best 800 candidates first (the old
    batched_nms shifted those, and the pair lost a box), without it on all of them."""
    loc, conf, priors = tiny_pair_image(1100, seed=0)
    result = Detect(81, keep_top_k=keep_top_k, static=static)(loc, conf, priors)
    assert (result[0]["labels"] == 80).sum() == 2
    assert_equals_float64_loop([result[0]], float64_detect(loc, conf, priors, keep_top_k=keep_top_k))


@pytest.mark.parametrize(("fillers", "keep_top_k"), [(40, 200), (40, None), (1100, 200), (1100, None)])
def test_an_image_gives_the_same_detections_alone_and_at_position_15_of_16(
    fillers: int, keep_top_k: int | None, device: torch.device
) -> None:
    """Few candidates (the old batched_nms shifted the batch's boxes by up to 1279 x 2) and many (it shifted the
    prefixes), with and without the cap; the other images have their own classes and no pair."""
    images = [tiny_pair_image(fillers, seed=i, with_pair=i == 15) for i in range(16)]
    loc = torch.cat([image[0] for image in images]).to(device)
    conf = torch.cat([image[1] for image in images]).to(device)
    priors = images[15][2].to(device)  # the same for every image
    detect = Detect(81, keep_top_k=keep_top_k)
    alone = detect(loc[15:], conf[15:], priors)[0]
    in_batch = detect(loc, conf, priors)[15]
    assert_identical(in_batch, alone)
    assert (alone["labels"] == 80).sum() == 2


@pytest.mark.parametrize("static", [False, True])
def test_huge_boxes_do_not_hide_the_overlaps_of_small_ones(device: torch.device, static: bool) -> None:
    """A box 10^21 image widths across (class 1) next to two boxes of class 2 with IoU 0.6: class 2 keeps one. (The
    old offsets, multiples of 10^21, rounded the small boxes to points, whose IoU is NaN, so both stayed.)"""
    priors = exact_priors([[0.25, 0.25, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.25, 0.3125, 0.5, 0.5625]])
    loc = torch.zeros(1, 3, 4)
    loc[0, 0, 2:] = 250.0  # sizes x exp(50)
    conf = torch.full((1, 3, 3), -10.0)
    conf[0, :, 0] = 0.0
    conf[0, 0, 1], conf[0, 1, 2], conf[0, 2, 2] = 4.0, 5.0, 4.5
    results = Detect(3, static=static)(loc.to(device), conf.to(device), priors.to(device))
    assert results[0]["labels"].tolist() == [2, 1]
    assert results[0]["boxes"][1, 2] - results[0]["boxes"][1, 0] > 1e21
    assert_equals_float64_loop(Detect(3, static=static)(loc, conf, priors), float64_detect(loc, conf, priors))


@pytest.mark.parametrize("static", [False, True])
def test_boxes_with_infinite_coordinates_neither_suppress_nor_are_suppressed(
    device: torch.device, static: bool
) -> None:
    """exp overflows to inf for size offsets above about 443: such a box's area is inf, its IoU with any box 0 or
    NaN, so it is kept and suppresses nothing, as in the float64 loop."""
    priors = exact_priors([[0.25, 0.25, 0.5, 0.5]] * 3)
    loc = torch.zeros(1, 3, 4)
    loc[0, 0, 2:] = 500.0
    conf = torch.zeros(1, 3, 2)
    conf[0, :, 1] = torch.tensor([6.0, 5.0, 4.0])
    results = Detect(2, static=static)(loc.to(device), conf.to(device), priors.to(device))
    assert results[0]["scores"].shape == (2,)  # the inf box and the better of the two equal boxes
    assert torch.isinf(results[0]["boxes"][0]).all()
    assert_equals_float64_loop(Detect(2, static=static)(loc, conf, priors), float64_detect(loc, conf, priors))


@pytest.mark.parametrize("static", [False, True])
def test_equal_scores_rank_the_lower_prior_then_the_lower_class(device: torch.device, static: bool) -> None:
    """Every prior scores the same in both classes: the top_k cut takes the lowest priors, and the keep_top_k cut
    and the order go by prior, then class."""
    priors = exact_priors([[i / 8, 0.0, i / 8 + 0.0625, 0.0625] for i in range(8)])  # disjoint boxes
    conf = torch.zeros(1, 8, 3)
    conf[0, :, 1:] = 2.0
    loc = torch.zeros(1, 8, 4)
    detect = Detect(3, top_k=3, keep_top_k=5, static=static)
    result = detect(loc.to(device), conf.to(device), priors.to(device))[0]
    assert result["labels"].tolist() == [1, 2, 1, 2, 1]
    torch.testing.assert_close(result["boxes"][:, 0].cpu(), torch.tensor([0.0, 0.0, 0.125, 0.125, 0.25]))
    assert_equals_float64_loop(detect(loc, conf, priors), float64_detect(loc, conf, priors, top_k=3, keep_top_k=5))


@pytest.mark.parametrize("static", [False, True])
def test_an_iou_equal_to_the_threshold_does_not_suppress(device: torch.device, static: bool) -> None:
    """Suppression needs IoU > nms_thresh: these boxes overlap by 18/40 = 0.45 exactly (every step exact in
    float64 up to the division, which rounds to the double 0.45)."""
    priors = exact_priors([[0.0, 0.0, 29 / 64, 0.5], [11 / 64, 0.0, 40 / 64, 0.5]])
    conf = torch.tensor([[[0.0, 4.0], [0.0, 3.0]]])
    loc = torch.zeros(1, 2, 4)
    results = Detect(2, nms_thresh=0.45, static=static)(loc.to(device), conf.to(device), priors.to(device))
    assert results[0]["labels"].tolist() == [1, 1]
    assert Detect(2, nms_thresh=0.449, static=static)(loc, conf, priors)[0]["labels"].tolist() == [1]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("keep_top_k", [40, None])
def test_batch_invariance(priors: torch.Tensor, seed: int, keep_top_k: int | None, device: torch.device) -> None:
    """Property: each image of a random batch (boxes of every kind; 81 classes, the last 5 with up to top_k
    candidates each, so that an image alone has fewer than 1,000, the batch more) gives bit-identical detections
    alone, in the batch, and in the batch reversed."""
    loc, conf, priors = varied_predictions(5, priors[:1500], 81, seed=seed, active_classes=5)
    loc, conf, priors = loc.to(device), conf.to(device), priors.to(device)
    detect = Detect(81, top_k=100, keep_top_k=keep_top_k)
    batched = detect(loc, conf, priors)
    reversed_batch = detect(loc.flip(0), conf.flip(0), priors)[::-1]
    for i in range(5):
        alone = detect(loc[i : i + 1], conf[i : i + 1], priors)[0]
        assert_identical(batched[i], alone)
        assert_identical(reversed_batch[i], alone)


@pytest.mark.parametrize("tiny_group", [0, 1])
def test_nms_within_groups_equals_float64_nms_group_by_group(tiny_group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two groups in one kernel call: ordinary boxes, and boxes of about 1e-9 (float32 bits down to 2^-53)
    overlapping each other at IoU 0.75. The first group sits unshifted in slot 0; in slot 1 the tiny boxes would
    be shifted by 4 and rounded to points, so the call runs group by group."""
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(40, 2, generator=g)
    ordinary = torch.cat([corners, corners + 0.05 + torch.rand(40, 2, generator=g) * 0.3], 1)
    tiny = torch.tensor([[1.0, 1.0, 2.0, 2.0], [1.0, 1.125, 2.0, 2.125], [3.0, 1.0, 4.0, 2.0]]) * 1e-9
    boxes = torch.cat([ordinary[:20], tiny, ordinary[20:]])  # best first
    group = torch.tensor([1 - tiny_group] * 20 + [tiny_group] * 3 + [1 - tiny_group] * 20)
    calls = []
    monkeypatch.setattr(layers.nms, "nms", lambda *args: calls.append(args) or nms(*args))
    kept = sorted(nms_within_groups(boxes, group, 0.45).tolist())
    expected = []
    for label in (0, 1):
        members = (group == label).nonzero().squeeze(1)
        expected += members[float64_nms(boxes[members], 0.45)].tolist()
    assert kept == sorted(expected)
    assert {20, 22} <= set(kept) and 21 not in kept  # the tiny boxes: the second suppressed, the third apart
    assert len(calls) == 1 + tiny_group


# --- Parity with float32 NMS (onnxruntime, torchvision on float32 boxes): the same sets but for named pairs ---

# Float64 IoU 0.4499999953 (below 0.45); torchvision's float32 kernel rounds it above, and suppresses the second.
FLOAT32_DISAGREEMENT = [
    [0.33676332235336304, 0.9557793140411377, 0.800887405872345, 1.3743999004364014],
    [0.5128104090690613, 0.9557793140411377, 0.9769344329833984, 1.3743999004364014],
]


def float32_and_float64_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> tuple[dict, dict]:
    """Per-label NMS at 0.45 of boxes listed best first, by torchvision's float32 kernel and by float64_nms."""
    kept32, kept64 = [], []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().squeeze(1)
        kept32 += members[nms(boxes[members], scores[members], 0.45)].tolist()
        kept64 += members[float64_nms(boxes[members], 0.45)].tolist()
    return tuple(
        {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}
        for kept in (sorted(kept32), sorted(kept64))
    )


def test_float32_nms_keeps_the_float64_sets_outside_the_named_near_threshold_pairs() -> None:
    """Random boxes of three labels, plus FLOAT32_DISAGREEMENT alone in label 9: the float32 and float64 sets
    differ by that pair's second box only, which near_threshold_pairs names; outside the named pairs the sets
    are equal."""
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(600, 2, generator=g)
    random_boxes = torch.cat([corners, corners + 0.05 + torch.rand(600, 2, generator=g) * 0.3], 1)
    boxes = torch.cat([random_boxes, torch.tensor(FLOAT32_DISAGREEMENT)])
    labels = torch.cat([torch.randint(1, 4, (600,), generator=g), torch.tensor([9, 9])])
    scores = torch.cat([torch.rand(600, generator=g), torch.tensor([1.0, 0.9])])
    order = scores.argsort(descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    by_float32, by_float64 = float32_and_float64_nms(boxes, scores, labels)

    pairs = near_threshold_pairs(by_float32, by_float64, 0.45)
    named = (9, *map(tuple, torch.tensor(FLOAT32_DISAGREEMENT).double().tolist()))
    assert named in pairs
    assert len(by_float64["labels"]) == len(by_float32["labels"]) + 1  # the float32 kernel lost the pair's second box
    assert detections_outside_pairs(by_float32, pairs) == detections_outside_pairs(by_float64, pairs)
    assert len(detections_outside_pairs(by_float64, pairs)) > 200


def test_near_threshold_pairs_lists_same_label_pairs_within_the_margin() -> None:
    # [0, 0, 1, 1] against [0, 0, w, 1]: IoU w.
    def detections(widths: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
        boxes = torch.tensor([[0.0, 0.0, w, 1.0] for w in widths], dtype=torch.float64)
        return {"boxes": boxes, "scores": torch.ones(len(widths)), "labels": torch.tensor(labels)}

    a = detections([1.0, 0.450009, 0.44998], [1, 1, 1])
    b = detections([1.0, 0.4500001], [2, 2])
    assert near_threshold_pairs(a, b, 0.45) == [
        (1, (0.0, 0.0, 0.450009, 1.0), (0.0, 0.0, 1.0, 1.0)),
        (2, (0.0, 0.0, 0.4500001, 1.0), (0.0, 0.0, 1.0, 1.0)),
    ]


@pytest.mark.parametrize("static", [False, True])
def test_clip_and_clamp_are_torchvisions_postprocessing(priors: torch.Tensor, static: bool) -> None:
    # torchvision's SSD.postprocess_detections for one image, in relative coordinates: BoxCoder's decode with the
    # log(1000/16) clamp, boxes clipped to the image, then per class score > thresh, top-k, and NMS over classes.
    import math

    from torchvision.models.detection._utils import BoxCoder
    from torchvision.ops import batched_nms

    from layers.box_utils import cxcywh_to_xyxy

    loc, conf = predictions(1, priors.shape[0], 6, seed=5)
    loc[0, :50, 2:] = 30.0  # boxes the clamp limits, and the clip then cuts at the image's edges
    conf[0, :50, 1] += 8.0
    settings = DetectSettings(0.01, 0.45, 400, 200, clip_boxes=True, decode_clamp=math.log(1000 / 16))
    found = Detect.from_settings(6, settings, static=static)(loc, conf, priors)[0]
    boxes = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(loc[0], cxcywh_to_xyxy(priors)).clamp(0, 1)
    scores = conf[0].softmax(-1)
    candidates = []
    for label in range(1, 6):
        passing = (scores[:, label] > 0.01).nonzero().squeeze(1)
        top = scores[passing, label].topk(min(400, len(passing))).indices
        candidates += [(int(p), label) for p in passing[top]]
    index = torch.tensor([p for p, _ in candidates])
    labels = torch.tensor([c for _, c in candidates])
    keep = batched_nms(boxes[index], scores[index, labels], labels, 0.45)[:200]
    assert found["labels"].tolist() == labels[keep].tolist()
    torch.testing.assert_close(found["boxes"], boxes[index[keep]], atol=1e-6, rtol=0)
    torch.testing.assert_close(found["scores"], scores[index[keep], labels[keep]])
    assert found["boxes"].max() == 1.0 and found["boxes"].min() >= 0.0
    unclipped = Detect(6, static=static)(loc, conf, priors)[0]
    assert unclipped["boxes"].max() > 1.0  # the Caffe/ssd.pytorch default does neither


def test_settings_round_trip_with_torchvisions_fields() -> None:

    settings = DetectSettings(0.001, 0.55, 300, 300, clip_boxes=True, decode_clamp=4.135)
    assert DetectSettings.from_dict(settings.to_dict()) == settings
    old = {"conf_thresh": 0.01, "nms_thresh": 0.45, "top_k": 400, "keep_top_k": 200}  # a checkpoint from before
    assert DetectSettings.from_dict(old) == DetectSettings()
    assert settings.override(conf_thresh=0.2).clip_boxes  # flags override single fields, the rest stays


# --- The static path (GPU): fixed-size tensors, exact where settled, the exact path elsewhere ---


def static_results(
    detect: Detect, loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor
) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """static_detect's padded outputs for ``detect``'s settings, as per-image dicts (checking that the padding is
    zeros), and ``settled``."""
    num, boxes, scores, labels, settled = static_detect(
        loc, conf, priors, detect.settings, detect.variances, detect.candidates, detect.rounds
    )
    assert boxes.shape[:2] == scores.shape == labels.shape and settled.dtype == torch.bool
    results = []
    for i, count in enumerate(num.tolist()):
        assert not boxes[i, count:].any() and not scores[i, count:].any() and not labels[i, count:].any()
        results.append({"boxes": boxes[i, :count], "scores": scores[i, :count], "labels": labels[i, :count]})
    return results, settled


def chain_image(length: int) -> tuple[torch.Tensor, ...]:
    """One class, ``length`` boxes a sixteenth apart and a quarter wide, scores descending: each overlaps the next
    at IoU 0.6 and the one after at 1/3, so greedy NMS keeps every other box, and each decision waits for the one
    before it."""
    priors = exact_priors([[i / 16, 0.0, i / 16 + 0.25, 1.0] for i in range(length)])
    conf = torch.zeros(1, length, 2)
    conf[0, :, 1] = 8.0 - 0.1 * torch.arange(length)
    return torch.zeros(1, length, 4), conf, priors


@pytest.mark.parametrize(
    ("scale", "conf_thresh", "top_k", "keep_top_k", "candidates"),
    [
        (3.0, 0.01, 400, 200, None),  # untrained-looking logits: hundreds of candidates per class
        (3.0, 0.01, 4, 200, None),  # top_k cuts every class
        (3.0, 0.01, 400, 7, None),  # a small cap
        (3.0, 0.01, 400, 200, 20),  # M below the cap: falls back
        (3.0, 0.6, 400, None, None),  # few candidates, no cap: all fit in M
        (3.0, 0.01, 30, None, None),  # no cap, top_k cuts every class: the rest fits in M
        (3.0, 0.01, 400, None, None),  # no cap, more candidates than M: falls back
    ],
)
def test_static_path_equals_the_float64_loop(
    priors: torch.Tensor, scale: float, conf_thresh: float, top_k: int, keep_top_k: int | None, candidates: int | None
) -> None:
    g = torch.Generator().manual_seed(top_k)
    loc = torch.randn(2, 800, 4, generator=g)
    conf = torch.randn(2, 800, 21, generator=g) * scale
    detect = Detect(21, conf_thresh, 0.45, top_k, keep_top_k, static=True, candidates=candidates)
    expected = float64_detect(loc, conf, priors[:800], conf_thresh, 0.45, top_k, keep_top_k)
    assert_equals_float64_loop(detect(loc, conf, priors[:800]), expected)


@pytest.mark.parametrize("settings", [DetectSettings(), DetectSettings(conf_thresh=0.5, top_k=200, keep_top_k=None)])
def test_static_outputs_alone_equal_the_float64_loop_on_typical_inputs(
    priors: torch.Tensor, settings: DetectSettings
) -> None:
    """Background-heavy logits (thousands of candidates per class above 0.01, hundreds per image above 0.5): every image settles, so the
    padded outputs are the detections without any fallback."""
    loc, conf = predictions(2, 3000, 21, seed=3)
    priors = priors[:3000]
    detect = Detect.from_settings(21, settings, static=True)
    results, settled = static_results(detect, loc, conf, priors)
    assert settled.all()
    expected = float64_detect(loc, conf, priors, settings.conf_thresh, 0.45, settings.top_k, settings.keep_top_k)
    assert_equals_float64_loop(results, expected)


def test_a_suppression_chain_longer_than_the_rounds_is_not_settled_and_falls_back() -> None:
    loc, conf, priors = chain_image(12)
    expected = float64_detect(loc, conf, priors)
    assert len(expected[0]["labels"]) == 6  # every other box
    short = Detect(2, static=True, rounds=3)
    assert not static_results(short, loc, conf, priors)[1].any()
    assert_equals_float64_loop(short(loc, conf, priors), expected)
    results, settled = static_results(Detect(2, static=True, rounds=11), loc, conf, priors)
    assert settled.all()
    assert_equals_float64_loop(results, expected)


@pytest.mark.parametrize(("candidates", "settles"), [(8, False), (64, True)])
def test_more_candidates_than_m_with_too_few_kept_is_not_settled(candidates: int, settles: bool) -> None:
    """20 identical boxes with equal scores (NMS keeps the lowest prior), then 5 disjoint worse boxes: the best 8
    keep one box, fewer than keep_top_k = 5, and the rest lies beyond them."""
    cluster = [[0.5, 0.5, 0.75, 0.75]] * 20
    priors = exact_priors(cluster + [[i / 8, 0.0, i / 8 + 0.0625, 0.0625] for i in range(5)])
    conf = torch.zeros(1, 25, 2)
    conf[0, :20, 1] = 6.0
    conf[0, 20:, 1] = 5.0 - 0.1 * torch.arange(5)
    loc = torch.zeros(1, 25, 4)
    detect = Detect(2, keep_top_k=5, static=True, candidates=candidates)
    expected = float64_detect(loc, conf, priors, keep_top_k=5)
    assert expected[0]["priors"].tolist() == [0, 20, 21, 22, 23]
    assert static_results(detect, loc, conf, priors)[1].tolist() == [settles]
    assert_equals_float64_loop(detect(loc, conf, priors), expected)


def test_greedy_fixed_point_is_the_sequential_greedy_loop() -> None:
    """Random suppression relations: where the iteration converged its kept set is the loop's, and it converges
    within M - 1 rounds."""
    g = torch.Generator().manual_seed(0)
    num_candidates = 40
    suppresses = (torch.rand(8, num_candidates, num_candidates, generator=g) < 0.15).tril(-1)
    entered = torch.rand(8, num_candidates, generator=g) < 0.9
    expected = torch.zeros_like(entered)
    for b in range(8):
        for i in range(num_candidates):  # kept unless a kept earlier candidate suppresses it
            expected[b, i] = entered[b, i] and not (suppresses[b, i, :i] & expected[b, :i]).any()
    for rounds in (0, 2, 5, num_candidates - 1):
        kept, converged = greedy_fixed_point(suppresses, entered, rounds)
        assert torch.equal(kept[converged], expected[converged])
    assert converged.all()


@pytest.mark.parametrize(
    ("settings", "slots"),
    [(DetectSettings(), 200), (DetectSettings(top_k=50, keep_top_k=None, clip_boxes=True, decode_clamp=4.0), 1000)],
)
def test_static_detect_reads_no_values_on_the_host(settings: DetectSettings, slots: int) -> None:
    """On the meta device, whose tensors have no values, static_detect still runs: no operation depends on the
    data (no .item(), nonzero or boolean mask, no shape that depends on values), as a CUDA graph capture needs.
    The outputs' shapes are fixed: K = keep_top_k, or M (here top_k x 20 classes) without a cap."""
    loc, conf, priors = (torch.empty(shape, device="meta") for shape in ((2, 1000, 4), (2, 1000, 21), (1000, 4)))
    num, boxes, scores, labels, settled = static_detect(loc, conf, priors, settings, candidates=1024, rounds=3)
    assert (num.shape, boxes.shape, scores.shape, labels.shape, settled.shape) == ((2,), (2, slots, 4), (2, slots),
                                                                                   (2, slots), (2,))  # fmt: skip
    assert (num.dtype, boxes.dtype, scores.dtype, labels.dtype, settled.dtype) == (
        torch.int64, torch.float32, torch.float32, torch.int64, torch.bool
    )  # fmt: skip


@pytest.mark.parametrize("keep_top_k", [200, None])
def test_the_static_path_equals_the_exact_path_on_each_device(
    priors: torch.Tensor, keep_top_k: int | None, device: torch.device
) -> None:
    """On a GPU through its CUDA graphs (recorded per batch size, replayed with new inputs; the first call inside
    inference_mode, a later one outside): bit-equal to the exact path on that device, settled images and
    fallbacks alike."""
    loc, conf, priors = varied_predictions(3, priors[:300], 21, seed=keep_top_k or 0)
    loc, conf, priors = loc.to(device), conf.to(device), priors.to(device)
    static, exact = Detect(21, keep_top_k=keep_top_k, static=True), Detect(21, keep_top_k=keep_top_k, static=False)
    with torch.inference_mode():
        first = static(loc, conf, priors)
    for batch in (slice(1, 3), slice(0, 3)):
        for got, want in zip(
            static(loc[batch], conf[batch], priors), exact(loc[batch], conf[batch], priors), strict=True
        ):
            assert_identical(got, want)
            assert all(tensor.device.type == device.type for tensor in got.values())
    for got, want in zip(first, exact(loc, conf, priors), strict=True):
        assert_identical(got, want)
