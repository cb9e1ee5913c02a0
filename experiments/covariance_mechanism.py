"""Where the covariance-aware theory loses tau_mem (issue 16, ``docs/theory.md`` §8.5): a decomposition.

The covariance-aware theory writes each class covariance as Sigma_c = floor I + V_c diag(s_c) V_c^T
(:func:`classdiff.theory.covariance_types.spiked_covariance`) and keeps the spikes in the feature types (each
feature's variance w^T Sigma_c w / d) and, as outliers, in the spectrum; its loss model
(:class:`classdiff.theory.type_losses.TypeLossModel`) does not have the rank-S linear part
e^{-t} D_a W V_c diag(s_c)^{1/2} zeta of the features (zeta the sample's spike coordinates). This script runs the
exact closed-form RF gradient flow on the same classes with four sets of feature moments:

* ``exact``: the tanh features of Gaussian surrogate points x ~ N(mu_c, Sigma_c) (full, or spiked: rank r + floor);
* ``ge keep``: the Gaussian-equivalent features g = kappa0 + a o (e^{-t} W (x - mu) / sqrt d) + sqrt(v2) o omega,
  the per-feature constants taken at each feature's variance w^T Sigma_c w / d (all of the covariance kept);
* ``ge drop``: the same with x - mu projected off span V_c, so the spike coordinates are gone from the linear part
  (their variance stays in the constants): the model the theory solves;
* ``ge noise``: the dropped part replaced by independent noise of the same variance per feature;
* ``ge drop-centred``: ``ge drop`` without the class-mean features kappa0 (the centroid spikes), which the loss
  model leaves out as well.

If ``ge drop`` matches the theory and ``ge keep`` matches ``exact``, the loss model's error is the missing linear
spike part, and neither the Gaussian equivalence nor the spiked representation of Sigma_c. Usage:

    PYTHONPATH=src python experiments/covariance_mechanism.py --settings 0,1,2,3,4,5 --out /tmp/covmech.json

Each dynamics is run over ``--seeds`` seeds (default 8; subsets drawn from a pool of 4 max(n_c) + 500 surrogate
points per class) and reported as the geometric mean with its 95% interval, as in ``covariance_timescales``: with
2 seeds the Trouser's tau_mem moves by up to 35% (docs/theory.md §8.5).
"""

from __future__ import annotations

import argparse
import math
import sys
import time as clock
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from covariance_timescales import class_covariance, setting, surrogate

from classdiff.core.io import write_json_atomic
from classdiff.core.results import is_reached, reached
from classdiff.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from classdiff.data.process import signal_scale
from classdiff.rf import model as rf_model
from classdiff.rf.gaussian_equivalence import class_constants
from classdiff.rf.real_data import real_data_dynamics
from classdiff.theory.audit import predict_with_covariances
from classdiff.theory.covariance_types import spiked_covariance

MODES = ("keep", "drop", "noise", "drop-centred")


class _GEMoments:
    """Replaces RandomFeaturesScore._moments by the GE moments of the class each point belongs to (found by the
    point itself: the test moments are computed on batches, whose group labels are not classes)."""

    def __init__(self, points, labels, stats, basis, mode: str, activation: str, time: float) -> None:
        self.owner = {row.tobytes(): int(lab) for row, lab in zip(points, labels, strict=True)}
        self.stats, self.basis, self.mode, self.activation, self.time = stats, basis, mode, activation, time

    def __call__(self, est, x0, labels, n_groups, stream, classes=None):
        W = est.W_
        p, d = W.shape
        e_t = float(signal_scale(self.time))
        kernel = W @ W.T / d
        out = []
        for g in range(n_groups):
            xg = x0[labels == g]
            c = self.owner[xg[0].tobytes()]
            mu, cov = self.stats[c]
            k = class_constants(W, self.activation, self.time, mu, cov)
            dev = xg - mu
            rng = np.random.default_rng(np.random.SeedSequence([int(est.seed), int(stream), g, 0x6E1]))
            v2 = k["v2"]
            if self.mode != "keep":
                V = self.basis[c]
                dev = dev - (dev @ V) @ V.T
                if self.mode == "noise":  # the dropped linear variance as independent noise
                    proj = W @ V
                    v2 = v2 + (e_t * k["a"]) ** 2 * np.einsum("ir,rs,is->i", proj, V.T @ cov @ V, proj) / d
            kappa0 = 0.0 if self.mode == "drop-centred" else k["kappa0"]
            G = kappa0 + k["a"] * (e_t * dev @ W.T / math.sqrt(d)) + np.sqrt(v2) * rng.standard_normal((len(xg), p))
            U = G.T @ G / len(xg) + np.outer(k["b"], k["b"]) * kernel
            U.flat[:: p + 1] += k["s2"]
            out.append(rf_model.ClassMoments(U=U, V=k["b"][:, None] * W / math.sqrt(d), count=len(xg), stein=k["b"]))
        return out


