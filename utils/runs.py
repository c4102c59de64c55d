"""Run folders (``runs/<task>/exp<N>``) and device selection, shared by the scripts."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def increment_run_dir(project: str | Path, name: str = "exp") -> Path:
    """Create and return ``project/name<N>`` with N one more than the largest existing (from 1)."""
    project = Path(project)
    project.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(name)}(\d+)$")
    numbers = [int(m.group(1)) for p in project.iterdir() if (m := pattern.match(p.name))]
    path = project / f"{name}{max(numbers, default=0) + 1}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cpu``/``cuda``/``cuda:1`` are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but no CUDA device is available; use --device cpu")
    return device
