"""The repository's shape: imports run one way (STYLE.md), and importing a module runs nothing."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the project packages it may import (besides itself); "ssd" is the top-level ssd.py.
ALLOWED = {
    "layers": set(),
    "data": {"utils"},  # data.shapes's command line uses utils.cli; nothing of ssd.py or layers/
    "ssd": {"layers"},
    "utils": {"layers", "data", "ssd"},
}
PROJECT = {"layers", "data", "ssd", "utils", "train", "eval", "inference", "benchmarks", "tests"}


def project_imports(path: Path) -> set[str]:
    """The top-level project packages that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_downwards(package: str) -> None:
    files = [ROOT / "ssd.py"] if package == "ssd" else sorted((ROOT / package).glob("*.py"))
    for path in files:
        wrong = project_imports(path) - ALLOWED[package] - {package}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_scripts_import_library_code_only() -> None:
    for script in ("train.py", "eval.py", "inference.py"):
        assert not project_imports(ROOT / script) & {"train", "eval", "inference"}, script


def test_importing_any_module_runs_nothing() -> None:
    # No backend selection, no logging set-up, no allocator settings, no output at import.
    modules = ["ssd", "train", "eval", "inference"] + [
        f"{p.parent.name}.{p.stem}" for d in ("layers", "data", "utils") for p in sorted((ROOT / d).glob("*.py"))
    ]
    code = (
        "import importlib, logging, sys, matplotlib\n"
        "backend = matplotlib.rcParams._get_backend_or_none()\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "assert matplotlib.rcParams._get_backend_or_none() == backend, 'a module selected a matplotlib backend'\n"
        "assert not logging.getLogger().handlers, 'a module configured logging'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
