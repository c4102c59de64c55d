"""One table of several eval.py runs: per-class AP, mAP and, for VOC metrics, the area mAP beside it.

    python -m utils.evaluation.compare source-only=runs/demo_da/eval1 oracle=runs/demo_da/eval2 --out runs/demo_da/table.md

Each run is ``NAME=FOLDER``, the folder holding eval.py's ``ap.json``. The table is Markdown, printed and, with
``--out``, written to a file.

    python -m utils.evaluation.compare --seeds results/foggy_shapes --out results/foggy_shapes/table.md

``--seeds DIR`` reads ``DIR/<configuration>/seed<N>.json`` (eval.py's ``ap.json`` of each seed, as ``make da-run``
keeps them) and gives each configuration's mean ± standard deviation over its seeds.
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


def read_seeds(folder: Path) -> dict[str, list[dict]]:
    """``folder/<configuration>/seed<N>.json`` -> {configuration: the seeds' summaries, by seed}."""
    runs = {}
    for config in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(config.glob("seed*.json"), key=lambda p: int(p.stem.removeprefix("seed") or 0))
        if files:
            runs[config.name] = [json.loads(f.read_text()) for f in files]
    if not runs:
        raise FileNotFoundError(f"{folder} holds no <configuration>/seed<N>.json; run make da-run first")
    return runs


def _spread(values: list[float]) -> str:
    """``mean ± std`` (sample standard deviation) of ``values``, or the value alone for one seed."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return "n/a"
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return f"{mean:.4f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
    return f"{mean:.4f} ± {std:.4f}"


def seed_table(runs: dict[str, list[dict]]) -> str:
    """One row per configuration: the seeds, then each class's AP and the mAP as mean ± std over them."""
    first = next(iter(runs.values()))[0]
    classes, metric = list(first["ap"]), first["metric"]
    header = ["configuration", "seeds", *classes, f"mAP ({metric})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summaries in runs.items():
        if any(list(s["ap"]) != classes or s["metric"] != metric for s in summaries):
            raise ValueError(f"configuration {name} was scored on other classes or with another metric than {classes}")
        cells = [name, str(len(summaries)), *(_spread([s["ap"][c] for s in summaries]) for c in classes)]
        lines.append("| " + " | ".join([*cells, _spread([s["map"] for s in summaries])]) + " |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compare eval.py runs in one Markdown table.")
    parser.add_argument("runs", nargs="*", help="NAME=FOLDER, the folder with eval.py's ap.json")
    parser.add_argument("--seeds", default=None, metavar="DIR",
                        help="instead: mean ± std over seeds of DIR/<configuration>/seed<N>.json")  # fmt: skip
    parser.add_argument("--out", default=None, help="also write the table to this file")
    return parser


def main(args: argparse.Namespace) -> int:
    if bool(args.runs) == bool(args.seeds):
        raise ValueError("give runs as NAME=FOLDER, or --seeds DIR (not both)")
    if args.seeds:
        table = seed_table(read_seeds(Path(args.seeds)))
    else:
        table = comparison_table([read_run(spec) for spec in args.runs])
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
