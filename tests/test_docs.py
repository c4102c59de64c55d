"""The documentation stays true to the code: README.md and docs/*.md run, name and link only what exists.

- Every documented command of train.py, eval.py, inference.py and the `python -m` tools is parsed by the
  script's own `get_args_parser()`, and every `python -m <module>` / `python <file>.py` names a module or file
  of this repository.
- Every pointer from the sources (Python, the Makefile, weights/README.md) into the documentation
  (`README, "<heading>"` or `docs/<page>.md, "<heading>"`) names a heading of that file.
- Every relative link (and its `#anchor`) in README.md and docs/*.md leads to a file (and heading) that exists.
"""

import argparse
import contextlib
import functools
import importlib
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = [ROOT / "README.md", *PAGES]

# A code fence, indented when it sits in a list item; the info string names the language.
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
COMMAND_START = re.compile(r"(?:[A-Za-z_]\w*=\S*\s+)*(?:python3?|torchrun|srun|sh|bash|make)\s")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
# An inline link or image, whose text may wrap onto the next line: [text](target) or [text](target "title").
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# A pointer into the documentation from a docstring, comment or message: README, 'Weights' or
# docs/backbones.md, "Weights" (the comma is sometimes left out).
SECTION_REFERENCE = re.compile(r"(README(?:\.md)?|docs/[\w-]+\.md),? ([\"'])(.+?)\2")
# Invocations anywhere in the text (inline code included), for the does-it-exist check.
MODULE_RUN = re.compile(r"python3? -m ([\w.]+)")
FILE_RUN = re.compile(r"python3? ((?:[\w-]+/)*[\w-]+\.py)\b")
# Folders that hold this repository's Python sources (the scripts sit in the root).
SOURCE_FOLDERS = ("benchmarks", "data", "layers", "tests", "utils")


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def outside_code_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) for each line that is not inside a fenced code block, fences included."""
    kept, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match and (fence is None or match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)):
            fence = match.group(1) if fence is None else None
            continue
        if fence is None:
            kept.append((number, line))
    return kept


def headings(path: Path) -> list[str]:
    """The text of every Markdown heading of `path`, code blocks' `#` comments excluded."""
    return [match.group(2) for _, line in outside_code_fences(path.read_text()) if (match := HEADING.match(line))]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in headings(path):
        anchor, count = github_anchor(heading), 0
        while anchor in found:  # GitHub numbers repeated headings: name, name-1, name-2, ...
            count += 1
            anchor = f"{github_anchor(heading)}-{count}"
        found.add(anchor)
    return found


# ---------------------------------------------------------------------------------------------------------------
# 1. Documented commands


@dataclass(frozen=True)
class Command:
    doc: Path
    line: int  # where the command starts, 1-based
    text: str  # the lines joined across backslash continuations

    def __str__(self) -> str:
        return f"{relative(self.doc)}:{self.line}: {self.text}"


def shell_blocks(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(first line number, language, lines) of each fenced block in a shell language or in none."""
    fence, language, start, body = None, "", 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, language, start, body = match.group(1), match.group(2).lower(), number + 1, []
        elif fence is not None and match and match.group(1)[0] == fence[0] and not match.group(2):
            if language in SHELL_LANGUAGES:
                yield start, language, body
            fence = None
        elif fence is not None:
            body.append(line)


def documented_commands() -> Iterator[Command]:
    """Each command line of every shell block, with its backslash continuations joined. A block without a
    language may be a folder tree: there only lines that start with a command count."""
    for doc in DOCS:
        for start, language, body in shell_blocks(doc):
            pending: list[str] = []
            for offset, line in enumerate(body):
                stripped = line.strip()
                if not pending and (not stripped or stripped.startswith("#")):
                    continue
                pending.append(stripped.removesuffix("\\").strip())
                if not stripped.endswith("\\"):
                    command = Command(doc, start + offset - len(pending) + 1, " ".join(pending))
                    if language or COMMAND_START.match(command.text):
                        yield command
                    pending = []


COMMANDS = list(documented_commands())

# The scripts whose parsers the documented commands must satisfy, by how they are run.
SCRIPT_MODULES = {"train.py": "train", "eval.py": "eval", "inference.py": "inference"}


@functools.cache
def parser_of(module: str) -> argparse.ArgumentParser | None:
    """The module's own `get_args_parser()`, or None where it has none that takes no arguments."""
    get_args_parser = getattr(importlib.import_module(module), "get_args_parser", None)
    try:
        return get_args_parser() if get_args_parser is not None else None
    except TypeError:  # a helper that builds parsers (benchmarks.common), not a tool's own parser
        return None


def module_exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def is_local_module(module: str) -> bool:
    return (ROOT / module.split(".")[0]).is_dir() or (ROOT / f"{module.split('.')[0]}.py").is_file()


def placeholders_filled(tokens: list[str]) -> list[str]:
    """The arguments as a reader types them: `<file>` becomes a value, `...` (the elided flags) goes, and an
    optional `[--flag]` is given."""
    filled = []
    for token in tokens:
        if token == "...":
            continue
        if token.startswith("[") and token.endswith("]"):
            token = token[1:-1]
        filled.append(re.sub(r"<[^<>]+>", "placeholder", token))
    return filled


def invocation(tokens: list[str]) -> tuple[str, str, list[str]] | None:
    """("module" or "file", what runs, its arguments) of a python or torchrun command, or None for other
    commands. Environment prefixes (CUDA_VISIBLE_DEVICES=0) and launchers (srun) are skipped."""
    while tokens and (re.fullmatch(r"[A-Za-z_]\w*=\S*", tokens[0]) or tokens[0] in ("srun", "time", "nohup")):
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] in ("python", "python3"):
        if len(tokens) >= 3 and tokens[1] == "-m":
            return "module", tokens[2], tokens[3:]
        if len(tokens) >= 2 and tokens[1].endswith(".py"):
            return "file", tokens[1], tokens[2:]
        return None  # python -c, a bare interpreter
    if tokens[0] == "torchrun":  # torchrun [its options] script.py [the script's arguments]
        for index, token in enumerate(tokens[1:], 1):
            if token.endswith(".py") and not token.startswith("-"):
                return "file", token, tokens[index + 1 :]
        return None
    return None


