"""Priors: counts and rows fixed by the paper/ssd.pytorch, and agreement with a plain loop."""

import itertools
import math

import pytest
import torch

from layers.prior_box import PRIOR_CONFIGS, PriorConfig, prior_boxes, prior_config


def loop_priors(cfg: PriorConfig) -> torch.Tensor:
    """ssd.pytorch's PriorBox.forward, written as the plain nested loop it is."""
    rows = []
    for k, f in enumerate(cfg.feature_maps):
        for i, j in itertools.product(range(f), repeat=2):
            f_k = cfg.image_size / cfg.steps[k]
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            s_k = cfg.min_sizes[k] / cfg.image_size
            rows.append([cx, cy, s_k, s_k])
            s_prime = math.sqrt(s_k * cfg.max_sizes[k] / cfg.image_size)
            rows.append([cx, cy, s_prime, s_prime])
            for ar in cfg.aspect_ratios[k]:
                rows.append([cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)])
                rows.append([cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)])
    out = torch.tensor(rows, dtype=torch.float32)
    return out.clamp(0, 1) if cfg.clip else out


@pytest.mark.parametrize(
    ("family", "size", "count"), [("VOC", 300, 8732), ("COCO", 300, 8732), ("VOC", 512, 24564), ("COCO", 512, 24564)]
)
def test_prior_counts(family: str, size: int, count: int) -> None:
    cfg = prior_config(family, size)
    assert cfg.num_priors == count
    assert prior_boxes(cfg).shape == (count, 4)


@pytest.mark.parametrize("key", sorted(PRIOR_CONFIGS))
def test_priors_equal_plain_loop(key: tuple[str, int]) -> None:
    cfg = PRIOR_CONFIGS[key]
    torch.testing.assert_close(prior_boxes(cfg), loop_priors(cfg), atol=1e-6, rtol=0)


def test_voc300_rows_worked_by_hand() -> None:
    priors = prior_boxes(prior_config("VOC", 300))
    c = 0.5 / 37.5  # first cell centre: (0 + 0.5) / (300 / 8)
    r2 = math.sqrt(2)
    expected_first_cell = torch.tensor(
        [
            [c, c, 0.1, 0.1],  # min size 30 / 300
            [c, c, math.sqrt(0.1 * 0.2), math.sqrt(0.1 * 0.2)],  # sqrt(30 * 60) / 300
            [c, c, 0.1 * r2, 0.1 / r2],  # aspect ratio 2
            [c, c, 0.1 / r2, 0.1 * r2],  # aspect ratio 1/2
        ]
    )
    torch.testing.assert_close(priors[:4], expected_first_cell, atol=1e-6, rtol=0)
    # Second cell of conv4_3 is one column to the right: cx = 1.5 / 37.5.
    assert priors[4, 0].item() == pytest.approx(1.5 / 37.5, abs=1e-6)
    assert priors[4, 1].item() == pytest.approx(c, abs=1e-6)
    # fc7 starts after 38*38*4 = 5776 priors: 19x19 cells, step 16, 6 boxes with aspect ratios 2 and 3.
    torch.testing.assert_close(
        priors[5776 + 4],
        torch.tensor([0.5 / 18.75, 0.5 / 18.75, 0.2 * math.sqrt(3), 0.2 / math.sqrt(3)]),
        atol=1e-6,
        rtol=0,
    )
    # The last cell (1x1, step 300): 264 px square; ratio-2 boxes exceed the image and are clipped to 1.
    s = 264 / 300
    s_prime = math.sqrt(s * 315 / 300)
    expected_last_cell = torch.tensor(
        [[0.5, 0.5, s, s], [0.5, 0.5, s_prime, s_prime], [0.5, 0.5, 1.0, s / r2], [0.5, 0.5, s / r2, 1.0]]
    )
    torch.testing.assert_close(priors[-4:], expected_last_cell, atol=1e-6, rtol=0)


def test_coco_and_512_first_rows() -> None:
    coco = prior_boxes(prior_config("COCO", 300))
    assert coco[0, 2].item() == pytest.approx(21 / 300, abs=1e-7)
    voc512 = prior_boxes(prior_config("VOC", 512))
    torch.testing.assert_close(voc512[0], torch.tensor([0.5 / 64, 0.5 / 64, 0.07, 0.07]), atol=1e-7, rtol=0)


def test_priors_lie_in_unit_square() -> None:
    for cfg in PRIOR_CONFIGS.values():
        priors = prior_boxes(cfg)
        assert priors.min() >= 0 and priors.max() <= 1
        assert (priors[:, 2:] > 0).all()


def test_prior_config_rejects_ragged_fields() -> None:
    with pytest.raises(ValueError, match="one entry per source layer"):
        PriorConfig(300, (38, 19), (8,), (30, 60), (60, 111), ((2,), (2,)))


def test_unknown_prior_family() -> None:
    with pytest.raises(ValueError, match="no prior preset"):
        prior_config("KITTI", 300)
