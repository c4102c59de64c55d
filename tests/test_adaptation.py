"""Domain adaptation: the gradient reversal layer, the domain classifiers, the target stream, the mean teacher,
AdaBN, and train.py with --da on tiny generated sets (exact resume, two gloo processes, loading the checkpoints)."""

import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import eval as eval_script
import inference
import train
from data.shapes import generate
from data.unlabeled import ContinuingSampler, UnlabeledImages
from layers.detection import Detect
from layers.domain import (
    GlobalDomainClassifier,
    ImageDomainClassifier,
    LocalDomainClassifier,
    focal_loss,
    grad_reverse,
    least_squares_loss,
    weighted_domain_loss,
)
from layers.multibox_loss import MultiBoxLoss
from ssd import build_ssd
from tests.test_train import args_for, losses, run_main
from utils.adabn import adapt_batchnorm, recompute_batchnorm
from utils.augmentations import SSDAugmentation, TargetViews
from utils.checkpoint import load_detector, read_checkpoint
from utils.cli import parse_args, run_cli
from utils.engine.adaptation import DomainAdaptation, ema_update, pseudo_labels
from utils.engine.config import TrainConfig
from utils.engine.da_config import AdaptationConfig, RunLength

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A labeled source set and a target folder without annotations (its images only)."""
    root = tmp_path_factory.mktemp("da")
    source, target = root / "source", root / "target"
    generate(source, 8, 4, seed=2)
    generate(target, 8, 4, seed=3)
    shutil.rmtree(target / "Annotations")
    return source, target


def da_args(source: Path, target: Path, project: Path, *extra: str) -> list[str]:
    return args_for(source, project, "--batch_norm", "--target_root", str(target), *extra)


# --- layers ------------------------------------------------------------------------------------------------------


def test_gradient_reversal_is_identity_forward_and_negated_scaled_backward() -> None:
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    weight = 0.37
    y = grad_reverse(x, weight)
    assert torch.equal(y, x)
    upstream = torch.randn_like(x)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -weight * upstream, rtol=0, atol=0)


def test_domain_classifier_output_shapes() -> None:
    features = torch.randn(3, 32, 19, 19)
    assert ImageDomainClassifier(32, hidden=16)(features).shape == (3, 1, 19, 19)
    assert LocalDomainClassifier(32, width=0.125)(features).shape == (3, 1, 19, 19)
    assert GlobalDomainClassifier(32, width=0.125).eval()(features).shape == (3, 2)


@pytest.mark.parametrize("domain", [0, 1])
def test_domain_losses_match_their_formulas(domain: int) -> None:
    torch.manual_seed(domain)
    pixel_logits = torch.randn(3, 1, 2, 2)
    sigmoid = [1 / (1 + math.exp(-z)) for z in pixel_logits.flatten().tolist()]
    expected_bce = np.mean([-math.log(p) if domain == 1 else -math.log(1 - p) for p in sigmoid])
    assert ImageDomainClassifier.loss(pixel_logits, domain).item() == pytest.approx(expected_bce, rel=1e-5)
    assert least_squares_loss(pixel_logits, domain).item() == pytest.approx(np.mean([(p - domain) ** 2 for p in sigmoid]), rel=1e-5)
    image_logits = torch.tensor([[2.0, -1.0], [-1.0, 0.5], [0.5, 0.5]])
    focal, weighted, weights = [], [], [0.5, 1.0, 2.0]
    for (a, b), w in zip(image_logits.tolist(), weights, strict=True):
        p = math.exp((a, b)[domain]) / (math.exp(a) + math.exp(b))  # softmax probability of the true domain
        focal.append(-((1 - p) ** 5) * math.log(p))
        weighted.append(-w * math.log(p))
    assert focal_loss(image_logits, domain, 5.0).item() == pytest.approx(np.mean(focal), rel=1e-5)
    assert weighted_domain_loss(image_logits, domain, torch.tensor(weights)).item() == pytest.approx(np.mean(weighted), rel=1e-5)


# --- the target stream -------------------------------------------------------------------------------------------


def test_target_images_never_open_annotations(domains: tuple[Path, Path]) -> None:
    _, target = domains
    assert not (target / "Annotations").exists()
    dataset = UnlabeledImages([(target, "trainval")], TargetViews(64, views=("weak", "strong")), seed=1)
    views = dataset[(2, 5)]
    assert len(dataset) == 8 and views.shape == (2, 3, 64, 64) and views.dtype == torch.float32
    assert torch.equal(views, dataset[(2, 5)])  # a key fixes its views
    assert not torch.equal(views, dataset[(3, 5)])


def test_strong_view_keeps_the_weak_views_geometry() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :20] = 255  # a bright left third: the flip is visible
    for seed in range(8):
        weak_only = TargetViews(32, mean=(0, 0, 0))(image, np.random.default_rng(seed))
        both = TargetViews(32, mean=(0, 0, 0), views=("weak", "strong"))(image, np.random.default_rng(seed))
        assert np.array_equal(weak_only[0], both[0])  # the same draws make the same weak view
        flipped = both[0][0, :, -1].mean() > both[0][0, :, 0].mean()
        strong = both[1].mean(axis=0)  # [32, 32]; cutout may hide parts, colours change, the sides stay put
        assert (np.median(strong[:, -8:]) >= np.median(strong[:, :8])) == flipped or np.ptp(strong) == 0


def test_augmented_view_is_the_source_augmentation_without_boxes() -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    augmentation = SSDAugmentation(32, mean=(104, 117, 123), max_expand=2)
    views = TargetViews(32, mean=(104, 117, 123), views=("augmented",), augmentation=augmentation)
    for seed in range(6):
        expected, boxes, labels = augmentation(image, np.zeros((0, 4)), np.zeros(0), np.random.default_rng(seed))
        got = views(image, np.random.default_rng(seed))
        assert got.shape == (1, 3, 32, 32) and np.array_equal(got[0], expected) and boxes.shape == (0, 4)


def test_grl_compares_domains_through_the_same_augmentation() -> None:
    # grl's classifiers see augmented target images, as the source's; the mean teacher's student sees the strong
    # view (whose pixels keep the weak view's places, where the pseudo-labels are), and grl beside it shares it.
    assert AdaptationConfig(("grl",)).views == ("augmented",)
    assert AdaptationConfig(("mean_teacher",)).views == AdaptationConfig(("grl", "mean_teacher")).views
    assert AdaptationConfig(("grl", "mean_teacher")).views == ("weak", "strong")
    assert AdaptationConfig(("adabn",)).views == ()
    for bad in [(), ("strong",), ("strong", "weak"), ("weak", "blurry")]:
        with pytest.raises(ValueError, match="target views"):
            TargetViews(32, views=bad)
    with pytest.raises(ValueError, match="augmentation"):
        TargetViews(32, views=("augmented",))
    with pytest.raises(ValueError, match="300-pixel views"):
        TargetViews(32, views=("augmented",), augmentation=SSDAugmentation(300))


def test_train_py_defaults_are_the_configs() -> None:
    # One owner for each default: train.py's flags take AdaptationConfig's, which are the references' values:
    # Adaptive Teacher's Cityscapes threshold 0.8; DA-Faster's weight 0.1, SWDA's 1.0 on Cityscapes; I3Net's
    # 0.05, 1, 38, 0.1 and maps 1 and 3.
    settings = TrainConfig.from_dict(vars(train.get_args_parser().parse_args([])))
    config = AdaptationConfig.from_settings(settings)
    assert config == AdaptationConfig()
    assert (config.pseudo_threshold, config.domain_weight, AdaptationConfig(swda=True).domain_weight) == (0.8, 0.1, 1.0)
    assert (config.dcbr_weight, config.gcr_weight, config.gf_weight, config.kl_weight) == (0.05, 1.0, 38.0, 0.1)
    assert (config.pa_layers, config.focal_gamma, config.grl_lambda, config.teacher_bn) == ((1, 3), 5.0, 1.0, "train")
    assert config.da_batch == "separate"


def test_schedule_defaults_scale_with_the_run() -> None:
    # Adaptive Teacher burns in 20,000 of 100,000 steps; I3Net starts its late terms after 20 of 70 epochs.
    model = build_ssd(width=0.125, batch_norm=True)
    da = DomainAdaptation(AdaptationConfig(("mean_teacher",)), model, RunLength(steps_per_epoch=50, epochs=70))
    assert da.burn_in == 700 and not da.uses_target(699) and da.uses_target(700)
    assert DomainAdaptation(AdaptationConfig(("i3net",)), model, RunLength(50, 70)).i3net_start == 20
    assert DomainAdaptation(AdaptationConfig(("i3net",)), model, RunLength(50, 12)).i3net_start == 3


def test_continuing_sampler_is_fixed_by_the_step_and_split_over_ranks() -> None:
    size, batch = 10, 4  # 2 steps per pass over the images
    plain = []  # a plain loop: pass c is a permutation of the images, cut into batches
    for cycle in range(3):
        order = torch.randperm(size, generator=torch.Generator().manual_seed(5 * 1_000_003 + cycle)).tolist()
        plain += [[(cycle, i) for i in order[k * batch : (k + 1) * batch]] for k in range(size // batch)]
    sampler = ContinuingSampler(size, batch, seed=5)
    sampler.set_steps(0, 6)
    keys = list(sampler)
    assert [keys[k * batch : (k + 1) * batch] for k in range(6)] == plain
    sampler.set_steps(3, 2)  # a resumed run at step 3
    assert list(sampler) == [key for step in plain[3:5] for key in step]
    ranks = [ContinuingSampler(size, batch, 5, num_replicas=2, rank=r) for r in (0, 1)]
    for rank in ranks:
        rank.set_steps(1, 1)
    mine = [list(rank) for rank in ranks]
    assert sorted(mine[0] + mine[1]) == sorted(plain[1]) and len(mine[0]) == len(mine[1]) == 2
    with pytest.raises(ValueError, match="fewer than the batch"):
        ContinuingSampler(3, 4)


# --- the mean teacher and AdaBN ----------------------------------------------------------------------------------


def test_ema_update_formula() -> None:
    torch.manual_seed(0)
    teacher, student = (
        nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)),
        nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)),
    )
    student[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for key, value in teacher.state_dict().items():
        theirs = student.state_dict()[key]
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * theirs)
        else:
            assert torch.equal(value, theirs)  # the batch count is copied


def mean_teacher_step(teacher_bn: str = "train") -> tuple[DomainAdaptation, dict, list, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_ssd(300, 5, "VOC", 0.125, True)
    config = AdaptationConfig(("mean_teacher",), burn_in=0, pseudo_threshold=0.2, teacher_bn=teacher_bn)
    da = DomainAdaptation(config, model, RunLength(2, 7))
    images, views = torch.randn(2, 3, 300, 300), torch.randn(2, 2, 3, 300, 300)
    targets = [torch.tensor([[0.1, 0.1, 0.5, 0.5, 1.0]]), torch.tensor([[0.2, 0.3, 0.6, 0.9, 3.0]])]
    terms = da.losses(da.network(), MultiBoxLoss(5), images, targets, views, 0, torch.autocast("cpu", enabled=False))
    return da, terms, targets, images, views


def test_the_teacher_stays_frozen_and_follows_the_student_by_ema_only() -> None:
    da, terms, _, _, _ = mean_teacher_step()
    teacher = da.teacher
    assert teacher is not None and all(not p.requires_grad for p in teacher.parameters())
    optimizer = torch.optim.SGD(da.detector.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    optimizer.step()
    da.after_step()
    for key, value in teacher.state_dict().items():
        student = da.detector.state_dict()[key]
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9996 * before[key] + 0.0004 * student)


def test_pseudo_labels_train_classification_only() -> None:
    """No box loss on pseudo-labels: the student's target loc predictions get no gradient from loss_unsup."""
    da, terms, _, _, _ = mean_teacher_step()
    assert terms["loss_unsup"].item() > 0
    loc_heads = [p for head in da.detector.loc for p in head.parameters()]
    conf_heads = [p for head in da.detector.conf for p in head.parameters()]
    grads = torch.autograd.grad(terms["loss_unsup"], loc_heads + conf_heads, allow_unused=True)
    assert all(g is None or not g.any() for g in grads[: len(loc_heads)])
    assert any(g is not None and g.any() for g in grads[len(loc_heads) :])


