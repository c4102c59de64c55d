"""Priors: counts and rows fixed by the paper/ssd.pytorch and torchvision, and agreement with a plain loop."""

import itertools
import json
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

from layers.prior_box import PRIOR_CONFIGS, PriorConfig, prior_boxes, prior_config


def loop_priors(cfg: PriorConfig) -> torch.Tensor:
    """ssd.pytorch's PriorBox.forward, written as the plain nested loop it is."""
    rows = []
    for k, f in enumerate(cfg.feature_maps):
        for i, j in itertools.product(range(f), repeat=2):
            f_k = f if cfg.steps is None else cfg.image_size / cfg.steps[k]
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            s_k = cfg.min_sizes[k] / cfg.image_size
            rows.append([cx, cy, s_k, s_k])
            s_prime = math.sqrt(s_k * cfg.max_sizes[k] / cfg.image_size)
            rows.append([cx, cy, s_prime, s_prime])
            for ar in cfg.aspect_ratios[k]:
                rows.append([cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)])
                rows.append([cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)])
    out = torch.tensor(rows, dtype=torch.float32)
    if cfg.clip and not cfg.clip_centres:
        return torch.cat((out[:, :2], out[:, 2:].clamp(0, 1)), dim=1)
    return out.clamp(0, 1) if cfg.clip else out


@pytest.mark.parametrize(
    ("family", "size", "count"),
    [("VOC", 300, 8732), ("COCO", 300, 8732), ("VOC", 512, 24564), ("COCO", 512, 24564), ("TORCHVISION", 300, 8732),
     ("SSDLITE", 320, 3234)],
)  # fmt: skip
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
        clipped = priors if cfg.clip_centres else priors[:, 2:]  # torchvision's presets clip sizes only
        assert clipped.min() >= 0 and clipped.max() <= 1
        assert (priors[:, 2:] > 0).all()


# The default-box generators of torchvision's builders, as ssd300_vgg16 and ssdlite320_mobilenet_v3_large make them.
TORCHVISION_GENERATORS = {
    ("TORCHVISION", 300): lambda: DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    ),
    ("SSDLITE", 320): lambda: DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95),
}  # fmt: skip


@pytest.mark.parametrize("key", sorted(TORCHVISION_GENERATORS))
def test_torchvision_presets_are_its_default_boxes(key: tuple[str, int]) -> None:
    cfg = PRIOR_CONFIGS[key]
    grids = [[f, f] for f in cfg.feature_maps]
    theirs = TORCHVISION_GENERATORS[key]()._grid_default_boxes(grids, [cfg.image_size] * 2, torch.float32)
    assert torch.equal(prior_boxes(cfg), theirs)  # bit for bit: a converted model decodes against the same priors


def test_the_builders_use_these_generators() -> None:
    from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

    for key, build in ((("TORCHVISION", 300), ssd300_vgg16), (("SSDLITE", 320), ssdlite320_mobilenet_v3_large)):
        with torch.device("meta"):  # the layout only: no weights are made
            model = build(weights=None, weights_backbone=None)
        ours = TORCHVISION_GENERATORS[key]()
        assert repr(model.anchor_generator) == repr(ours)


def test_first_and_last_priors_of_the_torchvision_presets() -> None:
    lite = prior_boxes(prior_config("SSDLITE", 320))
    # 20x20 map: first centre 0.5 / 20, scale 0.2 (= min_ratio); last: the 1x1 map's ratio 1/3 box at scale 0.95,
    # its height 0.95 * sqrt(3) clipped to 1.
    torch.testing.assert_close(lite[0], torch.tensor([0.025, 0.025, 0.2, 0.2]), atol=1e-7, rtol=0)
    torch.testing.assert_close(lite[-1], torch.tensor([0.5, 0.5, 0.95 / math.sqrt(3), 1.0]), atol=1e-7, rtol=0)
    tv = prior_boxes(prior_config("TORCHVISION", 300))
    torch.testing.assert_close(tv[0], torch.tensor([0.5 / 37.5, 0.5 / 37.5, 0.07, 0.07]), atol=1e-7, rtol=0)
    torch.testing.assert_close(tv[-1], torch.tensor([0.5, 0.5, 0.87 / math.sqrt(2), 1.0]), atol=1e-7, rtol=0)
    # Where torchvision and ssd.pytorch differ: the 10x10 map's last column, centre (9 + 0.5) / (300 / 32) > 1,
    # clipped to 1 by ssd.pytorch (COCO preset) and kept by torchvision.
    coco = prior_boxes(prior_config("COCO", 300))
    last_column = 38 * 38 * 4 + 19 * 19 * 6 + 9 * 6  # first prior of the 10x10 map's cell (row 0, column 9)
    assert tv[last_column, 0].item() == pytest.approx(9.5 / 9.375) and coco[last_column, 0].item() == 1.0
    assert (tv != coco).any(dim=1).sum() == 114  # 19 cells on the last row or column, 6 boxes each


@pytest.mark.parametrize("key", sorted(PRIOR_CONFIGS))
def test_prior_config_round_trips_through_its_dict(key: tuple[str, int]) -> None:
    config = PRIOR_CONFIGS[key]
    assert PriorConfig.from_dict(config.to_dict()) == config
    as_json = json.loads(json.dumps(config.to_dict()))  # tuples become lists
    assert PriorConfig.from_dict(as_json) == config


def test_prior_config_dict_keeps_its_field_names_and_defaults() -> None:
    # Checkpoints store this dict (inside ModelConfig's): the field names are the format.
    data = prior_config("SSDLITE", 320).to_dict()
    assert list(data) == [
        "image_size", "feature_maps", "steps", "min_sizes", "max_sizes", "aspect_ratios", "clip", "clip_centres"
    ]  # fmt: skip
    assert data["steps"] is None and data["clip_centres"] is False
    del data["clip"], data["clip_centres"]  # older checkpoints predate them
    assert PriorConfig.from_dict(data) == PriorConfig(**{**data, "clip": True, "clip_centres": True})


def test_prior_config_rejects_ragged_fields() -> None:
    with pytest.raises(ValueError, match="one entry per source layer"):
        PriorConfig(300, (38, 19), (8,), (30, 60), (60, 111), ((2,), (2,)))


def test_unknown_prior_family() -> None:
    with pytest.raises(ValueError, match="no prior preset"):
        prior_config("KITTI", 300)
