"""Loading ssd.pytorch/fork/project checkpoints and the VGG base; converting torchvision's VGG-16."""

import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ssd import build_ssd
from tests.reference import random_state, ssd_pytorch_shapes
from utils.checkpoint import atomic_save, load_base_weights, load_model_weights, read_checkpoint
from utils.deploy.convert_vgg import convert_torchvision_vgg16

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ssd_pytorch_state() -> OrderedDict:
    return OrderedDict(random_state(ssd_pytorch_shapes(21), seed=3))


def assert_loaded(model: torch.nn.Module, state: dict) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_raw_ssd_pytorch_state_dict(tmp_path: Path, ssd_pytorch_state: OrderedDict) -> None:
    path = tmp_path / "ssd300_mAP_77.43_v2.pth"
    torch.save(ssd_pytorch_state, path)
    model = build_ssd(300, 21)
    load_model_weights(model, path)
    assert_loaded(model, ssd_pytorch_state)


def test_data_parallel_prefix(tmp_path: Path, ssd_pytorch_state: OrderedDict) -> None:
    path = tmp_path / "ddp.pth"
    torch.save(OrderedDict((f"module.{k}", v) for k, v in ssd_pytorch_state.items()), path)
    model = build_ssd(300, 21)
    load_model_weights(model, path)
    assert_loaded(model, ssd_pytorch_state)


def test_project_checkpoint_format(tmp_path: Path, ssd_pytorch_state: OrderedDict) -> None:
    path = tmp_path / "last.pth"
    atomic_save({"model": dict(ssd_pytorch_state), "epoch": 3, "class_names": ["a", "b"]}, path)
    model = build_ssd(300, 21)
    checkpoint = load_model_weights(model, path)
    assert checkpoint["epoch"] == 3 and checkpoint["class_names"] == ["a", "b"]
    assert_loaded(model, ssd_pytorch_state)


def test_other_class_count_names_file_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "cityscapes.pth"
    torch.save(random_state(ssd_pytorch_shapes(9)), path)
    with pytest.raises(ValueError) as info:
        load_model_weights(build_ssd(300, 21), path)
    message = str(info.value)
    assert str(path) in message
    assert "conf.0.weight: file (36, 512, 3, 3) vs model (84, 512, 3, 3)" in message


def test_skip_conf_fine_tunes_to_a_new_class_set(tmp_path: Path, ssd_pytorch_state: OrderedDict) -> None:
    path = tmp_path / "voc.pth"
    torch.save(ssd_pytorch_state, path)
    model = build_ssd(300, 9)
    fresh_conf = model.conf[0].weight.detach().clone()
    load_model_weights(model, path, skip_conf=True)
    assert torch.equal(model.vgg[0].weight, ssd_pytorch_state["vgg.0.weight"])
    assert torch.equal(model.loc[3].bias, ssd_pytorch_state["loc.3.bias"])
    assert torch.equal(model.conf[0].weight, fresh_conf)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.pth does not exist"):
        read_checkpoint(tmp_path / "nothere.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(512))
    with pytest.raises(ValueError, match="junk.pth is not a loadable PyTorch checkpoint"):
        read_checkpoint(junk)
    text = tmp_path / "notes.pth"  # a text file: torch's legacy reader fails with a bare KeyError
    text.write_text("hello world this is text")
    with pytest.raises(ValueError, match=r"notes.pth is not a loadable PyTorch checkpoint \(not a PyTorch file\)"):
        read_checkpoint(text)
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    with pytest.raises(ValueError, match="holds a list"):
        read_checkpoint(listing)


class Payload:
    """An arbitrary object: pickling it into a checkpoint must not make loading run code."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(
        ValueError, match="evil.pth holds pickled Python objects, which this project never loads"
    ) as info:
        read_checkpoint(path)
    assert "weights_only" not in str(info.value)  # never torch's advice to load it unsafely


def test_foreign_files_say_what_they_are(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    with pytest.raises(ValueError, match="model.onnx is an ONNX model: inference.py and eval.py run it"):
        read_checkpoint(tmp_path / "model.onnx")
    cv2.imwrite(str(tmp_path / "photo.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="photo.png is a PNG image, not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "photo.png")


def test_checkpoints_get_the_mode_of_other_new_files(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_save({"w": torch.ones(1)}, tmp_path / "c.pth")
        (tmp_path / "other.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "c.pth").stat().st_mode & 0o777 == (tmp_path / "other.txt").stat().st_mode & 0o777 == 0o644


def test_vgg_reducedfc_base(tmp_path: Path, ssd_pytorch_state: OrderedDict) -> None:
    base = {k[len("vgg.") :]: v for k, v in ssd_pytorch_state.items() if k.startswith("vgg.")}
    assert sorted(base)[:2] == ["0.bias", "0.weight"] and len(base) == 30
    path = tmp_path / "vgg16_reducedfc.pth"
    torch.save(base, path)
    model = build_ssd(300, 21)
    load_base_weights(model, path)
    assert torch.equal(model.vgg[31].weight, base["31.weight"])
    with pytest.raises(ValueError, match="VGG-16 base"):
        load_base_weights(build_ssd(300, 21, width=0.5), path)


def fake_torchvision_vgg16() -> dict[str, torch.Tensor]:
    """torchvision vgg16's state_dict shapes, each tensor filled with its own flat index (so picks are traceable)."""
    convs = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
             17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}  # fmt: skip
    state = {}
    for i, (cout, cin) in convs.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3)
        state[f"features.{i}.bias"] = torch.randn(cout)
    state["classifier.0.weight"] = torch.arange(4096 * 25088, dtype=torch.float32).view(4096, 25088)
    state["classifier.0.bias"] = torch.arange(4096, dtype=torch.float32)
    state["classifier.3.weight"] = torch.arange(4096 * 4096, dtype=torch.float32).view(4096, 4096)
    state["classifier.3.bias"] = -torch.arange(4096, dtype=torch.float32)
    state["classifier.6.weight"] = torch.zeros(1000, 4096)
    state["classifier.6.bias"] = torch.zeros(1000)
    return state


