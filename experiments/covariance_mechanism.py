"""Where the covariance-aware theory loses tau_mem (issue 16, ``docs/theory.md`` §8.5, §8.8): a decomposition.

The covariance-aware theory writes each class covariance as Sigma_c = floor I + V_c diag(s_c) V_c^T
(:func:`classdiff.theory.covariance_types.spiked_covariance`) and keeps the spikes in the feature types (each
feature's variance w^T Sigma_c w / d) and, as outliers, in the spectrum; its loss model
(:class:`classdiff.theory.type_losses.TypeLossModel`) does not have the rank-S linear part
e^{-t} D_a W V_c diag(s_c)^{1/2} zeta of the features (zeta the sample's spike coordinates). This script runs the
exact closed-form RF gradient flow on the same classes with these sets of feature moments:

* ``exact``: the tanh features of Gaussian surrogate points x ~ N(mu_c, Sigma_c) (full, or spiked: rank r + floor);
* ``ge keep``: the Gaussian-equivalent features g = kappa0 + a o (e^{-t} W (x - mu) / sqrt d) + sqrt(v2) o omega,
  the per-feature constants taken at each feature's variance w^T Sigma_c w / d (all of the covariance kept);
* ``ge drop``: the same with x - mu projected off span V_c, so the spike coordinates are gone from the linear part
  (their variance stays in the constants): the model the theory solves;
* ``ge noise``: the dropped part replaced by independent noise of the same variance per feature;
* ``ge drop-centred``: ``ge drop`` without the class-mean features kappa0 (the centroid spikes), which the loss
  model leaves out as well;
* ``ge conditional``: the Gaussian equivalence applied to the bulk only, conditional on each point's spike
  coordinates V_c^T (x - mu_c) (:mod:`classdiff.rf.conditional_equivalence`): the constants are taken at the
  point's own pre-activation mean e^{-t} w . (mu_c + V_c V_c^T (x - mu_c)) / sqrt d, so the non-linearity in the
  spike coordinates (which every feature of the point shares) is kept exactly and only the bulk is linearised;
* ``ge keep-2``: ``ge keep`` plus the degree-2 Hermite term (c2/2) (dm^2 - E dm^2) of each point's spike
  pre-activation dm = e^{-t} w . V_c V_c^T (x - mu_c) / sqrt d (c2 = E sigma''(h) over the feature's full
  pre-activation), its variance c2^2 E[dm^2]^2 / 2 taken out of v2: how much of ``conditional`` the second degree
  carries;
* ``ge keep-3``: ``ge keep-2`` plus the degree-3 term (c3/6) s^3 He_3(dm/s), s^2 = E dm^2 and c3 = E sigma^(3)(h)
  (:func:`classdiff.rf.features.hermite_coefficient`), its variance c3^2 s^6 / 6 also taken out of v2.

If ``ge drop`` matches the theory and ``ge keep`` matches ``exact``, the loss model's error is the missing linear
spike part; if ``ge conditional`` matches ``exact`` and ``ge keep`` does not, it is the Gaussian equivalence's
treatment of the spike coordinates (the finding of docs/theory.md §8.8). Usage:

    PYTHONPATH=src python experiments/covariance_mechanism.py --settings 0,1,2,4,5 --seeds 16 \
        --modes keep,conditional --out /tmp/covmech.json                         # about 16 min
    PYTHONPATH=src python experiments/covariance_mechanism.py --settings 0,1,4 --modes keep,conditional,keep-2 \
        --out /tmp/covmech8.json --figure /tmp/spectra                           # about 8 min

Each dynamics is run over ``--seeds`` seeds (default 8; subsets drawn from a pool of 4 max(n_c) + 500 surrogate
points per class) and reported as the geometric mean with its 95% interval, as in ``covariance_timescales``: with
2 seeds the Trouser's tau_mem moves by up to 35% (docs/theory.md §8.5). All the models of a seed share its W and
subsets, so each is also compared with ``exact`` seed by seed (the "paired" ratios, geometric mean and interval),
which is far tighter than comparing the two intervals. ``--figure`` draws the first seed's spectra of U.
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

from classdiff.core.io import read_json, write_json_atomic
from classdiff.core.results import NOT_REACHED, is_reached, reached
from classdiff.core.seed_statistics import paired_agreement, paired_order, paired_order_text, summarize_times
from classdiff.data.fashion_mnist import CLASS_NAMES, find_fashion_mnist, load_fashion_mnist
from classdiff.data.process import signal_scale
from classdiff.rf import model as rf_model
from classdiff.rf.conditional_equivalence import ConstantTable, conditional_group_moments
from classdiff.rf.features import hermite_coefficient, hermite_e
from classdiff.rf.gaussian_equivalence import class_constants
from classdiff.rf.real_data import real_data_dynamics
from classdiff.theory.audit import predict_with_covariances
from classdiff.theory.covariance_types import spiked_covariance

MODES = ("keep", "drop", "noise", "drop-centred", "conditional", "keep-2", "keep-3")


def _spike_variance(proj: np.ndarray, V: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Each feature's data variance within span V, w^T V V^T Sigma V V^T w / d (p,), from proj = W V (p, r)."""
    return np.einsum("ir,rs,is->i", proj, V.T @ cov @ V, proj) / V.shape[0]


