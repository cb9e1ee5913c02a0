"""How far from isotropic are Fashion-MNIST classes? (docs/unet_memorization.md §3)

For each class: tr(Sigma_c)/d, the top eigenvalue and the share of the trace in the top 1 and top 10 eigenvalues,
the effective rank (tr Sigma)^2 / tr(Sigma^2), and the spread over Gaussian feature vectors w of the pre-activation
variance w^T Sigma_c w / d (which concentrates at tr(Sigma_c)/d for an isotropic class). Usage:

    PYTHONPATH=src python experiments/class_covariance_stats.py --classes 1,8
"""

from __future__ import annotations

import argparse

import numpy as np

from classdiff.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist, to_model_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", default="1,8", help="comma-separated labels (default 1,8)")
    parser.add_argument("--features", type=int, default=2000, help="Gaussian feature vectors w (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_fashion_mnist(find_fashion_mnist())
    x = to_model_space(data.train_images).reshape(len(data.train_images), -1).astype(np.float64)
    d = x.shape[1]
    rng = np.random.default_rng(args.seed)
    w = rng.standard_normal((args.features, d))
    print(f"{'class':>5} {'n':>5} {'tr/d':>7} {'top eig':>8} {'top1':>6} {'top10':>6} {'eff.rank':>8} "
          f"{'wSw/d mean':>10} {'cv':>5}")
    for c in (int(v) for v in args.classes.split(",")):
        xc = x[data.train_labels == c]
        ev = np.linalg.eigvalsh(np.cov(xc.T))[::-1]
        tr = ev.sum()
        q = np.einsum("ij,jk,ik->i", w, np.cov(xc.T), w) / d
        print(f"{c:>5} {len(xc):>5} {tr / d:>7.4f} {ev[0]:>8.2f} {ev[0] / tr:>6.1%} {ev[:10].sum() / tr:>6.1%} "
              f"{tr ** 2 / (ev ** 2).sum():>8.1f} {q.mean():>10.4f} {q.std() / q.mean():>5.2f}")


if __name__ == "__main__":
    main()
