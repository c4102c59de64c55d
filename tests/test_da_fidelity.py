"""Domain adaptation as its references compute it: every loss term, I3Net's DCBR weights and prototypes, SWDA's
classifiers and Adaptive Teacher's EMA, against the plain restatements in tests/reference_da.py (same weights, same
inputs: the same values and the same gradients), and the gradient reversal through the whole AdaptiveSSD."""

import copy

import pytest
import torch
import torch.nn.functional as F

from layers.domain import (
    GlobalDomainClassifier,
    LocalDomainClassifier,
    focal_loss,
    least_squares_loss,
    weighted_domain_loss,
)
from layers.i3net import (
    ClassPresenceHead,
    Prototypes,
    RandomLayer,
    class_means,
    dcbr_weights,
    joint_feature,
    layer_class_probs,
    layer_kl,
    presence_targets,
    prototype_loss,
)
from layers.multibox_loss import MultiBoxLoss
from ssd import build_ssd
from tests import reference_da as ref
from utils.engine import adaptive_ssd
from utils.engine.adaptation import DomainAdaptation, ema_update
from utils.engine.da_config import AdaptationConfig, RunLength

TOL = {"rtol": 1e-5, "atol": 1e-6}


def head_map(conf: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A head's slice of conf_preds [B, H*W*A, C] as the reference holds it: [B, H, W, A*C]."""
    return conf.reshape(conf.shape[0], height, width, -1)


def grads(loss: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=False))


# --- SWDA's losses and classifiers -------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", [0, 1])
def test_focal_and_weighted_losses_match_the_references(domain: int) -> None:
    torch.manual_seed(domain)
    logits = (torch.randn(6, 2) * 3).requires_grad_()
    ours, theirs = focal_loss(logits, domain, 5.0), ref.focal_loss_softmax(logits, torch.full((6,), domain), 5.0)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(grads(ours, logits), grads(theirs, logits), **TOL)
    weights = torch.rand(6) + 0.5
    ours, theirs = weighted_domain_loss(logits, domain, weights), ref.weight_ce_loss(logits, domain, weights)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(grads(ours, logits), grads(theirs, logits), **TOL)


def test_swda_classifiers_are_the_references_layers() -> None:
    torch.manual_seed(0)
    features = torch.randn(3, 32, 12, 12, requires_grad=True)
    local = LocalDomainClassifier(32, width=0.125)  # 256 * 0.125 and 128 * 0.125 hidden channels
    assert [m.weight.shape[0] for m in local.net if isinstance(m, torch.nn.Conv2d)] == [32, 16, 1]
    w1, w2, w3 = (m.weight for m in local.net if isinstance(m, torch.nn.Conv2d))
    probability = ref.net_d_pixel(features, w1, w2, w3)
    torch.testing.assert_close(local(features).sigmoid(), probability, **TOL)
    # SWDA's least squares: 0.5 * mean(d^2) on the source, 0.5 * mean((1 - d)^2) on the target (the 0.5 is ours).
    torch.testing.assert_close(least_squares_loss(local(features), 0), torch.mean(probability**2), **TOL)
    torch.testing.assert_close(least_squares_loss(local(features), 1), torch.mean((1 - probability) ** 2), **TOL)
    glob = GlobalDomainClassifier(32, width=0.125).eval()
    assert [c.out_channels for c in glob.convs] == [32, 16, 16] and glob.fc.out_features == 2
    expected = ref.net_d(features, [c.weight for c in glob.convs], list(glob.norms), glob.fc)
    torch.testing.assert_close(glob(features), expected, **TOL)
    glob.train()
    torch.manual_seed(1)
    first = glob(features)
    torch.manual_seed(2)
    assert not torch.equal(first, glob(features))  # dropout while training, as F.dropout(training=self.training)


# --- I3Net --------------------------------------------------------------------------------------------------------


