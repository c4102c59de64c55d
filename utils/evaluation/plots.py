"""Figures: precision-recall curves and training curves.

matplotlib's object-oriented API: a ``Figure`` is drawn and saved without pyplot, so no backend is selected,
no display is needed and importing this module changes no global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from utils.evaluation.voc_eval import precision_envelope


def plot_pr_curves(
    path: str | Path,
    class_names: Sequence[str],
    recalls: Sequence[np.ndarray],
    precisions: Sequence[np.ndarray],
    aps: Sequence[float],
    title: str = "",
) -> None:
    """One figure with the precision-recall curve of every class; the legend gives each AP."""
    fig = Figure(figsize=(8, 6), dpi=100)
    ax = fig.subplots()
    for name, recall, precision, ap in zip(class_names, recalls, precisions, aps, strict=True):
        if np.isnan(ap):
            continue
        if len(recall):
            envelope = precision_envelope(precision)
            ax.plot(
                np.concatenate([[0], recall]),
                np.concatenate([[envelope[0]], envelope]),
                linewidth=1.2,
                label=f"{name} {ap:.3f}",
            )
        else:
            ax.plot([], [], label=f"{name} {ap:.3f}")
    mean_ap = np.nanmean(aps) if np.isfinite(aps).any() else float("nan")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"{title} mAP {mean_ap:.4f}".strip())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(class_names) > 10 else 1, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)


def plot_training(path: str | Path, records: Sequence[dict]) -> None:
    """``results.png``: losses, learning rate and mAP per epoch, from the epoch records of ``log.txt``."""
    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(14, 4), dpi=100)
    axes = fig.subplots(1, 3)
    for key in ("loss", "loss_l", "loss_c"):
        axes[0].plot(epochs, [r[key] for r in records], marker=".", label=key)
    axes[0].set(xlabel="epoch", title="training loss")
    axes[0].legend()
    axes[1].plot(epochs, [r["lr"] for r in records], marker=".")
    axes[1].set(xlabel="epoch", title="learning rate (end of epoch)")
    evaluated = [r for r in records if r.get("map") is not None]
    axes[2].plot([r["epoch"] for r in evaluated], [r["map"] for r in evaluated], marker="o", color="tab:green")
    axes[2].set(xlabel="epoch", title="mAP", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