def test_convert_torchvision_vgg16(tmp_path: Path) -> None:
    tv = fake_torchvision_vgg16()
    out = convert_torchvision_vgg16(tv)
    assert out["31.weight"].shape == (1024, 512, 3, 3) and out["33.weight"].shape == (1024, 1024, 1, 1)
    fc6, fc7 = tv["classifier.0.weight"], tv["classifier.3.weight"]
    g = torch.Generator().manual_seed(0)
    for _ in range(200):  # fc6 row 4o, input channel c, tap (3y, 3x) of the 7x7 grid
        o, c = int(torch.randint(1024, (1,), generator=g)), int(torch.randint(512, (1,), generator=g))
        y, x = int(torch.randint(3, (1,), generator=g)), int(torch.randint(3, (1,), generator=g))
        assert out["31.weight"][o, c, y, x] == fc6[4 * o, c * 49 + 3 * y * 7 + 3 * x]
        i = int(torch.randint(1024, (1,), generator=g))
        assert out["33.weight"][o, i, 0, 0] == fc7[4 * o, 4 * i]
        assert out["31.bias"][o] == 4 * o and out["33.bias"][o] == -4 * o
    assert torch.equal(out["28.weight"], tv["features.28.weight"])
    path = tmp_path / "vgg16_reducedfc_torchvision.pth"
    atomic_save(out, path)
    model = build_ssd(300, 21)
    load_base_weights(model, path)
    assert torch.equal(model.vgg[33].weight, out["33.weight"])


def test_convert_rejects_other_networks() -> None:
    with pytest.raises(ValueError, match="not a torchvision VGG-16"):
        convert_torchvision_vgg16({"features.0.weight": torch.zeros(1)})


