"""Random-features dynamics: closed form vs iterative GD, memory of U at p = 4000, Monte Carlo vs exact average.

Run: OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rf_dynamics.py [--quick]
(one BLAS thread: on a shared, oversubscribed machine a BLAS thread pool is many times slower).

Targets (issue 3):
1. per-class closed-form curves at 200 log-spaced times over 6 decades vs iterative GD (torch, float64, on the
   same quadratic) reaching the same final tau, d = 200, p = 800, n = 400: >= 1000x faster at equal accuracy.
   GD is run for a prefix of its steps (accuracy against the closed form measured there) and its time to reach
   tau_max is the measured time per step times the number of steps (GD cost per step is constant).
2. U for p = 4000 without an (n x draws x p) tensor over 2 GB: peak traced memory of the series and the
   chunked Monte Carlo builds.
3. Effect of the number of Monte Carlo noise draws on U and on the per-class curves and timescales.
``--quick`` divides the sizes so the script finishes in about a minute.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import print_table
from classdiff.mixture import GaussianMixture
from classdiff.rf_model import RandomFeaturesScore, noise_averaged_moments


def two_class_mixture(d: int) -> GaussianMixture:
    return GaussianMixture([0.7, 0.3], np.zeros((2, d)), [0.5, 2.0])


def closed_form_vs_gd(d: int, p: int, n: int, gd_prefix_steps: int) -> None:
    import torch

    from classdiff.rf_training import gd_learning_rate, train_random_features

    torch.set_num_threads(1)
    gm = two_class_mixture(d)
    data = gm.sample(n, seed=0)
    tau = np.geomspace(1e-2, 1e4, 200)
    t0 = time.perf_counter()
    est = RandomFeaturesScore(p, time=0.1, seed=0, test_samples=800, score_samples=800, n_batches=4)
    est.fit(data, gm)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    curves = est.predict_curves(np.append(tau, np.inf))
    est.timescales(tau, curves=curves)
    t_curves = time.perf_counter() - t0
    # eigendecomposition + rotations of the moments (the closed form's own cost beyond the moments)
    t0 = time.perf_counter()
    _, q = np.linalg.eigh(est.U_)
    for u in est.U_by_class_:
        q.T @ u @ q
    t_eig = time.perf_counter() - t0

    fraction = 0.02
    lr = gd_learning_rate(est, fraction)
    steps_total = math.ceil(tau[-1] * d * d / lr)
    prefix_tau = tau[tau * d * d / lr <= gd_prefix_steps]
    t0 = time.perf_counter()
    hist = train_random_features(est, data, prefix_tau, learning_rate=lr, device="cpu")
    t_prefix = time.perf_counter() - t0
    cur = est.predict_curves(hist.tau)
    err = max(float(np.abs(getattr(hist, k) / cur[k] - 1).max()) for k in ("train_loss", "test_loss", "score_error"))
    # time per step without the logging evaluations
    t0 = time.perf_counter()
    train_random_features(est, data, [200 * lr / d**2], learning_rate=lr, device="cpu")
    per_step = (time.perf_counter() - t0) / 200
    t_gd = per_step * steps_total  # logging evaluations excluded (they would only add to GD)
    closed = t_eig + t_curves
    print_table(
        f"closed form vs GD, d = {d}, p = {p}, n = {n}, t = 0.1, tau in [1e-2, 1e4] (200 times, 6 decades)",
        ["what", "seconds", "note"],
        [
            ["moments U, V, test/score moments (shared)", t_fit, "exact series, 800 fresh points per class"],
            ["closed form: eigh + rotations", t_eig, "one eigendecomposition, cached"],
            ["closed form: 200 times x 3 curves x 2 classes + readoff", t_curves, "incl. tau = inf"],
            ["GD per step (torch float64, moment loss)", per_step, f"step = {fraction} x stability limit"],
            ["GD steps to reach tau = 1e4", float(steps_total), f"eta = {lr:.4g}"],
            ["GD total (extrapolated, no logging)", t_gd, f"prefix run: {hist.steps[-1]} steps, {t_prefix:.3g} s"],
            ["GD max relative error vs closed form (prefix)", err, "train/test/score, every logged time"],
            ["speed-up GD / closed form (eigh + curves)", t_gd / closed, "target >= 1000"],
            ["speed-up GD / closed form incl. all moments", t_gd / (closed + t_fit), "end to end"],
        ],
    )


def memory_of_u(d: int, p: int, n: int, draws: int) -> None:
    gm = GaussianMixture([1.0], np.zeros((1, d)), [1.0])
    data = gm.sample(n, seed=1)
    W = np.random.default_rng(2).standard_normal((p, d))
    rows = []
    for method, kwargs in (("series", {"series_order": 10}), ("mc", {"noise_samples": draws})):
        tracemalloc.start()
        t0 = time.perf_counter()
        noise_averaged_moments(data.x, data.labels, 1, W, "tanh", 0.1, method=method, **kwargs)
        sec = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append([method, sec, peak / 2**30, n * draws * p * 8 / 2**30 if method == "mc" else float("nan")])
    print_table(
        f"building U, p = {p}, d = {d}, n = {n} (MC: {draws} draws per point, chunk_bytes = 128 MiB)",
        ["method", "seconds", "peak traced GiB", "naive (n x draws x p) GiB"],
        rows,
    )


def monte_carlo_effect(d: int, p: int, n: int) -> None:
    gm = two_class_mixture(d)
    data = gm.sample(n, seed=0)
    tau = np.geomspace(1e-2, 1e5, 120)
    ref = RandomFeaturesScore(p, time=0.1, seed=0, test_samples=400, score_samples=100, n_batches=4).fit(data, gm)
    ref_cur = ref.predict_curves(np.append(tau, np.inf))
    ref_ts = ref.timescales(tau, curves=ref_cur)
    rows = []
    for draws in (10, 100, 1000):
        est = RandomFeaturesScore(p, time=0.1, seed=0, method="mc", noise_samples=draws, test_samples=400,
                                  score_samples=100, n_batches=4).fit(data, gm)
        cur = est.predict_curves(np.append(tau, np.inf))
        ts = est.timescales(tau, curves=cur)
        rel_u = np.linalg.norm(est.U_ - ref.U_) / np.linalg.norm(ref.U_)
        lam_min = est.eigenvalues_[0] / ref.eigenvalues_[0] - 1
        curve_err = float(np.abs(cur["train_loss"] / ref_cur["train_loss"] - 1).max())
        mem_err = float(np.nanmax(np.abs(ts["tau_mem"] / ref_ts["tau_mem"] - 1)))
        rows.append([draws, rel_u, lam_min, curve_err, mem_err])
    print_table(
        f"Monte Carlo noise average vs exact series, d = {d}, p = {p}, n = {n} (test moments also MC)",
        ["draws/point", "|U_mc - U|/|U|", "lambda_min rel. err", "max rel err train curve", "max rel err tau_mem"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    args = parser.parse_args()
    if args.quick:
        closed_form_vs_gd(d=50, p=200, n=100, gd_prefix_steps=2000)
        memory_of_u(d=100, p=1000, n=100, draws=100)
        monte_carlo_effect(d=20, p=80, n=40)
    else:
        closed_form_vs_gd(d=200, p=800, n=400, gd_prefix_steps=5000)
        memory_of_u(d=1000, p=4000, n=1000, draws=80)
        monte_carlo_effect(d=50, p=200, n=100)


if __name__ == "__main__":
    main()