class _GEMoments:
    """Replaces RandomFeaturesScore._moments by the GE moments of the class each point belongs to (found by the
    point itself: the test moments are computed on batches, whose group labels are not classes)."""

    def __init__(self, points, labels, stats, basis, mode: str, activation: str, time: float) -> None:
        self.owner = {row.tobytes(): int(lab) for row, lab in zip(points, labels, strict=True)}
        self.stats, self.basis, self.mode, self.activation, self.time = stats, basis, mode, activation, time
        self.tables = {c: ConstantTable(activation, time) for c in stats}

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
            rng = np.random.default_rng(np.random.SeedSequence([int(est.seed), int(stream), g, 0x6E1]))
            if self.mode == "conditional":
                out.append(self._conditional(W, xg, c, mu, cov, rng))
                continue
            k = class_constants(W, self.activation, self.time, mu, cov)
            dev = xg - mu
            v2 = k["v2"]
            G_extra = 0.0
            if self.mode in ("keep-2", "keep-3"):  # + the Hermite terms of degree 2..n of the spike part, out of v2
                proj = W @ self.basis[c]
                spike_pre = e_t * (dev @ self.basis[c]) @ proj.T / math.sqrt(d)  # (m, p) delta m of each point
                var_sp = e_t**2 * _spike_variance(proj, self.basis[c], cov)  # s^2 = E dm^2 per feature
                feature_var = np.einsum("ij,ij->i", W @ cov, W) / d
                for n in range(2, int(self.mode[-1]) + 1):
                    c_n = hermite_coefficient(self.activation, self.time, feature_var, e_t * W @ mu / math.sqrt(d),
                                              order=n)
                    # (c_n / n!) s^n He_n(dm / s), of variance c_n^2 s^{2n} / n!
                    G_extra = G_extra + c_n * hermite_e(n, spike_pre, var_sp) / math.factorial(n)
                    v2 = v2 - c_n**2 * var_sp**n / math.factorial(n)
                v2 = np.maximum(v2, 0.0)
            elif self.mode != "keep":
                V = self.basis[c]
                dev = dev - (dev @ V) @ V.T
                if self.mode == "noise":  # the dropped linear variance as independent noise
                    v2 = v2 + (e_t * k["a"]) ** 2 * _spike_variance(W @ V, V, cov)
            kappa0 = 0.0 if self.mode == "drop-centred" else k["kappa0"]
            G = (kappa0 + k["a"] * (e_t * dev @ W.T / math.sqrt(d)) + G_extra
                 + np.sqrt(v2) * rng.standard_normal((len(xg), p)))
            U = G.T @ G / len(xg) + np.outer(k["b"], k["b"]) * kernel
            U.flat[:: p + 1] += k["s2"]
            out.append(rf_model.ClassMoments(U=U, V=k["b"][:, None] * W / math.sqrt(d), count=len(xg), stein=k["b"]))
        return out

    def _conditional(self, W, xg, c, mu, cov, rng) -> rf_model.ClassMoments:
        """The conditional GE of :mod:`classdiff.rf.conditional_equivalence` for one class's points."""
        p, d = W.shape
        U, stein = conditional_group_moments(W, self.activation, self.time, mu, cov, self.basis[c], xg - mu,
                                             rng.standard_normal((len(xg), p)), self.tables[c])
        return rf_model.ClassMoments(U=U, V=stein[:, None] * W / math.sqrt(d), count=len(xg), stein=stein)