def times(dyn: dict) -> list[dict]:
    """Per class: the geometric mean over the seeds of each time and its 95% interval (``*_interval``)."""
    return [{q: c[f"{q}_summary"]["estimate"] for q in ("tau_gen", "tau_mem")}
            | {f"{q}_interval": c[f"{q}_summary"]["interval"] for q in ("tau_gen", "tau_mem")}
            for c in dyn["classes"]]


def _cell(name: str, entry: dict, q: str) -> str:
    """``name value [lo, hi]`` of one predictor's time q for one class (the theory has no interval)."""
    v, iv = entry[q], entry.get(f"{q}_interval")
    text = f"{name} {v:.4g}" if is_reached(v) else f"{name} n.r."
    return text + (f" [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="0,1,2,3,4,5", help="indices into covariance_timescales.SETTINGS")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--centred", action="store_true", help="the theory's centroids centred by the weighted mean")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES), help=f"GE variants, comma-separated from {MODES}")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bad = [m for m in args.modes.split(",") if m not in MODES]
    if bad:
        parser.error(f"--modes: {bad} not among {MODES}")
    data = load_fashion_mnist(find_fashion_mnist())
    rows = []
    for i in (int(v) for v in args.settings.split(",")):
        classes, counts, dim, psi_p, t, x, y, base = setting(data, i, args.seeds)
        t0 = clock.perf_counter()
        theory = predict_with_covariances(x, y, classes, counts, base, rank=args.rank, centre=args.centred)
        row = {"setting": i, "classes": list(classes), "counts": list(counts), "dim": dim, "psi_p": psi_p, "time": t,
               "rank": args.rank, "theory": [{"tau_gen": reached(c.tau_gen), "tau_mem": reached(c.tau_mem)}
                                             for c in theory.timescales.classes]}
        basis = {j: spiked_covariance(np.cov(x[y == c].T), args.rank).vectors for j, c in enumerate(classes)}
        for name, rank in (("full", None), ("spiked", args.rank)):
            sx, sy = surrogate(x, y, classes, 4 * max(counts) + 500, seed=i, rank=rank)
            row[f"exact {name}"] = times(real_data_dynamics(sx, sy, classes, counts, base, test_per_class=500))
            stats = {j: (x[y == c].mean(axis=0), class_covariance(x[y == c], rank)) for j, c in enumerate(classes)}
            lab = {c: j for j, c in enumerate(classes)}
            for mode in args.modes.split(","):
                patch = _GEMoments(sx, [lab[int(v)] for v in sy], stats, basis, mode, base.model.activation, t)
                original = rf_model.RandomFeaturesScore._moments
                rf_model.RandomFeaturesScore._moments = lambda est, *a, patch=patch, **kw: patch(est, *a, **kw)
                try:
                    row[f"ge {mode} {name}"] = times(real_data_dynamics(sx, sy, classes, counts, base,
                                                                        test_per_class=500))
                finally:
                    rf_model.RandomFeaturesScore._moments = original
        row["seconds"] = clock.perf_counter() - t0
        rows.append(row)
        keys = [k for k in row if k == "theory" or k.startswith(("exact", "ge "))]
        print(f"setting {i}: classes {list(classes)}, counts {list(counts)}, d {dim}, psi_p {psi_p}, t {t} "
              f"({row['seconds']:.0f} s)")
        for q in ("tau_gen", "tau_mem"):
            for j, c in enumerate(classes):
                print(f"  {q} class {c}: " + "  ".join(_cell(k, row[k][j], q) for k in keys), flush=True)
        if args.out:
            write_json_atomic(Path(args.out), {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
