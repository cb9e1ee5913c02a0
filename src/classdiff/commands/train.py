"""``classdiff train CONFIG``: train a DDPM U-Net on the imbalanced Fashion-MNIST subset of ``[images]``.

The output folder (``--out``) is the run folder: config, subset indices, log-spaced checkpoints, training loss.
Re-running the same command on the same folder resumes from its last checkpoint. ``--evaluate`` also runs
``classdiff evaluate`` on the folder at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from classdiff.core.config import Config

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


def train_and_evaluate_from_config(config: Config, out: str | Path, *, data_root: str | Path | None = None,
                                   progress: bool = True) -> dict[str, Any]:
    """Train (resuming if possible) then evaluate every checkpoint; the result of
    :func:`classdiff.images.evaluation.evaluate_run` with the training summary under ``"training"``, encoded
    for JSON (:func:`classdiff.core.results.encode`)."""
    from classdiff.core.results import encode
    from classdiff.images.ddpm import train_unet
    from classdiff.images.evaluation import evaluate_run

    train = train_unet(config, out, data_root=data_root, progress=progress)
    result = evaluate_run(out, data_root=data_root, progress=progress)
    result["training"] = {k: v for k, v in train.items() if k not in ("steps", "loss")}
    result["training"]["final_loss"] = train["loss"][-1] if train["loss"] else None
    return encode(result)
