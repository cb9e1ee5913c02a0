"""``classdiff audit DATA``: per-class statistics and predicted learning/memorization order of any data set.

The measured side for a trained model's samples is ``classdiff memorization SAMPLES TRAIN``, whose report holds
this audit's predicted order beside the measured per-class memorization.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from classdiff.theory.audit import AuditResult

HELP = "Per-class statistics and predicted learning/memorization order of any labelled data set."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path,
                        help=".npz file with arrays x (n, ...) and integer labels y (n,) (any real features), or "
                             "labelled images: a folder with one sub-folder per class, an idx images file, "
                             "fashion-mnist:train|test")
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config whose [model] (psi_p, time, activation) and [theory] sections are used")
    parser.add_argument("--psi-p", type=float, default=None, help="override model.psi_p (p / d)")
    parser.add_argument("--time", type=float, default=None, help="override model.time (diffusion time t)")


def run(args: argparse.Namespace, out: Path) -> AuditResult:
    from classdiff.core.config import load_config
    from classdiff.data.labelled import load_labelled
    from classdiff.theory.audit import audit

    base = load_config(args.config)
    overrides = {k: v for k, v in (("model.psi_p", args.psi_p), ("model.time", args.time)) if v is not None}
    if overrides:
        base = base.with_overrides(overrides)
    if args.data.suffix == ".npz":
        x, y = load_labelled(args.data)
    else:
        from classdiff.data.image_sets import load_image_set

        images = load_image_set(args.data, labelled=True)
        x, y = images.flat(), images.y
    result = audit(x, y, base)
    _plot(result, out)
    for w in result.warnings:
        print("warning:", w)
    return result


def _plot(result: AuditResult, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure
    from classdiff.core.results import time_or_nan

    classes = result.classes
    labels = [str(c.label) for c in classes]
    pos = np.arange(len(classes))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].bar(pos - 0.2, [c.variance for c in classes], 0.4, label="variance tr(Σ_c)/d")
    axes[0].bar(pos + 0.2, [c.weight for c in classes], 0.4, label="weight ρ_c")
    axes[0].set_xticks(pos, labels)
    axes[0].set_xlabel("class")
    axes[0].legend(fontsize=8)
    axes[0].set_title("per-class statistics")
    gen = [time_or_nan(c.tau_gen) for c in classes]
    mem = [time_or_nan(c.tau_mem) for c in classes]
    axes[1].bar(pos - 0.2, gen, 0.4, label="τ_gen (predicted)")
    axes[1].bar(pos + 0.2, mem, 0.4, label="τ_mem (predicted)")
    axes[1].set_yscale("log")
    axes[1].set_xticks(pos, labels)
    axes[1].set_xlabel("class")
    axes[1].legend(fontsize=8)
    axes[1].set_title("predicted timescales")
    fig.tight_layout()
    save_figure(fig, out / "audit")
