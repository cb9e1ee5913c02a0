"""Spectrum figures (issue 4): theory density vs sampling + eigvalsh, side by side in one run.

Run: .venv/bin/python benchmarks/bench_spectrum.py [--quick]
Targets: full density on 1000 lambda points for K = 2 in <= 1 s on 2 cores; >= 20x faster than
numpy.linalg.eigvalsh of one sampled U at p = 4000, with the same or better accuracy (W1/width) against a larger
sampled matrix (p = 6000, or p = 3000 vs 1500 with --quick).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy.integrate import cumulative_trapezoid

sys.path.insert(0, str(Path(__file__).parent))
from _table import best_time, print_table

MIXTURE = {"mixture.weights": [0.6, 0.4], "mixture.variances": [0.5, 1.5], "mixture.centroid_norms": [0.0, 0.0],
           "model.psi_p": 2.0, "model.psi_n": 1.5, "model.time": 0.1, "theory.n_lambda": 1000}


def _w1(cdf_grid: np.ndarray, cdf: np.ndarray, ev: np.ndarray) -> float:
    grid = np.unique(np.concatenate([cdf_grid, ev]))
    f = np.interp(grid, cdf_grid, cdf)
    emp = np.searchsorted(np.sort(ev), grid, side="right") / ev.size
    return float(np.trapezoid(np.abs(f - emp), grid) / (ev.max() - ev.min()))


def ratios(quick: bool = False) -> list[dict]:
    from classdiff.config import Config
    from classdiff.spectrum import FeatureSpectrum
    from classdiff.spectrum_sampling import sample_ge_covariance

    d_small, d_large = (750, 1500) if quick else (2000, 3000)
    cfg = Config().with_overrides(MIXTURE | {"mixture.dim": d_small})
    spec = FeatureSpectrum(n_lambda=1000).fit(cfg)
    t_theory = best_time(lambda: FeatureSpectrum(n_lambda=1000).fit(cfg), repeats=3)
    U, _ = sample_ge_covariance(cfg, seed=1)
    t0 = time.perf_counter()
    ev_small = np.linalg.eigvalsh(U)
    t_eig = time.perf_counter() - t0
    del U
    U_big, _ = sample_ge_covariance(cfg, seed=2, dim=d_large)
    ev_big = np.linalg.eigvalsh(U_big)
    del U_big
    # theory CDF and the small sample's CDF, each against the large sample
    cdf = cumulative_trapezoid(spec.density_, spec.lambda_, initial=0.0)
    cdf /= cdf[-1]
    w_theory = _w1(spec.lambda_, cdf, ev_big)
    srt = np.sort(ev_small)
    w_sample = _w1(srt, np.arange(1, srt.size + 1) / srt.size, ev_big)
    p_small, p_large = ev_small.size, ev_big.size
    return [
        {"benchmark": "theory density, K=2, 1000 points", "ours": t_theory, "reference": 1.0, "unit": "s",
         "ratio": 1.0 / t_theory, "target": "<= 1 s"},
        {"benchmark": f"theory vs eigvalsh(U) at p={p_small}", "ours": t_theory, "reference": t_eig, "unit": "s",
         "ratio": t_eig / t_theory, "target": ">= 20x"},
        {"benchmark": f"W1/width vs sampled p={p_large}: theory | sample p={p_small}", "ours": w_theory,
         "reference": w_sample, "unit": "", "ratio": w_sample / w_theory, "target": ">= 1 (same or better)"},
    ]


def main() -> None:
    quick = "--quick" in sys.argv
    rows = ratios(quick)
    print_table("spectrum of U: theory vs sampled matrices",
                ["benchmark", "ours", "reference", "unit", "ratio", "target"],
                [[r["benchmark"], r["ours"], r["reference"], r["unit"], r["ratio"], r["target"]] for r in rows])


if __name__ == "__main__":
    main()
