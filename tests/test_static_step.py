"""utils.engine.static_step: train.py --cuda_graph's static training step, checked on the CPU where it runs eagerly.

A CPU cannot record CUDA graphs; what the recording relies on is checked here: padded targets and the dense
matching give the eager values, the static step trains as the eager step does, and the warm-up before a capture
is undone exactly.
"""

from pathlib import Path

import pytest
import torch

from layers.box_utils import match, pad_targets
from layers.multibox_loss import MultiBoxLoss
from ssd import build_ssd
from tests.test_train import args_for, losses, run_main, shapes  # noqa: F401 - the shapes fixture
from utils.engine.static_step import StaticTrainStep, padded_count
from utils.engine.step import TrainStep


def random_batch(batch_size: int, counts: list[int], seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, 300, 300, generator=g)
    targets = []
    for count in counts:
        xy = torch.rand(count, 2, generator=g) * 0.6
        wh = 0.05 + torch.rand(count, 2, generator=g) * 0.35
        labels = torch.randint(0, 3, (count, 1), generator=g).float()
        targets.append(torch.cat([xy, xy + wh, labels], 1))
    return images, targets


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_ssd(300, 4, width=0.125, batch_norm=True).train()


def make_optimizer(model: torch.nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4)


@pytest.mark.parametrize(("largest", "padded"), [(0, 32), (1, 32), (32, 32), (33, 64), (64, 64), (65, 128)])
def test_padded_count_is_a_power_of_two_of_at_least_32(largest: int, padded: int) -> None:
    assert padded_count(largest) == padded


def test_pad_targets_to_a_fixed_size() -> None:
    _, targets = random_batch(3, [2, 0, 5], seed=0)
    truths, labels, valid = pad_targets(targets, 8)
    assert truths.shape == (3, 8, 4) and labels.shape == valid.shape == (3, 8)
    assert valid.sum(1).tolist() == [2, 0, 5]
    assert torch.equal(truths[2, :5], targets[2][:, :4]) and (labels[~valid] == -1).all()
    with pytest.raises(ValueError, match="up to 5 ground truths to 4"):
        pad_targets(targets, 4)


def test_dense_matching_equals_matching_on_the_real_rows() -> None:
    # static_shapes computes IoU on the padding rows too and masks them: the same bits as selecting real rows.
    priors = build_ssd(300, 4, width=0.125).priors
    _, targets = random_batch(4, [3, 0, 7, 1], seed=1)
    truths, labels, valid = pad_targets(targets, 32)
    selected = match(truths, labels, valid, priors)
    dense = match(truths, labels, valid, priors, static_shapes=True)
    for a, b in zip(selected, dense, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("kind", "max_grad_norm"), [("sgd", 0.0), ("adamw", 1.0)])
