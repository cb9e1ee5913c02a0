"""Covariance-aware spectrum against sampled feature matrices of Gaussian surrogates of Fashion-MNIST classes.

For the chosen classes, take the empirical centroid mu_c and covariance Sigma_c of all training images of the
class (model space [-1, 1]; at d = 196 the images are 2x2 average-pooled to 14 x 14). Draw a Gaussian surrogate
training set x ~ N(mu_c, Sigma_c) with n_c = rho_c psi_n d points, tanh random features W (p = psi_p d), and the
exact noise-averaged U (Mehler series). Compare its eigenvalues with

* the covariance-aware theory (:func:`classdiff.theory.covariance_types.covariance_feature_types`, ``docs/theory.md``
  §8): W1/width of the bulk (the metric of the spectrum tests) and the predicted outliers against the sampled top
  eigenvalues;
* the isotropic theory of the same classes (variance tr(Sigma_c)/d, same centroids).

and time the theory at each d (the solver must not grow like a p x p eigendecomposition). Usage:

    PYTHONPATH=src python experiments/covariance_spectrum.py --dims 196,784 --times 0.1,1.0
"""

from __future__ import annotations

import argparse
import time as clock
from pathlib import Path

import numpy as np

from classdiff.core.io import write_json_atomic
from classdiff.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist, to_model_space
from classdiff.rf.model import noise_averaged_moments
from classdiff.theory.covariance_types import covariance_feature_types
from classdiff.theory.equations import feature_types
from classdiff.theory.spectrum import FeatureSpectrum, wasserstein_over_width


def class_images(images: np.ndarray, labels: np.ndarray, cls: int, dim: int) -> np.ndarray:
    """(n_c, dim) float64 images of class ``cls`` in model space, 2x2-pooled when dim = 196."""
    x = to_model_space(images[labels == cls]).astype(np.float64)[:, 0]
    if dim == 196:
        x = x.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4))
    elif dim != 784:
        raise ValueError(f"dim = {dim!r}: must be 196 or 784")
    return x.reshape(len(x), -1)


def run(dim: int, t: float, args: argparse.Namespace, data) -> dict:
    classes = [int(c) for c in args.classes.split(",")]
    rho = np.array([float(w) for w in args.weights.split(",")])
    mus, covs = [], []
    for c in classes:
        x = class_images(data.train_images, data.train_labels, c, dim)
        mus.append(x.mean(axis=0))
        covs.append(np.cov(x.T))
    mu = np.stack(mus)
    p, n = round(args.psi_p * dim), round(args.psi_n * dim)
    counts = np.round(rho * n).astype(int)
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, dim]))
    pts, labels = [], []
    for c, (m, cov) in enumerate(zip(mus, covs, strict=True)):
        ev, vec = np.linalg.eigh(cov)
        root = vec * np.sqrt(np.maximum(ev, 0.0))
        pts.append(m + rng.standard_normal((counts[c], dim)) @ root.T)
        labels.append(np.full(counts[c], c))
    x0, lab = np.concatenate(pts), np.concatenate(labels)
    W = rng.standard_normal((p, dim))
    t0 = clock.perf_counter()
    moments = noise_averaged_moments(x0, lab, len(classes), W, "tanh", t, method="series", series_order=8)
    U = sum(mo.U * (mo.count / counts.sum()) for mo in moments)
    sampled = np.linalg.eigvalsh(U)
    t_sample = clock.perf_counter() - t0
    frac = counts / counts.sum()
    out = {"dim": dim, "time": t, "p": p, "n": int(counts.sum()), "sample_seconds": t_sample}
    t0 = clock.perf_counter()
    ft = covariance_feature_types(frac, covs, mu, t, args.psi_p, args.psi_n, rank=args.rank, n_nodes=args.nodes,
                                  seed=args.seed)
    spec = FeatureSpectrum(n_lambda=400, n_scan=250).fit(ft)
    out["covariance_seconds"] = clock.perf_counter() - t0
    out["covariance_w1_over_width"] = wasserstein_over_width(spec, sampled)
    out["covariance_w1_full_over_width"] = wasserstein_over_width(spec, sampled, include_outliers=True)
    out["covariance_outliers"] = spec.outliers_[::-1].tolist()
    out["covariance_top_edge"] = float(spec.edges_[-1, 1])
    t0 = clock.perf_counter()
    iso = feature_types(frac, [np.trace(c) / dim for c in covs], mu, t, args.psi_p, args.psi_n, n_nodes=48)
    spec_iso = FeatureSpectrum(n_lambda=400, n_scan=250).fit(iso)
    out["isotropic_seconds"] = clock.perf_counter() - t0
    out["isotropic_w1_over_width"] = wasserstein_over_width(spec_iso, sampled)
    out["isotropic_w1_full_over_width"] = wasserstein_over_width(spec_iso, sampled, include_outliers=True)
    out["isotropic_outliers"] = spec_iso.outliers_[::-1].tolist()
    out["sampled_top"] = sampled[::-1][: max(len(spec.outliers_), 3) + 3].tolist()
    out["sampled_bulk_edges"] = [float(sampled[0]), float(sampled[-1 - len(spec.outliers_)])]
    out["curves"] = {"sampled": sampled, "covariance": (spec.lambda_, spec.density_),
                     "isotropic": (spec_iso.lambda_, spec_iso.density_), "outliers": spec.outliers_}
    return out