@pytest.mark.parametrize("teacher_bn", ["train", "eval"])
def test_teacher_batchnorm_mode(teacher_bn: str) -> None:
    # Adaptive Teacher never calls .eval() on its teacher: its BatchNorm normalises each weak batch by itself.
    da, _, _, _, _ = mean_teacher_step(teacher_bn)
    assert da.teacher.training == (teacher_bn == "train")


def test_pseudo_labels_keep_scores_strictly_above_the_threshold() -> None:
    priors = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9]])
    loc = torch.zeros(1, 3, 4)
    probabilities = torch.tensor([[[0.19, 0.81, 0.0], [0.21, 0.0, 0.79], [0.2, 0.8, 0.0]]]) + 1e-12
    conf = probabilities.log()
    targets = pseudo_labels(Detect(3, conf_thresh=0.8), loc, conf, priors)
    assert len(targets) == 1 and targets[0].shape == (1, 5)  # 0.79 is below, and exactly 0.8 is not above
    torch.testing.assert_close(targets[0], torch.tensor([[0.2, 0.2, 0.4, 0.4, 0.0]]))


def test_recompute_batchnorm_gives_the_target_images_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)).eval()
    batches = [torch.randn(4, 1, 3, 5, 5) * 3 + 1 for _ in range(3)]  # [B, V, 3, H, W] as the target loader yields
    seen = recompute_batchnorm(model, batches, torch.device("cpu"))
    assert seen == 12 and not model.training
    # update_bn's rule: the mean over batches of each batch's mean and unbiased variance.
    outs = [model[0](batch[:, 0]).detach() for batch in batches]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    variances = torch.stack([o.transpose(0, 1).reshape(2, -1).var(dim=1) for o in outs]).mean(0)
    torch.testing.assert_close(model[1].running_mean, means)
    torch.testing.assert_close(model[1].running_var, variances)


