"""Per-class tau_gen, tau_mem: isotropic and covariance-aware theory against the exact RF dynamics, on Gaussian
surrogates of Fashion-MNIST classes and on the real pixels (``docs/theory.md`` §8).

For each setting (classes, training counts, d, psi_p, t):

* theory, isotropic: the classes' centroids and variances tr(Sigma_c)/d;
* theory, covariance-aware: the same centroids and the full class covariances
  (:func:`classdiff.theory.audit.predict_with_covariances`);
* exact RF dynamics (closed-form gradient flow, :func:`classdiff.rf.real_data.real_data_dynamics`) on a Gaussian
  surrogate training set x ~ N(mu_c, Sigma_c) (same centroids and covariances), over ``--seeds`` seeds (each seed
  draws its training and test subsets from a pool of 4 max(counts) + 500 surrogate points per class, and W);
* the same on real images of the classes, over seeds.

The measured times are summarised over the seeds (geometric mean and 95% Student t interval,
:func:`classdiff.core.seed_statistics.summarize_times`); ``pooled`` is the read-off of the seed-averaged curves,
which is what the theories (deterministic equivalents of the expected curves) predict. A class's time can vary
by a factor 2 between seeds where its gap is small (Trouser, final gap about 0.02 against a loss of 0.22), so
single-seed references mislead. Orders are claimed only where the intervals separate, and each theory's order is
scored on those pairs (:func:`classdiff.core.readoff.pairwise_agreement`).

mu_c, Sigma_c are those of all training images of the class (model space [-1, 1]; 2x2-pooled for d = 196), the
centroids in the pixels' own coordinates, as the RF model sees them (``--centred``: centred by the
count-weighted mean, as before 2026-12-07). The table prints each time and the theory / surrogate-dynamics ratio.
Usage:

    PYTHONPATH=src python experiments/covariance_timescales.py --out /tmp/covtimes.json
"""

from __future__ import annotations

import argparse
import time as clock
from pathlib import Path

import numpy as np

from classdiff.core.config import Config
from classdiff.core.io import write_json_atomic
from classdiff.core.readoff import pairwise_agreement
from classdiff.core.results import is_reached, reached
from classdiff.core.seed_statistics import paired_agreement, paired_order_text
from classdiff.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist, to_model_space
from classdiff.data.mixture import GaussianMixture
from classdiff.rf.real_data import real_data_dynamics
from classdiff.theory.audit import predict_with_covariances
from classdiff.theory.covariance_types import spiked_covariance
from classdiff.theory.timescales import class_timescales_for_mixture

#: (classes, training counts, d, psi_p, t)
SETTINGS = [
    ((8, 1), (98, 98), 196, 2.0, 0.1),
    ((8, 1), (147, 49), 196, 2.0, 0.1),
    ((8, 1), (49, 147), 196, 2.0, 0.1),
    ((8, 1), (98, 98), 196, 2.0, 1.0),
    ((8, 1), (98, 98), 196, 4.0, 0.1),
    ((0, 7), (98, 98), 196, 2.0, 0.1),
    ((8, 1), (392, 392), 784, 2.0, 0.1),
    ((8, 1), (24, 8), 784, 2.0, 0.01),  # the classes, counts and RF settings of experiments/fashion_memorize_cpu.toml
]


def images(data, dim: int) -> tuple[np.ndarray, np.ndarray]:
    x = to_model_space(data.train_images).astype(np.float64)[:, 0]
    if dim == 196:
        x = x.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4))
    return x.reshape(len(x), -1), np.asarray(data.train_labels)


def setting(data, index: int, seeds: int) -> tuple:
    """SETTINGS[index] with the images of its classes and its base config: (classes, counts, dim, psi_p, t, x, y,
    base)."""
    classes, counts, dim, psi_p, t = SETTINGS[index]
    x, y = images(data, dim)
    sel = np.isin(y, classes)
    base = Config().with_overrides({"model.psi_p": psi_p, "model.time": t, "training.seeds": seeds})
    return classes, counts, dim, psi_p, t, x[sel], y[sel], base


