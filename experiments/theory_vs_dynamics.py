"""Theory against the exact dynamics on 22 settings: per-class tau_gen, tau_mem and the orders (issue 19's check).

For every setting, the random-matrix theory (``timescales_from_config``) and the exact closed-form gradient flow
of the random-features model at the config's finite size (``dynamics_from_config``, d = 100, mean over 3 seeds)
give per-class times. The script prints a markdown table (theory, dynamics mean +- sd over seeds, ratio) and the
learning / memorization orders; an order is "tie" when the dynamics' two times of some pair differ by less than
10%. Run:

    PYTHONPATH=src python experiments/theory_vs_dynamics.py --out runs/theory_vs_dynamics

It writes ``table.md`` and ``results.json`` (atomically) under ``--out``. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import numpy as np

from classdiff.core.config import Config
from classdiff.core.io import write_json_atomic, write_text_atomic
from classdiff.core.results import time_or_nan
from classdiff.rf.model import dynamics_from_config
from classdiff.theory.timescales import timescales_from_config

BASE = {
    "mixture.dim": 100, "mixture.geometry": "antipodal", "mixture.centroid_norms": [0.0, 0.0],
    "mixture.variances": [1.0, 1.0], "mixture.weights": [0.5, 0.5],
    "model.psi_p": 2.0, "model.psi_n": 1.0, "model.time": 0.1, "model.series_order": 6,
    "training.tau_min": 0.01, "training.tau_max": 1e6, "training.n_times": 160, "training.seeds": 3,
    "training.test_samples": 300, "training.score_samples": 50, "training.n_batches": 2,
    "theory.n_lambda": 400, "theory.n_scan": 200,
}
V2 = [0.7071, 1.4142]  # ratio 2, geometric mean 1
V5 = [0.4472, 2.2361]  # ratio 5
SETTINGS: list[tuple[str, dict]] = [
    ("equal variances", {}),
    ("var ratio 2", {"mixture.variances": V2}),
    ("var ratio 5", {"mixture.variances": V5}),
    ("var 2, high-var minority 0.8/0.2", {"mixture.variances": V2, "mixture.weights": [0.8, 0.2]}),
    ("var 2, high-var minority 0.95/0.05", {"mixture.variances": V2, "mixture.weights": [0.95, 0.05]}),
    ("var 2, high-var majority 0.2/0.8", {"mixture.variances": V2, "mixture.weights": [0.2, 0.8]}),
    ("var 2, psi_p 1", {"mixture.variances": V2, "model.psi_p": 1.0}),
    ("var 2, psi_p 4", {"mixture.variances": V2, "model.psi_p": 4.0}),
    ("var 2, psi_p 8", {"mixture.variances": V2, "model.psi_p": 8.0}),
    ("var 2, psi_n 0.5", {"mixture.variances": V2, "model.psi_n": 0.5}),
    ("var 2, psi_n 4", {"mixture.variances": V2, "model.psi_n": 4.0}),
    ("var 2, psi_p 8, psi_n 4", {"mixture.variances": V2, "model.psi_p": 8.0, "model.psi_n": 4.0}),
    ("var 3, psi_p 1, psi_n 0.5, 0.7/0.3", {"mixture.variances": [0.5774, 1.7321], "model.psi_p": 1.0,
                                           "model.psi_n": 0.5, "mixture.weights": [0.7, 0.3]}),
    ("var 2, antipodal m 1", {"mixture.variances": V2, "mixture.centroid_norms": [1.0, 1.0]}),
    ("var 2, antipodal m 2", {"mixture.variances": V2, "mixture.centroid_norms": [2.0, 2.0]}),
    ("equal var, orthogonal m 2", {"mixture.geometry": "orthogonal", "mixture.centroid_norms": [2.0, 2.0]}),
    ("var 1.05, orthogonal m 1, 0.8/0.2", {"mixture.geometry": "orthogonal", "mixture.centroid_norms": [1.0, 1.0],
                                          "mixture.variances": [0.9759, 1.0247], "mixture.weights": [0.8, 0.2]}),
    ("var 1.5, orthogonal m 2, 0.95/0.05", {"mixture.geometry": "orthogonal", "mixture.centroid_norms": [2.0, 2.0],
                                           "mixture.variances": [0.8165, 1.2247], "mixture.weights": [0.95, 0.05]}),
    ("K3 var 0.5/1/2", {"mixture.variances": [0.5, 1.0, 2.0], "mixture.weights": [1 / 3, 1 / 3, 1 / 3],
                        "mixture.centroid_norms": [0.0, 0.0, 0.0], "mixture.geometry": "orthogonal"}),
    ("K3 var 0.5/1/2, 0.6/0.3/0.1", {"mixture.variances": [0.5, 1.0, 2.0], "mixture.weights": [0.6, 0.3, 0.1],
                                     "mixture.centroid_norms": [0.0, 0.0, 0.0], "mixture.geometry": "orthogonal"}),
    ("K3 orthogonal m 1, 0.6/0.3/0.1", {"mixture.variances": [1.0, 1.0, 1.0], "mixture.weights": [0.6, 0.3, 0.1],
                                        "mixture.centroid_norms": [1.0, 1.0, 1.0], "mixture.geometry": "orthogonal"}),
    ("K3 orthogonal m 2, var 1/1.5/2, psi_p 4", {"mixture.variances": [1.0, 1.5, 2.0],
                                                 "mixture.weights": [1 / 3, 1 / 3, 1 / 3],
                                                 "mixture.centroid_norms": [2.0, 2.0, 2.0],
                                                 "mixture.geometry": "orthogonal", "model.psi_p": 4.0}),
]


def order(times: np.ndarray, dyn: np.ndarray | None = None, tie: float = 0.1) -> str:
    """Class indices by increasing time; "tie" when ``dyn`` (the dynamics' times) has a pair within ``tie``."""
    if not np.all(np.isfinite(times)):
        return "not all reached"
    ref = times if dyn is None else dyn
    if dyn is not None and np.all(np.isfinite(ref)):
        for a, b in itertools.combinations(range(ref.size), 2):
            if abs(math.log(ref[a] / ref[b])) < math.log1p(tie):
                return "tie"
    return "".join(str(i) for i in np.argsort(times, kind="stable"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows, lines = [], []
    lines.append("| # | setting | class | tau_gen theory | dynamics | ratio | tau_mem theory | dynamics | ratio |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    orders = ["", "| # | gen order theory | dynamics | mem order theory | dynamics |", "|---|---|---|---|---|"]
    for i, (name, over) in enumerate(SETTINGS, 1):
        cfg = Config().with_overrides(BASE | over)
        th = timescales_from_config(cfg)
        dyn = dynamics_from_config(cfg, tau=np.asarray(th.tau))
        tg = np.array([time_or_nan(c.tau_gen) for c in th.classes])
        tm = np.array([time_or_nan(c.tau_mem) for c in th.classes])
        dg = np.array([time_or_nan(c["tau_gen"]) for c in dyn["classes"]])
        dm = np.array([time_or_nan(c["tau_mem"]) for c in dyn["classes"]])
        sg = np.array([time_or_nan(c["tau_gen_std"]) for c in dyn["classes"]])
        sm = np.array([time_or_nan(c["tau_mem_std"]) for c in dyn["classes"]])
        for c in range(tg.size):
            rows.append({"setting": name, "class": c, "tau_gen_theory": tg[c], "tau_gen_dynamics": dg[c],
                         "tau_gen_dynamics_std": sg[c], "tau_mem_theory": tm[c], "tau_mem_dynamics": dm[c],
                         "tau_mem_dynamics_std": sm[c], "gen_ratio": tg[c] / dg[c], "mem_ratio": tm[c] / dm[c]})
            lines.append(f"| {i} | {name if c == 0 else ''} | {c} | {tg[c]:.4g} | {dg[c]:.4g} ± {sg[c]:.2g} | "
                         f"{tg[c] / dg[c]:.2f} | {tm[c]:.4g} | {dm[c]:.4g} ± {sm[c]:.2g} | {tm[c] / dm[c]:.2f} |")
        og, odg, om, odm = order(tg), order(dg, dg), order(tm), order(dm, dm)
        orders.append(f"| {i} | {og} | {odg} | {om} | {odm} |")
        rows[-1]["orders"] = {"gen_theory": og, "gen_dynamics": odg, "mem_theory": om, "mem_dynamics": odm}
        print(f"[{i}/{len(SETTINGS)}] {name}: gen {og} vs {odg}, mem {om} vs {odm}", flush=True)
    gr = np.array([r["gen_ratio"] for r in rows])
    mr = np.array([r["mem_ratio"] for r in rows])
    within = lambda r: int(np.sum(np.isfinite(r) & (np.abs(r - 1) <= 0.25)))  # noqa: E731
    summary = (f"\nper-class tau_gen within 25%: {within(gr)} of {gr.size}; tau_mem within 25%: {within(mr)} of "
               f"{mr.size} (non-finite ratios: gen {int(np.sum(~np.isfinite(gr)))}, mem {int(np.sum(~np.isfinite(mr)))})")
    text = "\n".join(lines + orders) + "\n" + summary + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "table.md", text)
    write_json_atomic(args.out / "results.json", {"settings": [n for n, _ in SETTINGS], "rows": rows})


if __name__ == "__main__":
    main()
