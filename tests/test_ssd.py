"""The network: ssd.pytorch's state_dict layout and outputs, SSD512, variants, forward/backward."""

import copy

import pytest
import torch

from layers.multibox_loss import MultiBoxLoss
from layers.prior_box import prior_config
from ssd import BACKBONES, SSD, ModelConfig, build_ssd
from tests.reference import random_state, ssd_pytorch_forward, ssd_pytorch_shapes
from utils.runtime import InferenceModel


@pytest.fixture(scope="module")
def ssd300() -> SSD:
    return build_ssd(300, 21).eval()


def test_ssd300_state_dict_is_ssd_pytorch_layout(ssd300: SSD) -> None:
    expected = ssd_pytorch_shapes(21)
    got = {k: tuple(v.shape) for k, v in ssd300.state_dict().items()}
    assert len(got) == 71
    assert got == expected
    convs = sorted(int(k.split(".")[1]) for k in got if k.startswith("vgg.") and k.endswith(".weight"))
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33]


def test_priors_are_a_buffer_outside_the_state_dict(ssd300: SSD) -> None:
    assert "priors" not in ssd300.state_dict()
    assert "priors" in dict(ssd300.named_buffers())
    assert ssd300.priors.shape == (8732, 4)
    assert ssd300.to(torch.float64).priors.dtype == torch.float64  # follows .to() like any buffer
    ssd300.float()


def test_loaded_ssd_pytorch_weights_give_its_outputs(ssd300: SSD) -> None:
    state = random_state(ssd_pytorch_shapes(21), seed=1)
    ssd300.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 300, 300, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loc, conf = ssd300(x)
        ref_loc, ref_conf = ssd_pytorch_forward(state, x, 21)
    assert loc.shape == (2, 8732, 4) and conf.shape == (2, 8732, 21)
    torch.testing.assert_close(loc, ref_loc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conf, ref_conf, rtol=1e-4, atol=1e-4)


def test_forward_is_the_same_in_train_and_eval_mode() -> None:
    model = build_ssd(300, 4, width=0.125)
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    for a, b in zip(train_out, eval_out, strict=True):
        torch.testing.assert_close(a, b)


def test_ssd512_follows_the_paper() -> None:
    model = build_ssd(512, 21, width=0.25)
    state = model.state_dict()
    assert model.priors.shape == (24564, 4)
    assert len(model.extras) == 10 and len(model.loc) == 7
    assert tuple(state["extras.9.weight"].shape[2:]) == (4, 4)  # conv12's 4x4 kernel
    with torch.no_grad():
        loc, conf = model(torch.zeros(1, 3, 512, 512))
    assert loc.shape == (1, 24564, 4) and conf.shape == (1, 24564, 21)
    full = build_ssd(512, 81, priors="COCO")
    assert sum(p.numel() for p in full.extras.parameters()) > 0
    assert full.state_dict()["conf.6.weight"].shape == (4 * 81, 256, 3, 3)


@pytest.mark.parametrize(("width", "batch_norm"), [(0.125, True), (0.5, False)])
def test_variants_keep_the_prior_count(width: float, batch_norm: bool) -> None:
    model = build_ssd(300, 9, priors="COCO", width=width, batch_norm=batch_norm)
    with torch.no_grad():
        loc, conf = model.eval()(torch.zeros(2, 3, 300, 300))
    assert loc.shape == (2, 8732, 4) and conf.shape == (2, 8732, 9)
    assert model.L2Norm.weight.shape == (int(512 * width),)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == batch_norm


def test_l2norm_starts_at_twenty(ssd300: SSD) -> None:
    fresh = build_ssd()
    assert torch.all(fresh.L2Norm.weight == 20.0)


def test_bad_configurations_are_named() -> None:
    with pytest.raises(ValueError, match="one of \\[300, 512\\]"):
        SSD(ModelConfig(size=400, num_classes=21, priors=prior_config("VOC", 300)))
    with pytest.raises(ValueError, match="prior config is for 512"):
        SSD(ModelConfig(size=300, num_classes=21, priors=prior_config("VOC", 512)))
    with pytest.raises(ValueError, match="num_classes"):
        build_ssd(300, 1)