def test_presence_head_targets_and_dcbr_weights_match_the_reference() -> None:
    torch.manual_seed(0)
    features = torch.randn(4, 16, 7, 7)
    head = ClassPresenceHead(16, 5)
    torch.testing.assert_close(head(features), ref.net_gcr_simple(features, head.conv), **TOL)
    targets = [torch.tensor([[0.1, 0.1, 0.3, 0.3, 2.0], [0.2, 0.2, 0.4, 0.4, 4.0]]), torch.zeros(0, 5),
               torch.tensor([[0.0, 0.0, 1.0, 1.0, 2.0]]), torch.tensor([[0.5, 0.5, 0.6, 0.6, 0.0]])]  # fmt: skip
    assert torch.equal(presence_targets(targets, 5), ref.gt_classes2cls_onehot(targets, 5))
    logits = torch.tensor([[2.0, -1.0, 0.3, -3.0, 1.0], [-2.0, -2.0, -2.0, -2.0, -1.0],
                           [0.1, 4.0, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0, 2.5]])  # fmt: skip
    previous = torch.tensor([3.0, 0.0, 1.0, 7.0, 5.0])  # 16 images last epoch
    weights, top = dcbr_weights(logits, previous)
    torch.testing.assert_close(weights, ref.dcbr_weight(logits, previous, 16), **TOL)
    assert top.tolist() == [0, 4, 1, 3]
    # The first epoch has no counts: w2 is e, as the reference's zeros give.
    torch.testing.assert_close(dcbr_weights(logits, torch.zeros(5))[0], ref.dcbr_weight(logits, torch.zeros(5), 1))


def test_class_means_match_get_fea_list_with_gradients() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 8, 5, 5, requires_grad=True)
    conf = (torch.randn(2, 5 * 5 * 3, 4) * 2).requires_grad_()  # A = 3 priors per location, C = 4
    means, present = class_means(features, conf)
    expected = ref.get_fea_list(features.permute(0, 2, 3, 1), head_map(conf, 5, 5), 4)
    assert present.tolist() == [e.numel() > 0 for e in expected]
    for k, value in enumerate(expected):
        if value.numel():
            torch.testing.assert_close(means[k], value, **TOL)
            torch.testing.assert_close(grads(means[k].sum(), features), grads(value.sum(), features), **TOL)


def test_prototypes_over_a_sequence_of_calls_match_the_moving_average() -> None:
    """Three steps in which classes come and go; one set of prototypes per domain (the paper's intent), each the
    reference's moving average of its own domain's batches; the loss and its gradient as get_pa_loss gives them."""
    torch.manual_seed(0)
    prototypes = Prototypes(3, 6)
    reference = {0: [[torch.tensor([]) for _ in range(3)]], 1: [[torch.tensor([]) for _ in range(3)]]}
    for step in range(3):
        produced = {}
        for domain in (0, 1):
            features = torch.randn(2, 6, 3, 3, requires_grad=True)
            conf = torch.randn(2, 9, 4) * 3
            conf[..., 1 + (step + domain) % 3] -= 20  # one class absent from this batch
            produced[domain] = (features, prototypes.update(domain, *class_means(features, conf)))
            current = [ref.get_fea_list(features.permute(0, 2, 3, 1), head_map(conf, 3, 3), 4)]
            reference[domain] = ref.moving_average(reference[domain], current)
            ours, seen = produced[domain][1]
            for k, value in enumerate(reference[domain][0]):
                assert bool(seen[k]) == (value.numel() > 0)
                if value.numel():
                    torch.testing.assert_close(ours[k], value, **TOL)
        loss = prototype_loss(*produced[0][1], *produced[1][1])
        expected = ref.get_pa_loss(reference[0][0], reference[1][0])
        torch.testing.assert_close(loss, expected, **TOL)
        inputs = (produced[0][0], produced[1][0])
        torch.testing.assert_close(grads(loss, *inputs), grads(expected, *inputs), **TOL)
    assert loss.item() > 0  # with separate domains the intra-class term is not the reference's 0


