"""``classdiff sweep CONFIG``: a grid of configs through Dask, cached per point, into one tidy table."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Run a grid of configs through Dask, cached per point, into one table."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="TOML config with a [sweep] section and a [sweep.grid] table")
    parser.add_argument("--scheduler", default=None,
                        help="local (default: a LocalCluster), synchronous, slurm, pbs, or an address tcp://host:port")
    parser.add_argument("--workers", type=int, default=None, help="number of workers (LocalCluster) or jobs (SLURM/PBS)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace, out: Path) -> dict:
    from classdiff.config import load_config, save_config
    from classdiff.sweep import run_sweep

    config = load_config(args.config)
    if not config.sweep.grid:
        raise ValueError(f"{args.config}: [sweep.grid] is empty; give at least one 'section.field' = [values]")
    save_config(config, out / "config.toml")
    return run_sweep(config, out, scheduler=args.scheduler, n_workers=args.workers, progress=not args.no_progress)