def test_atomic_save_survives_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pth"
    atomic_save({"model": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def crash_midway(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary file left behind


def test_convert_cli_reports_a_missing_file_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "utils.deploy.convert_vgg", "--input", str(tmp_path / "vgg16.pth"), "--output", str(tmp_path / "o.pth")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: weights file {tmp_path / 'vgg16.pth'} does not exist; check the path (docs/backbones.md, 'Weights')"
    ]


def test_detector_info_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    from layers.detection import DetectSettings
    from utils.checkpoint import DetectorInfo, load_detector, save_checkpoint
    from utils.transforms import PIXEL_NORMS

    model = build_ssd(300, 3, priors="COCO", width=0.125, batch_norm=True)
    info = DetectorInfo(model.config, ("cat", "dog"), PIXEL_NORMS["torchvision"], DetectSettings(0.001, 0.55, 300, 300))
    save_checkpoint(tmp_path / "m.pth", model, info, epoch=4)
    loaded, loaded_info = load_detector(tmp_path / "m.pth")
    assert loaded_info == info and not loaded.training
    assert tuple(info.to_dict()) == DetectorInfo.KEYS  # what exported files' metadata are read back by
    assert read_checkpoint(tmp_path / "m.pth")["epoch"] == 4
    assert_loaded(loaded, model.state_dict())
    with pytest.raises(ValueError, match="3 class names for a network with 2 classes"):
        DetectorInfo(model.config, ("a", "b", "c"))


def test_older_checkpoints_load_with_the_defaults_they_predate(tmp_path: Path, ssd_pytorch_state: OrderedDict) -> None:
    from layers.detection import DetectSettings
    from utils.checkpoint import RawWeights, load_detector
    from utils.transforms import Preprocess

    model = build_ssd(300, 21)
    # This project's format before the Detect settings were stored, as train.py wrote it then.
    torch.save({"model": dict(ssd_pytorch_state), "model_config": model.config.to_dict(),
                "class_names": [f"c{i}" for i in range(20)]}, tmp_path / "old.pth")  # fmt: skip
    loaded, info = load_detector(tmp_path / "old.pth")
    assert info.postprocess == DetectSettings() and info.preprocess == Preprocess()
    assert info.class_names[0] == "c0"
    assert_loaded(loaded, ssd_pytorch_state)
    # A raw ssd.pytorch state_dict takes what the flags say it is.
    torch.save(ssd_pytorch_state, tmp_path / "raw.pth")
    loaded, info = load_detector(tmp_path / "raw.pth")
    assert info.class_names[0] == "aeroplane" and info.config == model.config
    assert_loaded(loaded, ssd_pytorch_state)
    with pytest.raises(ValueError, match="conf.0.weight: file \\(84, 512, 3, 3\\) vs model \\(36, 512, 3, 3\\)"):
        load_detector(tmp_path / "raw.pth", raw=RawWeights(300, tuple("abcdefgh"), "COCO"))


def test_predictor_uses_the_checkpoints_detect_settings(tmp_path: Path) -> None:
    from layers.detection import DetectSettings
    from utils.checkpoint import DetectorInfo, save_checkpoint
    from utils.predict import Predictor, load_runner

    model = build_ssd(300, 3, width=0.125)
    settings = DetectSettings(0.2, 0.3, 50, 7)
    save_checkpoint(tmp_path / "m.pth", model, DetectorInfo(model.config, ("a", "b"), postprocess=settings))
    predictor = Predictor(load_runner(tmp_path / "m.pth", torch.device("cpu")))
    assert predictor.settings == settings and predictor.detect.keep_top_k == 7 and predictor.detect.conf_thresh == 0.2
    override = Predictor(predictor.runner, settings.override(top_k=10))
    assert override.detect.top_k == 10 and override.detect.nms_thresh == 0.3


def test_imagenet_bases_of_the_other_backbones(tmp_path: Path) -> None:
    # torchvision's ImageNet files as they are (random here): the classifier and ResNet's layer4 are left out.
    import torchvision

    mobilenet, resnet = torchvision.models.mobilenet_v3_large().eval(), torchvision.models.resnet50()
    torch.save(mobilenet.state_dict(), tmp_path / "mobilenet_v3_large-8738ca79.pth")
    torch.save(resnet.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    lite = build_ssd(backbone="mobilenet_v3_large", num_classes=3).eval()  # the full tail, as ImageNet's
    load_base_weights(lite, tmp_path / "mobilenet_v3_large-8738ca79.pth")
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        assert torch.equal(lite.base[1](lite.base[0](x)), mobilenet.features(x))  # the same network, cut in two
    nvidia = build_ssd(backbone="resnet50", num_classes=3)
    load_base_weights(nvidia, tmp_path / "resnet50-0676ba61.pth")
    assert torch.equal(nvidia.base[0].layer3[5].conv3.weight, resnet.layer3[5].conv3.weight)
    with pytest.raises(ValueError, match="holds torchvision's ResNet-50 weights, the base of --backbone resnet50, but "
                                         "the model's backbone is mobilenet_v3_large"):  # fmt: skip
        load_base_weights(lite, tmp_path / "resnet50-0676ba61.pth")
    with pytest.raises(ValueError, match="does not fit the MobileNetV3-Large base \\(full tail, width 1.0\\)"):
        load_base_weights(build_ssd(backbone="mobilenet_v3_large", num_classes=3, reduced_tail=True),
                          tmp_path / "mobilenet_v3_large-8738ca79.pth")  # fmt: skip


def test_classes_are_matched_by_name() -> None:
    from utils.checkpoint import DetectorInfo, match_classes, require_classes

    assert match_classes(("a", "b"), ("a", "b")).to_dataset is None
    coco = match_classes(("person", "unused_2", "car"), ("car", "person"))
    assert coco.to_dataset.tolist() == [1, -1, 0] and coco.scored == ("car", "person")
    assert coco.model_only == ("unused_2",) and coco.dataset_only == ()
    # A model that lacks some of the dataset's classes is scored on those it has (case-insensitively, as
    # annotations are read); the others are named, not scored.
    partial = match_classes(("person", "Car"), ("car", "dog"))
    assert partial.to_dataset.tolist() == [-1, 0] and partial.scored == ("car",) and partial.dataset_only == ("dog",)
    with pytest.raises(ValueError, match="share no name"):
        match_classes(("person", "car"), ("cat", "dog"))
    with torch.device("meta"):
        model = build_ssd(300, 3, width=0.125)
    assert require_classes(DetectorInfo(model.config, ("a", "b")), ("a", "b", "c"), "m.pth").dataset_only == ("c",)
    with pytest.raises(ValueError, match=r"m.pth was trained for 2 classes but the dataset has 3, and they share no "
                                         r"class name \(model: a, b; dataset: c, d, e\)"):  # fmt: skip
        require_classes(DetectorInfo(model.config, ("a", "b")), ("c", "d", "e"), "m.pth")