def test_kl_between_layers_matches_get_kl_loss() -> None:
    torch.manual_seed(0)
    first = (torch.randn(2, 4 * 4 * 6, 5) * 2).requires_grad_()  # A = 6
    second = (torch.randn(2, 2 * 2 * 4, 5) * 2).requires_grad_()  # A = 4
    ours = layer_kl(layer_class_probs(first, 6), layer_class_probs(second, 4))
    theirs = ref.get_kl_loss([head_map(first, 4, 4), head_map(second, 2, 2)], 5)
    assert ours.item() > 0
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(grads(ours, first, second), grads(theirs, first, second), **TOL)


def test_joint_feature_matches_get_feature_vector() -> None:
    torch.manual_seed(0)
    features = torch.randn(3, 8, 6, 6, requires_grad=True).abs()
    conf = torch.randn(3, 6 * 6 * 4, 5)
    layer = RandomLayer((8, 4 * 5), output_dim=64, seed=3)
    ours = joint_feature(features, conf, layer).mean(dim=0)
    theirs = ref.get_feature_vector(features, head_map(conf, 6, 6), 5, [layer.matrix_0, layer.matrix_1])
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(grads(ours.sum(), features), grads(theirs.sum(), features), **TOL)
    again = RandomLayer((8, 4 * 5), output_dim=64, seed=3)
    assert torch.equal(again.matrix_0, layer.matrix_0)  # a seeded buffer: a resumed run draws the same


