"""Does the U-Net's per-class memorization time grow with the class's training-set size? (issue 16 item 3)

Aggregates, for each training-set size, the seed runs of ``experiments/fashion_memorize_cpu.toml`` with the
counts scaled (``classdiff train ... --evaluate`` per seed), through :func:`classdiff.images.seed_aggregate.
aggregate_runs`, and plots per class tau_mem (loss gap opens) and tau_fmem (f_mem reaches the level) against n_c
with their seed intervals. Usage:

    PYTHONPATH=src python experiments/memorize_size_scan.py --out runs/size_scan \\
        runs/memorize/n124 runs/memorize/n248 runs/memorize/n4816

each folder holding ``seed*/`` run folders. Writes ``size_scan.json`` and ``size_scan.png``/``.pdf``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from classdiff.core.io import save_figure, write_json_atomic
from classdiff.core.results import encode, format_value, is_reached
from classdiff.images.seed_aggregate import aggregate_runs, format_aggregate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", type=Path, nargs="+", help="one folder per training-set size, holding seed*/ runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fmem-level", type=float, default=0.1)
    args = parser.parse_args()
    results = []
    for g in args.groups:
        runs = sorted(p for p in g.glob("seed*") if (p / "metrics" / "evaluation.json").is_file())
        res = aggregate_runs(runs, fmem_level=args.fmem_level)
        print(f"== {g} ==\n{format_aggregate(res)}\n")
        results.append(res)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("tau_mem", "tau_fmem")
    fig, axes = plt.subplots(1, len(keys), figsize=(10, 3.9))
    rows = []
    for ax, key in zip(axes, keys, strict=True):
        for ci, label in enumerate(c["label"] for c in results[0]["classes"]):
            xs, ys, los, his = [], [], [], []
            for res in results:
                c = next(c for c in res["classes"] if c["label"] == label)
                s = c[key]
                rows.append({"key": key, "label": label, "n_c": c["counts"][0], **s})
                if is_reached(s["estimate"]):
                    xs.append(c["counts"][0])
                    ys.append(float(s["estimate"]))
                    lo, hi = s["interval"]
                    los.append(float(s["estimate"]) - lo if np.isfinite(lo) else 0.0)
                    his.append(hi - float(s["estimate"]) if np.isfinite(hi) else 0.0)
            ax.errorbar(np.array(xs) * (1 + 0.03 * ci), ys, yerr=[los, his], fmt="o-", capsize=3,
                        label=f"class {label}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training images of the class n_c")
        ax.set_ylabel(f"{key} (training step)")
        ax.set_title(f"{key}: geometric mean over seeds, 95% t interval", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    save_figure(fig, args.out / "size_scan")
    write_json_atomic(args.out / "size_scan.json", encode({"groups": [str(g) for g in args.groups], "rows": rows,
                                                           "aggregates": results}))
    for r in rows:
        lo, hi = (format_value(v, ".4g") for v in r["interval"])
        print(f"{r['key']:<9} class {r['label']} n_c = {r['n_c']:>3}: {format_value(r['estimate'], '.4g')} [{lo}, {hi}]"
              f" ({r['n_reached']}/{r['n_seeds']} seeds)")


if __name__ == "__main__":
    main()