def test_documentation_has_commands_to_check() -> None:
    runs = [invocation(shlex.split(command.text, comments=True)) for command in COMMANDS]
    scripts = {run[1] for run in runs if run is not None}
    assert {"train.py", "eval.py", "inference.py", "utils/prepare_cityscapes_to_voc.py"} <= scripts
    assert "utils.deploy.export" in scripts


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: f"{relative(command.doc)}:{command.line}")
def test_documented_command_parses(command: Command) -> None:
    try:
        tokens = shlex.split(command.text, comments=True)
    except ValueError as error:
        pytest.fail(f"{command}\n  is not a valid shell line: {error}")
    run = invocation(tokens)
    if run is None:
        for token in tokens:  # `sh data/scripts/VOC2007.sh`, `make demo`: only the scripts it names must exist
            if re.fullmatch(r"(?:[\w.-]+/)+[\w.-]+\.(?:sh|py)", token):
                assert (ROOT / token).is_file(), f"{command}\n  names {token}, which does not exist"
        return
    kind, target, arguments = run
    if kind == "module":
        if not is_local_module(target):
            return  # python -m pytest, python -m venv
        assert module_exists(target), f"{command}\n  runs module {target}, which does not exist"
        module = target
    else:
        assert (ROOT / target).is_file(), f"{command}\n  runs {target}, which does not exist"
        module = SCRIPT_MODULES.get(target, target.removesuffix(".py").replace("/", "."))
    parser = parser_of(module)
    if parser is None:
        return
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(placeholders_filled(arguments))
        error = None
    except SystemExit:  # argparse printed the usage and, last, the one line that says what it refused
        error = stderr.getvalue().strip().splitlines()[-1]
    if error is not None:
        pytest.fail(f"{command}\n  is refused by {module}.get_args_parser(): {error}")


@pytest.mark.parametrize("doc", DOCS, ids=relative)
def test_documented_modules_and_files_exist(doc: Path) -> None:
    text = doc.read_text()
    missing = []
    for match in MODULE_RUN.finditer(text):
        module = match.group(1).rstrip(".")  # python -m benchmarks.<name>
        if is_local_module(module) and not module_exists(module):
            missing.append(match.group(0))
    for match in FILE_RUN.finditer(text):
        if not (ROOT / match.group(1)).is_file():
            missing.append(match.group(0))
    assert not missing, f"{relative(doc)} runs what does not exist: {missing}"


# ---------------------------------------------------------------------------------------------------------------
# 2. Pointers from the sources into the documentation


def python_sources() -> list[Path]:
    files = sorted(ROOT.glob("*.py"))
    for folder in SOURCE_FOLDERS:
        files += sorted(path for path in (ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts)
    return [path for path in files if path != Path(__file__).resolve()]


def section_references() -> Iterator[tuple[str, str, str]]:
    """(where, documentation file, heading) for every pointer into the documentation."""
    for source in [*python_sources(), ROOT / "Makefile", ROOT / "weights" / "README.md"]:
        if not source.is_file():
            continue
        for number, line in enumerate(source.read_text().splitlines(), 1):
            for match in SECTION_REFERENCE.finditer(line):
                doc = "README.md" if match.group(1).startswith("README") else match.group(1)
                yield f"{relative(source)}:{number}", doc, match.group(3)


def test_sources_point_at_documentation() -> None:
    assert any(doc.startswith("docs/") for _, doc, _ in section_references())


def test_section_references_name_existing_headings() -> None:
    wrong = []
    for where, doc, heading in section_references():
        path = ROOT / doc
        if not path.is_file():
            wrong.append(f"{where}: {doc} does not exist")
        elif heading not in headings(path):
            wrong.append(f"{where}: {doc} has no heading {heading!r}")
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------------------------------------------------
# 3. Links


def links(doc: Path) -> Iterator[tuple[int, str]]:
    """(line number, target) of every link outside code blocks and inline code."""
    lines = outside_code_fences(doc.read_text())
    numbers = [number for number, _ in lines]
    # Inline code (which may wrap onto the next line) is blanked, its line breaks kept.
    text = re.sub(r"`[^`]*`", lambda code: re.sub(r"[^\n]", " ", code.group(0)), "\n".join(line for _, line in lines))
    for match in LINK.finditer(text):
        yield numbers[text.count("\n", 0, match.start())], match.group(1)


@pytest.mark.parametrize("doc", DOCS, ids=relative)
def test_relative_links_lead_to_existing_files_and_headings(doc: Path) -> None:
    broken = []
    for number, target in links(doc):
        if re.match(r"[a-z][\w+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        destination = (doc.parent / path).resolve() if path else doc
        if not destination.exists():
            broken.append(f"{relative(doc)}:{number}: {target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{relative(doc)}:{number}: {target} (no heading #{anchor} in {destination.name})")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(ROOT / "README.md")}
    assert [relative(page) for page in PAGES if page not in linked] == []
