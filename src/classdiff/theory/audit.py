"""Audit any labelled data set: per-class statistics and the theory's predicted learning / memorization order.

Given points ``x`` (n, d) and integer labels ``y`` (n,), the audit

1. measures per class (:func:`classdiff.data.labelled.class_statistics`): count and weight rho_c = n_c/n,
   variance tr(Sigma_c)/d, centroid norm m_c = |mu_c - mean| / sqrt(d) (centred by the global mean), pairwise
   centroid distances / sqrt(d), and the top eigenvalues of each class covariance (how far the class is from
   isotropic);
2. fits the Gaussian mixture the theory handles, ``GaussianMixture.fit(x, y)`` (isotropic classes with the
   measured variances, weights and centred centroids), at the random-features settings of the base config
   (psi_p, t, activation) with psi_n = n/d;
3. asks :func:`classdiff.theory.timescales.class_timescales_for_mixture` for each class's predicted tau_gen and
   tau_mem (:func:`predict_for_data`), and warns about every class predicted to be memorized before another
   class has generalized (tau_mem,c < max_c' tau_gen,c').
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.core.config import Config
from classdiff.core.readoff import ORDER_KEYS
from classdiff.core.results import Time, format_value, is_reached, time_or_nan
from classdiff.data.labelled import ClassStatistics, check_labelled, load_labelled
from classdiff.data.labelled import class_statistics as _labelled_statistics
from classdiff.data.mixture import GaussianMixture
from classdiff.theory.timescales import TimescalesResult, class_timescales_for_mixture

__all__ = ["AuditClass", "AuditResult", "DataPrediction", "audit", "class_statistics", "class_surrogates",
           "load_labelled", "predict_for_data", "predict_for_mixture", "predict_with_covariances",
           "speciation_with_covariances"]


@dataclass
class DataPrediction:
    """The theory's prediction for a labelled data set: per-class times under the data's own labels, the orders
    (labels, earliest first) and the random-features settings used."""

    timescales: TimescalesResult = field(repr=False)
    psi_p: float
    psi_n: float
    time: float

    @property
    def generalization_order(self) -> list[int]:
        return self.timescales.generalization_order

    @property
    def memorization_order(self) -> list[int]:
        return self.timescales.memorization_order

    def to_dict(self) -> dict[str, Any]:
        """``classes`` [{label, tau_gen, tau_mem}], the orders under ORDER_KEYS names, psi_p, psi_n, time."""
        return {
            "classes": [{"label": c.label, "tau_gen": c.tau_gen, "tau_mem": c.tau_mem} for c in self.timescales.classes],
            ORDER_KEYS["tau_gen"]: self.generalization_order,
            ORDER_KEYS["tau_mem"]: self.memorization_order,
            "psi_p": self.psi_p,
            "psi_n": self.psi_n,
            "time": self.time,
        }


def predict_for_mixture(mixture: GaussianMixture, base: Config | None = None) -> DataPrediction:
    """Predicted per-class timescales of a fitted data mixture (``GaussianMixture.fit``; ``counts_`` gives n).

    The model is ``base.model`` (default :class:`Config`) with psi_n = n/d; the classes keep ``mixture.labels_``.
    """
    base = base if base is not None else Config()
    n = int(np.sum(mixture.counts_))
    model = base.with_overrides({"model.psi_n": float(n / mixture.dim)}).model
    result = class_timescales_for_mixture(mixture, model, base.theory, base.training)
    return DataPrediction(timescales=result, psi_p=model.psi_p, psi_n=model.psi_n, time=model.time)


def predict_for_data(x: ArrayLike, y: ArrayLike, base: Config | None = None,
                     labels: ArrayLike | None = None) -> DataPrediction:
    """Predicted per-class tau_gen, tau_mem and orders of ``x`` (n, ...) with labels ``y`` (n,)."""
    return predict_for_mixture(GaussianMixture.fit(x, y, labels=labels), base)


def class_surrogates(x: ArrayLike, y: ArrayLike, labels: ArrayLike, counts: ArrayLike, centre: bool = True
                     ) -> tuple[NDArray[np.float64], NDArray[np.float64], list[NDArray[np.float64]], NDArray[np.float64]]:
    """Gaussian surrogates N(mu_c, Sigma_c) of the classes ``labels`` (K,) of the population ``x`` (n, ...),
    ``y`` (n,), for training sets of ``counts`` (K,) points: returns rho = counts/n (K,), the centroids (K, d)
    (centred by the count-weighted mean, as :meth:`GaussianMixture.fit` centres them, when ``centre``; else in
    the data's own coordinates), the full empirical covariances [(d, d)] of *all* the points of each class (a
    covariance of n_c < d points is singular) and the counts (K,)."""
    xf, yi = check_labelled(x, y)
    labs = [int(v) for v in np.asarray(labels).reshape(-1)]
    n_c = np.asarray(counts, dtype=np.float64).reshape(-1)
    if n_c.size != len(labs) or np.any(n_c <= 0):
        raise ValueError(f"counts = {n_c.tolist()}: need one positive count per label {labs}")
    missing = [lab for lab in labs if np.count_nonzero(yi == lab) < 2]
    if missing:
        raise ValueError(f"labels {missing}: fewer than 2 points of these classes in the data")
    rho = n_c / n_c.sum()
    mus = np.stack([xf[yi == lab].mean(axis=0) for lab in labs])
    covs = [np.cov(xf[yi == lab].T) for lab in labs]
    return rho, mus - rho @ mus if centre else mus, covs, n_c


def speciation_with_covariances(x: ArrayLike, y: ArrayLike, labels: ArrayLike, counts: ArrayLike,
                                times: ArrayLike, threshold: float = 0.775, rank: int = 16, n_samples: int = 10000,
                                seed: int = 0) -> dict[str, Any]:
    """Speciation times of the covariance-aware surrogates (:func:`class_surrogates`, each covariance spiked
    with its top ``rank`` eigenpairs, as for the spectrum) from
    :func:`classdiff.theory.speciation_covariance.spiked_speciation_times` on the OU-time grid ``times``.

    A class of m points gets at most m - 2 spikes (its covariance has rank <= m - 1, and the floor needs one
    non-zero eigenvalue left). Returns ``t_speciation`` and ``t_speciation_relative`` (K,) (absolute and relative
    levels, ``docs/speciation.md``), the ``phi`` curves (T, K) of the absolute read-off and the requested rank.
    """
    from classdiff.theory.covariance_types import spiked_covariance
    from classdiff.theory.speciation_covariance import spiked_speciation_times

    rho, centroids, covs, _ = class_surrogates(x, y, labels, counts)
    _, yi = check_labelled(x, y)
    sizes = [int(np.count_nonzero(yi == int(lab))) for lab in np.asarray(labels).reshape(-1)]
    # a covariance of m points has rank <= m - 1: keep at least one non-zero eigenvalue for the floor
    spikes = [spiked_covariance(c, max(0, min(rank, m - 2, c.shape[0] - 1))) for c, m in zip(covs, sizes, strict=True)]
    t_abs, phi = spiked_speciation_times(rho, centroids, spikes, times, threshold, "absolute", n_samples, seed)
    t_rel, _ = spiked_speciation_times(rho, centroids, spikes, times, threshold, "relative", n_samples, seed)
    return {"t_speciation": t_abs, "t_speciation_relative": t_rel, "phi": phi, "rank": int(rank)}


def predict_with_covariances(x: ArrayLike, y: ArrayLike, labels: ArrayLike, counts: ArrayLike,
                             base: Config | None = None, rank: int = 16, n_nodes: int = 512,
                             centre: bool = False, hermite_degree: int = 1,
                             hermite_rank: int | Sequence[int] | None = None) -> DataPrediction:
    """Covariance-aware predicted per-class times (``docs/theory.md`` §8) for training sets of ``counts`` (K,)
    points drawn from the classes ``labels`` (K,) of the population ``x`` (n, ...), ``y`` (n,).

    Each class is its Gaussian surrogate N(mu_c, Sigma_c) with the empirical centroid and full covariance of all
    its points in ``x`` (the population, not the few training points: a covariance of n_c < d points is
    singular). The centroids are the class means in the data's own coordinates (``centre`` False, the default):
    random features sigma(W x / sqrt d) are not invariant under a shift of the data, and a model trained on the
    data sees its global mean. Centring them by the count-weighted mean (``centre`` True, as
    :meth:`GaussianMixture.fit` does) put the second class's tau_gen at 0.60–0.70 of the RF dynamics on
    Fashion-MNIST pixels in [-1, 1] (``docs/theory.md`` §8.5). rho_c = counts/n, psi_n = n/d; the model settings are ``base.model`` (default :class:`Config`). The times move by
    < 0.5% between 256 and 1024 Sobol type nodes on the Fashion-MNIST configs (experiments/fashion_memorize_cpu.toml,
    the demo), so ``n_nodes`` defaults to 512. ``hermite_degree`` 2 adds the degree-2 Hermite block of the top
    ``hermite_rank`` spikes per class (``docs/theory.md`` §8.9: tau_mem 3-16% earlier and closer to the RF dynamics,
    at 4-6x the cost for ``hermite_rank`` 8), and 3 also the degree-3 block (``hermite_rank`` may then give one
    count per degree, e.g. ``(8, 4)``); the default 1 is the linear spike block only.
    """
    from classdiff.theory.covariance_types import covariance_feature_types

    base = base if base is not None else Config()
    rho, centroids, covs, n_c = class_surrogates(x, y, labels, counts, centre=centre)
    labs = [int(v) for v in np.asarray(labels).reshape(-1)]
    d = centroids.shape[1]
    model = base.with_overrides({"model.psi_n": float(n_c.sum() / d)}).model
    types = covariance_feature_types(rho, covs, centroids, model.time, model.psi_p, model.psi_n, model.activation,
                                     rank=rank, n_nodes=n_nodes, seed=base.theory.seed,
                                     hermite_degree=hermite_degree, hermite_rank=hermite_rank)
    mixture = GaussianMixture(rho, centroids, np.array([np.trace(c) / d for c in covs]))
    result = class_timescales_for_mixture(mixture, model, base.theory, base.training, labels=labs, types=types)
    return DataPrediction(timescales=result, psi_p=model.psi_p, psi_n=model.psi_n, time=model.time)


def class_statistics(x: ArrayLike, y: ArrayLike, n_eigenvalues: int = 5) -> ClassStatistics:
    """Per-class statistics of ``x`` (n, d) with labels ``y`` (n,) (:func:`classdiff.data.labelled.class_statistics`)."""
    xf, yi = check_labelled(x, y)
    return _labelled_statistics(xf, yi, n_eigenvalues=n_eigenvalues)


@dataclass
class AuditClass:
    """One class of an audited data set: its statistics and predicted times."""

    label: int
    count: int
    weight: float
    variance: float
    centroid_norm: float
    top_eigenvalue: float
    anisotropy: float
    tau_gen: Time
    tau_mem: Time


@dataclass
class AuditResult:
    """The ``audit`` result: per-class statistics and predictions, the orders and the warnings."""

    n: int
    dim: int
    psi_p: float
    psi_n: float
    time: float
    classes: list[AuditClass]
    generalization_order: list[int]
    memorization_order: list[int]
    warnings: list[str]
    centroid_distances: list[list[float]]

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("n", "dim", "psi_p", "psi_n", "time")}
        out["classes"] = [vars(c).copy() for c in self.classes]
        out[ORDER_KEYS["tau_gen"]] = self.generalization_order
        out[ORDER_KEYS["tau_mem"]] = self.memorization_order
        out["warnings"] = self.warnings
        out["centroid_distances"] = self.centroid_distances
        return out


def audit(x: ArrayLike, y: ArrayLike, base: Config | None = None) -> AuditResult:
    """Statistics, predicted per-class timescales and orders, and warnings."""
    stats = class_statistics(x, y)
    pred = predict_for_data(x, y, base, labels=stats.labels)
    classes = [
        AuditClass(label=int(lab), count=int(stats.counts[i]), weight=float(stats.weights[i]),
                   variance=float(stats.variances[i]), centroid_norm=float(stats.centroid_norms[i]),
                   top_eigenvalue=float(stats.top_eigenvalues[i, 0]),
                   anisotropy=float(stats.top_eigenvalues[i, 0] / stats.variances[i]),
                   tau_gen=th.tau_gen, tau_mem=th.tau_mem)
        for i, (lab, th) in enumerate(zip(stats.labels, pred.timescales.classes, strict=True))
    ]
    gen = [time_or_nan(c.tau_gen) for c in classes]
    warnings = []
    slowest = int(np.nanargmax(gen)) if np.any(np.isfinite(gen)) else None
    for i, c in enumerate(classes):
        if slowest is None or i == slowest or not is_reached(c.tau_mem) or math.isinf(c.tau_mem):
            continue
        if c.tau_mem < gen[slowest]:
            warnings.append(
                f"class {c.label} is predicted to be memorized (tau_mem = {format_value(c.tau_mem, '.3g')}) before "
                f"class {classes[slowest].label} has generalized (tau_gen = {format_value(gen[slowest], '.3g')})"
            )
    return AuditResult(n=int(stats.counts.sum()), dim=stats.dim, psi_p=pred.psi_p, psi_n=pred.psi_n,
                       time=pred.time, classes=classes, generalization_order=pred.generalization_order,
                       memorization_order=pred.memorization_order, warnings=warnings,
                       centroid_distances=stats.centroid_distances.tolist())
