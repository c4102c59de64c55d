"""utils/engine/step.py: the one training step."""

import pytest
import torch

from layers.box_utils import pad_targets
from layers.multibox_loss import MultiBoxLoss
from tests.test_static_step import make_optimizer, random_batch, small_model
from utils.engine.step import PaddedTargets, TrainStep, batch_losses


def eager_step(model: torch.nn.Module) -> TrainStep:
    return TrainStep(model, MultiBoxLoss(4), model, None, make_optimizer(model, "sgd"),
                     torch.amp.GradScaler("cpu", enabled=False), 0.0, None, torch.device("cpu"),
                     torch.preserve_format, reduce=lambda terms: terms, world_size=1)  # fmt: skip


def test_a_non_finite_loss_stops_before_the_update() -> None:
    model = small_model()
    images, targets = random_batch(2, [1, 2], seed=3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    def refuse(terms: torch.Tensor) -> None:
        raise FloatingPointError(str(terms.tolist()))

    with pytest.raises(FloatingPointError):
        eager_step(model)(images, targets, None, 0, refuse)
    for name, p in model.named_parameters():  # the weights (BatchNorm's statistics move in any training forward)
        assert torch.equal(p, before[name]), name


def test_the_step_returns_the_losses_before_its_update() -> None:
    model = small_model()
    images, targets = random_batch(2, [2, 0], seed=4)
    with torch.no_grad():
        expected = MultiBoxLoss(4)(*model(images), model.priors, targets)
    terms = eager_step(model)(images, targets, None, 0, lambda terms: None)
    torch.testing.assert_close(terms, torch.stack(expected))


def test_padded_targets_give_the_losses_of_the_listed_ones() -> None:
    model = small_model().eval()  # the same forward twice: BatchNorm's running statistics stay
    images, targets = random_batch(3, [1, 0, 4], seed=5)
    autocast = torch.autocast("cpu", enabled=False)
    listed = batch_losses(model, MultiBoxLoss(4), model.priors, images, targets, autocast)
    padded = batch_losses(model, MultiBoxLoss(4), model.priors, images, PaddedTargets(*pad_targets(targets, 8)),
                          autocast)  # fmt: skip
    for name in ("loss_l", "loss_c"):
        torch.testing.assert_close(padded[name], listed[name], rtol=1e-5, atol=1e-6)