def test_adabn_refuses_a_network_without_batchnorm() -> None:
    with pytest.raises(ValueError, match="needs BatchNorm statistics"):
        DomainAdaptation(AdaptationConfig(("adabn",)), build_ssd(width=0.125), RunLength(1, 1))


# --- train.py --da -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "methods",
    [["grl"], ["grl", "--swda"], ["i3net", "--i3net_start", "0"], ["mean_teacher", "--burn_in", "1"], ["adabn"],
     ["target_bn"], ["grl", "--da_batch", "joint"], ["i3net", "--i3net_start", "0", "--amp"],
     ["grl", "--swda", "--amp"]],
)  # fmt: skip
def test_short_da_runs(domains: tuple[Path, Path], tmp_path: Path, methods: list[str]) -> None:
    source, target = domains
    method, *extra = methods
    argv = da_args(source, target, tmp_path, "--end_epoch", "1", "--da", method, *extra, "--eval_interval", "1")
    assert run_main(argv) == 0
    checkpoint = read_checkpoint(tmp_path / "exp1" / "last.pth")
    assert set(checkpoint["model"]) == set(build_ssd(300, 5, "VOC", 0.125, True).state_dict())  # the detector's layout
    assert checkpoint["adaptation"]["config"]["methods"] == [method]
    log = (tmp_path / "exp1" / "log.txt").read_text()
    assert '"map"' in log and '"target_map"' not in log  # the target folder has no annotations to score
    if method == "mean_teacher":  # the teacher is scored, and saved as a checkpoint of its own that eval.py reads
        assert '"teacher_map"' in log
        teacher = read_checkpoint(tmp_path / "exp1" / "teacher.pth")
        for key, value in checkpoint["adaptation"]["teacher"].items():
            assert torch.equal(teacher["model"][key], value), key
        eval_args = parse_args(eval_script.get_args_parser(), [
            "--weights", str(tmp_path / "exp1" / "teacher.pth"), "--dataset", "Shapes", "--dataset_root", str(source),
            "--device", "cpu", "--num_workers", "0", "--project", str(tmp_path / "eval")])  # fmt: skip
        assert eval_script.main(eval_args) == 0