def plot(rows: list[dict], stem: Path) -> None:
    """Per (d, t): histogram of the sampled eigenvalues (log lambda) with the two theory densities, outliers as
    ticks (covariance-aware theory above, sampled below)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from classdiff.core.io import save_figure

    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.2), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        c = r["curves"]
        ev = c["sampled"]
        bins = np.geomspace(ev.min() * 0.9, ev.max() * 1.1, 60)
        # density in log lambda: rho(lambda) lambda
        ax.hist(ev, bins=bins, weights=np.full(ev.size, 1.0 / ev.size) / np.diff(np.log(bins))[0], color="0.8",
                label=f"sampled U (p = {r['p']})")
        for name, color in (("covariance", "C0"), ("isotropic", "C3")):
            lam, rho = c[name]
            ax.plot(lam, rho * lam, color=color, lw=1.2,
                    label=f"{name} theory, W1/w {r[name + '_w1_over_width']:.3f}")
        top = ax.get_ylim()[1]
        ax.plot(c["outliers"], np.full(len(c["outliers"]), 0.9 * top), "v", color="C0", ms=4)
        ax.plot(ev[::-1][: len(c["outliers"])], np.full(len(c["outliers"]), 0.8 * top), "^", color="0.4", ms=4)
        ax.set_xscale("log")
        ax.set_xlabel("eigenvalue of U")
        ax.set_ylabel("density in log eigenvalue")
        ax.set_title(f"d = {r['dim']}, t = {r['time']}", fontsize=9)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("Gaussian surrogates of Fashion-MNIST Trouser + Bag: spectrum of U (ticks: outliers, "
                 "theory / sampled)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", default="1,8", help="comma-separated labels (default 1,8: Trouser, Bag)")
    parser.add_argument("--weights", default="0.5,0.5", help="training fractions rho_c (default 0.5,0.5)")
    parser.add_argument("--dims", default="196,784")
    parser.add_argument("--times", default="0.1,1.0")
    parser.add_argument("--psi-p", type=float, default=1.0)
    parser.add_argument("--psi-n", type=float, default=1.0)
    parser.add_argument("--rank", type=int, default=16, help="spikes kept per class")
    parser.add_argument("--nodes", type=int, default=1024, help="Sobol type nodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--figure", default=None, help="write the figure (PNG + PDF) to this path stem")
    args = parser.parse_args()
    data = load_fashion_mnist(find_fashion_mnist())
    rows = []
    print(f"{'d':>4} {'t':>5} {'W1/w cov':>9} {'W1/w iso':>9} {'all cov':>8} {'all iso':>8} {'s cov':>6} {'s iso':>6} {'s sample':>8}  "
          "outliers theory | sampled top")
    for dim in (int(v) for v in args.dims.split(",")):
        for t in (float(v) for v in args.times.split(",")):
            r = run(dim, t, args, data)
            rows.append(r)
            th = ", ".join(f"{v:.3g}" for v in r["covariance_outliers"][:6])
            sa = ", ".join(f"{v:.3g}" for v in r["sampled_top"][:6])
            print(f"{dim:>4} {t:>5.2f} {r['covariance_w1_over_width']:>9.4f} {r['isotropic_w1_over_width']:>9.4f} "
                  f"{r['covariance_w1_full_over_width']:>8.4f} {r['isotropic_w1_full_over_width']:>8.4f} "
                  f"{r['covariance_seconds']:>6.1f} {r['isotropic_seconds']:>6.1f} {r['sample_seconds']:>8.1f}  "
                  f"[{len(r['covariance_outliers'])}] {th} | {sa}", flush=True)
    if args.figure:
        plot(rows, Path(args.figure))
    if args.out:
        for r in rows:
            r.pop("curves")
        write_json_atomic(Path(args.out), {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
