"""MultiBoxLoss: equality with a per-image loop, empty images, the all-background batch's normalisation and
DDP's split batch."""

import pytest
import torch

from layers.multibox_loss import MultiBoxLoss
from layers.prior_box import prior_boxes, prior_config
from tests.reference import plain_match, plain_multibox_loss
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
    criterion = MultiBoxLoss(NUM_CLASSES, negatives_norm="ssd_pytorch")  # the reference's normalisation
    loss_l, loss_c = criterion(loc.to(device), conf.to(device), priors.to(device), [t.to(device) for t in targets])
    ref_l, ref_c = plain_multibox_loss(loc, conf, priors, targets)
    torch.testing.assert_close(loss_l.cpu(), ref_l, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_c.cpu(), ref_c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_ignored_priors_are_never_mined(priors: torch.Tensor, seed: int) -> None:
    loc, conf = random_predictions(3, priors.shape[0], seed + 20)
    targets = random_targets([2, 0, 4], torch.Generator().manual_seed(seed + 30))
    ignore = torch.rand(3, priors.shape[0], generator=torch.Generator().manual_seed(seed + 40)) < 0.3
    criterion = MultiBoxLoss(NUM_CLASSES, negatives_norm="ssd_pytorch")
    loss_l, loss_c = criterion(loc, conf, priors, targets, ignore)
    ref_l, ref_c = plain_multibox_loss(loc, conf, priors, targets, ignore=ignore)
    torch.testing.assert_close(loss_l, ref_l, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_c, ref_c, rtol=1e-5, atol=1e-5)
    nothing = criterion(loc, conf, priors, targets, torch.zeros_like(ignore))
    assert all(torch.equal(a, b) for a, b in zip(nothing, criterion(loc, conf, priors, targets), strict=True))


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
    assert torch.isfinite(loss_c) and loss_c.item() > 0  # normalised by 2 x 50 negatives / 3
    loss_c.backward()
    assert ((conf.grad.abs().sum(-1) > 0).sum(1) == 50).all()


def positives_per_image(targets: list[torch.Tensor], priors: torch.Tensor) -> list[int]:
    return [int((plain_match(target, priors)[1] > 0).sum()) for target in targets]


@pytest.mark.parametrize(("sizes", "seed"), [([2, 5, 1, 9], 0), ([1], 2), ([4, 4], 5)])
def test_batches_with_objects_keep_ssd_pytorch_loss(priors: torch.Tensor, sizes: list[int], seed: int) -> None:
    """Every image has a ground truth (VOC): the default normalisation changes nothing, bit for bit."""
    loc, conf = random_predictions(len(sizes), priors.shape[0], seed)
    targets = random_targets(sizes, torch.Generator().manual_seed(seed + 100))
    default = MultiBoxLoss(NUM_CLASSES)(loc, conf, priors, targets)
    ssd_pytorch = MultiBoxLoss(NUM_CLASSES, negatives_norm="ssd_pytorch")(loc, conf, priors, targets)
    for ours, theirs in zip(default, ssd_pytorch, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize(("sizes", "seed"), [([0, 3], 1), ([6, 0, 0, 4, 2], 3), ([0, 0], 4), ([1, 0], 6)])
def test_empty_images_count_as_their_negatives_over_three(priors: torch.Tensor, sizes: list[int], seed: int) -> None:
    """N = positives of the images with objects + 100 mined negatives / 3 per image without: the reference's
    sums, divided by that N instead of the positives."""
    loc, conf = random_predictions(len(sizes), priors.shape[0], seed)
    targets = random_targets(sizes, torch.Generator().manual_seed(seed + 100))
    loss_l, loss_c = MultiBoxLoss(NUM_CLASSES)(loc, conf, priors, targets)
    ref_l, ref_c = plain_multibox_loss(loc, conf, priors, targets)
    positives = positives_per_image(targets, priors)
    count = sum(n if n > 0 else 100 / 3 for n in positives)
    ssd_pytorch_count = max(sum(positives), 1)
    torch.testing.assert_close(loss_l, ref_l * ssd_pytorch_count / count, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_c, ref_c * ssd_pytorch_count / count, rtol=1e-5, atol=1e-6)


def test_all_background_batch_is_not_orders_of_magnitude_larger(priors: torch.Tensor) -> None:
    """Two images without objects: their mined negatives are normalised as in an ordinary batch (a count of at
    least 1), so the loss is not orders of magnitude larger than with objects, where each weighs 1/N."""
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(2, priors.shape[0], 4, generator=g)
    conf = torch.randn(2, priors.shape[0], NUM_CLASSES, generator=g)  # logits of an untrained head
    empty = [torch.zeros(0, 5), torch.zeros(0, 5)]
    ordinary = random_targets([3, 5], torch.Generator().manual_seed(100))
    _, ordinary_c = MultiBoxLoss(NUM_CLASSES)(loc, conf, priors, ordinary)
    _, empty_c = MultiBoxLoss(NUM_CLASSES)(loc, conf, priors, empty)
    assert 10 < ordinary_c.item() < 40
    assert 0.5 < empty_c.item() / ordinary_c.item() < 2  # was ~55
    _, old_empty_c = MultiBoxLoss(NUM_CLASSES, negatives_norm="ssd_pytorch")(loc, conf, priors, empty)
    assert old_empty_c.item() > 1000  # ssd.pytorch's semantics stay available
    torch.testing.assert_close(empty_c, old_empty_c / (200 / 3))


@pytest.mark.parametrize("negatives_norm", ["ratio", "ssd_pytorch"])
def test_split_batch_with_the_global_count_equals_the_whole_batch(priors: torch.Tensor, negatives_norm: str) -> None:
    """DDP: each of W processes divides by (summed count) / W; the mean of their losses is the whole batch's."""
    loc, conf = random_predictions(4, priors.shape[0], 13)
    targets = random_targets([2, 0, 0, 3], torch.Generator().manual_seed(14))
    whole = MultiBoxLoss(NUM_CLASSES, negatives_norm=negatives_norm)(loc, conf, priors, targets)
    counts: list[torch.Tensor] = []
    recorder = MultiBoxLoss(NUM_CLASSES, negatives_norm=negatives_norm, normalizer=lambda n: counts.append(n) or n)
    halves = (slice(0, 2), slice(2, 4))  # process 0 has objects in one image, process 1 in the other
    for half in halves:
        recorder(loc[half], conf[half], priors, targets[half])
    world = MultiBoxLoss(NUM_CLASSES, negatives_norm=negatives_norm,
                         normalizer=lambda n: (counts[0] + counts[1]).clamp(min=1) / 2)  # fmt: skip
    per_process = [world(loc[half], conf[half], priors, targets[half]) for half in halves]
    for k in range(2):
        torch.testing.assert_close((per_process[0][k] + per_process[1][k]) / 2, whole[k])


def test_rejects_mismatched_inputs(priors: torch.Tensor) -> None:
    loc, conf = random_predictions(2, priors.shape[0], 12)
    with pytest.raises(ValueError, match="2 target tensors|target tensors"):
        MultiBoxLoss(NUM_CLASSES)(loc, conf, priors, [torch.zeros(0, 5)])
    with pytest.raises(ValueError, match="classes"):
        MultiBoxLoss(9)(loc, conf, priors, [torch.zeros(0, 5)] * 2)
    with pytest.raises(ValueError, match="negatives_norm must be one of .* got 'positives'"):
        MultiBoxLoss(NUM_CLASSES, negatives_norm="positives")


@pytest.mark.parametrize("extra_rows", [0, 7])
def test_padded_static_loss_equals_the_loss(extra_rows: int) -> None:
    # Targets padded to a fixed count give static shapes (for a recorded training step).
    from layers.box_utils import pad_targets

    priors = prior_boxes(prior_config("VOC", 300))
    g = torch.Generator().manual_seed(extra_rows)
    loc = torch.randn(4, priors.shape[0], 4, generator=g, requires_grad=True)
    conf = torch.randn(4, priors.shape[0], 21, generator=g, requires_grad=True)
    targets = random_targets([3, 1, 0, 5], g)  # one image without objects
    criterion = MultiBoxLoss(21)
    expected = criterion(loc, conf, priors, targets)
    truths, labels, valid = pad_targets(targets)
    pad = lambda t, value: torch.cat([t, torch.full((4, extra_rows, *t.shape[2:]), value, dtype=t.dtype)], 1)  # noqa: E731
    got = criterion.forward_padded(loc, conf, priors, pad(truths, 0.5), pad(labels, -1), pad(valid, False))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(sum(got), (loc, conf))
    expected_grads = torch.autograd.grad(sum(criterion(loc, conf, priors, targets)), (loc, conf))
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