@pytest.mark.parametrize("methods", [["grl", "mean_teacher"], ["grl"], ["i3net", "--i3net_start", "1"]])
def test_da_resume_is_exact(domains: tuple[Path, Path], tmp_path: Path, methods: list[str]) -> None:
    source, target = domains
    # strong views; augmented views; I3Net's prototypes, counts and random layer, with its late terms from epoch 2
    teacher = ("--burn_in", "1", "--ema_decay", "0.5", "--pseudo_threshold", "0.3") if "mean_teacher" in methods else ()
    common = ("--da", *methods, *teacher)
    assert run_main(da_args(source, target, tmp_path / "straight", "--end_epoch", "2", *common)) == 0
    argv = da_args(source, target, tmp_path / "split", "--end_epoch", "2", "--epochs_per_run", "1", *common)
    assert run_main(argv) == 0  # the teacher, made at step 1, is in the checkpoint the resume starts from
    last = tmp_path / "split" / "exp1" / "last.pth"
    assert run_main(["--resume", str(last), "--device", "cpu", "--num_workers", "0"]) == 0
    a, b = read_checkpoint(tmp_path / "straight" / "exp1" / "last.pth"), read_checkpoint(last)
    for part in ("model",):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=1e-6, msg=key)
    for part in ("parts", "teacher") if teacher else ("parts",):
        assert a["adaptation"][part] is not None
        for key in a["adaptation"][part]:
            torch.testing.assert_close(a["adaptation"][part][key], b["adaptation"][part][key], rtol=0, atol=1e-6)
    torch.testing.assert_close(a["adaptation"]["counts"], b["adaptation"]["counts"], rtol=0, atol=0)
    assert losses(tmp_path / "split" / "exp1") == pytest.approx(losses(tmp_path / "straight" / "exp1"), abs=1e-6)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.parametrize("methods", [("grl", "separate"), ("grl", "joint"), ("i3net,mean_teacher", "separate")])
