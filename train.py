"""Train an SSD, on one device or with DistributedDataParallel under `torchrun`.

    python train.py --dataset VOC --dataset_root ~/data/VOCdevkit --end_epoch 100 --lr 1e-2
    torchrun --nproc_per_node=8 train.py --dataset VOC --dataset_root ~/data/VOCdevkit --batch_size 32 --amp
    python train.py --resume auto

A run writes ``runs/train/exp<N>/``: ``args.json``, ``last.pth``, ``best.pth`` (by mAP), ``log.txt`` (one JSON
line per epoch), ``results.csv`` and ``results.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.base import DetectionDataset, detection_collate
from data.build import build_dataset
from data.config import DatasetPreset, get_preset
from data.sampler import EpochSampler
from eval import evaluate
from layers.detection import Detect
from layers.multibox_loss import MultiBoxLoss
from ssd import SSD, build_ssd, model_config_from_dict, model_config_to_dict
from utils.augmentations import (
    CAFFE_MEAN_BGR,
    TORCHVISION_MEAN_BGR,
    TORCHVISION_STD_BGR,
    BaseTransform,
    SSDAugmentation,
)
from utils.cli import run_cli
from utils.distributed import DistInfo, all_reduce_sum, cleanup, init_distributed
from utils.plots import plot_training
from utils.runs import increment_run_dir, select_device
from utils.runtime import mixed_precision_dtype
from utils.schedule import Schedule, paper_voc_epochs
from utils.weights import atomic_save, load_base_weights, load_model_weights, read_checkpoint

logger = logging.getLogger("train")

PIXEL_NORMS = {"caffe": (CAFFE_MEAN_BGR, None), "torchvision": (TORCHVISION_MEAN_BGR, TORCHVISION_STD_BGR)}
# On --resume every argument comes from the checkpoint, except these: per-invocation ones, always from the
# command line, and operational ones, from the command line when given there.
PER_INVOCATION_ARGS = ("resume", "epochs_per_run")
OPERATIONAL_ARGS = ("device", "num_workers", "verbose")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says where."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train SSD300/SSD512.", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="VOC", help="VOC, COCO, Cityscapes, FoggyCityscapes, Shapes or Custom")
    data.add_argument(
        "--dataset_root", "--dataset-root", default=None, help="VOCdevkit, COCO root or VOC-format folder"
    )
    data.add_argument("--classes", default=None, help="class-names file (one per line), for Custom")
    data.add_argument(
        "--image_set", "--image-set", default=None, help="override the train split: 2007:trainval, train2014, trainval"
    )
    data.add_argument("--keep_difficult", action="store_true", help="train on VOC 'difficult' objects too")
    data.add_argument("--skip_bad", action="store_true", help="skip unreadable images/annotations with a warning")
    data.add_argument("--max_expand", type=float, default=4.0,
                      help="largest zoom-out of the expand augmentation (SSD: 4; 1 turns it off, for short schedules)")  # fmt: skip
    data.add_argument("--num_workers", "--num-workers", type=int, default=4)
    model = parser.add_argument_group("model")
    model.add_argument("--size", type=int, default=300, choices=[300, 512])
    model.add_argument("--priors", choices=["VOC", "COCO"], default=None,
                       help="prior sizes (COCO's start smaller: better for small objects); default: the dataset's")  # fmt: skip
    model.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = the paper's VGG-16)")
    model.add_argument("--batch_norm", action="store_true", help="BatchNorm after every base/extra conv (from scratch)")
    model.add_argument(
        "--basenet", default="weights/vgg16_reducedfc.pth", help="ImageNet VGG-16 base, or 'none' to train from scratch"
    )
    model.add_argument("--pixel_norm", choices=sorted(PIXEL_NORMS), default="caffe",
                       help="input normalisation: caffe for vgg16_reducedfc.pth, torchvision for utils/convert_vgg.py output")  # fmt: skip
    model.add_argument("--finetune", default=None, help="detector checkpoint to start from, all but its conf heads")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--end_epoch", "--end-epoch", "--epochs", dest="end_epoch", type=int, default=100)
    optim.add_argument("--batch_size", "--batch-size", type=int, default=32, help="global batch, split over processes")
    optim.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    optim.add_argument("--lr", type=float, default=1e-3)
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--weight_decay", type=float, default=5e-4)
    optim.add_argument("--schedule", choices=["cosine", "multistep", "paper_voc"], default="cosine",
                       help="paper_voc: lr 1e-3, x0.1 at 80k and 100k of 120k iterations of 32 images, in epochs")  # fmt: skip
    optim.add_argument("--milestones", type=int, nargs="*", default=[], help="multistep: epochs of the x gamma drops")
    optim.add_argument("--gamma", type=float, default=0.1)
    optim.add_argument("--warmup_epochs", type=float, default=1.0)
    optim.add_argument("--max_grad_norm", type=float, default=0.0, help="clip gradients to this norm (0: off)")
    optim.add_argument("--amp", action="store_true",
                       help="mixed precision: float16 on a GPU, bfloat16 on a CPU (about 2x on CPUs with bfloat16 "
                            "instructions)")  # fmt: skip
    optim.add_argument("--no_channels_last", action="store_true", help="keep NCHW memory format")
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", default=None, help="a last.pth, or 'auto' for the newest under --project")
    run.add_argument("--save_period", type=int, default=1, help="save last.pth every N epochs (and at the end)")
    run.add_argument("--eval_interval", type=int, default=1, help="evaluate every N epochs (0: never)")
    run.add_argument("--eval_batch_size", type=int, default=32)
    run.add_argument(
        "--epochs_per_run", type=int, default=0, help="stop after N epochs and save, for time-limited jobs (0: off)"
    )
    run.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (if installed)")
    run.add_argument("--project", default="runs/train")
    run.add_argument("--name", default="exp")
    run.add_argument("--verbose", action="store_true")
    return parser


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in states["python"]))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def find_resume_checkpoint(resume: str, project: str) -> Path:
    if resume != "auto":
        return Path(resume)
    candidates = sorted(Path(project).glob("*/last.pth"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"--resume auto found no last.pth under {project}; pass the checkpoint path")
    return candidates[-1]


def build_model(args: argparse.Namespace, preset: DatasetPreset) -> SSD:
    model = build_ssd(args.size, preset.num_classes, args.priors or preset.prior_family, args.width, args.batch_norm)
    if args.finetune:
        load_model_weights(model, args.finetune, skip_conf=True)
    elif args.basenet and args.basenet.lower() != "none":
        if not Path(args.basenet).is_file():
            raise FileNotFoundError(
                f"base network {args.basenet} does not exist: put ssd.pytorch's vgg16_reducedfc.pth there (README, "
                "'Weights'), or convert torchvision's VGG-16 with utils/convert_vgg.py and pass --basenet <file> "
                "--pixel_norm torchvision, or train from scratch with --basenet none"
            )
        load_base_weights(model, args.basenet)
    return model


def build_optimizer(args: argparse.Namespace, model: SSD) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def resolve_schedule(args: argparse.Namespace, dataset_size: int, steps_per_epoch: int) -> tuple[int, Schedule]:
    """The number of epochs and the per-iteration lr schedule."""
    epochs, milestones, kind = args.end_epoch, args.milestones, args.schedule
    if kind == "paper_voc":
        epochs, milestones = paper_voc_epochs(dataset_size, args.batch_size)
        kind = "multistep"
    schedule = Schedule(
        total_iters=epochs * steps_per_epoch,
        warmup_iters=round(args.warmup_epochs * steps_per_epoch),
        kind=kind,
        milestones=tuple(m * steps_per_epoch for m in milestones),
        gamma=args.gamma,
    )
    return epochs, schedule


class Trainer:
    """Holds what one training run owns and runs it epoch by epoch."""

    def __init__(self, args: argparse.Namespace, device: torch.device, dist: DistInfo) -> None:
        self.args, self.device, self.dist = args, device, dist
        checkpoint = None
        if args.resume:
            path = find_resume_checkpoint(args.resume, args.project)
            checkpoint = read_checkpoint(path)
            if "optimizer" not in checkpoint or "args" not in checkpoint:
                raise ValueError(
                    f"{path} is not a train.py checkpoint (no optimizer state); use it with --finetune instead"
                )
            saved = dict(checkpoint["args"])
            defaults = vars(get_args_parser().parse_args([]))
            saved.update({k: getattr(args, k) for k in OPERATIONAL_ARGS if getattr(args, k) != defaults[k]})
            saved.update({k: getattr(args, k) for k in PER_INVOCATION_ARGS})
            args = self.args = argparse.Namespace(**saved)
            self.run_dir: Path | None = path.parent if dist.is_main else None
        elif args.dataset_root is None:
            raise ValueError("--dataset_root is required (the dataset folder), unless you --resume a run")
        else:
            self.run_dir = increment_run_dir(args.project, args.name) if dist.is_main else None
        if args.batch_size % dist.world_size:
            raise ValueError(f"--batch_size {args.batch_size} must be divisible by the {dist.world_size} processes")
        seed_everything(args.seed)

        self.preset = get_preset(args.dataset, args.classes)
        self.mean, self.std = PIXEL_NORMS[args.pixel_norm]
        augmentation = SSDAugmentation(args.size, self.mean, self.std, max_expand=args.max_expand)
        self.dataset = build_dataset(self.preset, args.dataset_root, "train", augmentation, args.image_set,
                                     args.keep_difficult, args.skip_bad, args.seed)  # fmt: skip
        if len(self.dataset) < args.batch_size:
            raise ValueError(
                f"the training set has {len(self.dataset)} images, fewer than --batch_size {args.batch_size}"
            )
        self.sampler = EpochSampler(
            len(self.dataset), args.seed, dist.world_size, dist.rank, shuffle=True, drop_last=True
        )
        self.loader = DataLoader(self.dataset, args.batch_size // dist.world_size, sampler=self.sampler,
                                 num_workers=args.num_workers, collate_fn=detection_collate,
                                 pin_memory=device.type == "cuda", drop_last=True)  # fmt: skip
        self.steps_per_epoch = len(self.dataset) // args.batch_size

        if checkpoint is None:
            self.model = build_model(args, self.preset).to(device)
        else:  # the weights are loaded by load_state below
            self.model = SSD(model_config_from_dict(checkpoint["model_config"])).to(device)
        self.memory_format = torch.preserve_format if args.no_channels_last else torch.channels_last
        self.model.to(memory_format=self.memory_format)
        self.optimizer = build_optimizer(args, self.model)
        self.epochs, schedule = resolve_schedule(args, len(self.dataset), self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule.factor)
        self.amp_dtype = mixed_precision_dtype(device) if args.amp else None
        # float16 needs loss scaling against gradient underflow; bfloat16 has float32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.epoch, self.epoch_step, self.iteration, self.best_map = 0, 0, 0, None
        if checkpoint is not None:
            self.load_state(checkpoint)

        ddp_args = {"device_ids": [device.index]} if device.type == "cuda" else {}
        self.net = DistributedDataParallel(self.model, **ddp_args) if dist.enabled else self.model
        normalizer = (lambda n: all_reduce_sum(n).clamp(min=1) / dist.world_size) if dist.enabled else None
        self.criterion = MultiBoxLoss(self.preset.num_classes, normalizer=normalizer)
        self.test_dataset = self.build_test_dataset() if dist.is_main and args.eval_interval > 0 else None
        self.records: list[dict] = []
        self.tensorboard = self.open_tensorboard() if dist.is_main and args.tensorboard else None
        if self.run_dir is not None:
            (self.run_dir / "args.json").write_text(json.dumps(vars(args), indent=2, default=str))
            log = self.run_dir / "log.txt"
            if log.is_file():  # a resumed run keeps the epochs its checkpoint covers
                self.records = [r for r in map(json.loads, log.read_text().splitlines()) if r["epoch"] <= self.epoch]
                log.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def build_test_dataset(self) -> DetectionDataset | None:
        try:
            return build_dataset(
                self.preset, self.args.dataset_root, "test", BaseTransform(self.args.size, self.mean, self.std)
            )
        except (FileNotFoundError, ValueError) as error:
            logger.warning("no evaluation during training: %s", error)
            return None

    def open_tensorboard(self):  # noqa: ANN201 - SummaryWriter is optional
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("--tensorboard: the tensorboard package is not installed (pip install tensorboard)")
            return None
        return SummaryWriter(str(self.run_dir))

    def checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "model_config": model_config_to_dict(self.model.config),
            "class_names": list(self.preset.class_names),
            "preprocess": {"mean": list(self.mean), "std": None if self.std is None else list(self.std)},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "iteration": self.iteration,
            "best_map": self.best_map,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
            "rng": rng_states(),
        }

    def load_state(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.epoch_step = int(checkpoint["epoch"]), int(checkpoint["epoch_step"])
        self.iteration, self.best_map = int(checkpoint["iteration"]), checkpoint["best_map"]
        restore_rng_states(checkpoint["rng"])
        logger.info("resuming at epoch %d, step %d (iteration %d)", self.epoch + 1, self.epoch_step, self.iteration)

    def save(self, name: str) -> Path | None:
        if self.run_dir is None:
            return None
        path = self.run_dir / name
        atomic_save(self.checkpoint(), path)
        return path

    def train_step(self, images: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """One optimisation step; returns the process-averaged (loss_l, loss_c)."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = [t.to(self.device, non_blocking=True) for t in targets]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loc_preds, conf_preds = self.net(images)
        loss_l, loss_c = self.criterion(loc_preds.float(), conf_preds.float(), self.model.priors, targets)
        terms = all_reduce_sum(torch.stack([loss_l.detach(), loss_c.detach()])) / self.dist.world_size
        if not torch.isfinite(terms).all():
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.iteration} (epoch {self.epoch + 1}, lr "
                f"{self.scheduler.get_last_lr()[0]:.3g}): loss_l={terms[0].item()}, loss_c={terms[1].item()}; "
                "the last checkpoint is intact. Lower --lr, set --max_grad_norm, or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss_l + loss_c).backward()
        if self.args.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return terms

    def train_epoch(self, bar: tqdm | None) -> dict:
        self.model.train()
        self.dataset.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, start=self.epoch_step * self.loader.batch_size)
        sums, steps, start = torch.zeros(2), 0, time.perf_counter()
        for images, targets in self.loader:
            lr = self.scheduler.get_last_lr()[0]
            terms = self.train_step(images, targets).cpu()
            sums += terms
            steps += 1
            self.epoch_step += 1
            self.iteration += 1
            if bar is not None:
                speed = steps * self.args.batch_size / (time.perf_counter() - start)
                bar.set_description(f"epoch {self.epoch + 1}/{self.epochs}")
                bar.set_postfix(
                    loss_l=f"{terms[0]:.3f}", loss_c=f"{terms[1]:.3f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}"
                )
                bar.update(1)
            if self.tensorboard is not None:
                self.tensorboard.add_scalars("loss", {"loc": terms[0], "conf": terms[1]}, self.iteration)
                self.tensorboard.add_scalar("lr", lr, self.iteration)
        elapsed = time.perf_counter() - start
        means = (sums / max(steps, 1)).tolist()
        return {"epoch": self.epoch + 1, "iteration": self.iteration, "loss": means[0] + means[1], "loss_l": means[0],
                "loss_c": means[1], "lr": self.scheduler.get_last_lr()[0],
                "images_per_s": steps * self.args.batch_size / max(elapsed, 1e-9), "time_s": elapsed}  # fmt: skip

    def evaluate(self) -> dict | None:
        if self.test_dataset is None:
            return None
        result = evaluate(self.model, self.test_dataset, Detect(self.preset.num_classes), self.device,
                          self.args.eval_batch_size, self.args.num_workers, "voc07", progress=False)  # fmt: skip
        return {"map": result["map"], "ap": result["ap"]}

    def end_epoch(self, record: dict) -> None:
        """Evaluate, save and log, on the main process."""
        finished = self.epoch == self.epochs
        if self.args.eval_interval > 0 and (self.epoch % self.args.eval_interval == 0 or finished):
            record.update(self.evaluate() or {})
        mean_ap = record.get("map")
        if mean_ap is not None and not np.isnan(mean_ap) and (self.best_map is None or mean_ap > self.best_map):
            self.best_map = mean_ap
            self.save("best.pth")
        if self.epoch % self.args.save_period == 0 or finished:
            self.save("last.pth")
        self.records.append(record)
        with (self.run_dir / "log.txt").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.write_results()
        message = f"epoch {record['epoch']}/{self.epochs}: loss {record['loss']:.4f} (loc {record['loss_l']:.4f}, conf {record['loss_c']:.4f}), {record['images_per_s']:.1f} img/s"
        logger.info(message + (f", mAP {mean_ap:.4f}" if mean_ap is not None else ""))
        if self.tensorboard is not None and mean_ap is not None:
            self.tensorboard.add_scalar("mAP", mean_ap, self.iteration)

    def write_results(self) -> None:
        columns = ("epoch", "iteration", "loss", "loss_l", "loss_c", "lr", "images_per_s", "map")
        rows = [",".join(columns)] + [
            ",".join("" if r.get(c) is None else str(r.get(c)) for c in columns) for r in self.records
        ]
        (self.run_dir / "results.csv").write_text("\n".join(rows) + "\n")
        plot_training(self.run_dir / "results.png", self.records)

    def fit(self) -> int:
        """Train to the last epoch (or ``--epochs_per_run``); returns the exit status."""
        args = self.args
        total = self.epochs * self.steps_per_epoch
        bar = tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True) if self.dist.is_main else None
        epochs_this_run = 0
        try:
            while self.epoch < self.epochs:
                if self.epoch_step >= self.steps_per_epoch:
                    self.epoch, self.epoch_step = self.epoch + 1, 0
                    continue
                record = self.train_epoch(bar)
                self.epoch, self.epoch_step = self.epoch + 1, 0
                epochs_this_run += 1
                if self.dist.is_main:
                    self.end_epoch(record)
                if args.epochs_per_run and epochs_this_run >= args.epochs_per_run and self.epoch < self.epochs:
                    path = self.save("last.pth")
                    if path is not None:
                        print(
                            f"stopped after {epochs_this_run} epoch(s) (--epochs_per_run); resume with: python train.py --resume {path}"
                        )
                    return 0
        except KeyboardInterrupt:
            path = self.save("last.pth")
            if path is not None:
                print(f"\ninterrupted at epoch {self.epoch + 1}, step {self.epoch_step}; saved {path}; "
                      f"resume with: python train.py --resume {path}", file=sys.stderr)  # fmt: skip
            return 130
        finally:
            if bar is not None:
                bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        if self.run_dir is not None:
            best = f", best mAP {self.best_map:.4f} ({self.run_dir / 'best.pth'})" if self.best_map is not None else ""
            print(f"finished {self.epochs} epochs: {self.run_dir / 'last.pth'}{best}")
        return 0


def main(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return Trainer(args, device, dist).fit()
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
