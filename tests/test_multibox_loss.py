"""MultiBoxLoss: equality with a per-image loop, empty images and the zero-positive batch."""

import pytest
import torch

from layers.multibox_loss import MultiBoxLoss
from layers.prior_box import prior_boxes, prior_config
from tests.reference import plain_multibox_loss
from tests.test_box_utils import random_targets

NUM_CLASSES = 21


@pytest.fixture(scope="module")
def priors() -> torch.Tensor:
    return prior_boxes(prior_config("VOC", 300))


def random_predictions(batch: int, num_priors: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, num_priors, 4, generator=g)
    conf = torch.randn(batch, num_priors, NUM_CLASSES, generator=g) * 2
    return loc, conf


@pytest.mark.parametrize(("sizes", "seed"), [([2, 5, 1, 9], 0), ([0, 3], 1), ([1], 2), ([6, 0, 0, 4, 2], 3)])
def test_batched_loss_equals_per_image_loop(
    priors: torch.Tensor, sizes: list[int], seed: int, device: torch.device
) -> None:
    loc, conf = random_predictions(len(sizes), priors.shape[0], seed)
    targets = random_targets(sizes, torch.Generator().manual_seed(seed + 100))
    criterion = MultiBoxLoss(NUM_CLASSES)
    loss_l, loss_c = criterion(loc.to(device), conf.to(device), priors.to(device), [t.to(device) for t in targets])
    ref_l, ref_c = plain_multibox_loss(loc, conf, priors, targets)
    torch.testing.assert_close(loss_l.cpu(), ref_l, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_c.cpu(), ref_c, rtol=1e-5, atol=1e-5)


def test_gradients_match_the_loop(priors: torch.Tensor, device: torch.device) -> None:
    loc, conf = random_predictions(2, priors.shape[0], 7)
    targets = random_targets([3, 1], torch.Generator().manual_seed(8))
    grads = []
    for loss_fn, on in ((MultiBoxLoss(NUM_CLASSES), device), (plain_multibox_loss, torch.device("cpu"))):
        loc_in, conf_in = loc.to(on).requires_grad_(), conf.to(on).requires_grad_()
        loss_l, loss_c = loss_fn(loc_in, conf_in, priors.to(on), [t.to(on) for t in targets])
        (loss_l + loss_c).backward()
        grads.append((loc_in.grad.cpu(), conf_in.grad.cpu()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_three_negatives_per_positive(priors: torch.Tensor) -> None:
    loc, conf = random_predictions(1, priors.shape[0], 9)
    targets = random_targets([2], torch.Generator().manual_seed(10))
    criterion = MultiBoxLoss(NUM_CLASSES)
    # Push every class logit to background except for the mined priors: count the priors that add loss.
    conf = conf.clone().requires_grad_()
    _, loss_c = criterion(loc, conf, priors, targets)
    loss_c.backward()
    contributing = (conf.grad.abs().sum(-1) > 0).sum().item()
    from layers.box_utils import match, pad_targets

    _, conf_t = match(*pad_targets(targets), priors)
    num_pos = int((conf_t > 0).sum())
    assert contributing == 4 * num_pos


def test_empty_images_are_background_samples(priors: torch.Tensor) -> None:
    loc, conf = random_predictions(2, priors.shape[0], 11)
    conf.requires_grad_()
    criterion = MultiBoxLoss(NUM_CLASSES, empty_image_negatives=50)
    loss_l, loss_c = criterion(loc, conf, priors, [torch.zeros(0, 5), torch.zeros(0, 5)])
    assert loss_l.item() == 0.0
    assert torch.isfinite(loss_c) and loss_c.item() > 0  # normalised by max(0 positives, 1)
    loss_c.backward()
    assert ((conf.grad.abs().sum(-1) > 0).sum(1) == 50).all()


def test_rejects_mismatched_inputs(priors: torch.Tensor) -> None:
    loc, conf = random_predictions(2, priors.shape[0], 12)
    with pytest.raises(ValueError, match="2 target tensors|target tensors"):
        MultiBoxLoss(NUM_CLASSES)(loc, conf, priors, [torch.zeros(0, 5)])
    with pytest.raises(ValueError, match="classes"):
        MultiBoxLoss(9)(loc, conf, priors, [torch.zeros(0, 5)] * 2)
