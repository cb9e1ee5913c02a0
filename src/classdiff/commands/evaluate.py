"""``classdiff evaluate RUN_DIR``: per-class memorization, quality and loss gap at every checkpoint of a run,
beside the theory's predicted learning / memorization order. Metrics and figures go into RUN_DIR
(``metrics/``, ``figures/``); ``--out`` receives ``results.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Evaluate a U-Net run folder: per-class memorization, quality and loss gap per checkpoint."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="run folder written by 'classdiff train'")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST idx files")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="override images.device of the run's config")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights instead of the raw ones")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def run(args: argparse.Namespace, out: Path) -> dict:
    from classdiff.images.evaluation import evaluate_run

    return evaluate_run(args.run_dir, data_root=args.data_dir, device=args.device, progress=not args.no_progress,
                        use_ema=args.ema)