def test_two_gloo_processes_give_one_process_step(tmp_path: Path, methods: tuple[str, str]) -> None:
    """Two processes, each with half the batch, synchronised BatchNorm and the source and target passes: the same
    loss terms and gradients as one process with the whole batch, in float64 (to 1e-7; float32 rounding of
    BatchNorm over a few images of a network trained from scratch is amplified to ~1e-2). I3Net's batch statistics
    (prototypes, the joint feature's mean, the KL's class means) cover both processes' images."""
    result = torchrun(str(ROOT / "tests" / "ddp_gradients.py"), *methods, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_gloo_processes_train_a_da_run(domains: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = domains
    common = ("--end_epoch", "2", "--optimizer", "sgd", "--lr", "1e-4", "--da", "grl", "mean_teacher",
              "--pseudo_threshold", "0.3", "--sync_bn")  # fmt: skip
    assert run_main(da_args(source, target, tmp_path / "single", *common)) == 0
    result = torchrun(str(ROOT / "train.py"), *da_args(source, target, tmp_path / "multi", *common), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # The step is exact (above); float32 rounding, amplified, leaves the second epoch's losses ~0.3% apart. Without
    # --sync_bn the two runs differ by 50-70% (each process normalises its own images).
    assert losses(tmp_path / "multi" / "exp1") == pytest.approx(losses(tmp_path / "single" / "exp1"), rel=2e-2)
    for run in ("single", "multi"):
        assert read_checkpoint(tmp_path / run / "exp1" / "teacher.pth")["model"]


def test_da_checkpoint_loads_in_eval_and_inference(domains: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = domains
    assert run_main(da_args(source, target, tmp_path / "runs", "--end_epoch", "1", "--da", "grl", "mean_teacher")) == 0
    weights = str(tmp_path / "runs" / "exp1" / "last.pth")
    eval_args = parse_args(eval_script.get_args_parser(), [
        "--weights", weights, "--dataset", "Shapes", "--dataset_root", str(source), "--device", "cpu",
        "--num_workers", "0", "--adabn", str(target), "--project", str(tmp_path / "eval")])  # fmt: skip
    assert eval_script.main(eval_args) == 0
    assert (tmp_path / "eval" / "exp1" / "ap.json").is_file()
    infer_args = parse_args(inference.get_args_parser(), [
        "--weights", weights, "--source", str(target / "JPEGImages"), "--device", "cpu",
        "--project", str(tmp_path / "infer")])  # fmt: skip
    assert inference.main(infer_args) == 0
    assert len(list((tmp_path / "infer" / "exp1").glob("*.jpg"))) == 12


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--da", "grl"), "with --target_root"),
        (("--target_root", "TARGET", "--da", "grl", "--ema_decay", "0.9"), "add mean_teacher to --da"),
        (("--target_dataset", "Shapes"), "give --target_root too"),
        (("--target_root", "TARGET", "--da", "grl", "--swda", "--grl_levels", "3"), "--grl_levels would be ignored"),
        (("--target_root", "TARGET/classes.txt", "--da", "grl"), "is a file"),
        (("--target_root", "TARGET", "--da", "adabn"), "without --batch_norm has none"),
        (("--target_root", "TARGET", "--da", "target_bn", "--da_batch", "joint"), "add grl to --da"),
        (("--target_root", "TARGET", "--da", "grl", "i3net"), "cannot share a run"),
        (("--target_root", "TARGET", "--da", "grl", "--focal_gamma", "2"), "add --swda"),
        (("--target_root", "TARGET", "--da", "mean_teacher", "--dcbr_weight", "2"), "add i3net to --da"),
        (("--target_root", "TARGET", "--da", "i3net", "--backbone", "mobilenet_v3_large"), "--backbone vgg16"),
    ],
)
def test_da_flag_errors(
    domains: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, extra: tuple[str, ...], message: str
) -> None:
    source, target = domains
    extra = tuple(word.replace("TARGET", str(target)) for word in extra)
    assert run_cli(train.main, train.get_args_parser(), args_for(source, tmp_path, *extra)) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    assert not list(tmp_path.glob("exp*"))


def test_grl_trains_a_non_vgg_backbone(domains: tuple[Path, Path], tmp_path: Path) -> None:
    # DA-Faster's classifiers read the source maps, which every backbone has (--swda and i3net refuse other backbones).
    source, target = domains
    lite = ("--backbone", "mobilenet_v3_large", "--width", "0.25", "--no_channels_last", "--end_epoch", "1")
    assert run_main(args_for(source, tmp_path, *lite, "--target_root", str(target), "--da", "grl")) == 0
    assert read_checkpoint(tmp_path / "exp1" / "last.pth")["adaptation"]["parts"]


def test_training_scores_the_targets_val_split_where_it_has_one(
    domains: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source, _ = domains
    labelled = tmp_path / "target"
    generate(labelled, 8, 4, seed=3, num_val=3)
    with caplog.at_level("INFO"):
        assert run_main(da_args(source, labelled, tmp_path / "runs", "--end_epoch", "1", "--eval_interval", "1")) == 0
    assert "the target is scored on its val split during training" in caplog.text
    assert '"target_map"' in (tmp_path / "runs" / "exp1" / "log.txt").read_text()


def test_da_target_with_other_classes_is_refused(domains: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = domains
    with pytest.raises(ValueError, match="shares no class"):
        run_main(da_args(source, target, tmp_path, "--target_dataset", "VOC", "--da", "grl"))


def test_train_time_adabn_is_eval_time_adabn_of_the_source_only_run(domains: tuple[Path, Path], tmp_path: Path) -> None:
    """BatchNorm's running statistics take no part in training, so --da adabn trains the source-only weights; its
    statistics are then those eval.py --adabn gives the source-only checkpoint (docs/domain_adaptation.md's AdaBN row)."""
    source, target = domains
    assert run_main(da_args(source, target, tmp_path / "plain", "--end_epoch", "1")) == 0
    assert run_main(da_args(source, target, tmp_path / "adabn", "--end_epoch", "1", "--da", "adabn")) == 0
    plain = read_checkpoint(tmp_path / "plain" / "exp1" / "last.pth")["model"]
    adapted = read_checkpoint(tmp_path / "adabn" / "exp1" / "last.pth")["model"]
    statistics = [key for key in plain if key.endswith(("running_mean", "running_var"))]
    assert statistics and all(not torch.equal(plain[key], adapted[key]) for key in statistics)
    for key in set(plain) - set(statistics) - {k for k in plain if k.endswith("num_batches_tracked")}:
        assert torch.equal(plain[key], adapted[key]), key
    model, info = load_detector(tmp_path / "plain" / "exp1" / "last.pth")
    adapt_batchnorm(model, info, str(target), 4, 0, torch.device("cpu"))
    for key in statistics:
        assert torch.equal(model.state_dict()[key], adapted[key]), key


def test_ctrl_c_in_an_epochs_last_step_resumes_with_its_end(
    domains: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C during the last step saves the epoch's steps but not its end (AdaBN, log record); the resumed run
    does that end first, and matches an uninterrupted run."""
    import signal

    from utils.engine.trainer import Trainer

    source, target = domains
    common = ("--end_epoch", "1", "--da", "adabn")
    assert run_main(da_args(source, target, tmp_path / "a", *common)) == 0
    real_step, calls = Trainer.train_step, {"n": 0}

    def sigint_during_second_step(self, *args):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:  # the last of the epoch's two steps
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args)

    monkeypatch.setattr(Trainer, "train_step", sigint_during_second_step)
    assert run_main(da_args(source, target, tmp_path / "b", *common)) == 130
    saved = read_checkpoint(tmp_path / "b" / "exp1" / "last.pth")
    assert (saved["epoch"], saved["epoch_step"], saved["epoch_steps"]) == (0, 2, 2)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert run_main(["--resume", str(tmp_path / "b" / "exp1" / "last.pth"), "--device", "cpu"]) == 0
    assert losses(tmp_path / "b" / "exp1") == pytest.approx(losses(tmp_path / "a" / "exp1"), abs=1e-6)
    a, b = (read_checkpoint(tmp_path / run / "exp1" / "last.pth")["model"] for run in ("a", "b"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