def test_short_cpu_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    model = build_ssd(300, 3, width=0.125, batch_norm=True).train()
    criterion = MultiBoxLoss(3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    images = torch.randn(2, 3, 300, 300)
    targets = [
        torch.tensor([[0.1, 0.1, 0.5, 0.6, 0.0]]),
        torch.tensor([[0.4, 0.3, 0.9, 0.8, 1.0], [0.0, 0.0, 0.2, 0.2, 0.0]]),
    ]
    losses = []
    for _ in range(8):
        loc, conf = model(images)
        loss_l, loss_c = criterion(loc, conf, model.priors, targets)
        loss = loss_l + loss_c
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def narrow() -> SSD:
    torch.manual_seed(0)
    return build_ssd(300, 5, width=0.125, batch_norm=True).eval()


def test_inference_model_gives_the_network_outputs(narrow: SSD, device: torch.device) -> None:
    images = torch.randn(3, 3, 300, 300)
    with torch.no_grad():
        expected = narrow(images)
    loc, conf = InferenceModel(copy.deepcopy(narrow).to(device))(images)  # images on the CPU: it moves them
    assert not torch.is_inference_mode_enabled() and loc.is_inference()
    assert loc.device.type == conf.device.type == device.type
    if device.type == "cpu":
        torch.testing.assert_close(loc, expected[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(conf, expected[1], atol=1e-5, rtol=1e-4)
    for got, want in zip((loc, conf), expected, strict=True):  # cuDNN convolves float32 in TF32 (10-bit mantissa)
        assert (got.cpu() - want).norm() <= 3e-3 * want.norm()


def test_mixed_precision_inference_gives_float32_close_to_the_network(narrow: SSD, device: torch.device) -> None:
    images = torch.randn(2, 3, 300, 300)
    with torch.no_grad():
        expected = narrow(images)
    network = InferenceModel(copy.deepcopy(narrow).to(device), amp=True)
    assert network.amp_dtype == (torch.bfloat16 if device.type == "cpu" else torch.float16)
    loc, conf = (output.cpu() for output in network(images))
    assert loc.dtype == conf.dtype == torch.float32
    assert not torch.equal(conf, expected[1])  # it did run in bfloat16 (8 significant bits)
    for got, want in zip((loc, conf), expected, strict=True):
        assert (got - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.parametrize("amp", [False, True])
def test_cuda_graph_replays_give_the_eager_outputs(narrow: SSD, device: torch.device, amp: bool) -> None:
    model = copy.deepcopy(narrow).to(device)
    eager, graphed = InferenceModel(model, amp), InferenceModel(model, amp, cuda_graph=True)
    assert graphed.cuda_graph == (device.type == "cuda")  # a CPU runs eagerly
    first, second, single = torch.randn(2, 3, 300, 300), torch.randn(2, 3, 300, 300), torch.randn(1, 3, 300, 300)
    out_first = graphed(first)
    out_second = graphed(second)  # replays the graph recorded for this shape on new inputs
    out_single = graphed(single)  # another shape: another graph
    for images, outputs in ((first, out_first), (second, out_second), (single, out_single)):
        for got, want in zip(outputs, eager(images), strict=True):
            assert got.shape == want.shape and got.dtype == torch.float32
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(graphed._graphs) == (2 if device.type == "cuda" else 0)
    # load_state_dict changes the parameters in place: the next replay sees it.
    state = graphed.model.state_dict()
    state["conf.0.bias"] = state["conf.0.bias"] + 1.0
    graphed.model.load_state_dict(state)
    eager.model.load_state_dict(state)
    torch.testing.assert_close(graphed(first)[1], eager(first)[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(graphed(first)[1], out_first[1])


def test_inference_model_leaves_the_callers_model_as_it_was(narrow: SSD) -> None:
    model = copy.deepcopy(narrow).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    InferenceModel(model, amp=True)(torch.randn(1, 3, 300, 300))
    assert model.training
    assert all(p.is_contiguous() for p in model.parameters())  # still NCHW, not channels_last
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("backbone", "reduced_tail", "num_keys", "num_params", "sources"),
    [
        # 3,440,060 and 35,641,826 are the parameter counts torchvision publishes for its COCO ssdlite320_mobilenet_v3_large
        # and ssd300_vgg16 (91 classes).
        ("mobilenet_v3_large", True, 476, 3_440_060, [(672, 20), (480, 10), (512, 5), (256, 3), (256, 2), (128, 1)]),
        ("mobilenet_v3_large", False, 476, 5_198_540, [(672, 20), (960, 10), (512, 5), (256, 3), (256, 2), (128, 1)]),
        ("resnet50", False, 342, 24_139_362, [(1024, 38), (512, 19), (512, 10), (256, 5), (256, 3), (256, 1)]),
        ("vgg16", False, 71, 35_641_826, [(512, 38), (1024, 19), (512, 10), (256, 5), (256, 3), (256, 1)]),
    ],
)  # fmt: skip
def test_backbone_layouts(backbone: str, reduced_tail: bool, num_keys: int, num_params: int, sources: list) -> None:
    with torch.device("meta"):  # shapes only: nothing is allocated or computed
        model = build_ssd(num_classes=91, priors="COCO" if backbone != "mobilenet_v3_large" else None,
                          backbone=backbone, reduced_tail=reduced_tail).eval()  # fmt: skip
        size = model.config.size
        features = model.sources(torch.empty(1, 3, size, size))
        loc, conf = model(torch.empty(2, 3, size, size))
    state = model.state_dict()
    assert len(state) == num_keys and sum(p.numel() for p in model.parameters()) == num_params
    assert [(f.shape[1], f.shape[2]) for f in features] == sources
    assert loc.shape == (2, model.config.priors.num_priors, 4) and conf.shape == (2, model.config.priors.num_priors, 91)
    top_level = {key.split(".")[0] for key in state}
    assert top_level == (
        {"vgg", "L2Norm", "extras", "loc", "conf"} if backbone == "vgg16" else {"base", "extras", "loc", "conf"}
    )


def test_ssdlite_layout_is_torchvisions() -> None:
    # Module for module torchvision's, under this project's prefixes: BatchNorm (eps 0.001), ReLU6, depthwise heads.
    with torch.device("meta"):
        model = build_ssd(backbone="mobilenet_v3_large", num_classes=5, reduced_tail=True)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert model.config.size == 320 and model.priors.shape == (3234, 4)
    assert state["loc.0.0.0.weight"] == (672, 1, 3, 3) and state["loc.0.1.weight"] == (24, 672, 1, 1)
    assert state["conf.5.1.weight"] == (6 * 5, 128, 1, 1)
    assert state["extras.0.1.0.weight"] == (256, 1, 3, 3)  # 1x1 to 256, 3x3 depthwise stride 2, 1x1 to 512
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batch_norms and all(m.eps == 0.001 and m.momentum == 0.03 for m in batch_norms)
    assert isinstance(model.loc[0][0][2], torch.nn.ReLU6)


def test_resnet50_keeps_layer3_at_stride_one() -> None:
    # NVIDIA's SSD300: layer3's first block does not halve the 38x38 map (conv2 and the shortcut at stride 1).
    with torch.device("meta"):
        model = build_ssd(backbone="resnet50", num_classes=3)
    block = model.base[0].layer3[0]
    assert block.conv2.stride == (1, 1) and block.downsample[0].stride == (1, 1)
    assert not hasattr(model.base[0], "layer4") and model.config.priors == prior_config("VOC", 300)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "mobilenet_v3_large", "size": 300}, "one of \\[320\\] for the mobilenet_v3_large backbone"),
        ({"backbone": "resnet50", "width": 0.5}, "ResNet-50 at width 1.0 only"),
        ({"backbone": "resnet50", "batch_norm": True}, "has BatchNorm throughout; batch_norm is a vgg16 option"),
        ({"backbone": "vgg16", "reduced_tail": True}, "reduced_tail is a mobilenet_v3_large option"),
        ({"backbone": "resnet101"}, "unknown backbone 'resnet101'; choose one of"),
    ],
)  # fmt: skip
def test_backbone_misconfigurations_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        build_ssd(num_classes=3, **kwargs)


def test_model_config_dict_is_the_checkpoint_format() -> None:
    # Checkpoints store this dict: its keys and values are pinned, tuples included (torch.save keeps them).
    data = build_ssd(300, 21).config.to_dict()
    assert data == {
        "size": 300,
        "num_classes": 21,
        "priors": {
            "image_size": 300,
            "feature_maps": (38, 19, 10, 5, 3, 1),
            "steps": (8, 16, 32, 64, 100, 300),
            "min_sizes": (30, 60, 111, 162, 213, 264),
            "max_sizes": (60, 111, 162, 213, 264, 315),
            "aspect_ratios": ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
            "clip": True,
            "clip_centres": True,
        },
        "width": 1.0,
        "batch_norm": False,
        "backbone": "vgg16",
        "reduced_tail": False,
    }
    assert list(data) == ["size", "num_classes", "priors", "width", "batch_norm", "backbone", "reduced_tail"]


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(300, 21, prior_config("VOC", 300)),
        ModelConfig(512, 81, prior_config("COCO", 512), width=0.5, batch_norm=True),
        ModelConfig(320, 91, prior_config("SSDLITE", 320), backbone="mobilenet_v3_large", reduced_tail=True),
        ModelConfig(300, 9, prior_config("TORCHVISION", 300), backbone="resnet50"),
    ],
)
def test_model_config_round_trips_through_its_dict(config: ModelConfig) -> None:
    assert ModelConfig.from_dict(config.to_dict()) == config
    as_lists = {**config.to_dict(), "priors": {k: list(v) if isinstance(v, tuple) else v
                                               for k, v in config.to_dict()["priors"].items()}}  # fmt: skip
    assert ModelConfig.from_dict(as_lists) == config  # as JSON gives it back (an exported file's metadata)


