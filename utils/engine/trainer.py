"""The training loop of train.py: one run's state (data, model, optimizer, schedule, DDP) and its epochs.

What it wires together has homes of its own: the arguments and ``--resume`` (:mod:`utils.engine.resume`), the
builders (:mod:`utils.engine.builders`), the step (:mod:`utils.engine.step`), the run's files
(:mod:`utils.engine.run_log`). train.py parses flags and calls :class:`Trainer`; tests import it directly."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data.base import DetectionDataset
from data.build import build_dataset
from data.config import DatasetPreset, get_preset
from layers.multibox_loss import MultiBoxLoss
from ssd import SSD
from utils.adabn import adapt_batchnorm
from utils.checkpoint import (
    detector_info,
    save_checkpoint,
)
from utils.engine.adaptation import DomainAdaptation
from utils.engine.builders import (
    build_model,
    build_optimizer,
    build_target_loader,
    build_train_loader,
    match_optimizer_flags,
    prepare_network,
    resolve_schedule,
    target_preset,
    training_precision,
)
from utils.engine.config import TrainConfig
from utils.engine.da_config import AdaptationConfig, RunLength
from utils.engine.distributed import DistInfo, all_reduce_sum
from utils.engine.resume import restore_rng_states, rng_states, seed_everything
from utils.engine.run_log import RunLog
from utils.engine.static_step import StaticTrainStep
from utils.engine.step import TrainStep
from utils.evaluation.evaluate import default_metric, evaluate
from utils.predict import Predictor
from utils.runs import check_writable, increment_run_dir

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says where."""


