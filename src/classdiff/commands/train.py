"""``classdiff train CONFIG``: train a DDPM U-Net on the imbalanced Fashion-MNIST subset of ``[images]``.

The output folder (``--out``) is the run folder: config, subset indices, log-spaced checkpoints, training loss.
Re-running the same command on the same folder resumes from its last checkpoint. ``--evaluate`` also runs
``classdiff evaluate`` on the folder at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Train a U-Net diffusion model on an imbalanced Fashion-MNIST subset."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="TOML config with an [images] section")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with the Fashion-MNIST idx files (default: FASHION_MNIST_DIR, Debian, cache)")
    parser.add_argument("--fresh", action="store_true", help="ignore existing checkpoints in the output folder")
    parser.add_argument("--evaluate", action="store_true", help="evaluate every checkpoint after training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace, out: Path) -> dict:
    from classdiff.core.config import load_config
    from classdiff.images.ddpm import train_unet

    config = load_config(args.config)
    result = train_unet(config, out, data_root=args.data_dir, resume=not args.fresh, progress=not args.no_progress)
    if args.evaluate:
        from classdiff.images.evaluation import evaluate_run

        result = {"training": result, "evaluation": evaluate_run(out, data_root=args.data_dir,
                                                                  progress=not args.no_progress)}
    return result
