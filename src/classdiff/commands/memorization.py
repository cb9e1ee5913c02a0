"""``classdiff memorization SAMPLES TRAIN``: per-class memorization audit of any model's generated samples.

SAMPLES and TRAIN are image sets in any format of :func:`classdiff.data.image_sets.load_image_set` (``.npz``,
image folder, idx file, ``fashion-mnist:train|test``); TRAIN must be labelled, SAMPLES may carry the classes they
were generated for (``y`` in the npz written by ``classdiff generate``). Writes ``results.json`` (per-class
f_mem with intervals, quality, measured vs predicted order), ``per_sample.npz`` (ratio d1/d2, neighbour indices
and labels per sample), ``gallery.png|pdf`` (sample | nearest | second nearest, the most memorized samples of
each class) and ``memorization.png|pdf`` (per-class f_mem with intervals beside the predicted order).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

HELP = "Per-class memorization audit of generated samples (folder/npz/idx) against a labelled training set."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("samples", help="generated images: .npz (x, optional y), image folder, idx file, "
                                        "or fashion-mnist:train|test")
    parser.add_argument("train", help="labelled training images: .npz (x, y), folder with one sub-folder per "
                                      "class, idx images file (labels beside it), or fashion-mnist:train|test")
    parser.add_argument("--train-labels", type=Path, default=None, help="idx labels file for an idx TRAIN")
    parser.add_argument("--threshold", type=float, default=1.0 / 3.0,
                        help="memorized when d1/d2 < threshold (default 1/3)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument("--backend", choices=("torch", "faiss"), default="torch",
                        help="nearest-neighbour search (faiss needs faiss-cpu)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--chunk", type=int, default=1024, help="queries per nearest-neighbour block")
    parser.add_argument("--no-classifier", action="store_true",
                        help="skip the classifier (no classifier attribution, no quality)")
    parser.add_argument("--classifier-epochs", type=int, default=2)
    parser.add_argument("--no-theory", action="store_true", help="skip the theory's predicted order")
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config whose [model] and [theory] sections set the prediction")
    parser.add_argument("--gallery", type=int, default=4, help="samples per class in the gallery (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return name


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from classdiff.core.config import load_config
    from classdiff.core.io import save_npz_atomic
    from classdiff.data.image_sets import load_image_set
    from classdiff.images.sample_audit import audit_samples

    if not 0 < args.threshold < 1:
        raise ValueError(f"--threshold {args.threshold}: must lie in (0, 1)")
    if args.chunk < 1 or args.bootstrap < 0 or args.gallery < 0:
        raise ValueError("--chunk must be >= 1, --bootstrap and --gallery >= 0")
    train = load_image_set(args.train, labels=args.train_labels, labelled=True)
    samples = load_image_set(args.samples)
    theory = False if args.no_theory else load_config(args.config)
    res = audit_samples(samples, train, threshold=args.threshold, n_bootstrap=args.bootstrap, seed=args.seed,
                        backend=args.backend, device=_device(args.device), chunk=args.chunk,
                        classifier=not args.no_classifier, classifier_epochs=args.classifier_epochs,
                        theory=theory, progress=not args.no_progress)
    save_npz_atomic(out / "per_sample.npz", **res.arrays)
    if args.gallery:
        gallery_figure(samples.x, train.x, res.arrays, res.summary, out / "gallery", per_class=args.gallery)
    summary_figure(res.summary, out / "memorization")
    print(format_audit(res.summary))
    return res.summary


def _fmt(v: Any, spec: str = ".3f") -> str:
    from classdiff.core.results import format_value

    return "n/a" if v is None else format_value(v, spec)


def format_audit(summary: dict[str, Any]) -> str:
    """A text table: per class f_mem [interval] per attribution, production ratio, FD, predicted tau_mem."""
    mem = summary["memorization"]
    quality = {c["label"]: c for c in summary["quality"].get("classes", [])}
    theory = summary.get("theory", {})
    tau = {c["label"]: c["tau_mem"] for c in theory.get("classes", [])} if theory.get("available") else {}
    lines = [f"f_mem overall {_fmt(mem['f_mem'])} [{_fmt(mem['f_mem_ci'][0])}, {_fmt(mem['f_mem_ci'][1])}] "
             f"of {mem['n_samples']} samples (d1/d2 < {mem['threshold']:.3g})",
             f"{'class':>6} {'attribution':>12} {'n':>6} {'f_mem':>7} {'95% interval':>17} {'produced/weight':>15} "
             f"{'FD':>8} {'tau_mem (theory)':>16}"]
    for c in mem["classes"]:
        q = quality.get(c["label"], {})
        for name, key, count in (("nearest", "", "n_nearest"), ("classifier", "_classifier", "n_classifier"),
                                 ("conditioning", "_conditioning", "n_conditioning")):
            if count not in c:
                continue
            lo, hi = c["f_mem" + key + "_ci"]
            lines.append(f"{c['label']:>6} {name:>12} {c[count]:>6} {_fmt(c['f_mem' + key]):>7} "
                         f"{'[' + _fmt(lo) + ', ' + _fmt(hi) + ']':>17} "
                         f"{_fmt(q.get('production_ratio'), '.2f'):>15} {_fmt(q.get('frechet'), '.2f'):>8} "
                         f"{_fmt(tau.get(c['label']), '.4g'):>16}")
    m = summary["measured_memorization_order"]
    lines.append(f"measured memorization order ({m['attribution']}): {m['order']}"
                 + (f" (point estimates {m['sorted']}, overlapping {m['ties']})" if not m["resolved"] else ""))
    if theory.get("available"):
        a = summary["agreement"]
        lines.append(f"predicted memorization order (theory): {theory['memorization_order']}; agreement on "
                     f"{a['agree']} of {a['pairs']} resolved pairs")
    elif theory:
        lines.append(f"theory: {theory['reason']}")
    return "\n".join(lines)


def _tile(img: np.ndarray) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W) or (H, W, 3) in [0, 1] for imshow."""
    a = np.clip((img + 1.0) / 2.0, 0, 1)
    return a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)