class Trainer:
    """Holds what one training run owns and runs it epoch by epoch.

    Args:
        settings: the run's settings, resolved by :func:`utils.engine.resume.resolve_run`.
        checkpoint: the checkpoint to resume from, or None for a new run.
        resume_path: its path (the run folder is its folder).
    """

    def __init__(
        self,
        settings: TrainConfig,
        device: torch.device,
        dist: DistInfo,
        checkpoint: dict[str, Any] | None = None,
        resume_path: Path | None = None,
    ) -> None:
        self.settings, self.device, self.dist = settings, device, dist
        if dist.is_main and resume_path is None:
            check_writable(settings.project)  # the run folder itself is made once everything is built
        seed_everything(settings.seed)

        self.preset = get_preset(settings.dataset, settings.classes)
        if checkpoint is None:
            self.model, self.info = build_model(settings, self.preset)
        else:  # the weights are loaded by load_state below
            self.info = detector_info(checkpoint)
            self.model = SSD(self.info.config)
        self.model.to(device)
        self.dataset, self.sampler, self.loader = build_train_loader(settings, self.preset, self.info, dist, device)
        self.steps_per_epoch = len(self.dataset) // settings.batch_size
        self.target_preset = target_preset(settings, self.preset) if settings.target_root else None
        self.epochs, schedule = resolve_schedule(settings, len(self.dataset), self.steps_per_epoch)
        config = AdaptationConfig.from_settings(settings)
        length = RunLength(self.steps_per_epoch, self.epochs)
        self.adaptation = DomainAdaptation(config, self.model, length, settings.seed) if config.methods else None
        self.target_sampler, self.target_loader = (None, None)
        if config.views:
            self.target_sampler, self.target_loader = build_target_loader(settings, self.info, config.views, dist, device)
        network = self.adaptation.network() if self.adaptation is not None else self.model
        prepare_network(network, device, dist, settings.sync_bn, self.adaptation is not None)
        self.memory_format = torch.preserve_format if settings.no_channels_last else torch.channels_last
        self.model.to(memory_format=self.memory_format)
        parameters = list(self.model.parameters())
        if self.adaptation is not None:
            parameters += list(self.adaptation.parameters())
        self.optimizer = build_optimizer(settings, parameters)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule.factor)
        graphed = settings.cuda_graph
        self.amp_dtype = training_precision(settings.amp, graphed, device)
        # float16 needs loss scaling against gradient underflow; bfloat16 has float32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.epoch, self.epoch_step, self.iteration, self.best_map = 0, 0, 0, None
        # The running loss sums, step count and time of the current epoch: a checkpoint saved mid-epoch keeps
        # them, so the resumed epoch logs the mean over all its steps.
        self.term_names = self.adaptation.term_names() if self.adaptation is not None else ("loss_l", "loss_c")
        self.epoch_sums = torch.zeros(len(self.term_names), dtype=torch.float64)
        self.epoch_steps, self.epoch_time = 0, 0.0
        if checkpoint is not None:
            self.load_state(checkpoint)

        ddp_args = {"device_ids": [device.index]} if device.type == "cuda" else {}
        self.net = DistributedDataParallel(network, **ddp_args) if dist.enabled else network
        normalizer = (lambda n: all_reduce_sum(n).clamp(min=1) / dist.world_size) if dist.enabled else None
        criterion = MultiBoxLoss(self.preset.num_classes, normalizer=normalizer)
        self.step: TrainStep | StaticTrainStep
        if graphed:  # the update is applied before the loss is checked
            self.step = StaticTrainStep(self.model, criterion, self.optimizer, self.amp_dtype, settings.max_grad_norm,
                                        self.memory_format)  # fmt: skip
        else:
            self.step = TrainStep(self.net, criterion, self.model, self.adaptation, self.optimizer, self.scaler,
                                  settings.max_grad_norm, self.amp_dtype, device, self.memory_format, all_reduce_sum,
                                  dist.world_size)  # fmt: skip
        evaluates = dist.is_main and settings.eval_interval > 0
        self.test_dataset = self.build_test_dataset(self.preset, settings.dataset_root) if evaluates else None
        self.target_test_dataset = None
        if evaluates and self.target_preset is not None:
            # The target's labelled val split where it has one: choices made during training never read its test split.
            has_val = (Path(settings.target_root) / "ImageSets" / "Main" / "val.txt").is_file()
            logger.info("the target is scored on its %s split during training", "val" if has_val else "test")
            self.target_test_dataset = self.build_test_dataset(self.target_preset, settings.target_root,
                                                               "val" if has_val else None)  # fmt: skip
        self.stop_requested = False
        self.run_dir: Path | None = None
        self.log: RunLog | None = None
        if dist.is_main:
            self.run_dir = resume_path.parent if resume_path is not None else increment_run_dir(settings.project, settings.name)
            self.log = RunLog(self.run_dir, self.term_names, settings.tensorboard)
            self.log.write_args(settings.to_dict())
            self.log.resume(self.epoch)

    def build_test_dataset(self, preset: DatasetPreset, root: str, image_set: str | None = None) -> DetectionDataset | None:
        try:
            transform = self.info.preprocess.transform(self.info.config.size)
            return build_dataset(preset, root, "test", transform, image_set)
        except (FileNotFoundError, ValueError) as error:
            logger.warning("no evaluation on %s during training: %s", root, error)
            return None

    def training_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the detector, for an exact ``--resume``."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "iteration": self.iteration,
            "best_map": self.best_map,
            "epoch_sums": self.epoch_sums.clone(),
            "epoch_steps": self.epoch_steps,
            "epoch_time": self.epoch_time,
            "args": self.settings.to_dict(),
            "rng": rng_states(),
            **({"adaptation": self.adaptation.state_dict()} if self.adaptation is not None else {}),
        }

    def load_state(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        match_optimizer_flags(self.optimizer)
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.epoch_step = int(checkpoint["epoch"]), int(checkpoint["epoch_step"])
        self.iteration, self.best_map = int(checkpoint["iteration"]), checkpoint["best_map"]
        if self.adaptation is not None:
            self.adaptation.load_state_dict(checkpoint["adaptation"])
        if "epoch_sums" in checkpoint:  # older checkpoints: the resumed epoch's log covers its new steps only
            self.epoch_sums = checkpoint["epoch_sums"].to(torch.float64)
            self.epoch_steps, self.epoch_time = int(checkpoint["epoch_steps"]), float(checkpoint["epoch_time"])
        restore_rng_states(checkpoint["rng"])
        logger.info("resuming at epoch %d, step %d (iteration %d)", self.epoch + 1, self.epoch_step, self.iteration)

    def save(self, name: str) -> Path | None:
        if self.run_dir is None:
            return None
        path = self.run_dir / name
        save_checkpoint(path, self.model, self.info, **self.training_state())
        if name == "last.pth":
            self.save_teacher()
        return path

    def save_teacher(self) -> None:
        """A mean teacher's weights as a detector checkpoint of its own, ``teacher.pth``, written with each
        ``last.pth`` (eval.py, inference.py and export read it as any checkpoint; ``last.pth`` keeps it too, for
        ``--resume``)."""
        teacher = self.adaptation.teacher if self.adaptation is not None else None
        if self.run_dir is not None and teacher is not None:
            save_checkpoint(self.run_dir / "teacher.pth", teacher, self.info, epoch=self.epoch, iteration=self.iteration)

    def train_step(
        self, images: torch.Tensor, targets: list[torch.Tensor], target_views: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One optimisation step and the scheduler's; returns the process-averaged loss terms (``self.term_names``).

        Args:
            target_views (Tensor[B, V, 3, S, S] | None): unlabeled target images, with domain adaptation.
        """
        terms = self.step(images, targets, target_views, self.iteration, self.check_finite)
        self.scheduler.step()
        return terms

    def check_finite(self, terms: torch.Tensor) -> None:
        """Stop on a non-finite loss term, naming the iteration (nothing is saved: the last checkpoint is intact)."""
        if not torch.isfinite(terms).all():
            values = ", ".join(f"{name}={value}" for name, value in zip(self.term_names, terms.tolist(), strict=True))
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.iteration} (epoch {self.epoch + 1}, lr "
                f"{self.scheduler.get_last_lr()[0]:.3g}): {values}; "
                "the last checkpoint is intact. Lower --lr, set --max_grad_norm, or check the data"
            )

    def train_epoch(self, bar: tqdm | None) -> dict:
        (self.adaptation.network() if self.adaptation is not None else self.model).train()
        self.sampler.set_epoch(self.epoch, start=self.epoch_step * self.loader.batch_size)
        start, steps_this_run = time.perf_counter() - self.epoch_time, 0
        target_batches = self.target_batches()
        for images, targets in self.loader:
            lr = self.scheduler.get_last_lr()[0]
            target_views = next(target_batches)
            terms = self.train_step(images, targets, target_views).cpu()
            self.epoch_sums += terms
            self.epoch_steps += 1
            steps_this_run += 1
            self.epoch_step += 1
            self.iteration += 1
            self.epoch_time = time.perf_counter() - start
            if bar is not None:
                speed = self.epoch_steps * self.settings.batch_size / self.epoch_time
                bar.set_description(f"epoch {self.epoch + 1}/{self.epochs}")
                losses = {name: f"{value:.3f}" for name, value in zip(self.term_names, terms.tolist(), strict=True)}
                bar.set_postfix(**losses, lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
                bar.update(1)
            if self.log is not None:
                self.log.add_step(self.iteration, dict(zip(self.term_names, terms.tolist(), strict=True)), lr)
            if self.stop_requested:  # Ctrl-C: stop between steps, where the state is whole
                raise KeyboardInterrupt
        means = (self.epoch_sums / max(self.epoch_steps, 1)).tolist()
        record = {"epoch": self.epoch + 1, "iteration": self.iteration, "loss": sum(means),
                  **dict(zip(self.term_names, means, strict=True)), "lr": self.scheduler.get_last_lr()[0],
                  "images_per_s": self.epoch_steps * self.settings.batch_size / max(self.epoch_time, 1e-9),
                  "time_s": self.epoch_time}  # fmt: skip
        if self.settings.length_changes:
            record["note"] = self.settings.length_changes[-1]
        return record

    def next_epoch(self) -> None:
        """Move to the next epoch, with new running sums (a checkpoint saved before this keeps the finished
        epoch's, so a resumed run completes its end-of-epoch work from them)."""
        self.epoch, self.epoch_step = self.epoch + 1, 0
        self.epoch_sums = torch.zeros(len(self.term_names), dtype=torch.float64)
        self.epoch_steps, self.epoch_time = 0, 0.0

    def target_batches(self) -> Iterator[torch.Tensor | None]:
        """The target batch of each remaining step of this epoch (None where a step takes none): the loader's
        batches for the steps that use the target, in the order fixed by their iteration numbers."""
        steps = range(self.iteration, self.iteration + self.steps_per_epoch - self.epoch_step)
        using = [step for step in steps if self.adaptation is not None and self.adaptation.uses_target(step)]
        if not using:
            yield from (None for _ in steps)
            return
        # The steps that use the target are the last ones of the epoch (the burn-in comes first).
        self.target_sampler.set_steps(using[0], len(using))
        batches = iter(self.target_loader)
        for step in steps:
            yield next(batches) if step >= using[0] else None

    def reestimate_batchnorm(self) -> None:
        """``--da adabn``: the BatchNorm statistics of the target's training images, on every process."""
        if self.adaptation is None or "adabn" not in self.adaptation.methods:
            return
        settings = self.settings
        seen = adapt_batchnorm(self.model, self.info, settings.target_root, settings.batch_size, settings.num_workers, self.device)
        logger.info("adabn: BatchNorm statistics re-estimated on %d target images", seen)

    def evaluate(self) -> dict:
        """The source test split's ``map`` and ``ap`` (best.pth is chosen on them) and, with ``--target_root``, the
        target's ``target_map`` and ``target_ap`` (reported only: the target's labels choose nothing), on its labelled
        ``val`` split where it has one (ImageSets/Main/val.txt), else on its test split.
        A mean teacher is scored too (``teacher_map``, ``teacher_target_map``, ...), as Adaptive Teacher scores
        both (adapteacher/engine/trainer.py:767-783)."""
        metric = self.settings.eval_metric or default_metric(self.preset.name)
        teacher = self.adaptation.teacher if self.adaptation is not None else None
        scores = {}
        for model, name in ((self.model, ""), (teacher, "teacher_")):
            if model is None:
                continue
            predictor = Predictor.for_model(model, self.info)
            for prefix, dataset in (("", self.test_dataset), ("target_", self.target_test_dataset)):
                if dataset is not None:
                    result = evaluate(predictor, dataset, self.settings.eval_batch_size, self.settings.num_workers,
                                      metric, progress=False)  # fmt: skip
                    scores.update({f"{name}{prefix}map": result["map"], f"{name}{prefix}ap": result["ap"]})
        return scores

    def end_epoch(self, record: dict) -> None:
        """Evaluate, save and log, on the main process."""
        finished = self.epoch == self.epochs
        if self.settings.eval_interval > 0 and (self.epoch % self.settings.eval_interval == 0 or finished):
            record.update(self.evaluate())
        mean_ap = record.get("map")
        if mean_ap is not None and not np.isnan(mean_ap) and (self.best_map is None or mean_ap > self.best_map):
            self.best_map = mean_ap
            self.save("best.pth")
        if self.epoch % self.settings.save_period == 0 or finished:
            self.save("last.pth")
        self.log.add_epoch(record)
        terms = ", ".join(f"{name[5:]} {record[name]:.4f}" for name in self.term_names)
        message = f"epoch {record['epoch']}/{self.epochs}: loss {record['loss']:.4f} ({terms}), {record['images_per_s']:.1f} img/s"
        message += f", mAP {mean_ap:.4f}" if mean_ap is not None else ""
        message += f", target mAP {record['target_map']:.4f}" if "target_map" in record else ""
        logger.info(message + (f", teacher target mAP {record['teacher_target_map']:.4f}"
                               if "teacher_target_map" in record else ""))  # fmt: skip

    def request_stop(self, signum: int, frame: Any) -> None:
        """SIGINT handler: the first Ctrl-C asks the loop to save and stop after the current step (raising from a
        signal handler can land inside library code that swallows it); a second one stops at once."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    def fit(self) -> int:
        """Train to the last epoch (or ``--epochs_per_run``); returns the exit status."""
        if self.epoch >= self.epochs:
            logger.warning("the run has already trained its %d epochs; resume with --end_epoch N (N > %d) to train it "
                           "longer", self.epochs, self.epochs)  # fmt: skip
            return 0
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self.request_stop) if in_main_thread else None
        try:
            return self._fit()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _fit(self) -> int:
        settings = self.settings
        total = self.epochs * self.steps_per_epoch
        bar = tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True) if self.dist.is_main else None
        epochs_this_run = 0
        try:
            while self.epoch < self.epochs:
                # An epoch whose steps all ran before a Ctrl-C has no step left here, only its end-of-epoch work.
                record = self.train_epoch(bar)
                if self.adaptation is not None:
                    self.adaptation.end_epoch()
                self.reestimate_batchnorm()
                self.next_epoch()
                epochs_this_run += 1
                if self.dist.is_main:
                    self.end_epoch(record)
                if settings.epochs_per_run and epochs_this_run >= settings.epochs_per_run and self.epoch < self.epochs:
                    path = self.save("last.pth")
                    if path is not None:
                        logger.info("stopped after %d epoch(s) (--epochs_per_run); resume with: python train.py "
                                    "--resume %s", epochs_this_run, path)  # fmt: skip
                    return 0
        except KeyboardInterrupt:
            return self.interrupted()
        except Exception:
            if self.stop_requested:  # the Ctrl-C also stopped the loader's worker processes
                return self.interrupted()
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.log is not None:
                self.log.close()
        if self.run_dir is not None:
            best = f", best mAP {self.best_map:.4f} ({self.run_dir / 'best.pth'})" if self.best_map is not None else ""
            logger.info("finished %d epochs: %s%s", self.epochs, self.run_dir / "last.pth", best)
        return 0

    def interrupted(self) -> int:
        """Save ``last.pth`` after a Ctrl-C and say how to resume; exit status 130."""
        path = self.save("last.pth")
        if path is not None:
            message = f"interrupted at epoch {self.epoch + 1}, step {self.epoch_step}; saved {path}; resume with: python train.py --resume {path}"
            print(f"\n{message}", file=sys.stderr)
        return 130
