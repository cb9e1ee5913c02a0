"""``classdiff generate MODEL_DIR``: samples from a diffusers model saved with ``save_pretrained`` (local folder).

Writes ``samples.npz`` (``x`` float32 (n, C, H, W) in [-1, 1], ``y`` the classes of a class-conditional model)
into the output folder, resumably (:mod:`classdiff.images.diffusers_sampling`); feed it to
``classdiff memorization OUT/samples.npz TRAIN``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "Generate samples from a diffusers UNet2DModel / DDPMPipeline folder (resumable), for 'memorization'."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="folder saved by save_pretrained (pipeline or UNet2DModel)")
    parser.add_argument("--n", type=int, default=1000, help="number of samples")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="inference steps of the scheduler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=str, default=None,
                        help="comma-separated class labels to cycle through (class-conditional models; "
                             "default all classes, balanced)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--fresh", action="store_true", help="discard batches already in the output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def _classes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--classes {text!r}: expected comma-separated integers such as 0,3,7") from None


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from classdiff.commands.memorization import _device
    from classdiff.images.diffusers_sampling import generate_samples

    return generate_samples(args.model, out, n=args.n, batch_size=args.batch_size, steps=args.steps, seed=args.seed,
                            classes=_classes(args.classes), device=_device(args.device), fresh=args.fresh,
                            progress=not args.no_progress)