def class_covariance(x: np.ndarray, rank: int | None = None) -> np.ndarray:
    """The class's empirical covariance, or its spiked representation (top ``rank`` + floor) when rank is given."""
    cov = np.cov(x.T)
    if rank is None:
        return cov
    sc = spiked_covariance(cov, rank)
    return sc.floor * np.eye(cov.shape[0]) + (sc.vectors * sc.strengths) @ sc.vectors.T


def surrogate(x: np.ndarray, y: np.ndarray, classes, n_per_class: int, seed: int,
              rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n_per_class Gaussian points N(mu_c, Sigma_c) per class (labels as in y); Sigma_c the class's full
    covariance, or its spiked representation when ``rank`` is given."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0F]))
    xs, ys = [], []
    for c in classes:
        xc = x[y == c]
        ev, vec = np.linalg.eigh(class_covariance(xc, rank))
        xs.append(xc.mean(axis=0) + rng.standard_normal((n_per_class, x.shape[1])) @ (vec * np.sqrt(np.maximum(ev, 0))).T)
        ys.append(np.full(n_per_class, c))
    return np.concatenate(xs), np.concatenate(ys)


def times_of(dyn: dict) -> list[dict]:
    keys = ("tau_gen", "tau_mem", "tau_gen_seeds", "tau_mem_seeds", "tau_gen_summary", "tau_mem_summary",
            "tau_gen_pooled", "tau_mem_pooled")
    return [{k: c[k] for k in keys} for c in dyn["classes"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--settings", default=None, help="comma-separated indices into SETTINGS (default all)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--centred", action="store_true", help="centre the theories' centroids by the weighted mean")
    parser.add_argument("--hermite-degree", type=int, default=1, choices=(1, 2, 3),
                        help="2 or 3: the covariance-aware theory also carries the Hermite blocks up to that degree "
                             "(docs/theory.md §8.9, §8.10)")
    parser.add_argument("--hermite-rank", default="8",
                        help="top spikes per class in the Hermite blocks: one integer, or one per degree 2, 3")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    try:
        ranks = [int(v) for v in args.hermite_rank.split(",")]
    except ValueError:
        parser.error(f"--hermite-rank {args.hermite_rank!r}: integers, comma-separated")
    hermite_rank = ranks[0] if len(ranks) == 1 else ranks
    data = load_fashion_mnist(find_fashion_mnist())
    chosen = range(len(SETTINGS)) if args.settings is None else [int(v) for v in args.settings.split(",")]
    rows = []
    fmt = lambda v: f"{reached(v):.4g}" if is_reached(v) else "n.r."  # noqa: E731
    print(f"{'#':>2} {'classes':>7} {'counts':>9} {'d':>4} {'psi_p':>5} {'t':>4} | class  quantity: iso  cov  "
          "surrogate-RF [95% interval] pooled  real-RF [interval]  (iso/sur, cov/sur, cov inside the interval)")
    for i in chosen:
        classes, counts, dim, psi_p, t, x, y, base = setting(data, i, args.seeds)
        t0 = clock.perf_counter()
        cov = predict_with_covariances(x, y, classes, counts, base, rank=args.rank, centre=args.centred,
                                       hermite_degree=args.hermite_degree, hermite_rank=hermite_rank)
        t_cov = clock.perf_counter() - t0
        rho = np.asarray(counts, float) / sum(counts)
        mus = np.stack([x[y == c].mean(axis=0) for c in classes])
        mix = GaussianMixture(rho, mus - rho @ mus if args.centred else mus, [float(np.trace(np.cov(x[y == c].T)) / dim) for c in classes])
        model = base.with_overrides({"model.psi_n": sum(counts) / dim}).model
        iso = class_timescales_for_mixture(mix, model, base.theory, base.training, labels=list(classes))
        sx, sy = surrogate(x, y, classes, 4 * max(counts) + 500, seed=i)
        t0 = clock.perf_counter()
        dyn_s = real_data_dynamics(sx, sy, classes, counts, base, test_per_class=500)
        dyn_r = real_data_dynamics(x, y, classes, counts, base, test_per_class=500)
        t_dyn = clock.perf_counter() - t0
        row = {"setting": i, "classes": list(classes), "counts": list(counts), "dim": dim, "psi_p": psi_p, "time": t,
               "isotropic": [{"tau_gen": c.tau_gen, "tau_mem": c.tau_mem} for c in iso.classes],
               "covariance_aware": [{"tau_gen": c.tau_gen, "tau_mem": c.tau_mem} for c in cov.timescales.classes],
               "surrogate_dynamics": times_of(dyn_s), "real_dynamics": times_of(dyn_r),
               "orders": {"isotropic": [iso.generalization_order, iso.memorization_order],
                          "covariance_aware": [cov.generalization_order, cov.memorization_order],
                          "surrogate_dynamics": [dyn_s["generalization_order"], dyn_s["memorization_order"]],
                          "real_dynamics": [dyn_r["generalization_order"], dyn_r["memorization_order"]]},
               "orders_with_intervals": {"surrogate_dynamics": dyn_s["orders_with_intervals"],
                                         "real_dynamics": dyn_r["orders_with_intervals"]},
               "seconds": {"covariance_theory": t_cov, "dynamics": t_dyn}}
        row["agreement"] = {
            theory: {q: pairwise_agreement(row["orders_with_intervals"][ref][q], row["orders"][theory][k])
                     for k, q in enumerate(("tau_gen", "tau_mem"))}
            for theory in ("isotropic", "covariance_aware") for ref in ("surrogate_dynamics",)}
        # the classes of one seed share W and the subsets: the order of each pair from its seed-by-seed ratio
        row["orders_paired"] = {"surrogate_dynamics": dyn_s["orders_paired"], "real_dynamics": dyn_r["orders_paired"]}
        row["agreement_paired"] = {
            f"{theory} vs {ref}": {q: paired_agreement(row["orders_paired"][ref][q], row["orders"][theory][k])
                                   for k, q in enumerate(("tau_gen", "tau_mem"))}
            for theory in ("isotropic", "covariance_aware") for ref in ("surrogate_dynamics", "real_dynamics")}
        rows.append(row)
        ratio = lambda a, b: f"{reached(a) / reached(b):.2f}" if is_reached(a) and is_reached(b) else "-"  # noqa: E731

        def summary(s: dict) -> str:
            lo, hi = s["interval"]
            return f"{fmt(s['estimate'])} [{lo:.4g}, {hi:.4g}]"

        for c, lab in enumerate(classes):
            for q in ("tau_gen", "tau_mem"):
                vi, vc = row["isotropic"][c][q], row["covariance_aware"][c][q]
                ss, sr = row["surrogate_dynamics"][c][f"{q}_summary"], row["real_dynamics"][c][f"{q}_summary"]
                lo, hi = ss["interval"]
                inside = "yes" if is_reached(vc) and lo <= reached(vc) <= hi else "no"
                print(f"{i:>2} {list(classes)!s:>7} {list(counts)!s:>9} {dim:>4} {psi_p:>5} {t:>4} | {lab:>5} "
                      f"{q:>8}: {fmt(vi)}  {fmt(vc)}  {summary(ss)} {fmt(row['surrogate_dynamics'][c][f'{q}_pooled'])}"
                      f"  {summary(sr)}  ({ratio(vi, ss['estimate'])}, {ratio(vc, ss['estimate'])}, {inside})",
                      flush=True)
        resolved = {q: row["orders_with_intervals"]["surrogate_dynamics"][q]["order"] for q in ("tau_gen", "tau_mem")}
        print(f"   orders (gen, mem): {row['orders']}", flush=True)
        print(f"   surrogate orders with intervals: {resolved}; agreement (agree/pairs): "
              + ", ".join(f"{th} {q} {a['agree']}/{a['pairs']}" for th, aa in row["agreement"].items()
                          for q, a in aa.items())
              + f"  [cov theory {t_cov:.1f} s, dynamics {t_dyn:.1f} s]", flush=True)
        for ref in ("surrogate_dynamics", "real_dynamics"):
            print(f"   paired tau_mem order, {ref}: {paired_order_text(row['orders_paired'][ref]['tau_mem'])}; "
                  "agreement: " + ", ".join(f"{th} {a['tau_mem']['agree']}/{a['tau_mem']['pairs']}"
                                            for th, a in row["agreement_paired"].items() if th.endswith(ref)),
                  flush=True)
        if args.out:
            write_json_atomic(Path(args.out), {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
