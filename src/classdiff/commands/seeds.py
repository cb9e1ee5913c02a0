"""``classdiff seeds RUN [RUN ...]``: per-class U-Net times over seeds, with intervals and resolved orders only."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = ("Aggregate evaluated U-Net runs (one per seed): per-class loss-gap and f_mem times with confidence "
        "intervals, orders only where the intervals separate, the theory's agreement.")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", type=Path, nargs="+", help="run folders evaluated by 'classdiff evaluate'")
    parser.add_argument("--fmem-level", type=float, default=0.1,
                        help="f_mem,c level whose first crossing step is tau_fmem (default 0.1)")
    parser.add_argument("--level", type=float, default=0.95, help="interval coverage (default 0.95)")
    parser.add_argument("--rf", type=Path, default=None,
                        help="a 'classdiff dynamics --data' run folder on the same classes (RF on the real pixels), "
                             "added to the predicted-vs-measured table")


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from classdiff.core.config import ConfigError
    from classdiff.images.seed_aggregate import aggregate_runs, format_aggregate

    if not 0 < args.fmem_level < 1:
        raise ConfigError("--fmem-level", args.fmem_level, "must lie in (0, 1)")
    if not 0 < args.level < 1:
        raise ConfigError("--level", args.level, "must lie in (0, 1)")
    result = aggregate_runs(args.runs, fmem_level=args.fmem_level, level=args.level)
    print(format_aggregate(result))
    plot_seeds(result, out / "seeds")
    rf = None
    if args.rf is not None:
        from classdiff.core.io import read_json
        from classdiff.core.results import decode

        path = args.rf / "results.json" if args.rf.is_dir() else args.rf
        if not path.is_file():
            raise FileNotFoundError(f"--rf {args.rf}: no results.json; run 'classdiff dynamics --data ...' first")
        rf = decode(read_json(path))
    from classdiff.images.comparison import comparison_table, format_comparison_table, plot_comparison_table

    result["table"] = comparison_table(result, rf)
    print()
    print(format_comparison_table(result["table"]))
    plot_comparison_table(result["table"], out / "comparison")
    return result


def plot_seeds(result: dict[str, Any], stem: Path) -> None:
    """One panel per time (tau_gen, tau_mem, tau_fmem): each seed's value per class (dots; crosses at the top for
    seeds that did not reach the event) and the geometric mean with its interval (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure
    from classdiff.core.results import is_reached
    from classdiff.images.seed_aggregate import TIME_KEYS

    keys = list(TIME_KEYS)
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.2 * (len(keys) + 1), 3.8), squeeze=False)
    ax = axes[0][-1]
    for i, c in enumerate(result["classes"]):
        curve = c.get("production_ratio_by_step")
        if not curve:
            continue
        x, est = np.asarray(curve["steps"], dtype=float), np.asarray(curve["estimate"], dtype=float)
        iv = np.asarray(curve["interval"], dtype=float)
        ax.plot(x, est, "o-", ms=3, color=f"C{i}", label=f"class {c['label']}")
        ok = np.isfinite(iv).all(axis=1)
        ax.fill_between(x[ok], iv[ok, 0], iv[ok, 1], color=f"C{i}", alpha=0.2)
    ax.axhline(1.0, color="0.5", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("share of samples / share of data")
    ax.set_title("production ratio (classifier), mean and t interval", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    for ax, key in zip(axes[0][:-1], keys, strict=True):
        top = 1.0
        for i, c in enumerate(result["classes"]):
            vals = [r[key] for r in c["per_seed"]]
            ok = [float(v) for v in vals if is_reached(v) and np.isfinite(float(v))]
            top = max([top, *ok])
            ax.plot(np.full(len(ok), i) + np.linspace(-0.12, 0.12, len(ok)), ok, "o", ms=5, alpha=0.7)
            s = c[key]
            if is_reached(s["estimate"]):
                lo, hi = s["interval"]
                est = float(s["estimate"])
                if np.isfinite(lo):
                    ax.errorbar([i + 0.3], [est], yerr=[[est - lo], [hi - est]], fmt="s", color="k", capsize=3, ms=5)
                else:
                    ax.plot([i + 0.3], [est], "s", color="k", ms=5)
            missing = sum(1 for v in vals if not is_reached(v))
            if missing:
                ax.annotate(f"{missing} not reached", (i, 1.0), xycoords=("data", "axes fraction"), ha="center",
                            va="top", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(range(len(result["classes"])))
        ax.set_xticklabels([f"class {c['label']}\nn_c = {c['counts'][0]}" for c in result["classes"]])
        ax.set_ylabel("training step")
        order = result["orders"][key]
        ax.set_title(f"{key}: order {order['order'] if order['resolved'] else 'not resolved'}", fontsize=9)
    fig.suptitle(f"{len(result['runs'])} seeds: dots per seed, squares geometric mean with "
                 f"{result['level']:.0%} t interval (f_mem level {result['fmem_level']:g})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, stem)