def i3net_setup(start: int) -> tuple[DomainAdaptation, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_ssd(300, 5, "VOC", 0.125, True)
    config = AdaptationConfig(("i3net",), i3net_start=start)
    da = DomainAdaptation(config, model, RunLength(steps_per_epoch=2, epochs=7))
    targets = [
        torch.tensor([[0.1, 0.1, 0.5, 0.5, 1.0]]),
        torch.tensor([[0.2, 0.3, 0.6, 0.9, 3.0], [0.0, 0.0, 0.2, 0.2, 0.0]]),
    ]
    return da, targets, torch.randn(2, 3, 300, 300), torch.randn(2, 1, 3, 300, 300)


@pytest.mark.parametrize("start", [0, 1])
def test_i3net_terms_are_the_reference_composition_of_its_outputs(start: int) -> None:
    """train_I3N.py:198-252 from the forward's outputs: the domain loss's four parts and weights (DCBR's weights
    once started, ones before: :213), the multi-label loss, the joint-feature distance x 38, the prototype loss and
    the KL x 0.1 (once started)."""
    da, targets, source, target_views = i3net_setup(start=start)
    da.counts[0] = torch.tensor([2.0, 0.0, 1.0, 1.0])
    net, outputs = da.network(), {}
    original = net.forward

    def keep(*args):  # noqa: ANN002, ANN202
        outputs["pair"] = original(*args)
        return outputs["pair"]

    net.forward = keep
    before = {k: v.clone() for k, v in da.adaptive.parts.state_dict().items() if "prototypes" in k}
    terms = da.losses(net, MultiBoxLoss(5), source, targets, target_views, 0, torch.autocast("cpu", enabled=False))
    s, t = outputs["pair"]
    weights = ref.dcbr_weight(t["presence"], torch.tensor([2.0, 0.0, 1.0, 1.0]), 4) if start == 0 else torch.ones(2)
    domain = (0.5 * torch.mean(s["local"].sigmoid() ** 2) + 0.5 * ref.weight_ce_loss(s["global"], 0, torch.ones(2)) * 0.1
              + 0.5 * torch.mean((1 - t["local"].sigmoid()) ** 2) + 0.5 * ref.weight_ce_loss(t["global"], 1, weights) * 0.05)  # fmt: skip
    torch.testing.assert_close(terms["loss_domain"], domain, **TOL)
    onehot = ref.gt_classes2cls_onehot(targets, 4)
    torch.testing.assert_close(terms["loss_gcr"], F.binary_cross_entropy_with_logits(s["presence"], onehot), **TOL)
    torch.testing.assert_close(
        terms["loss_gf"], 38 * torch.pow(s["joint"].mean(0) - t["joint"].mean(0), 2).mean(), **TOL
    )
    pa = []
    for i in range(2):  # the maps of --pa_layers 1 3
        size = s["pa_features"][i].shape[2]
        lists = [ref.get_fea_list(out["pa_features"][i].permute(0, 2, 3, 1), head_map(out["pa_conf"][i], size, size), 5)
                 for out in (s, t)]  # fmt: skip
        assert not any(before[f"prototypes.{i}.seen"].flatten())  # first step: the prototypes are the batch means
        pa.append(ref.get_pa_loss(*lists))
    sizes = [t["pa_features"][i].shape[2] for i in range(2)]
    kl = ref.get_kl_loss([head_map(t["pa_conf"][i], sizes[i], sizes[i]) for i in range(2)], 5)
    late = (sum(pa), 0.1 * kl) if start == 0 else (torch.tensor(0.0), torch.tensor(0.0))
    torch.testing.assert_close(terms["loss_pa"], late[0], **TOL)
    torch.testing.assert_close(terms["loss_kl"], late[1], **TOL)
    # The outputs are read where I3Net reads them: the presence head and the joint feature on relu(conv4_3), the
    # joint feature with the first head's probabilities, the prototypes on the maps of --pa_layers (fc7, conv9_2).
    taps: dict[str, torch.Tensor] = {}
    sources = da.detector.sources(source, taps)
    parts = da.adaptive.parts
    torch.testing.assert_close(s["presence"], parts["presence"](taps["conv4_3"]), **TOL)
    first_head = head_map(s["conf"][:, : sources[0].shape[2] ** 2 * 4], sources[0].shape[2], sources[0].shape[3])
    expected = ref.get_feature_vector(taps["conv4_3"], first_head, 5, [parts["random"].matrix_0, parts["random"].matrix_1])
    torch.testing.assert_close(s["joint"].mean(0), expected, **TOL)
    for i, layer in enumerate((1, 3)):
        torch.testing.assert_close(s["pa_features"][i], sources[layer], **TOL)


def test_every_i3net_term_has_a_gradient_and_the_late_ones_wait_for_the_start() -> None:
    da, targets, source, target_views = i3net_setup(start=1)
    autocast = torch.autocast("cpu", enabled=False)
    early = da.losses(da.network(), MultiBoxLoss(5), source, targets, target_views, 1, autocast)  # epoch 0
    assert early["loss_pa"].item() == 0 and early["loss_kl"].item() == 0
    late = da.losses(da.network(), MultiBoxLoss(5), source, targets, target_views, 2, autocast)  # epoch 1
    parameters = [p for p in da.network().parameters() if p.requires_grad]
    for name, value in late.items():
        assert value.item() > 0, name
        reached = torch.autograd.grad(value, parameters, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in reached), name


# --- one domain per BatchNorm batch -----------------------------------------------------------------------------


def test_separate_passes_normalise_each_domain_alone_and_joint_ones_together() -> None:
    torch.manual_seed(0)
    model = build_ssd(300, 5, "VOC", 0.125, True)
    source, target = torch.randn(2, 3, 300, 300), torch.randn(2, 3, 300, 300) * 3 + 1  # another contrast
    for da_batch in ("separate", "joint"):
        da = DomainAdaptation(AdaptationConfig(("grl",), da_batch=da_batch), model, RunLength(2, 7))
        s, t = da.network()(source, target)
        if da_batch == "separate":  # each pass is the detector's alone on its domain
            expected_s, expected_t = model(source), model(target)
        else:
            both = model(torch.cat([source, target]))
            expected_s, expected_t = (both[0][:2], both[1][:2]), (both[0][2:], both[1][2:])
        torch.testing.assert_close(s["conf"], expected_s[1], **TOL)
        torch.testing.assert_close(t["loc"], expected_t[0], **TOL)
    assert not torch.allclose(model(source)[1], model(torch.cat([source, target]))[1][:2], atol=1e-3)


def test_target_bn_mixes_the_targets_statistics_into_batchnorms_running_averages() -> None:
    torch.manual_seed(0)
    model = build_ssd(300, 5, "VOC", 0.125, True)
    reference = copy.deepcopy(model)
    source, target = torch.randn(2, 3, 300, 300), torch.randn(2, 3, 300, 300) * 3 + 1
    da = DomainAdaptation(AdaptationConfig(("target_bn",)), model, RunLength(2, 7))
    s, t = da.network()(source, target)
    assert t is None  # no loss reads the target
    with torch.no_grad():
        reference(target)
    torch.testing.assert_close(s["conf"], reference(source)[1], **TOL)  # the source's pass is its own
    for (key, value), expected in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(value, expected, msg=key)  # running statistics: target, then source


# --- the gradient reversal through the whole network; Adaptive Teacher's EMA -------------------------------------


@pytest.mark.parametrize(("methods", "swda"), [(("grl",), True), (("grl",), False), (("i3net",), False)])
def test_reversed_gradient_sign_and_scale_through_adaptive_ssd(
    methods: tuple[str, ...], swda: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The detector receives -lambda times the domain loss's gradient; the classifiers receive it unchanged."""
    torch.manual_seed(0)
    model = build_ssd(300, 5, "VOC", 0.125, True)
    da = DomainAdaptation(AdaptationConfig(methods, swda=swda, grl_lambda=0.3), model, RunLength(2, 7))
    source, target = torch.randn(2, 3, 300, 300), torch.randn(2, 3, 300, 300)
    # Convolution weights: a bias before BatchNorm gets no gradient beyond rounding.
    detector_params = [p for p in model.vgg.parameters() if p.dim() == 4][:3]
    classifier_params = [p for name, p in da.adaptive.parts.named_parameters() if "presence" not in name]

    def domain_grads() -> list[torch.Tensor]:
        torch.manual_seed(1)  # the same dropout masks
        s, t = da.network()(source, target)
        if "i3net" in methods:
            loss = (
                0.5 * least_squares_loss(s["local"], 0)
                + 0.5 * least_squares_loss(t["local"], 1)
                + 0.5
                * (
                    weighted_domain_loss(s["global"], 0, torch.ones(2))
                    + weighted_domain_loss(t["global"], 1, torch.ones(2))
                )
            )
        else:
            loss = da.alignment_loss(s, t)
        return torch.autograd.grad(loss, detector_params + classifier_params)

    reversed_ = domain_grads()
    monkeypatch.setattr(adaptive_ssd, "grad_reverse", lambda x, weight: x)
    plain = domain_grads()
    n = len(detector_params)
    for got, want in zip(reversed_[:n], plain[:n], strict=True):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, -0.3 * want, rtol=1e-3, atol=1e-4 * want.abs().max().item())
    for got, want in zip(reversed_[n:], plain[n:], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * want.abs().max().item())


def test_ema_is_adaptive_teachers_update_teacher_model() -> None:
    torch.manual_seed(0)
    teacher, student = build_ssd(300, 5, "VOC", 0.125, True), build_ssd(300, 5, "VOC", 0.125, True)
    expected = ref.update_teacher_model(teacher.state_dict(), student.state_dict(), 0.9996)
    ema_update(teacher, student, 0.9996)
    for key, value in teacher.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_alignment_taps_are_i3nets_vgg_slices(batch_norm: bool) -> None:
    """relu(conv3_2) is I3Net's ``vgg[:14]`` and relu(conv4_3) its ``vgg[:23]`` (ssd_I3N.py:219 and :226, ssd.pytorch's
    layout without BatchNorm); with BatchNorm, the outputs of the ReLUs after the 6th and the 10th convolution."""
    torch.manual_seed(0)
    model = build_ssd(300, 5, "VOC", 0.125, batch_norm).eval()
    images = torch.randn(2, 3, 300, 300)
    taps: dict[str, torch.Tensor] = {}
    model.sources(images, taps)
    layers = list(model.vgg)
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.Conv2d)]
    ends = {"conv3_2": convs[5] + (3 if batch_norm else 2), "conv4_3": convs[9] + (3 if batch_norm else 2)}
    if not batch_norm:
        assert ends == {"conv3_2": 14, "conv4_3": 23}
    for name, end in ends.items():
        assert isinstance(layers[end - 1], torch.nn.ReLU)
        expected = images
        for layer in layers[:end]:
            expected = layer(expected)
        torch.testing.assert_close(taps[name], expected, rtol=0, atol=0)