def gallery_figure(samples: np.ndarray, train: np.ndarray, arrays: dict[str, np.ndarray], summary: dict[str, Any],
                   stem: Path, per_class: int = 4) -> None:
    """Per class (rows), the ``per_class`` samples with the smallest d1/d2: sample | nearest | second nearest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from classdiff.core.io import save_figure
    from classdiff.images.sample_audit import primary_attribution

    classes = [c["label"] for c in summary["memorization"]["classes"]]
    attribution = primary_attribution(summary["memorization"]["classes"])
    labels = arrays.get(f"{attribution}_label", arrays["nearest_label"])
    ratio = arrays["ratio"]
    cols = 3 * per_class
    fig, axes = plt.subplots(len(classes), cols, figsize=(0.75 * cols + 0.8, 0.85 * len(classes) + 0.6),
                             squeeze=False)
    cmap = "gray" if samples.shape[1] == 1 else None
    for r, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(ratio[idx], kind="stable")][:per_class]
        for j in range(per_class):
            trio = axes[r, 3 * j: 3 * j + 3]
            for ax in trio:
                ax.set_xticks([])
                ax.set_yticks([])
                for sp in ax.spines.values():
                    sp.set_visible(False)
            if j >= len(idx):
                continue
            s = idx[j]
            imgs = (samples[s], train[arrays["nearest_index"][s]], train[arrays["second_index"][s]])
            for ax, im in zip(trio, imgs, strict=True):
                ax.imshow(_tile(im), cmap=cmap, vmin=0, vmax=1)
            memorized = ratio[s] < summary["memorization"]["threshold"]
            trio[0].set_title(f"d1/d2 {ratio[s]:.2f}", fontsize=6, color="C3" if memorized else "black")
            for sp in trio[0].spines.values():  # frame the generated sample of each trio
                sp.set_visible(True)
                sp.set_color("C3" if memorized else "C0")
                sp.set_linewidth(1.5)
        axes[r, 0].set_ylabel(f"class {c}", fontsize=8)
    fig.suptitle(f"most memorized samples per class ({attribution} attribution): framed sample | nearest | "
                 "second-nearest training image (red: memorized)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, stem)


def summary_figure(summary: dict[str, Any], stem: Path) -> None:
    """Per-class f_mem with 95% intervals for each attribution; predicted tau_mem (theory) on a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from classdiff.core.io import save_figure
    from classdiff.core.results import time_or_nan

    mem = summary["memorization"]["classes"]
    labels = [c["label"] for c in mem]
    pos = np.arange(len(labels))
    theory = summary.get("theory", {})
    panels = 2 if theory.get("available") else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.4), squeeze=False)
    ax = axes[0, 0]
    present = [(n, k) for n, k, cnt in (("nearest", "", "n_nearest"), ("classifier", "_classifier", "n_classifier"),
                                        ("conditioning", "_conditioning", "n_conditioning")) if cnt in mem[0]]
    width = 0.8 / max(len(present), 1)
    for j, (name, key) in enumerate(present):
        vals = np.array([np.nan if c["f_mem" + key] is None else c["f_mem" + key] for c in mem])
        lo = np.array([c["f_mem" + key + "_ci"][0] for c in mem], dtype=float)
        hi = np.array([c["f_mem" + key + "_ci"][1] for c in mem], dtype=float)
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        ax.bar(pos + (j - (len(present) - 1) / 2) * width, vals, width, yerr=np.nan_to_num(err), capsize=2,
               label=name)
    ax.set_xticks(pos, [str(v) for v in labels])
    ax.set_xlabel("class")
    ax.set_ylabel("f_mem (95% bootstrap interval)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, title="attribution", title_fontsize=7)
    ax.set_title(f"measured: order {summary['measured_memorization_order']['order']}", fontsize=8)
    if panels == 2:
        tau = {c["label"]: time_or_nan(c["tau_mem"]) for c in theory["classes"]}
        ax2 = axes[0, 1]
        ax2.bar(pos, [tau.get(v, np.nan) for v in labels], 0.6, color="C4")
        ax2.set_yscale("log")
        ax2.set_xticks(pos, [str(v) for v in labels])
        ax2.set_xlabel("class")
        ax2.set_ylabel("predicted τ_mem (random features)")
        ax2.set_title(f"theory: order {theory['memorization_order']} (earliest first)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, stem)
