"""Generated data never enters git: every path the demo targets write is ignored by git, or is one of the figures
the README shows, or a kept result of docs/domain_adaptation.md's seeded table (tracked on purpose and rewritten by
each run)."""

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACKED_FIGURES = {"figures/demo.jpg", "figures/demo.gif", "figures/demo_results.png", "figures/foggy_shapes.jpg"}
# The flags whose value is a path a command writes (the folders of --project and data.shapes's --out included).
OUTPUT_FLAGS = ("--out", "--project", "--video")
DEMO_TARGETS = ("demo", "demo-da", "demo-da-all")
# make da-run keeps each seed's ap.json here, and make da-table the table built from them: the evidence of the table.
TRACKED_RESULTS = "results/foggy_shapes/"


def written_paths(commands: str) -> set[str]:
    """The paths that ``commands`` (make's dry run) write: the output flags' values and ``cp``'s destinations.

    ``--video`` is an output of ``data.shapes`` only; elsewhere (inference.py) it is an input, which is written
    by data.shapes first and so is listed anyway."""
    paths = set()
    for line in commands.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        if words[:1] == ["cp"]:
            paths.add(words[-1])
        for flag, value in zip(words, words[1:], strict=False):
            if flag in OUTPUT_FLAGS:
                paths.add(value)
    return paths


def test_written_paths_reads_flags_and_copies() -> None:
    commands = 'python -m x --out a/b.jpg --project "runs/p"\ncp runs/p/r.png figures/r.png\npython y --video v.mp4\n'
    assert written_paths(commands) == {"a/b.jpg", "runs/p", "figures/r.png", "v.mp4"}


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None, reason="needs make and git")
def test_every_path_the_demo_targets_write_is_ignored_or_a_listed_figure() -> None:
    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: nothing to keep clean")
    dry_run = subprocess.run(["make", "-n", "-B", *DEMO_TARGETS], cwd=ROOT, capture_output=True, text=True, check=True)
    paths = written_paths(dry_run.stdout)
    assert {"runs/demo", "data/shapes", "runs/demo_da", "data/shapes_fog"} <= paths  # the parse found the targets
    assert TRACKED_FIGURES <= paths
    results = {path for path in paths if path.startswith(TRACKED_RESULTS)}
    assert {"results/foggy_shapes/i3net/seed0.json", "results/foggy_shapes/table.md"} <= results
    for path in sorted(paths - TRACKED_FIGURES - results):
        # A folder (no suffix) is checked through a file inside it: "data/shapes/" patterns match folders only.
        probe = path if Path(path).suffix else f"{path}/any_file"
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", probe], cwd=ROOT)
        assert ignored.returncode == 0, f"{path}, written by make {' / '.join(DEMO_TARGETS)}, is not ignored by git"
        tracked = subprocess.run(["git", "ls-files", "--", path], cwd=ROOT, capture_output=True, text=True)
        assert tracked.stdout == "", f"{path} is ignored but git still tracks files under it: git rm -r --cached {path}"
