"""A training run's record on disk, written by the main process: ``args.json`` (the run's arguments), ``log.txt`` (one
JSON record per epoch), ``results.csv`` and ``results.png`` (the same records as a table and a plot), and
TensorBoard's event files with ``--tensorboard``."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utils.evaluation.plots import plot_training

logger = logging.getLogger(__name__)


class RunLog:
    """The files of one run folder that describe its progress.

    Args:
        run_dir: the run folder (it exists).
        term_names: the loss terms of a step, in order (the columns of results.csv after ``loss``).
        tensorboard: also write TensorBoard event files, when the package is installed.
    """

    def __init__(self, run_dir: Path, term_names: tuple[str, ...], tensorboard: bool = False) -> None:
        self.run_dir, self.term_names = run_dir, term_names
        self.records: list[dict] = []
        self.tensorboard = self._open_tensorboard() if tensorboard else None

    def _open_tensorboard(self):  # noqa: ANN202 - SummaryWriter is optional
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("--tensorboard: the tensorboard package is not installed (pip install tensorboard)")
            return None
        return SummaryWriter(str(self.run_dir))

    def write_args(self, args: Mapping[str, Any]) -> None:
        """``args.json``: the run's arguments (values JSON does not know, such as paths, as strings)."""
        (self.run_dir / "args.json").write_text(json.dumps(dict(args), indent=2, default=str))

    def resume(self, epoch: int) -> None:
        """Keep the records of the epochs up to ``epoch``, those a resumed checkpoint covers, and drop later ones
        (a run interrupted after its last save logged epochs that it trains again)."""
        log = self.run_dir / "log.txt"
        if log.is_file():
            self.records = [r for r in map(json.loads, log.read_text().splitlines()) if r["epoch"] <= epoch]
            log.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def add_epoch(self, record: dict[str, Any]) -> None:
        """Append an epoch's record to log.txt, and rewrite results.csv and results.png with it."""
        self.records.append(record)
        with (self.run_dir / "log.txt").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        scores = ("map", "target_map", "teacher_map", "teacher_target_map")
        columns = ("epoch", "iteration", "loss", *self.term_names, "lr", "images_per_s",
                   *(c for c in scores if c in ("map", "target_map") or any(c in r for r in self.records)))  # fmt: skip
        rows = [",".join(columns)] + [
            ",".join("" if r.get(c) is None else str(r.get(c)) for c in columns) for r in self.records
        ]
        (self.run_dir / "results.csv").write_text("\n".join(rows) + "\n")
        plot_training(self.run_dir / "results.png", self.records)
        if self.tensorboard is not None and record.get("map") is not None:
            self.tensorboard.add_scalar("mAP", record["map"], record["iteration"])

    def add_step(self, iteration: int, terms: Mapping[str, float], lr: float) -> None:
        """A step's loss terms and learning rate (TensorBoard only)."""
        if self.tensorboard is not None:
            self.tensorboard.add_scalars("loss", dict(terms), iteration)
            self.tensorboard.add_scalar("lr", lr, iteration)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
