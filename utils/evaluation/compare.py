"""One table of several eval.py runs: per-class AP, mAP and, for VOC metrics, the area mAP beside it.

    python -m utils.evaluation.compare source-only=runs/demo_da/eval1 oracle=runs/demo_da/eval2 --out runs/demo_da/table.md

Each run is ``NAME=FOLDER``, the folder holding eval.py's ``ap.json``. The table is Markdown, printed and, with
``--out``, written to a file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def read_run(spec: str) -> tuple[str, dict]:
    """``NAME=FOLDER`` -> (NAME, FOLDER/ap.json's contents)."""
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise ValueError(f"{spec!r} is not NAME=FOLDER (e.g. source-only=runs/eval/exp1)")
    path = Path(folder) / "ap.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give the folder eval.py wrote (runs/eval/exp<N>)")
    return name, json.loads(path.read_text())


def _cell(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def comparison_table(runs: list[tuple[str, dict]]) -> str:
    """The Markdown table of ``runs``: one row per run, one column per class, then mAP (and area mAP)."""
    classes = list(runs[0][1]["ap"])
    for name, summary in runs:
        if list(summary["ap"]) != classes:
            raise ValueError(
                f"run {name} has classes {list(summary['ap'])}, not {classes}; compare runs of one dataset"
            )
    metric = runs[0][1]["metric"]
    with_area = all("area_map" in summary for _, summary in runs) and metric == "voc07"
    header = ["configuration", *classes, f"mAP ({metric})", *(["mAP (area)"] if with_area else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in runs:
        cells = [name, *(_cell(summary["ap"][c]) for c in classes), _cell(summary["map"])]
        cells += [_cell(summary["area_map"])] if with_area else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compare eval.py runs in one Markdown table.")
    parser.add_argument("runs", nargs="+", help="NAME=FOLDER, the folder with eval.py's ap.json")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    return parser


def main(args: argparse.Namespace) -> int:
    table = comparison_table([read_run(spec) for spec in args.runs])
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
