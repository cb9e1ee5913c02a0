"""The ``classdiff`` command line: one sub-command per capability, each writing a run folder.

Every command module in :mod:`classdiff.commands` exposes

    HELP: str                                    one line for ``--help``
    configure(parser: argparse.ArgumentParser)   its own positional arguments and options
    run(args: argparse.Namespace, out: Path) -> dict   does the work, writes arrays/figures under ``out``,
                                                 and returns the JSON result

The CLI adds ``--out`` (default ``runs/<command>-<timestamp>``) and ``--json``, writes ``results.json``
atomically, and with ``--json`` prints that JSON on stdout and nothing else (progress goes to stderr).
A command whose module does not exist yet says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
from pathlib import Path

from classdiff import __version__

COMMANDS: dict[str, str] = {
    "demo": "Run the default end-to-end pipeline (theory, RF dynamics, speciation, U-Net) on CPU.",
    "spectrum": "Spectral density of the feature covariance U for a mixture (theory, optional sampled histogram).",
    "dynamics": "Per-class train/test loss and score error of the random-features model over training time.",
    "timescales": "Predicted per-class generalization and memorization times, learning order, phase diagrams.",
    "speciation": "Per-class speciation times in the backward diffusion: theory and cloning simulation.",
    "train": "Train a U-Net diffusion model on an imbalanced Fashion-MNIST subset.",
    "evaluate": "Evaluate a U-Net run folder: per-class memorization, quality and loss gap per checkpoint.",
    "sweep": "Run a grid of configs through Dask, cached per point, into one table.",
    "report": "Write a self-contained HTML report of a run folder.",
    "audit": "Per-class statistics and predicted learning/memorization order of any labelled data set.",
}


class CommandNotBuilt(RuntimeError):
    pass


def _load(name: str):
    try:
        return importlib.import_module(f"classdiff.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"classdiff.commands.{name}":
            raise CommandNotBuilt(name) from None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="classdiff",
        description="Predict and measure how diffusion models learn, generalize and memorize each class.",
    )
    parser.add_argument("--version", action="version", version=f"classdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<command>-<timestamp>)")
        p.add_argument("--json", action="store_true", help="print the JSON result on stdout and nothing else")
        try:
            module = _load(name)
        except CommandNotBuilt:
            p.set_defaults(_built=False)
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            continue
        module.configure(p)
        p.set_defaults(_built=True)
    return parser


def default_out(command: str) -> Path:
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def entry() -> None:
    """The ``classdiff`` console script."""
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if not args._built:
        print(f"classdiff {args.command}: not built yet in this version of classdiff.", file=sys.stderr)
        return 2
    from classdiff.core.config import ConfigError
    from classdiff.core.io import write_json_atomic

    module = _load(args.command)
    out = Path(args.out) if args.out is not None else default_out(args.command)
    out.mkdir(parents=True, exist_ok=True)
    # with --json, anything a command prints goes to stderr so stdout holds only the JSON
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with redirect:
            result = module.run(args, out)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"classdiff {args.command}: error: {exc}", file=sys.stderr)
        return 1
    if result is not None:
        write_json_atomic(out / "results.json", result)
        if args.json:
            from classdiff.core.results import encode

            sys.stdout.write(json.dumps(encode(result), allow_nan=False) + "\n")
        else:
            print(f"classdiff {args.command}: results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
