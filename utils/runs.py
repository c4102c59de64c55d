"""Run folders (``runs/<task>/exp<N>``) and device selection, shared by the scripts."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import torch


def check_writable(project: str | Path) -> Path:
    """Make sure run folders can be created under ``project`` before any work starts.

    Raises:
        ValueError: ``project`` is a file, or cannot be created or written (a read-only disk, no permission).
    """
    project = Path(project)
    if project.exists() and not project.is_dir():
        raise ValueError(f"--project {project} is a file; give a folder for the run folders")
    try:
        project.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=project):
            pass
    except OSError as error:
        raise ValueError(f"cannot write to {project} ({error.strerror or error}); choose another --project") from error
    return project


def increment_run_dir(project: str | Path, name: str = "exp") -> Path:
    """Create and return ``project/name<N>`` with N one more than the largest existing (from 1)."""
    project = check_writable(project)
    pattern = re.compile(rf"^{re.escape(name)}(\d+)$")
    numbers = [int(m.group(1)) for p in project.iterdir() if (m := pattern.match(p.name))]
    path = project / f"{name}{max(numbers, default=0) + 1}"
    path.mkdir(parents=True, exist_ok=False)
    return path


DEVICE_FORMS = "auto, cpu, cuda or cuda:N"


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cpu``/``cuda``/``cuda:1`` are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"--device {name} is not a device; use {DEVICE_FORMS}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for but no CUDA device is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return device