def test_old_configs_are_vgg16() -> None:
    data = build_ssd(300, 4, width=0.125).config.to_dict()
    for new_field in ("backbone", "reduced_tail"):
        del data[new_field]
    del data["priors"]["clip_centres"]
    config = ModelConfig.from_dict(data)
    assert config.backbone == "vgg16" and not config.reduced_tail and config.priors == prior_config("VOC", 300)


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "resnet50"])
def test_other_backbones_train(backbone: str) -> None:
    # A few steps on one tiny batch: gradients everywhere, the loss comes down.
    torch.manual_seed(0)
    lite = backbone == "mobilenet_v3_large"
    model = build_ssd(num_classes=3, backbone=backbone, width=0.25 if lite else 1.0, reduced_tail=lite).train()
    size = model.config.size
    criterion = MultiBoxLoss(3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(2, 3, size, size)  # two: BatchNorm in training needs more than one value on 1x1 maps
    targets = [torch.tensor([[0.1, 0.1, 0.5, 0.6, 0.0]]), torch.tensor([[0.4, 0.3, 0.9, 0.8, 1.0]])]
    losses = []
    for _ in range(4 if lite else 2):  # a ResNet-50 SSD300 step costs seconds on a CPU
        loc, conf = model(images)
        loss_l, loss_c = criterion(loc, conf, model.priors, targets)
        optimizer.zero_grad()
        (loss_l + loss_c).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        optimizer.step()
        losses.append((loss_l + loss_c).item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("name", "base_weights", "pixel_norm"),
    [
        ("vgg16", "weights/vgg16_reducedfc.pth", "caffe"),
        ("mobilenet_v3_large", "weights/mobilenet_v3_large-8738ca79.pth", "torchvision"),
        ("resnet50", "weights/resnet50-0676ba61.pth", "torchvision"),
    ],
)
def test_a_backbone_entry_gives_train_py_its_base_weights_and_their_normalisation(
    name: str, base_weights: str, pixel_norm: str
) -> None:
    import train
    from utils.engine.config import TrainConfig
    from utils.engine.resume import resolve_model_flags
    from utils.transforms import PIXEL_NORMS

    backbone = BACKBONES[name]
    assert (backbone.base_weights, backbone.pixel_norm) == (base_weights, pixel_norm)
    for attribute in ("base_weights_source", "base_description", "base_file_key", "base_file_kind"):
        assert isinstance(getattr(backbone, attribute), str), attribute  # every entry carries all it needs
    others = [b.base_file_key for b in BACKBONES.values() if b is not backbone]
    assert backbone.base_file_key not in others  # the key tells its files apart
    assert backbone.pixel_norm in PIXEL_NORMS
    args = train.get_args_parser().parse_args(["--backbone", name, "--dataset_root", "unused"])
    settings = resolve_model_flags(TrainConfig.from_dict(vars(args)), frozenset())
    assert (settings.basenet, settings.pixel_norm, settings.size) == (base_weights, pixel_norm, backbone.sizes[0])


def test_each_backbone_has_batch_norm_as_it_builds() -> None:
    for backbone in BACKBONES.values():
        for batch_norm in (False, True) if backbone.batch_norm_option else (False,):
            width = 1.0 if backbone.name == "resnet50" else 0.25  # resnet50 has width 1.0 only
            model = build_ssd(num_classes=3, width=width, batch_norm=batch_norm, backbone=backbone.name)
            built = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
            assert backbone.has_batch_norm(batch_norm) == built, (backbone.name, batch_norm)