def times(dyn: dict) -> list[dict]:
    """Per class: the geometric mean over the seeds of each time, its 95% interval (``*_interval``) and the
    per-seed values (``*_seeds``)."""
    return [{q: c[f"{q}_summary"]["estimate"] for q in ("tau_gen", "tau_mem")}
            | {f"{q}_interval": c[f"{q}_summary"]["interval"] for q in ("tau_gen", "tau_mem")}
            | {f"{q}_seeds": c[f"{q}_seeds"] for q in ("tau_gen", "tau_mem")}
            for c in dyn["classes"]]


def paired_ratio(model: dict, reference: dict, q: str) -> dict:
    """Seed-by-seed ratio model / reference of time q (both runs share each seed's W and subsets), summarized as
    a geometric mean with its 95% interval; seeds where either is not reached are left out."""
    ratios = [a / b if is_reached(a) and is_reached(b) else NOT_REACHED
              for a, b in zip(model[f"{q}_seeds"], reference[f"{q}_seeds"], strict=True)]
    return summarize_times(ratios)


def class_orders(row: dict, classes) -> dict:
    """Per time: the classes' order in the exact RF dynamics on the full surrogate from the seed-by-seed ratios
    (:func:`classdiff.core.seed_statistics.paired_order`; every class of a seed shares its W and subsets), each
    theory row's predicted order (earliest first) and its :func:`paired_agreement` with it."""
    out = {}
    labels = [int(c) for c in classes]
    for q in ("tau_gen", "tau_mem"):
        measured = paired_order([e[f"{q}_seeds"] for e in row["exact full"]], labels)
        predicted = {k: [labels[j] for j in np.argsort([e[q] for e in row[k]], kind="stable")]
                     for k in row if k.startswith("theory")}
        out[q] = {"measured": measured, "predicted": predicted,
                  "agreement": {k: paired_agreement(measured, v) for k, v in predicted.items()}}
    return out


