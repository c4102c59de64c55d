"""The repository's shape: imports run one way, and importing a module runs nothing.

The rules, stated here so that this file is their one owner:
- layers/ (priors, L2Norm, MultiBoxLoss, Detect) imports nothing of the project;
- ssd.py (the network) imports layers/ only;
- data/ (datasets, presets) imports nothing of ssd.py or layers/, and of utils/ only the leaf utils/cli.py (argparse
  plumbing, for ``python -m data.shapes``);
- utils/cli.py imports nothing of the project;
- the shared core, the files directly in utils/, imports layers/, data/, ssd.py and itself, never a pipeline;
- the pipelines under utils/ import the core and what is below it; training (utils/engine/) also calls evaluation
  (its validation), and no pipeline imports training;
- the scripts import library code, never each other.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BELOW_CORE = {"layers", "data", "ssd", "utils.cli"}
# unit -> the units it may import besides itself.
ALLOWED = {
    "layers": set(),
    "ssd": {"layers"},
    "data": {"utils.cli"},
    "utils.cli": set(),
    "utils": BELOW_CORE,
    "utils.evaluation": BELOW_CORE | {"utils"},
    "utils.deploy": BELOW_CORE | {"utils"},
    "utils.engine": BELOW_CORE | {"utils", "utils.evaluation"},
}
PIPELINES = ("utils.engine", "utils.evaluation", "utils.deploy")
PROJECT = {"layers", "data", "ssd", "utils", "train", "eval", "inference", "benchmarks", "tests"}


def unit_of(module: str) -> str | None:
    """The unit of a dotted module name: a top-level package, utils/cli.py, utils/'s core or one of its pipelines."""
    top = module.split(".")[0]
    if top not in PROJECT:
        return None
    if module == "utils.cli" or module.startswith("utils.cli."):
        return "utils.cli"
    return next((p for p in PIPELINES if module == p or module.startswith(p + ".")), top)


def project_imports(path: Path) -> set[str]:
    """The units that ``path`` imports, anywhere in the file (imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {unit_of(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from utils import cli`` imports the module utils.cli, ``from utils.deploy import export`` a pipeline.
            found |= {unit_of(f"{node.module}.{alias.name}") for alias in node.names}
    return found - {None}


def library_files() -> list[Path]:
    """Every library module: ssd.py and the .py files of layers/, data/ and utils/, subpackages included."""
    return [ROOT / "ssd.py"] + sorted(p for d in ("layers", "data", "utils") for p in (ROOT / d).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_library_file_has_a_unit_with_rules() -> None:
    for path in library_files():
        assert unit_of(module_name(path)) in ALLOWED, path


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_imports_run_downwards(unit: str) -> None:
    files = [p for p in library_files() if unit_of(module_name(p)) == unit]
    assert files, f"no file belongs to {unit}"
    for path in files:
        wrong = project_imports(path) - ALLOWED[unit] - {unit}
        assert not wrong, f"{path.relative_to(ROOT)} ({unit}) imports {sorted(wrong)}"


def test_unit_of_sees_subpackages() -> None:
    assert unit_of("utils.engine.trainer") == "utils.engine"
    assert unit_of("utils.deploy") == "utils.deploy"
    assert unit_of("utils.checkpoint") == "utils"
    assert unit_of("utils.cli") == unit_of("utils.cli.run_cli") == "utils.cli"
    assert unit_of("data.voc") == "data"
    assert unit_of("torch.nn") is None


def test_scripts_import_library_code_only() -> None:
    for script in ("train.py", "eval.py", "inference.py"):
        assert not project_imports(ROOT / script) & {"train", "eval", "inference"}, script


def test_importing_any_module_runs_nothing() -> None:
    # No backend selection, no logging set-up, no allocator settings, no output at import.
    modules = ["train", "eval", "inference"] + [module_name(p) for p in library_files()]
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
