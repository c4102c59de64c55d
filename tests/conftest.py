"""The ``device`` fixture: a test that takes it runs once per device this machine has (the CPU, and CUDA when
a GPU is visible), so the GPU paths are checked against the same CPU references wherever a GPU exists.

    python -m pytest -q -k cuda tests   # only the GPU runs, on a machine with one
"""

import pytest
import torch

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)
