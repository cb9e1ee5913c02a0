"""Random-features dynamics: closed form vs iterative GD, memory of U at p = 4000, Monte Carlo vs exact average.

Run: OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rf_dynamics.py [--quick]
Target 1 itself sets one OpenBLAS thread for the closed form and one torch thread for GD, so both sides are
single-threaded whatever the environment (on a shared, oversubscribed machine a thread pool is many times slower).
``--quick`` (or ``CLASSDIFF_BENCH_QUICK=1``, as ``run_all.py --quick`` sets) keeps the sizes of target 1 but
checks GD's accuracy on a shorter prefix, builds U at p = 4000 from fewer points (the peak memory is set by the
block size, not by n) and shrinks the Monte Carlo study: well under a minute instead of about three.

Targets (issue 3):
1. per-class closed-form curves at 200 log-spaced times over 6 decades vs iterative GD reaching the same final
   tau, d = 200, p = 800, n = 400: >= 1000x faster at equal accuracy. Both sides single-threaded; the timings
   are interleaved (fit, curves, GD, ... repeated) so that both see the same load, best of ``repeats`` each:
   - closed form, end to end = ``RandomFeaturesScore.fit`` (U, V per class by the exact Mehler series, the
     eigendecomposition and rotations, per-class test moments on 800 fresh points per class and score-error
     moments on 800 fresh points of P_t per class, 4 batches) + the 200-time curves (train, test, score error
     per class, with standard errors, plus tau = inf) + the timescale read-off;
   - GD = the package's trainer ``train_random_features`` (torch, float64, full-batch GD on the same moment
     loss, step 0.02 x the stability limit): its time per step (a 201-step run minus a 1-step run, so set-up
     and logging are not counted) x the number of steps to tau = 1e4.
     GD is also run on a prefix of its steps and compared with the closed form there (its max relative error
     is printed: the flow is exact in closed form, GD has a discretisation error proportional to its step).
   Speed-ups printed:
   a. ``GD / closed form end to end`` -- THE TARGET READING (conservative): every moment, including the U and
      V that GD itself cannot run without, is charged to the closed form and none to GD.
   b. ``(GD + U, V) / closed form end to end`` -- what a user sees: GD charged with the U, V it needs (the
      test / score moments its logged curves would also need are still not charged to it).
   c. ``GD / (eigh + rotations + curves)`` -- the closed form's own work, moments counted as shared
      (informational, the old headline number).
   Informational: the time per step of a hand-written GD step (explicit gradient, one product, no autograd) and
   the conservative speed-up it would give -- a tighter GD implementation than the package's trainer.
2. U for p = 4000 without an (n x draws x p) tensor over 2 GB: peak traced memory (tracemalloc) of the series
   and of the chunked Monte Carlo builds; ratio 2 GiB / peak.
3. Effect of the number of Monte Carlo noise draws on U and on the per-class curves and timescales.

``ratios()`` returns targets 1 (ratio = conservative speed-up / 1000) and 2 (ratio = 2 GiB / peak) for
``run_all.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg

sys.path.insert(0, str(Path(__file__).parent))
from _table import print_table
from classdiff.data.mixture import GaussianMixture
from classdiff.rf.model import RandomFeaturesScore, _rotate, noise_averaged_moments

TARGET_SPEEDUP = 1000.0
MEMORY_LIMIT_GIB = 2.0
FULL = {"gd": {"d": 200, "p": 800, "n": 400, "gd_prefix_steps": 5000, "repeats": 3},
        "memory": {"d": 1000, "p": 4000, "n_series": 1000, "n_mc": 1000, "draws": 80},
        "mc": {"d": 50, "p": 200, "n": 100}}
QUICK = {"gd": {"d": 200, "p": 800, "n": 400, "gd_prefix_steps": 500, "repeats": 2},
         "memory": {"d": 1000, "p": 4000, "n_series": 400, "n_mc": 50, "draws": 80},
         "mc": {"d": 20, "p": 80, "n": 40}}


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """One OpenBLAS thread for numpy's and scipy's bundled libraries (whatever OPENBLAS_NUM_THREADS says), so
    that the closed form runs on one thread like GD (torch.set_num_threads(1)); restored afterwards."""
    import ctypes

    import scipy.linalg  # noqa: F401  (load scipy's BLAS so that it is found)

    pairs = []
    for path in sorted({ln.split()[-1] for ln in open("/proc/self/maps") if "openblas" in ln and ".so" in ln}):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, set_ in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                          ("openblas_get_num_threads", "openblas_set_num_threads")):
            if hasattr(lib, get) and hasattr(lib, set_):
                pairs.append((getattr(lib, get), getattr(lib, set_)))
                break
    old = [get() for get, _ in pairs]
    for _, set_ in pairs:
        set_(1)
    try:
        yield
    finally:
        for (_, set_), n in zip(pairs, old):
            set_(n)


def two_class_mixture(d: int) -> GaussianMixture:
    return GaussianMixture([0.7, 0.3], np.zeros((2, d)), [0.5, 2.0])


def closed_form_vs_gd(d: int, p: int, n: int, gd_prefix_steps: int, repeats: int = 3,
                      verbose: bool = True) -> dict[str, Any]:
    import torch

    from classdiff.rf.training import gd_learning_rate, train_random_features

    torch.set_num_threads(1)
    gm = two_class_mixture(d)
    data = gm.sample(n, seed=0)
    tau = np.geomspace(1e-2, 1e4, 200)
    est = RandomFeaturesScore(p, time=0.1, seed=0, test_samples=800, score_samples=800, n_batches=4)
    est.fit(data, gm)  # warm-up (and the step size of GD, which depends on lambda_max)
    fraction = 0.02
    lr = gd_learning_rate(est, fraction)
    steps_total = math.ceil(tau[-1] * d * d / lr)
    probe = 201  # GD steps per timing; a 1-step run is subtracted (set-up and the final logging evaluation)
    out: dict[str, Any] = {}

    def curves_and_readoff() -> None:
        out["curves"] = est.predict_curves(np.append(tau, np.inf))
        est.timescales(tau, curves=out["curves"])

    def eigh_and_rotations() -> None:  # the closed form's own work inside fit (informational)
        q = scipy.linalg.eigh(est.U_, driver="evr")[1]
        for u in est.U_by_class_:
            _rotate(u, q)

    jobs = {
        # closed form, end to end: every moment + eigendecomposition + rotations (fit), then curves + read-off
        "fit": lambda: est.fit(data, gm),
        "curves": curves_and_readoff,
        "eig": eigh_and_rotations,
        # what GD needs to run at all: the training-set U, V (per class), by the public function
        "uv": lambda: noise_averaged_moments(data.x, data.labels, est.n_classes_, est.W_, est.activation, est.time),
        "gd": lambda: train_random_features(est, data, [probe * lr / d**2], learning_rate=lr, device="cpu"),
        "gd1": lambda: train_random_features(est, data, [lr / d**2], learning_rate=lr, device="cpu"),
        "hand": lambda: _hand_written_gd(est, lr, probe),
    }
    # interleaved repeats, best of each: both sides see the same (shared-machine) load
    best = dict.fromkeys(jobs, math.inf)
    for _ in range(repeats):
        for key, job in jobs.items():
            t0 = time.perf_counter()
            job()
            best[key] = min(best[key], time.perf_counter() - t0)
    t_fit, t_curves, t_eig, t_uv = best["fit"], best["curves"], best["eig"], best["uv"]
    per_step, per_step_hand = (best["gd"] - best["gd1"]) / (probe - 1), best["hand"] / probe
    t_gd = per_step * steps_total  # logging evaluations excluded (they would only add to GD)

    # GD's accuracy: a prefix of the run against the closed form at the logged times
    prefix_tau = tau[tau * d * d / lr <= gd_prefix_steps]
    t0 = time.perf_counter()
    hist = train_random_features(est, data, prefix_tau, learning_rate=lr, device="cpu")
    t_prefix = time.perf_counter() - t0
    cur = est.predict_curves(hist.tau)
    err = max(float(np.abs(getattr(hist, k) / cur[k] - 1).max()) for k in ("train_loss", "test_loss", "score_error"))

    closed = t_fit + t_curves
    res = {"t_fit": t_fit, "t_curves": t_curves, "t_eig": t_eig, "t_uv": t_uv, "closed": closed, "t_gd": t_gd,
           "per_step": per_step, "steps": steps_total, "err": err,
           "conservative": t_gd / closed, "user": (t_gd + t_uv) / closed, "alone": t_gd / (t_eig + t_curves),
           "hand": per_step_hand * steps_total / closed}
    if verbose:
        print_table(
            f"closed form vs GD, d = {d}, p = {p}, n = {n}, t = 0.1, tau in [1e-2, 1e4] (200 times, 6 decades); "
            f"one thread, best of {repeats}",
            ["what", "seconds", "note"],
            [
                ["closed form: fit (all moments + eigh + rotations)", t_fit,
                 "exact series; 800 fresh points per class for test and score moments"],
                ["  of which U, V of the training set (GD needs them too)", t_uv, "noise_averaged_moments"],
                ["  of which eigh + rotations (closed form's own)", t_eig, "eigh + one rotation per class"],
                ["closed form: 200 times x 3 curves x 2 classes + readoff", t_curves, "incl. tau = inf and SEs"],
                ["closed form, end to end", closed, "fit + curves + readoff"],
                ["GD per step (train_random_features, torch float64)", per_step,
                 f"step = {fraction} x stability limit"],
                ["GD steps to reach tau = 1e4", float(steps_total), f"eta = {lr:.4g}"],
                ["GD total (extrapolated, no logging)", t_gd,
                 f"prefix run: {hist.steps[-1]} steps, {t_prefix:.3g} s"],
                ["GD max relative error vs closed form (prefix)", err, "train/test/score, every logged time"],
                ["speed-up a: GD / closed form end to end", res["conservative"],
                 f"TARGET READING (conservative), >= {TARGET_SPEEDUP:g}"],
                ["speed-up b: (GD + U, V) / closed form end to end", res["user"], "end to end, as a user sees it"],
                ["speed-up c: GD / (eigh + rotations + curves)", res["alone"], "moments counted as shared"],
                ["info: hand-written GD step (explicit gradient)", per_step_hand, "one product per step, no autograd"],
                ["info: speed-up a against the hand-written GD", res["hand"], "not the package's trainer"],
            ],
        )
    return res


def _hand_written_gd(est: RandomFeaturesScore, lr: float, steps: int) -> None:
    """``steps`` GD steps on the moment loss with the explicit gradient grad L = (2 Delta/(d p)) A U
    + (2 sqrt(Delta)/(d sqrt(p))) V^T: one (d, p) x (p, p) product per step, torch float64."""
    import torch

    d, p, delta = est.dim_, est.n_features, est.delta_
    U = torch.as_tensor(est.U_)
    Vt = torch.as_tensor(np.ascontiguousarray(est.V_.T))
    A = torch.zeros((d, p), dtype=torch.float64)
    a = lr * 2 * delta / (d * p)
    b = lr * 2 * math.sqrt(delta) / (d * math.sqrt(p))
    for _ in range(steps):
        A.sub_(torch.addmm(Vt, A, U, beta=b, alpha=a))


def memory_of_u(d: int, p: int, n_series: int, n_mc: int, draws: int, verbose: bool = True) -> dict[str, float]:
    gm = GaussianMixture([1.0], np.zeros((1, d)), [1.0])
    W = np.random.default_rng(2).standard_normal((p, d))
    rows, peaks = [], {}
    for method, n, kwargs in (("series", n_series, {"series_order": 10}), ("mc", n_mc, {"noise_samples": draws})):
        data = gm.sample(n, seed=1)
        tracemalloc.start()
        t0 = time.perf_counter()
        noise_averaged_moments(data.x, data.labels, 1, W, "tanh", 0.1, method=method, **kwargs)
        sec = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**30
        tracemalloc.stop()
        peaks[method] = peak
        rows.append([method, n, sec, peak, n * draws * p * 8 / 2**30 if method == "mc" else float("nan")])
    if verbose:
        print_table(
            f"building U, p = {p}, d = {d} (MC: {draws} draws per point, chunk_bytes = 128 MiB)",
            ["method", "n", "seconds", "peak traced GiB", "naive (n x draws x p) GiB"],
            rows,
        )
    return peaks


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


def _quick() -> bool:
    return os.environ.get("CLASSDIFF_BENCH_QUICK") == "1"


def ratios(sizes: dict[str, dict[str, int]] | None = None) -> list[dict]:
    """Rows for ``run_all.py``: target 1 (ratio = conservative speed-up / 1000) and target 2 (2 GiB / peak).
    ``sizes`` (tests) overrides the FULL / QUICK dictionaries."""
    quick = _quick()
    sizes = sizes or (QUICK if quick else FULL)
    g, m = sizes["gd"], sizes["memory"]
    with one_blas_thread():
        res = closed_form_vs_gd(**g, verbose=False)
    peaks = memory_of_u(**m, verbose=False)
    peak = max(peaks.values())
    note = f", quick: GD accuracy on a {g['gd_prefix_steps']}-step prefix" if quick else ""
    note_m = f", quick: n = {m['n_series']} (series) / {m['n_mc']} (MC)" if quick else ""
    return [
        {"benchmark": f"RF curves, 200 times, d={g['d']} p={g['p']} n={g['n']}: GD / (closed form incl. all "
                      f"moments) (GD err {res['err']:.1%}{note})",
         "ours": res["closed"], "reference": res["t_gd"], "unit": "s",
         "ratio": res["conservative"] / TARGET_SPEEDUP, "target": f">= {TARGET_SPEEDUP:g}x"},
        {"benchmark": f"U at p={m['p']}, d={m['d']}: peak traced memory, series and chunked MC{note_m}",
         "ours": peak, "reference": MEMORY_LIMIT_GIB, "unit": "GiB",
         "ratio": MEMORY_LIMIT_GIB / peak, "target": f"<= {MEMORY_LIMIT_GIB:g} GiB"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter GD prefix, smaller memory and MC runs")
    args = parser.parse_args()
    sizes = QUICK if (args.quick or _quick()) else FULL
    with one_blas_thread():
        closed_form_vs_gd(**sizes["gd"])
    memory_of_u(**sizes["memory"])
    monte_carlo_effect(**sizes["mc"])


if __name__ == "__main__":
    main()