def test_static_step_trains_as_the_eager_step(kind: str, max_grad_norm: float) -> None:
    batches = [random_batch(2, counts, seed=10 + i) for i, counts in enumerate([[1, 3], [0, 2], [4, 1]])]
    eager_model, static_model = small_model(), small_model()
    criterion = MultiBoxLoss(4)

    eager = TrainStep(eager_model, criterion, eager_model, None, make_optimizer(eager_model, kind),
                      torch.amp.GradScaler("cpu", enabled=False), max_grad_norm, None, torch.device("cpu"),
                      torch.preserve_format, reduce=lambda terms: terms, world_size=1)  # fmt: skip
    eager_losses = [eager(images, targets, None, i, lambda terms: None) for i, (images, targets) in enumerate(batches)]

    step = StaticTrainStep(static_model, criterion, make_optimizer(static_model, kind), max_grad_norm=max_grad_norm)
    assert not step.cuda_graph  # a CPU runs the step eagerly
    static_losses = [step(images, targets) for images, targets in batches]
    for a, b in zip(static_losses, eager_losses, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(static_model.state_dict().items(), eager_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("steps_before", [0, 1])
def test_the_warm_up_before_a_capture_is_undone_exactly(kind: str, steps_before: int) -> None:
    # What _capture does around its warm-up, on the CPU: snapshot, train WARMUP_STEPS, restore. A fresh run
    # (steps_before 0: no optimizer state yet, restored as zeros) and a resumed one then train bit for bit as
    # without the warm-up.
    batches = [random_batch(2, counts, seed=20 + i) for i, counts in enumerate([[2, 1], [1, 1], [3, 0]])]

    def train(warm_up: bool) -> dict[str, torch.Tensor]:
        model = small_model()
        step = StaticTrainStep(model, MultiBoxLoss(4), make_optimizer(model, kind))
        for images, targets in batches[:steps_before]:
            step(images, targets)
        if warm_up:
            saved = step.snapshot()
            for images, targets in batches:
                step(images, targets)
            step.restore(saved)
        for images, targets in batches[steps_before:]:
            step(images, targets)
        return {**model.state_dict(), **{f"optimizer.{i}.{k}": v for i, state in enumerate(
            step.optimizer.state.values()) for k, v in state.items()}}  # fmt: skip

    plain, warmed = train(False), train(True)
    assert plain.keys() == warmed.keys()
    for name in plain:
        assert torch.equal(plain[name], warmed[name]), name


def test_float16_is_refused() -> None:
    model = small_model()
    with pytest.raises(ValueError, match="float16 .* use bfloat16"):
        StaticTrainStep(model, MultiBoxLoss(4), make_optimizer(model, "sgd"), amp_dtype=torch.float16)


def test_train_py_cuda_graph_trains_as_the_eager_step_and_resumes_exactly(
    shapes: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    sgd = ("--optimizer", "sgd", "--lr", "1e-3", "--end_epoch", "2")
    assert run_main(args_for(shapes, tmp_path / "eager", *sgd)) == 0
    assert run_main(args_for(shapes, tmp_path / "a", *sgd, "--cuda_graph")) == 0
    assert losses(tmp_path / "a" / "exp1") == pytest.approx(losses(tmp_path / "eager" / "exp1"), rel=1e-4)
    assert run_main(args_for(shapes, tmp_path / "b", *sgd, "--cuda_graph", "--epochs_per_run", "1")) == 0
    assert run_main(["--resume", "auto", "--project", str(tmp_path / "b"), "--device", "cpu"]) == 0
    assert losses(tmp_path / "b" / "exp1") == losses(tmp_path / "a" / "exp1")


def test_train_py_refuses_cuda_graph_with_domain_adaptation(shapes: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="--cuda_graph records the supervised step of one process"):
        run_main(args_for(shapes, tmp_path / "runs", "--cuda_graph", "--target_root", str(shapes), "--da", "grl"))


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_a_resumed_optimizer_keeps_this_runs_implementation_flags(kind: str) -> None:
    # A run saved unfused (on a CPU) and resumed with --cuda_graph on a GPU must stay fused: load_state_dict
    # would otherwise bring back the saved flags, and the recorded step would read its lr on the host.
    from utils.engine.builders import match_optimizer_flags

    model = small_model()
    saved = make_optimizer(model, kind)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    saved.step()
    cls = type(saved)
    fused = cls(model.parameters(), lr=1e-3, fused=True)
    fused.load_state_dict(saved.state_dict())
    assert not all(group["fused"] for group in fused.param_groups)  # what load_state_dict does
    match_optimizer_flags(fused)
    assert all(group["fused"] for group in fused.param_groups)
    if kind == "adamw":
        assert all(state["step"].dtype == torch.float32 for state in fused.state.values())
    fused.step()  # runs with the restored state


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_recorded_steps_train_as_eager_static_steps(device: torch.device, kind: str) -> None:
    # On a GPU: the recorded graph (warm-up undone, lr tensor, a second padded count recorded mid-run) against the
    # same static step run eagerly; on a CPU both run eagerly. Batches 3 and 4 need 64 padded ground truths.
    counts = [[1, 3], [0, 2], [40, 1], [2, 2]]
    batches = [random_batch(2, c, seed=30 + i) for i, c in enumerate(counts)]
    results = []
    for cuda_graph in (False, True):
        model = small_model().to(device)
        fused = device.type == "cuda"
        if kind == "sgd":
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4, fused=fused)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused, capturable=fused)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))  # lr changes
        step = StaticTrainStep(model, MultiBoxLoss(4), optimizer, max_grad_norm=1.0, cuda_graph=cuda_graph)
        losses_ = []
        for images, targets in batches:
            losses_.append(step(images, targets).cpu())
            scheduler.step()
        assert step.cuda_graph == (cuda_graph and device.type == "cuda")
        results.append((losses_, {k: v.cpu() for k, v in model.state_dict().items()}))
    (eager_losses, eager_state), (graph_losses, graph_state) = results
    for a, b in zip(graph_losses, eager_losses, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if kind == "sgd":  # Adam can turn float-rounding differences of near-zero gradients into lr-sized steps
        for name in eager_state:
            torch.testing.assert_close(graph_state[name], eager_state[name], rtol=1e-3, atol=1e-5, msg=name)
