"""Foundation figures: import time of the theory package and exact mixture score throughput.

Run: .venv/bin/python benchmarks/bench_core.py
Targets (issue 2): ``import classdiff`` (+ config, process, mixture) under 0.5 s; exact score of 100k points in
d = 784 with K = 10 under 1 s on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import best_time, print_table


def import_time(stmt: str, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", stmt], check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def ratios() -> list[dict]:
    """Rows for ``make bench``: measured figure, its reference, ratio and target."""
    from classdiff.data.mixture import GaussianMixture

    base = import_time("pass")
    imp = import_time("import classdiff, classdiff.data.mixture, classdiff.core.config, classdiff.data.process") - base
    rng = np.random.default_rng(0)
    k, d, n = 10, 784, 100_000
    gm = GaussianMixture(rng.dirichlet(np.ones(k)), rng.standard_normal((k, d)), rng.uniform(0.5, 2.0, k))
    x = rng.standard_normal((n, d))
    t_score = best_time(lambda: gm.score(x, 0.1))
    return [
        {"benchmark": "import classdiff theory core", "ours": imp, "reference": 0.5, "unit": "s",
         "ratio": 0.5 / imp, "target": "import < 0.5 s"},
        {"benchmark": "exact score 100k x 784, K=10", "ours": t_score, "reference": 1.0, "unit": "s",
         "ratio": 1.0 / t_score, "target": "< 1 s"},
    ]


def main() -> None:
    base = import_time("pass")
    rows = []
    for stmt in ("import classdiff", "import classdiff.data.mixture, classdiff.core.config, classdiff.data.process, classdiff.rf.features"):
        t = import_time(stmt)
        rows.append([stmt, t, t - base, "torch" if "torch" in subprocess.run(
            [sys.executable, "-c", stmt + "; import sys; print(' '.join(sys.modules))"], capture_output=True,
            text=True).stdout.split() else "no torch"])
    print_table("import time (s), interpreter start subtracted in column 3", ["statement", "wall", "import", "torch?"],
                rows)

    from classdiff.data.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    k, d, n = 10, 784, 100_000
    gm = GaussianMixture(rng.dirichlet(np.ones(k)), rng.standard_normal((k, d)), rng.uniform(0.5, 2.0, k))
    x = rng.standard_normal((n, d))
    t_score = best_time(lambda: gm.score(x, 0.1))
    t_logp = best_time(lambda: gm.log_density(x, 0.1))
    # naive reference: per-class loops with explicit differences (what a user would write first)
    def naive():
        mean, var = gm.marginal(0.1)
        logs = np.stack([np.log(gm.weights[c]) - 0.5 * (((x - mean[c]) ** 2).sum(1) / var[c] + d * np.log(2 * np.pi * var[c]))
                         for c in range(k)], 1)
        post = np.exp(logs - logs.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        return sum(post[:, [c]] * (mean[c] - x) / var[c] for c in range(k))
    t_naive = best_time(naive, repeats=1)
    print_table(
        f"exact score, n = {n}, d = {d}, K = {k}",
        ["what", "seconds", "vs naive"],
        [["GaussianMixture.score", t_score, t_naive / t_score], ["GaussianMixture.log_density", t_logp, t_naive / t_logp],
         ["naive per-class loop", t_naive, 1.0]],
    )


if __name__ == "__main__":
    main()
