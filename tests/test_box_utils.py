"""box_utils: conversions, IoU, encode/decode and the batched match against a per-image loop."""

import math

import pytest
import torch
from torchvision.ops import box_iou

from layers.box_utils import (
    cxcywh_to_xyxy,
    decode,
    encode,
    iou,
    match,
    pad_targets,
    xyxy_to_cxcywh,
)
from layers.prior_box import prior_boxes, prior_config
from tests.reference import plain_iou, plain_match


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """n valid xyxy boxes inside [0, 1]."""
    a = torch.rand(n, 2, generator=generator) * 0.8
    size = torch.rand(n, 2, generator=generator) * 0.5 + 0.02
    return torch.cat([a, (a + size).clamp(max=1.0)], dim=1)


def random_targets(sizes: list[int], generator: torch.Generator, num_labels: int = 20) -> list[torch.Tensor]:
    out = []
    for n in sizes:
        labels = torch.randint(0, num_labels, (n, 1), generator=generator).float()
        out.append(torch.cat([random_boxes(n, generator), labels], dim=1))
    return out


@pytest.fixture(scope="module")
def priors() -> torch.Tensor:
    return prior_boxes(prior_config("VOC", 300))


def test_conversions_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(100, g)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)
    assert xyxy_to_cxcywh(torch.tensor([0.1, 0.2, 0.5, 0.6])).tolist() == pytest.approx([0.3, 0.4, 0.4, 0.4])


def test_iou_hand_worked() -> None:
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    # overlap 0.25^2 = 1/16; union 2/4 - 1/16 = 7/16 -> 1/7; touching edges -> 0; identical -> 1.
    torch.testing.assert_close(iou(a, b), torch.tensor([[1 / 7, 0.0, 1.0]]))
    g = torch.Generator().manual_seed(1)
    x, y = random_boxes(30, g), random_boxes(40, g)
    torch.testing.assert_close(iou(x, y), plain_iou(x, y))
    torch.testing.assert_close(iou(x, y), box_iou(x, y))  # the values torchvision gives


def test_decode_inverts_encode(priors: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(2)
    matched = random_boxes(priors.shape[0], g)
    offsets = encode(matched, priors)
    torch.testing.assert_close(decode(offsets, priors), matched, atol=1e-5, rtol=0)
    # Batched form broadcasts over a leading dimension.
    stacked = torch.stack([matched, matched.flip(0)])
    torch.testing.assert_close(decode(encode(stacked, priors), priors), stacked, atol=1e-5, rtol=0)


def test_encode_hand_worked() -> None:
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    truth = torch.tensor([[0.42, 0.3, 0.62, 0.9]])  # centre (0.52, 0.6), size (0.2, 0.6)
    expected = torch.tensor([[0.02 / (0.1 * 0.2), 0.1 / (0.1 * 0.4), 0.0, torch.log(torch.tensor(1.5)) / 0.2]])
    torch.testing.assert_close(encode(truth, prior), expected)


def test_pad_targets_shapes_and_padding() -> None:
    targets = [torch.tensor([[0.1, 0.1, 0.3, 0.3, 4.0]]), torch.zeros(0, 5), torch.rand(3, 5)]
    boxes, labels, valid = pad_targets(targets)
    assert boxes.shape == (3, 3, 4) and labels.shape == (3, 3) and valid.shape == (3, 3)
    assert valid.sum(1).tolist() == [1, 0, 3]
    assert labels[0].tolist() == [4, -1, -1]
    assert boxes[1].tolist() == [[0.0, 0.0, 1.0, 1.0]] * 3


def test_batched_match_equals_per_image_loop(priors: torch.Tensor, device: torch.device) -> None:
    g = torch.Generator().manual_seed(3)
    for sizes in ([3, 0, 7, 1], [12, 5], [0, 0, 2]):
        targets = random_targets(sizes, g)
        loc_t, conf_t = match(*pad_targets([t.to(device) for t in targets]), priors.to(device))
        loc_t, conf_t = loc_t.cpu(), conf_t.cpu()
        for i, target in enumerate(targets):
            ref_loc, ref_conf = plain_match(target, priors)
            assert torch.equal(conf_t[i], ref_conf)
            pos = ref_conf > 0
            torch.testing.assert_close(loc_t[i][pos], ref_loc[pos], atol=1e-5, rtol=1e-5)


def test_match_later_truth_wins_a_shared_best_prior(priors: torch.Tensor) -> None:
    box = [0.3, 0.3, 0.5, 0.5]
    # Two identical boxes share every IoU, so the same best prior; labels 2 then 7.
    target = torch.tensor([box + [2.0], box + [7.0]])
    _, conf_t = match(*pad_targets([target]), priors)
    best = iou(torch.tensor([box]), cxcywh_to_xyxy(priors)).argmax()
    assert conf_t[0, best].item() == 8  # foreground index 7, shifted by the background


def test_match_forces_a_low_iou_truth_onto_its_best_prior(priors: torch.Tensor) -> None:
    sliver = torch.tensor([[0.0, 0.0, 0.01, 0.6, 3.0]])  # no prior reaches IoU 0.5 with it
    overlaps = iou(sliver[:, :4], cxcywh_to_xyxy(priors))
    assert overlaps.max() < 0.5
    _, conf_t = match(*pad_targets([sliver]), priors)
    assert (conf_t[0] > 0).sum().item() == 1
    assert conf_t[0, overlaps.argmax()].item() == 4


def test_match_empty_batch(priors: torch.Tensor) -> None:
    loc_t, conf_t = match(*pad_targets([torch.zeros(0, 5), torch.zeros(0, 5)]), priors)
    assert loc_t.shape == (2, priors.shape[0], 4) and conf_t.shape == (2, priors.shape[0])
    assert (conf_t == 0).all() and torch.isfinite(loc_t).all()


def test_decode_clamp_is_torchvisions_box_coder() -> None:
    # torchvision's BoxCoder(weights=(10, 10, 5, 5)) clamps dw / 5 and dh / 5 at log(1000 / 16) before exp; with the
    # variances (0.1, 0.2) that is the same clamp on loc * 0.2. Both decode in float32.
    from torchvision.models.detection._utils import BoxCoder

    generator = torch.Generator().manual_seed(0)
    priors = torch.rand(64, 4, generator=generator) * 0.5 + 0.25  # cxcywh
    loc = torch.randn(64, 4, generator=generator) * 20  # many offsets beyond the clamp (|0.2 * dw| > 4.14)
    clamp = math.log(1000 / 16)
    ours = decode(loc, priors, clamp=clamp)
    theirs = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(loc, cxcywh_to_xyxy(priors))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert (ours[:, 2:] - ours[:, :2] <= priors[:, 2:] * 1000 / 16 * (1 + 1e-6)).all()
    assert not torch.allclose(decode(loc, priors), ours)  # without the clamp the large offsets grow further
