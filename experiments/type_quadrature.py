"""Convergence of the feature-type quadrature below the generalization bulk (docs/theory.md §4.1).

For each setting, the trapezoid and Gauss–Hermite rules at several budgets are compared with a trapezoid
reference of many more nodes: KS distance of the CDF over the region below the generalization bulk and L1
distance of the density smoothed at a Cauchy half-width of 1% of that region (both relative to its mass).
The region is the one below the generalization bulk of the default fit (Gauss–Hermite, 48 nodes).

    PYTHONPATH=src python experiments/type_quadrature.py [--settings a,b] [--reference 1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

from classdiff.core.config import Config
from classdiff.theory.spectrum import FeatureSpectrum, types_from_config
from classdiff.theory.type_quadrature import lower_region, quadrature_convergence

BASE = {"mixture.dim": 300, "model.psi_p": 2.0, "model.psi_n": 1.5, "model.time": 0.1}
SETTINGS = {
    # the setting of issue 19 (antipodal, norms 2, psi_p 1.5, psi_n 2, t 1)
    "antipodal-m2-t1": {"mixture.dim": 300, "mixture.weights": [0.5, 0.5], "mixture.variances": [1.0, 1.0],
                        "mixture.centroid_norms": [2.0, 2.0], "mixture.geometry": "antipodal",
                        "model.psi_p": 1.5, "model.psi_n": 2.0, "model.time": 1.0},
    # the centroid cases of tests/test_spectrum.py
    "K2-imbalanced-centroids": BASE | {"mixture.weights": [0.9, 0.1], "mixture.variances": [0.5, 1.5],
                                       "mixture.centroid_norms": [1.0, 1.0], "mixture.geometry": "antipodal"},
    "K3-norm2": BASE | {"mixture.weights": [0.6, 0.3, 0.1], "mixture.variances": [0.5, 1.0, 1.5],
                        "mixture.centroid_norms": [0.0, 0.0, 2.0], "mixture.geometry": "orthogonal"},
    # a rank-2 type law (two orthogonal centroids)
    "K2-orthogonal-m2": BASE | {"mixture.weights": [0.5, 0.5], "mixture.variances": [1.0, 1.0],
                                "mixture.centroid_norms": [2.0, 2.0], "mixture.geometry": "orthogonal"},
}
RULES = {"trapezoid": (64, 128, 256, 512), "gauss-hermite": (48, 192, 768)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--reference", type=int, default=1024)
    ap.add_argument("--resolution", type=float, default=0.01)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    table = {}
    print(f"{'setting':26s} {'rule':14s} {'nodes':>6s} {'types':>6s} {'KS fit':>8s} {'L1 smooth':>10s} {'s':>6s}")
    for name in args.settings.split(","):
        cfg = Config().with_overrides(SETTINGS[name])
        # one region for both rules: below the generalization bulk of the default (Gauss–Hermite 48) fit
        default = FeatureSpectrum(n_lambda=400, n_scan=300, outliers=False).fit(types_from_config(cfg))
        if len(default.edges_) < 2:
            print(f"{name:26s} one bulk {default.edges_.round(4).tolist()}: nothing below the generalization bulk")
            table[name] = {"rows": [], "edges": default.edges_.tolist()}
            continue
        top = lower_region(default)
        rows = []
        for rule, nodes in RULES.items():
            def make(n: int, rule: str = rule, cfg: Config = cfg):
                r = "trapezoid" if n == args.reference else rule
                return types_from_config(cfg.with_overrides({"theory.type_rule": r}), n_nodes=n)
            errs, info = quadrature_convergence(make, nodes, args.reference, resolution=args.resolution,
                                               region_top=top)
            for e in errs:
                print(f"{name:26s} {rule:14s} {e.n_nodes:6d} {e.n_types:6d} {e.ks_fit:8.4f} {e.l1:10.4f} {e.seconds:6.1f}",
                      flush=True)
                rows.append({"rule": rule} | e.to_dict())
        print(f"{'':26s} region (0, {info['hi']:.4g}), mass {info['mass']:.4f}, half-width {info['eps']:.2e}, "
              f"reference {info['reference_types']} types", flush=True)
        table[name] = {"rows": rows, **info}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(table, fh, indent=1)


if __name__ == "__main__":
    main()
