"""``classdiff report RUN_DIR``: one self-contained HTML page (figures embedded) for a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Write a self-contained HTML report of a run folder."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run folder written by another classdiff command")
    parser.add_argument("--title", default=None, help="page title")


def run(args: argparse.Namespace, out: Path) -> dict:
    from classdiff.report import report_summary, write_report

    target = None if args.out is None else out / "report.html"
    path = write_report(args.run_dir, target, args.title)
    return report_summary(path)