def _cell(name: str, entry: dict, q: str) -> str:
    """``name value [lo, hi]`` of one predictor's time q for one class (the theory has no interval)."""
    v, iv = entry[q], entry.get(f"{q}_interval")
    text = f"{name} {v:.4g}" if is_reached(v) else f"{name} n.r."
    return text + (f" [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else "")


def spectra_figure(rows: list[dict], stem: Path) -> None:
    """Per setting (columns): the cumulative distribution of the eigenvalues of the training U of the first seed
    (top row), and each GE variant's sorted eigenvalues over those of the exact features on the same surrogate,
    W and subsets (bottom row); full surrogate solid, spiked dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from classdiff.core.io import save_figure

    colors = {"exact": "k", "ge keep": "C0", "ge conditional": "C3", "ge keep-2": "C1", "ge keep-3": "C6",
              "ge drop": "C2",
              "ge noise": "C4", "ge drop-centred": "C5"}
    fig, axes = plt.subplots(2, len(rows), figsize=(4.4 * len(rows), 6.6), squeeze=False, sharex="col")
    for col, row in enumerate(rows):
        top, bottom = axes[0, col], axes[1, col]
        spectra = {k: np.sort(np.asarray(e)) for k, e in row["eigenvalues_first_seed"].items()}
        for k, ev in spectra.items():
            name, surrogate_kind = k.rsplit(" ", 1)
            style = "-" if surrogate_kind == "full" else "--"
            rank = np.arange(1, ev.size + 1) / ev.size
            top.plot(ev, rank, style, color=colors.get(name), lw=1.1, label=k)
            if name != "exact":
                bottom.plot(spectra[f"exact {surrogate_kind}"], ev / spectra[f"exact {surrogate_kind}"], style,
                            color=colors.get(name), lw=1.1, label=f"{name} / exact {surrogate_kind}")
        top.set_xscale("log")
        top.set_ylabel("fraction of eigenvalues below")
        top.set_title(f"setting {row['setting']}: classes {row['classes']}, n_c {row['counts']}, "
                      f"psi_p {row['psi_p']}", fontsize=9)
        top.legend(fontsize=6.5, loc="upper left")
        bottom.axhline(1.0, color="0.6", lw=0.8)
        bottom.set_xlabel("eigenvalue of U, exact features (training set)")
        bottom.set_ylabel("same-rank eigenvalue / exact")
        bottom.legend(fontsize=6.5, loc="best")
    fig.tight_layout()
    save_figure(fig, stem)


def _theory_times(prediction) -> list[dict]:
    """Per class ``{"tau_gen", "tau_mem"}`` of a :class:`~classdiff.theory.audit.DataPrediction`."""
    return [{"tau_gen": reached(c.tau_gen), "tau_mem": reached(c.tau_mem)} for c in prediction.timescales.classes]


def theory_figure(rows: list[dict], stem: Path) -> None:
    """tau_gen and tau_mem of each theory row (``theory``, ``theory degree 2``, ``3``) over the exact RF dynamics on the
    full surrogate, per class and setting, with the exact dynamics' 95% interval as a band around 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from classdiff.core.io import save_figure

    cases = [(row, j) for row in rows for j in range(len(row["classes"]))]
    names = [f"{row['setting']}: {CLASS_NAMES[row['classes'][j]]}" for row, j in cases]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    pos = np.arange(len(cases))
    for ax, q in zip(axes[0], ("tau_gen", "tau_mem"), strict=True):
        exact = [row["exact full"][j] for row, j in cases]
        lo = [e[f"{q}_interval"][0] / e[q] for e in exact]
        hi = [e[f"{q}_interval"][1] / e[q] for e in exact]
        ax.bar(pos, np.subtract(hi, lo), bottom=lo, width=0.6, color="0.85", label="exact RF, 95% interval / mean")
        ax.axhline(1.0, color="0.5", lw=0.8)
        for k, (key, marker) in enumerate((("theory", "o"), ("theory degree 2", "s"), ("theory degree 3", "^"))):
            if all(key in row for row, _ in cases):
                ax.plot(pos + 0.12 * (k - 1), [row[key][j][q] / row["exact full"][j][q] for row, j in cases],
                        marker, ls="", label=f"{key} / exact" if k else "theory (linear spike block) / exact")
        ax.set_xticks(pos, names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"{q} / exact RF dynamics (16 seeds)" if q == "tau_mem" else f"{q} / exact RF dynamics")
        ax.set_title(f"{q} (x axis: setting: class)", fontsize=9)
    handles, texts = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    save_figure(fig, stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="0,1,2,3,4,5", help="indices into covariance_timescales.SETTINGS")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--centred", action="store_true", help="the theory's centroids centred by the weighted mean")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES), help=f"GE variants, comma-separated from {MODES}")
    parser.add_argument("--hermite-degree", default="1",
                        help="comma-separated degrees from 1, 2, 3: each n >= 2 adds the theory with the Hermite "
                             "blocks up to degree n (docs/theory.md §8.9), as the row 'theory degree n'")
    parser.add_argument("--hermite-rank", default="8",
                        help="top spikes per class in the Hermite blocks: one integer, or one per degree 2, 3")
    parser.add_argument("--out", default=None)
    parser.add_argument("--figure", default=None, help="stem of a figure (PNG + PDF) of the first seed's spectra of U")
    parser.add_argument("--theory-figure", default=None,
                        help="stem of a figure (PNG + PDF) of the theories' times over the exact dynamics")
    parser.add_argument("--replot", default=None,
                        help="a JSON written by --out: only redraw --figure and --theory-figure from it")
    args = parser.parse_args()
    try:
        degrees = [int(v) for v in args.hermite_degree.split(",")]
        hermite_rank = [int(v) for v in args.hermite_rank.split(",")]
    except ValueError:
        parser.error(f"--hermite-degree {args.hermite_degree!r}, --hermite-rank {args.hermite_rank!r}: integers, "
                     "comma-separated")
    if any(n not in (1, 2, 3) for n in degrees):
        parser.error(f"--hermite-degree {args.hermite_degree!r}: degrees from 1, 2, 3")
    if len(hermite_rank) not in (1, 2):
        parser.error(f"--hermite-rank {args.hermite_rank!r}: one integer, or one per degree 2, 3")
    if args.replot:
        if not (args.figure or args.theory_figure):
            parser.error("--replot: needs --figure or --theory-figure (the stem to write)")
        old = read_json(Path(args.replot))["rows"]
        if args.figure:
            spectra_figure(old, Path(args.figure))
        if args.theory_figure:
            theory_figure(old, Path(args.theory_figure))
        return
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
               "rank": args.rank, "theory": _theory_times(theory)}
        for n in sorted(set(degrees) - {1}):
            ranks = hermite_rank[0] if len(hermite_rank) == 1 else hermite_rank[: n - 1]
            block = predict_with_covariances(x, y, classes, counts, base, rank=args.rank, centre=args.centred,
                                             hermite_degree=n, hermite_rank=ranks)
            row[f"theory degree {n}"] = _theory_times(block)
            row[f"hermite rank degree {n}"] = ranks
        basis = {j: spiked_covariance(np.cov(x[y == c].T), args.rank).vectors for j, c in enumerate(classes)}
        spectra: dict[str, np.ndarray] = {}
        for name, rank in (("full", None), ("spiked", args.rank)):
            sx, sy = surrogate(x, y, classes, 4 * max(counts) + 500, seed=i, rank=rank)
            dyn = real_data_dynamics(sx, sy, classes, counts, base, test_per_class=500)
            row[f"exact {name}"], spectra[f"exact {name}"] = times(dyn), dyn["eigenvalues"]
            stats = {j: (x[y == c].mean(axis=0), class_covariance(x[y == c], rank)) for j, c in enumerate(classes)}
            lab = {c: j for j, c in enumerate(classes)}
            for mode in args.modes.split(","):
                patch = _GEMoments(sx, [lab[int(v)] for v in sy], stats, basis, mode, base.model.activation, t)
                original = rf_model.RandomFeaturesScore._moments
                rf_model.RandomFeaturesScore._moments = lambda est, *a, patch=patch, **kw: patch(est, *a, **kw)
                try:
                    dyn = real_data_dynamics(sx, sy, classes, counts, base, test_per_class=500)
                    row[f"ge {mode} {name}"], spectra[f"ge {mode} {name}"] = times(dyn), dyn["eigenvalues"]
                finally:
                    rf_model.RandomFeaturesScore._moments = original
        row["seconds"] = clock.perf_counter() - t0
        rows.append(row)
        keys = [k for k in row if k.startswith(("theory", "exact", "ge "))]
        print(f"setting {i}: classes {list(classes)}, counts {list(counts)}, d {dim}, psi_p {psi_p}, t {t} "
              f"({row['seconds']:.0f} s)")
        for q in ("tau_gen", "tau_mem"):
            for j, c in enumerate(classes):
                print(f"  {q} class {c}: " + "  ".join(_cell(k, row[k][j], q) for k in keys), flush=True)
                ratios = []
                for name in ("full", "spiked"):
                    for k in (k for k in keys if k.startswith("ge ") and k.endswith(name)):
                        r = paired_ratio(row[k][j], row[f"exact {name}"][j], q)
                        row.setdefault("paired", {}).setdefault(f"{k} / exact {name}", {}).setdefault(q, []).append(r)
                        iv = r["interval"]
                        ratios.append(f"{k}/exact {r['estimate']:.3f} [{iv[0]:.3f}, {iv[1]:.3f}]"
                                      if is_reached(r["estimate"]) else f"{k}/exact n.r.")
                print("    paired per seed: " + "  ".join(ratios), flush=True)
        row["class order paired"] = class_orders(row, classes)
        for q, o in row["class order paired"].items():
            print(f"  {q} order, exact full, paired by seed: {paired_order_text(o['measured'])}; "
                  + ", ".join(f"{k} {o['predicted'][k]} ({'agrees' if a['agree'] else 'disagrees'})"
                              if a["pairs"] else f"{k} {o['predicted'][k]}" for k, a in o["agreement"].items()),
                  flush=True)
        row["eigenvalues_first_seed"] = {k: [float(v) for v in e] for k, e in spectra.items()}
        if args.out:
            write_json_atomic(Path(args.out), {"args": vars(args), "rows": rows})
    if args.figure:
        spectra_figure(rows, Path(args.figure))
    if args.theory_figure:
        theory_figure(rows, Path(args.theory_figure))


if __name__ == "__main__":
    main()
