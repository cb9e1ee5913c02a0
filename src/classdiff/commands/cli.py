"""The ``classdiff`` command line: one sub-command per capability, each writing a run folder.

Every command module in :mod:`classdiff.commands` exposes

    HELP: str                                    one line for ``--help``
    configure(parser: argparse.ArgumentParser)   its own positional arguments and options
    run(args: argparse.Namespace, out: Path) -> dict   does the work, writes arrays/figures under ``out``,
                                                 and returns the result (a typed result or a dict)

The command names are :data:`classdiff.commands.COMMANDS`; the parser is built from each module's ``HELP`` and
``configure``. The CLI adds ``--out`` (default ``runs/<command>-<timestamp>``) and ``--json``, writes ``results.json``
atomically (through :func:`classdiff.core.results.encode`), and with ``--json`` prints that JSON on stdout and
nothing else (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
from pathlib import Path
from types import ModuleType

from classdiff import __version__
from classdiff.commands import COMMANDS


def load_command(name: str) -> ModuleType:
    """The module of command ``name`` (one of :data:`classdiff.commands.COMMANDS`)."""
    if name not in COMMANDS:
        raise ValueError(f"command {name!r}: must be one of {', '.join(COMMANDS)}")
    return importlib.import_module(f"classdiff.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="classdiff",
        description="Predict and measure how diffusion models learn, generalize and memorize each class.",
    )
    parser.add_argument("--version", action="version", version=f"classdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = load_command(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<command>-<timestamp>)")
        p.add_argument("--json", action="store_true", help="print the JSON result on stdout and nothing else")
        module.configure(p)
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
    from classdiff.core.config import ConfigError
    from classdiff.core.io import write_json_atomic

    module = load_command(args.command)
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
