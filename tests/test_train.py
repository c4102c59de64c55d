"""train.py on tiny shapes sets: smoke run, exact resume, DDP equivalence, the NaN guard and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from data.shapes import generate
from layers.multibox_loss import MultiBoxLoss
from ssd import SSD, build_ssd
from utils.checkpoint import RawWeights, load_detector, read_checkpoint
from utils.cli import parse_args

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate(root, 8, 4, seed=2)
    return root


def args_for(shapes: Path, project: Path, *extra: str) -> list[str]:
    return ["--dataset", "Shapes", "--dataset_root", str(shapes), "--basenet", "none", "--width", "0.125",
            "--batch_size", "4", "--num_workers", "0", "--optimizer", "adamw", "--lr", "1e-3", "--device", "cpu",
            "--eval_interval", "0", "--project", str(project), *extra]  # fmt: skip


def run_main(argv: list[str]) -> int:
    return train.main(parse_args(train.get_args_parser(), argv))  # as run_cli parses: it knows the typed flags


def losses(run_dir: Path) -> list[float]:
    """loss_l, loss_c of every epoch, flattened."""
    return [r[k] for r in map(json.loads, (run_dir / "log.txt").read_text().splitlines()) for k in ("loss_l", "loss_c")]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=key)


def test_smoke_run_writes_a_loadable_checkpoint(shapes: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args_for(shapes, tmp_path / "runs", "--end_epoch", "1", "--batch_norm", "--eval_interval", "1")],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "exp1"
    for name in ("args.json", "last.pth", "log.txt", "results.csv", "results.png"):
        assert (run / name).is_file(), name
    record = json.loads((run / "log.txt").read_text())
    assert (
        record["epoch"] == 1
        and record["iteration"] == 2
        and "map" in record
        and set(record["ap"]) == {"circle", "square", "triangle", "star"}
    )
    model, info = load_detector(run / "last.pth")
    assert info.class_names == ("circle", "square", "triangle", "star") and model.config.batch_norm
    checkpoint = read_checkpoint(run / "last.pth")
    assert {
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "iteration",
        "best_map",
        "rng",
        "model_config",
        "class_names",
        "preprocess",
        "postprocess",
    } <= checkpoint.keys()
    torch.save(checkpoint["model"], tmp_path / "plain.pth")  # alone, the weights do not say their width
    with pytest.raises(
        ValueError,
        match="plain.pth does not fit this SSD: .*vgg.0.weight: file \\(8, 3, 3, 3\\) vs model \\(64, 3, 3, 3\\)",
    ):
        load_detector(tmp_path / "plain.pth", raw=RawWeights(300, ("circle", "square", "triangle", "star")))


def test_resume_at_an_epoch_boundary_is_exact(shapes: Path, tmp_path: Path) -> None:
    assert run_main(args_for(shapes, tmp_path / "a", "--end_epoch", "3")) == 0
    assert run_main(args_for(shapes, tmp_path / "b", "--end_epoch", "3", "--epochs_per_run", "1")) == 0
    assert losses(tmp_path / "b" / "exp1") == losses(tmp_path / "a" / "exp1")[:2]
    assert run_main(["--resume", "auto", "--project", str(tmp_path / "b"), "--device", "cpu"]) == 0
    assert losses(tmp_path / "b" / "exp1") == pytest.approx(losses(tmp_path / "a" / "exp1"), abs=1e-6)
    assert_same_weights(tmp_path / "a" / "exp1" / "last.pth", tmp_path / "b" / "exp1" / "last.pth")


def test_ctrl_c_saves_and_resumes_mid_epoch(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_main(args_for(shapes, tmp_path / "a", "--end_epoch", "2")) == 0
    calls = {"n": 0}
    real_forward = MultiBoxLoss.forward

    def interrupt_third_step(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of epoch 2
            raise KeyboardInterrupt
        return real_forward(self, *args)

    monkeypatch.setattr(MultiBoxLoss, "forward", interrupt_third_step)
    assert run_main(args_for(shapes, tmp_path / "b", "--end_epoch", "2")) == 130
    saved = read_checkpoint(tmp_path / "b" / "exp1" / "last.pth")
    assert (saved["epoch"], saved["epoch_step"], saved["iteration"]) == (1, 0, 2)
    monkeypatch.setattr(MultiBoxLoss, "forward", real_forward)
    assert run_main(["--resume", str(tmp_path / "b" / "exp1" / "last.pth"), "--device", "cpu"]) == 0
    assert_same_weights(tmp_path / "a" / "exp1" / "last.pth", tmp_path / "b" / "exp1" / "last.pth")


def test_ddp_with_gloo_equals_one_process(shapes: Path, tmp_path: Path) -> None:
    # SGD (the paper's optimiser): its step is linear in the gradient, so the all-reduce's different summation
    # order stays at float rounding. Adam divides by sqrt(v) and can turn such rounding on near-zero
    # gradients into full-size steps.
    sgd = ("--optimizer", "sgd", "--lr", "1e-3", "--end_epoch", "2")
    assert run_main(args_for(shapes, tmp_path / "single", *sgd)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
         str(ROOT / "train.py"), *args_for(shapes, tmp_path / "ddp", *sgd)],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(tmp_path / "ddp" / "exp1") == pytest.approx(losses(tmp_path / "single" / "exp1"), rel=1e-4)
    wa, wb = weights(tmp_path / "single" / "exp1" / "last.pth"), weights(tmp_path / "ddp" / "exp1" / "last.pth")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-3, atol=1e-5, msg=key)
    assert not (tmp_path / "ddp" / "exp2").exists()  # only rank 0 writes


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    calls = {"n": 0}
    real_forward = MultiBoxLoss.forward

    def nan_on_third_step(self, *args):
        calls["n"] += 1
        loss_l, loss_c = real_forward(self, *args)
        return (loss_l * float("nan"), loss_c) if calls["n"] == 3 else (loss_l, loss_c)

    monkeypatch.setattr(MultiBoxLoss, "forward", nan_on_third_step)
    assert run_main(args_for(shapes, tmp_path / "runs", "--end_epoch", "2")) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: non-finite loss at iteration 2 (epoch 2, lr ") and "loss_l=nan" in message
    saved = read_checkpoint(tmp_path / "runs" / "exp1" / "last.pth")
    assert saved["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point()
    )


def test_one_ctrl_c_mid_epoch_saves_and_the_resumed_log_is_exact(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SIGINT during step 2 of 4 stops after that step,
    # saves, and the resumed epoch logs the mean over all 4 steps, as the uninterrupted run does.
    import signal

    from utils.engine.trainer import Trainer

    four_steps = ("--end_epoch", "1", "--batch_size", "2")
    assert run_main(args_for(shapes, tmp_path / "a", *four_steps)) == 0
    real_step, calls = Trainer.train_step, {"n": 0}

    def sigint_during_second_step(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C delivers it
        return real_step(self, *args)

    monkeypatch.setattr(Trainer, "train_step", sigint_during_second_step)
    assert run_main(args_for(shapes, tmp_path / "b", *four_steps)) == 130
    saved = read_checkpoint(tmp_path / "b" / "exp1" / "last.pth")
    assert (saved["epoch"], saved["epoch_step"], saved["epoch_steps"]) == (0, 2, 2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert run_main(["--resume", str(tmp_path / "b" / "exp1" / "last.pth"), "--device", "cpu"]) == 0
    assert losses(tmp_path / "b" / "exp1") == pytest.approx(losses(tmp_path / "a" / "exp1"), abs=1e-6)
    assert_same_weights(tmp_path / "a" / "exp1" / "last.pth", tmp_path / "b" / "exp1" / "last.pth")


def test_resume_never_ignores_a_typed_flag(shapes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # --end_epoch trains a finished run longer, and says the run changed; other settings
    # are refused in one line.
    assert run_main(args_for(shapes, tmp_path / "runs", "--end_epoch", "1")) == 0
    resume = ["--resume", "auto", "--project", str(tmp_path / "runs"), "--device", "cpu"]
    with pytest.raises(ValueError, match="--resume continues .* so --lr, --optimizer would be ignored; drop them"):
        run_main([*resume, "--lr", "0.5", "--optimizer", "sgd"])
    # A typed flag that repeats the run's own setting is not ignored: it is the setting.
    with pytest.raises(ValueError, match="so --lr would be ignored; drop it, or .*--finetune"):
        run_main([*resume, "--lr", "0.5", "--optimizer", "adamw"])
    with caplog.at_level("WARNING"):
        assert run_main(resume) == 0  # nothing typed: it says the run is done and trains nothing
        assert run_main([*resume, "--optimizer", "adamw", "--batch_size", "4"]) == 0  # the run's own settings
    assert "already trained its 1 epochs; resume with --end_epoch N" in caplog.text
    assert len(losses(tmp_path / "runs" / "exp1")) == 2
    with pytest.raises(ValueError, match="has trained 1 epochs; --end_epoch 1 must be larger"):
        run_main([*resume, "--end_epoch", "1"])
    assert run_main([*resume, "--end_epoch", "2"]) == 0
    records = [json.loads(line) for line in (tmp_path / "runs" / "exp1" / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "note" not in records[0]
    assert (
        "changed from 1 to 2" in records[1]["note"]
        and "not equal to an uninterrupted 2-epoch run" in records[1]["note"]
    )
    assert read_checkpoint(tmp_path / "runs" / "exp1" / "last.pth")["epoch"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--schedule", "paper_voc", "--end_epoch", "1"), "--schedule paper_voc fixes the length .* so --end_epoch would be ignored"),
        (("--schedule", "cosine", "--milestones", "3"), "--milestones sets the lr drops of --schedule multistep"),
        (("--finetune", "x.pth", "--basenet", "vgg.pth"), "--finetune x.pth starts from a whole detector .* --basenet vgg.pth would be ignored"),
    ],
)  # fmt: skip
def test_conflicting_schedule_flags_are_refused(shapes: Path, tmp_path: Path, extra: tuple, message: str) -> None:
    # Each conflict is refused in one line, and no empty run folder is left behind.
    argv = [a for a in args_for(shapes, tmp_path / "runs") if a not in ("--basenet", "none")]
    with pytest.raises(ValueError, match=message):
        run_main([*argv, *extra])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_paper_schedule_has_no_warmup_unless_asked(tmp_path: Path) -> None:
    # The paper's schedule has no warmup; a typed --warmup_epochs adds one.
    from utils.engine.builders import resolve_schedule
    from utils.engine.config import TrainConfig

    parser = train.get_args_parser()
    def settings(*argv: str) -> TrainConfig:
        return TrainConfig.from_dict(vars(parser.parse_args(argv)))

    paper = resolve_schedule(settings("--schedule", "paper_voc"), 16551, 517)[1]
    assert paper.warmup_iters == 0 and paper.kind == "multistep"
    asked = resolve_schedule(settings("--schedule", "paper_voc", "--warmup_epochs", "0.5"), 16551, 517)[1]
    assert asked.warmup_iters == round(0.5 * 517)
    assert resolve_schedule(settings(), 16551, 517)[1].warmup_iters == 517  # cosine: 1 epoch


def test_a_failed_start_leaves_no_run_folder(shapes: Path, tmp_path: Path) -> None:
    argv = [a for a in args_for(shapes, tmp_path / "runs") if a not in ("--basenet", "none")]
    with pytest.raises(FileNotFoundError, match="base network"):
        run_main([*argv, "--basenet", str(tmp_path / "missing.pth")])
    assert not list((tmp_path / "runs").glob("exp*"))


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=cwd, capture_output=True, text=True)


def test_bad_input_is_one_line(shapes: Path, tmp_path: Path) -> None:
    missing_root = run_cli(
        "--dataset", "Shapes", "--dataset_root", str(tmp_path / "nope"), "--basenet", "none", cwd=tmp_path
    )
    assert missing_root.returncode == 2 and "Traceback" not in missing_root.stderr
    assert (
        missing_root.stderr.strip().splitlines()[-1]
        == f"error: dataset folder {tmp_path / 'nope'} does not exist; check --dataset_root"
    )
    no_basenet = run_cli("--dataset", "Shapes", "--dataset_root", str(shapes), "--batch_size", "4", cwd=tmp_path)
    assert no_basenet.returncode == 2 and "Traceback" not in no_basenet.stderr
    assert (
        "base network weights/vgg16_reducedfc.pth does not exist" in no_basenet.stderr
        and "--basenet none" in no_basenet.stderr
    )
    no_root = run_cli("--dataset", "Shapes", cwd=tmp_path)
    assert no_root.returncode == 2 and "--dataset_root is required" in no_root.stderr


def test_amp_on_a_cpu_trains_in_bfloat16(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.dtype] = []
    forward = SSD.forward

    def recording_forward(self: SSD, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, conf = forward(self, x)
        seen.append(conf.dtype)
        return loc, conf

    monkeypatch.setattr(SSD, "forward", recording_forward)
    assert run_main(args_for(shapes, tmp_path / "runs", "--end_epoch", "2", "--amp")) == 0
    assert seen and set(seen) == {torch.bfloat16}  # autocast was on, without a GradScaler (bfloat16)
    assert torch.isfinite(torch.tensor(losses(tmp_path / "runs" / "exp1"))).all()
    assert read_checkpoint(tmp_path / "runs" / "exp1" / "last.pth")["epoch"] == 2


def test_ssdlite_trains_resumes_and_runs_in_eval_and_inference(shapes: Path, tmp_path: Path) -> None:
    # The SSDLite320 design at 1/4 width from scratch (reduced tail), in NCHW: MobileNetV3's first channels_last
    # training steps pay seconds of oneDNN set-up, which a short test does not need to measure.
    lite = ("--backbone", "mobilenet_v3_large", "--width", "0.25", "--no_channels_last", "--end_epoch", "2")
    argv = [a if a != "0.125" else "0.25" for a in args_for(shapes, tmp_path / "a", *lite)]
    assert run_main(argv) == 0
    assert (
        run_main([*[a if a != str(tmp_path / "a") else str(tmp_path / "b") for a in argv], "--epochs_per_run", "1"])
        == 0
    )
    assert run_main(["--resume", "auto", "--project", str(tmp_path / "b"), "--device", "cpu"]) == 0
    assert_same_weights(tmp_path / "a" / "exp1" / "last.pth", tmp_path / "b" / "exp1" / "last.pth")
    model, info = load_detector(tmp_path / "a" / "exp1" / "last.pth")  # the checkpoint alone rebuilds it
    assert info.config.backbone == "mobilenet_v3_large" and info.config.size == 320 and info.config.reduced_tail
    assert info.config.priors.num_priors == 3234 and info.preprocess.mean[0] == pytest.approx(0.406 * 255)
    assert (info.postprocess.conf_thresh, info.postprocess.nms_thresh, info.postprocess.keep_top_k) == (
        0.001,
        0.55,
        300,
    )
    args = json.loads((tmp_path / "a" / "exp1" / "args.json").read_text())
    assert (args["size"], args["basenet"], args["pixel_norm"]) == (320, "none", "torchvision")
    weights = str(tmp_path / "a" / "exp1" / "last.pth")
    import eval as eval_script
    import inference

    common = ["--weights", weights, "--dataset", "Shapes", "--dataset_root", str(shapes), "--device", "cpu"]
    assert eval_script.main(parse_args(eval_script.get_args_parser(), [*common, "--num_workers", "0",
                                                                       "--project", str(tmp_path / "eval")])) == 0  # fmt: skip
    assert (
        inference.main(parse_args(inference.get_args_parser(), [*common, "--project", str(tmp_path / "detect")])) == 0
    )
    assert len(list((tmp_path / "detect" / "exp1").glob("*.jpg"))) == 4


def test_ssdlite_trains_with_amp(shapes: Path, tmp_path: Path) -> None:
    lite = ("--backbone", "mobilenet_v3_large", "--no_channels_last", "--end_epoch", "1", "--amp")
    assert run_main(args_for(shapes, tmp_path / "runs", *lite)) == 0
    assert torch.isfinite(torch.tensor(losses(tmp_path / "runs" / "exp1"))).all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--backbone", "resnet50"), "base network weights/resnet50-0676ba61.pth does not exist: put torchvision's "
                                     "ImageNet ResNet-50 weights there"),
        (("--backbone", "mobilenet_v3_large", "--basenet", "none", "--batch_norm"),
         "the mobilenet_v3_large design has BatchNorm throughout; batch_norm is a vgg16 option"),
        (("--backbone", "mobilenet_v3_large", "--basenet", "none", "--size", "300"),
         "must be one of \\[320\\] for the mobilenet_v3_large backbone"),
    ],
)  # fmt: skip
def test_backbone_flags_that_cannot_work_are_refused(shapes: Path, tmp_path: Path, extra: tuple, message: str) -> None:
    argv = [a for a in args_for(shapes, tmp_path / "runs") if a not in ("--basenet", "none", "--width", "0.125")]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_main([*argv, *extra])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_optimizer_makes_the_same_update(optimizer: str) -> None:
    # --fused_optimizer, checked on the CPU: the same steps up to float rounding.
    from utils.engine.builders import build_optimizer
    from utils.engine.config import TrainConfig

    parser = train.get_args_parser()
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_ssd(300, 3, width=0.125, batch_norm=True)
        args = parser.parse_args(["--optimizer", optimizer, "--lr", "0.01", *(["--fused_optimizer"] if fused else [])])
        optimizer_ = build_optimizer(TrainConfig.from_dict(vars(args)), list(model.parameters()))
        assert optimizer_.defaults.get("fused") == (True if fused else None)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            for param in model.parameters():
                param.grad = torch.randn(param.shape, generator=g)
            optimizer_.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
