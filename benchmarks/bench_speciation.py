"""Backward-diffusion throughput for the speciation measurements (issue 5), back ends side by side.

Run: .venv/bin/python benchmarks/bench_speciation.py [--full] [--threads 2]
Target: 10,000 trajectories x 1,000 Euler–Maruyama steps at d = 1024, K = 2 (exact mixture score) in <= 60 s
on 2 cores. On a shared machine the wall time depends on the load; the CPU time summed over threads is
reported too (on an idle 2-core machine the wall time lies between CPU/2 and CPU). Without ``--full`` every back end runs 10,000 x ``--steps`` (default 50) steps and the full time is
extrapolated linearly (the cost per step is constant); ``--full`` runs the fastest float64 back end for real.
A second table checks that float32 changes nothing: per-class phi_c(t) from a small cloning run in float32
and in float64 (different noise streams), compared with the exact theory curve in units of the bootstrap error.
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
from classdiff.backward import integrate, sample_initial, time_grid
from classdiff.mixture import GaussianMixture, make_centroids


def mixture(d: int, weights=(0.5, 0.5)) -> GaussianMixture:
    return GaussianMixture(list(weights), make_centroids(d, [1.0, 1.0], "antipodal", 0), [1.0, 1.0])


def run_once(gm, n, steps, backend, dtype, full_steps=1000):
    grid = time_grid(6.0, 1e-3, full_steps)[: steps + 1]
    x0 = sample_initial(gm, n, 6.0, seed=0)
    c0, t0 = time.process_time(), time.perf_counter()
    integrate(gm, x0, grid, "euler_maruyama", seed=0, backend=backend, dtype=dtype, device="cpu")
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--no-check", action="store_true", help="skip the float32-vs-float64 cloning comparison")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    gm = mixture(args.dim)
    rows = []
    configs = [("numpy", "float64"), ("torch", "float64"), ("torch", "float32")]
    for backend, dtype in configs:
        t, cpu = run_once(gm, args.n, args.steps, backend, dtype)
        rows.append([backend, dtype, args.steps, t, t * 1000 / args.steps, cpu * 1000 / args.steps])
    print(f"load average before the runs: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print_table(
        f"Euler–Maruyama, exact score, N = {args.n}, d = {args.dim}, K = 2, {args.threads} torch threads",
        ["backend", "dtype", "steps run", "wall s", "wall s / 1000 steps", "CPU s / 1000 steps (all threads)"],
        rows,
    )
    if args.full:
        best = min(rows[:2], key=lambda r: r[3])
        t, cpu = run_once(gm, args.n, 1000, best[0], best[1])
        print_table("full size", ["backend", "dtype", "steps", "wall s", "CPU s"], [[best[0], best[1], 1000, t, cpu]])
    if args.no_check:
        return

    from classdiff.speciation import commitment_curves, simulate_commitment

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
