"""Backward-diffusion throughput for the speciation measurements (issue 5), back ends side by side.

Run: .venv/bin/python benchmarks/bench_speciation.py [--full] [--steps 50] [--threads 2] [--no-check]
Target: 10,000 trajectories x 1,000 Euler–Maruyama steps at d = 1024, K = 2 (exact mixture score) in <= 60 s
on 2 cores. Every one of the 10,000 x 1,024 coordinates is integrated (no reduction of the dimension).

The machine may be shared, so every row reports the wall time, the process CPU time summed over threads and
the 1-minute load average (as ``uptime`` prints it) just before and after the run; on an idle 2-core machine
the wall time of a 2-thread run lies between CPU/2 and CPU. Without ``--full`` every configuration runs
10,000 x ``--steps`` (default 50) steps and the full time is extrapolated linearly (the cost per step is
constant: a fixed grid, a fixed amount of work per step); ``--full`` also runs the full size for real.
A second table checks that float32 changes nothing: per-class phi_c(t) from a small cloning run in float32
and in float64 (different noise streams), compared with the exact theory curve in units of the bootstrap error.

``ratios()`` (for ``run_all.py``): the full-size time, measured, or with CLASSDIFF_BENCH_QUICK=1 extrapolated
from 50 steps, of the fastest back end (torch float32) and of the float64 reference (numpy), on 2 threads;
ratio = 60 s / time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import print_table
from classdiff.data.backward import integrate, sample_initial, time_grid
from classdiff.data.mixture import GaussianMixture, make_centroids

N_FULL, STEPS_FULL, DIM, TARGET_S = 10_000, 1000, 1024, 60.0


def mixture(d: int, weights=(0.5, 0.5)) -> GaussianMixture:
    return GaussianMixture(list(weights), make_centroids(d, [1.0, 1.0], "antipodal", 0), [1.0, 1.0])


def load() -> float:
    return os.getloadavg()[0]


def run_once(gm, n, steps, backend, dtype, threads, full_steps=STEPS_FULL) -> dict:
    """One integrate() call of n trajectories over the first ``steps`` steps of the full grid."""
    grid = time_grid(6.0, 1e-3, full_steps)[: steps + 1]
    x0 = sample_initial(gm, n, 6.0, seed=0)
    load0 = load()
    c0, t0 = time.process_time(), time.perf_counter()
    integrate(gm, x0, grid, "euler_maruyama", seed=0, backend=backend, dtype=dtype, device="cpu", threads=threads)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    scale = (full_steps / steps) * (N_FULL / n)
    return {"wall": wall, "cpu": cpu, "full_wall": wall * scale, "full_cpu": cpu * scale, "load0": load0,
            "load1": load()}


def ratios() -> list[dict]:
    """Rows for ``make bench``: time of 10,000 x 1,000 steps at d = 1024 (2 threads) against 60 s."""
    import torch

    quick = os.environ.get("CLASSDIFF_BENCH_QUICK") == "1"
    steps = 50 if quick else STEPS_FULL
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gm = mixture(DIM)
        rows = []
        for backend, dtype, what in (("torch", "float32", "fastest"), ("numpy", "float64", "float64 reference")):
            r = run_once(gm, N_FULL, steps, backend, dtype, threads=2)
            how = f"extrapolated from {steps} steps" if quick else "measured"
            rows.append({
                "benchmark": (f"EM 10k traj x 1000 steps, d=1024, K=2, {backend} {dtype} ({what}), 2 threads, {how}"
                              f" [CPU {r['full_cpu']:.0f} s, load {r['load0']:.1f}->{r['load1']:.1f}]"),
                "ours": r["full_wall"], "reference": TARGET_S, "unit": "s", "ratio": TARGET_S / r["full_wall"],
                "target": "<= 60 s on 2 cores", "cpu_s": r["full_cpu"], "load": [r["load0"], r["load1"]],
            })
        return rows
    finally:
        torch.set_num_threads(old)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="also run 10,000 x 1,000 steps for real")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=N_FULL)
    ap.add_argument("--dim", type=int, default=DIM)
    ap.add_argument("--no-check", action="store_true", help="skip the float32-vs-float64 cloning comparison")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    gm = mixture(args.dim)
    print(f"{os.cpu_count()} cores; load average before the runs: {load():.2f}")
    configs = [("numpy", "float64", 1), ("numpy", "float64", args.threads), ("torch", "float64", args.threads),
               ("torch", "float32", 1), ("torch", "float32", args.threads)]
    configs = list(dict.fromkeys(configs))
    rows = []
    for backend, dtype, threads in configs:
        r = run_once(gm, args.n, args.steps, backend, dtype, threads)
        rows.append([backend, dtype, threads, args.steps, r["wall"], r["full_wall"], r["full_cpu"],
                     f"{r['load0']:.2f}->{r['load1']:.2f}"])
    print_table(
        f"Euler–Maruyama, exact score, N = {args.n}, d = {args.dim}, K = 2; full = {N_FULL} x {STEPS_FULL} steps "
        f"(extrapolated); target <= {TARGET_S:.0f} s wall on 2 cores",
        ["backend", "dtype", "threads", "steps run", "wall s", "full: wall s", "full: CPU s (all threads)",
         "load (1 min)"],
        rows,
    )
    if args.full:
        rows = []
        for backend, dtype in (("torch", "float32"), ("numpy", "float64")):
            r = run_once(gm, N_FULL, STEPS_FULL, backend, dtype, args.threads)
            rows.append([backend, dtype, args.threads, STEPS_FULL, r["wall"], r["cpu"], TARGET_S / r["wall"],
                         f"{r['load0']:.2f}->{r['load1']:.2f}"])
        print_table(f"full size, measured: N = {N_FULL}, {STEPS_FULL} steps, d = {args.dim}",
                    ["backend", "dtype", "threads", "steps", "wall s", "CPU s", "60 s / wall", "load (1 min)"], rows)
    if args.no_check:
        return

    from classdiff.theory.speciation import commitment_curves, simulate_commitment

    gm_small = mixture(256, (0.9, 0.1))
    branch = np.linspace(3.5, 1.5, 9)
    theory = commitment_curves(gm_small, branch)
    rows = []
    for backend, dtype in (("numpy", "float64"), ("torch", "float32")):
        sim = simulate_commitment(gm_small, branch, 2000, 300, 6.0, 1e-3, seed=1, n_boot=200,
                                  backend=backend, dtype=dtype, device="cpu")
        half = 0.5 * (sim["hi"] - sim["lo"]) / 1.96
        z = np.abs(sim["phi"] - theory) / np.maximum(half, 1e-3)
        rows.append([backend, dtype, float(np.abs(sim["phi"] - theory).max()), float(np.nanmax(z))])
    print_table("float32 vs float64: cloning phi_c(t) vs exact theory (d = 256, rho = 0.9/0.1, N = 2000)",
                ["backend", "dtype", "max |phi - theory|", "max |z| (bootstrap sd)"], rows)


if __name__ == "__main__":
    main()
