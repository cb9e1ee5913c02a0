"""The ``classdiff`` command line: one sub-command per capability, each writing a run folder.

Every command module in :mod:`classdiff.commands` exposes

    HELP: str                                    one line for ``--help``
    configure(parser: argparse.ArgumentParser)   its own positional arguments and options
    run(args: argparse.Namespace, out: Path) -> dict   does the work, writes arrays/figures under ``out``,
                                                 and returns the result (a typed result or a dict)

The command names are :data:`classdiff.commands.COMMANDS`; the parser is built from each module's ``HELP`` and
``configure``. The CLI adds ``--out`` (default ``runs/<command>-<timestamp>``), ``--json`` and ``--debug``, holds
the output folder's lock while the command runs (:func:`classdiff.core.io.exclusive_folder`: one writer per
folder), writes ``results.json`` atomically (through :func:`classdiff.core.results.encode`), and with ``--json``
prints that JSON on stdout and nothing else (progress goes to stderr).

Errors a user can cause (a bad config value, a missing or corrupt file, a busy folder) end in one line
``classdiff CMD: error: ...`` and exit code 1, with no traceback unless ``--debug``; warnings print as one line
``classdiff CMD: warning: ...``; Ctrl-C ends with ``interrupted; results so far in OUT`` and exit code 130. An
output folder the failed command created and left empty is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import TextIO

from classdiff import __version__
from classdiff.commands import COMMANDS


def load_command(name: str) -> ModuleType:
    """The module of command ``name`` (one of :data:`classdiff.commands.COMMANDS`)."""
    if name not in COMMANDS:
        raise ValueError(f"command {name!r}: must be one of {', '.join(COMMANDS)}")
    return importlib.import_module(f"classdiff.commands.{name.replace('-', '_')}")


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
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        module.configure(p)
    return parser


def default_out(command: str) -> Path:
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def entry() -> None:
    """The ``classdiff`` console script."""
    sys.exit(main())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but its lock file (a command that failed before writing)."""
    from classdiff.core.io import LOCK_NAME

    try:
        entries = list(folder.iterdir())
        if all(p.name == LOCK_NAME for p in entries):
            for p in entries:
                p.unlink()
            folder.rmdir()
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from classdiff.core.config import ConfigError
    from classdiff.core.io import exclusive_folder, write_json_atomic

    name = args.command
    module = load_command(name)
    out = Path(args.out) if args.out is not None else default_out(name)

    def fail(message: str) -> int:
        print(f"classdiff {name}: error: {message}", file=sys.stderr)
        return 1

    if out.exists() and not out.is_dir():
        return fail(f"--out {out}: exists and is not a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(f"--out {out}: cannot create the folder ({exc.strerror or exc})")

    def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: TextIO | None = None, line: str | None = None) -> None:
        print(f"classdiff {name}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    # with --json, anything a command prints goes to stderr so stdout holds only the JSON
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            with exclusive_folder(out), redirect:
                result = module.run(args, out)
                if result is not None:
                    write_json_atomic(out / "results.json", result)
    except KeyboardInterrupt:
        print(f"classdiff {name}: interrupted; results so far in {out}", file=sys.stderr)
        return 130
    except (ConfigError, OSError, ValueError) as exc:  # user-caused: bad value, missing/corrupt file, busy folder
        if args.debug:
            raise
        if created:
            _remove_if_empty(out)
        return fail(_one_line(exc))
    except MemoryError as exc:  # an allocation no up-front estimate caught
        if args.debug:
            raise
        if created:
            _remove_if_empty(out)
        return fail(f"out of memory ({_one_line(exc) or 'MemoryError'}); lower the sizes in the config "
                    "(mixture.dim, model.psi_p, model.psi_n, theory.n_trajectories)")
    if result is not None:
        if args.json:
            from classdiff.core.results import encode

            sys.stdout.write(json.dumps(encode(result), allow_nan=False) + "\n")
        else:
            print(f"classdiff {name}: results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
