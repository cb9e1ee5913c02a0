"""What the theory's loss model loses: the imbalance reversal under four feature-moment models (issue 19 item 1).

On the grid of ``experiments/imbalance_reversal.toml`` (d = 200, p = 400, n = 200, t = 0.1, tanh, orthogonal
centroids of norm 3, class 1 the minority with the larger variance), the same exact closed-form gradient flow and
read-off are run on four feature-moment models (``model.feature_moments``):

* ``exact``: the exact noise-averaged tanh moments (what ``classdiff dynamics`` uses);
* ``ge``: the Gaussian equivalent with one set of constants per feature (``docs/theory.md`` §2);
* ``ge-centred``: the same without the class-mean features (the centroid spikes);
* ``ge-mean-type``: one mean feature type per class, the closure of the theory's loss model (§5.2);

beside the theory (``timescales_from_config``) with its two loss models, ``theory.loss_model = "types"`` (the
default, ``docs/theory.md`` §5.5) and ``"mean-type"`` (§5.2). The ratios tau_0 / tau_1 (< 1: the majority class 0 comes first,
the variance order reversed) are printed as a markdown table with the paired seed spread of log(tau_0/tau_1).
Run:

    PYTHONPATH=src python experiments/reversal_mechanism.py --out runs/reversal_mechanism

It writes ``table.md``, ``results.json`` and ``reversal_mechanism.png``/``.pdf`` (atomically) under ``--out``.
About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from classdiff.core.config import Config
from classdiff.core.io import save_figure, write_json_atomic, write_text_atomic
from classdiff.core.results import time_or_nan
from classdiff.rf.model import dynamics_from_config
from classdiff.theory.timescales import timescales_from_config

BASE = {
    "mixture.dim": 200, "mixture.geometry": "orthogonal", "mixture.centroid_norms": [3.0, 3.0],
    "model.psi_p": 2.0, "model.psi_n": 1.0, "model.time": 0.1, "model.series_order": 6,
    "training.tau_min": 0.1, "training.tau_max": 1e5, "training.n_times": 120, "training.seeds": 5,
    "training.test_samples": 300, "training.score_samples": 100, "training.n_batches": 2,
}
WEIGHTS = [[0.5, 0.5], [0.8, 0.2], [0.95, 0.05], [0.98, 0.02]]
VARIANCES = {"1.05": [0.9759, 1.0247], "1.2": [0.9129, 1.0954]}
MODELS = ["exact", "ge", "ge-centred", "ge-mean-type"]
KEYS = ("tau_gen", "tau_mem")


def seed_ratio(classes: list[dict], key: str) -> tuple[float, float, int]:
    """Ratio of the seed means tau_0/tau_1, the seed standard deviation of log(tau_0/tau_1) (paired: the same
    seed gives W, the data and the test points of both classes), and the number of seeds where both reached."""
    a = np.array([time_or_nan(v) for v in classes[0][key + "_seeds"]])
    b = np.array([time_or_nan(v) for v in classes[1][key + "_seeds"]])
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return math.nan, math.nan, 0
    ratio = float(np.mean(a[ok]) / np.mean(b[ok]))
    spread = float(np.std(np.log(a[ok] / b[ok]), ddof=1)) if ok.sum() > 1 else math.nan
    return ratio, spread, int(ok.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    rows: list[dict] = []
    head = ("| var ratio | rho_0 : rho_1 | predictor | tau_gen 0 / 1 | tau_gen ratio (sd log) | tau_mem 0 / 1 | "
            "tau_mem ratio (sd log) |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r_name, var in VARIANCES.items():
        for w in WEIGHTS:
            over = BASE | {"mixture.variances": var, "mixture.weights": w, "training.seeds": args.seeds}
            cfg = Config().with_overrides(over)
            row: dict = {"variance_ratio": float(r_name), "weights": w}
            label = f"{round(100 * w[0])} : {round(100 * w[1])}"
            for name, loss_model in (("theory", "types"), ("theory-mean-type", "mean-type")):
                th = timescales_from_config(cfg.with_overrides({"theory.loss_model": loss_model}))
                tg = [time_or_nan(c.tau_gen) for c in th.classes]
                tm = [time_or_nan(c.tau_mem) for c in th.classes]
                row[name] = {"tau_gen": tg, "tau_mem": tm, "tau_gen_ratio": tg[0] / tg[1],
                             "tau_mem_ratio": tm[0] / tm[1], "closure": th.definitions["closure"]}
                lines.append(f"| {r_name if name == 'theory' else ''} | {label if name == 'theory' else ''} | "
                             f"{name} | {tg[0]:.4g} / {tg[1]:.4g} | {tg[0] / tg[1]:.3f} | "
                             f"{tm[0]:.4g} / {tm[1]:.4g} | {tm[0] / tm[1]:.3f} |")
            for model in MODELS:
                dyn = dynamics_from_config(cfg.with_overrides({"model.feature_moments": model}))
                entry: dict = {}
                cells = []
                for key in KEYS:
                    means = [time_or_nan(c[key]) for c in dyn["classes"]]
                    ratio, spread, n_ok = seed_ratio(dyn["classes"], key)
                    entry[key] = means
                    entry[key + "_ratio"], entry[key + "_log_ratio_sd"], entry[key + "_seeds_reached"] = (
                        ratio, spread, n_ok)
                    cells += [f"{means[0]:.4g} / {means[1]:.4g}", f"{ratio:.3f} ({spread:.2f}, {n_ok} seeds)"]
                row[model] = entry
                lines.append(f"| | | {model} | " + " | ".join(cells) + " |")
                print(f"r {r_name} {label} {model}: gen ratio {entry['tau_gen_ratio']:.3f}, "
                      f"mem ratio {entry['tau_mem_ratio']:.3f}", flush=True)
            rows.append(row)
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "table.md", text)
    write_json_atomic(args.out / "results.json", {"base": BASE, "seeds": args.seeds, "rows": rows})
    plot(rows, args.out / "reversal_mechanism")


def plot(rows: list[dict], stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    styles = {"theory": ("k", "o", "theory, types kept"), "theory-mean-type": ("0.55", "D", "theory, mean type"),
              "exact": ("C0", "s", "exact dynamics"),
              "ge": ("C1", "^", "GE per feature"), "ge-centred": ("C2", "v", "GE without class means"),
              "ge-mean-type": ("C3", "x", "GE mean type")}
    for ax, key, title in zip(axes, KEYS, ("learning: tau_gen,0 / tau_gen,1", "memorization: tau_mem,0 / tau_mem,1")):
        for r_name, ls in (("1.05", "-"), ("1.2", "--")):
            sel = [r for r in rows if f"{r['variance_ratio']:g}" == r_name]
            x = [r["weights"][1] for r in sel]
            for name, (color, marker, label) in styles.items():
                y = [r[name][key + "_ratio"] for r in sel]
                ax.plot(x, y, ls, color=color, marker=marker, label=f"{label}, var ratio {r_name}")
        ax.axhline(1.0, color="0.6", lw=0.8)
        ax.set_xscale("log")
        ticks = [w[1] for w in WEIGHTS]
        ax.set_xticks(ticks, [f"{round(100 * w[0])}:{round(100 * w[1])}" for w in WEIGHTS])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.invert_xaxis()
        ax.set_xlabel("rho_0 : rho_1 (class 1, the minority, has the larger variance)")
        ax.set_title(title + "  (< 1: reversed)")
        if key == "tau_mem":
            ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=6.5)
    save_figure(fig, stem)
    plt.close(fig)


if __name__ == "__main__":
    main()
