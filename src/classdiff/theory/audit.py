"""Audit any labelled data set: per-class statistics and the theory's predicted learning / memorization order.

Given points ``x`` (n, d) and integer labels ``y`` (n,), the audit

1. measures per class: count and weight rho_c = n_c/n, variance tr(Sigma_c)/d, centroid norm
   m_c = |mu_c - mean| / sqrt(d) (centred by the global mean), pairwise centroid distances / sqrt(d), and the
   top eigenvalues of each class covariance (how far the class is from isotropic);
2. maps those onto the Gaussian mixture the theory handles (isotropic classes with the measured variances,
   weights and centred centroids, ``geometry = "explicit"``) at the random-features settings (psi_p, psi_n, t);
3. asks :func:`classdiff.theory.timescales.timescales_from_config` for each class's predicted tau_gen and tau_mem,
   and warns about every class predicted to be memorized before another class has generalized
   (tau_mem,c < max_c' tau_gen,c').
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from classdiff.core.config import Config
from classdiff.data.labelled import load_labelled
from classdiff.theory.data_statistics import ImageClassStatistics, image_class_statistics, theory_config

__all__ = ["audit", "class_statistics", "load_labelled"]


def _records(stats: ImageClassStatistics) -> list[dict[str, Any]]:
    return [
        {
            "label": int(lab),
            "count": int(stats.counts[i]),
            "weight": float(stats.weights[i]),
            "variance": float(stats.variances[i]),
            "centroid_norm": float(stats.centroid_norms[i]),
            "top_eigenvalue": float(stats.top_eigenvalues[i, 0]),
            "anisotropy": float(stats.top_eigenvalues[i, 0] / stats.variances[i]),
        }
        for i, lab in enumerate(stats.labels)
    ]


def class_statistics(x: ArrayLike, y: ArrayLike, n_eigenvalues: int = 5) -> ImageClassStatistics:
    """Per-class statistics of ``x`` (n, d) with labels ``y`` (n,) (shared with the image experiments)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x: shape {x.shape}, expected (n, d)")
    if not np.all(np.isfinite(x)):
        raise ValueError("x: every entry must be finite")
    return image_class_statistics(x, y, n_eigenvalues=n_eigenvalues)


def audit(x: ArrayLike, y: ArrayLike, base: Config | None = None) -> dict[str, Any]:
    """Statistics, predicted per-class timescales and orders, and warnings (JSON-able dict)."""
    from classdiff.theory.timescales import timescales_from_config

    stats = class_statistics(x, y)
    config = theory_config(stats, base)
    theory = timescales_from_config(config)
    records = _records(stats)
    by_index = {int(c["label"]): c for c in theory["classes"]}
    for i, rec in enumerate(records):
        pred = by_index[i]  # theory labels classes 0..K-1 in the order of stats.labels
        rec["tau_gen"] = pred.get("tau_gen")
        rec["tau_mem"] = pred.get("tau_mem")
    gen = np.array([np.nan if r["tau_gen"] is None else r["tau_gen"] for r in records], dtype=float)
    mem = np.array([np.nan if r["tau_mem"] is None else r["tau_mem"] for r in records], dtype=float)
    learning_order = [int(stats.labels[i]) for i in np.argsort(gen, kind="stable")]
    memorization_order = [int(stats.labels[i]) for i in np.argsort(mem, kind="stable")]
    warnings = []
    slowest = int(np.nanargmax(gen)) if np.any(np.isfinite(gen)) else None
    for i, rec in enumerate(records):
        if slowest is not None and np.isfinite(mem[i]) and mem[i] < gen[slowest] and i != slowest:
            warnings.append(
                f"class {rec['label']} is predicted to be memorized (tau_mem = {mem[i]:.3g}) before class "
                f"{records[slowest]['label']} has generalized (tau_gen = {gen[slowest]:.3g})"
            )
    return {
        "n": int(stats.counts.sum()),
        "dim": stats.dim,
        "psi_p": config.model.psi_p,
        "psi_n": config.model.psi_n,
        "time": config.model.time,
        "classes": records,
        "learning_order": learning_order,
        "memorization_order": memorization_order,
        "warnings": warnings,
        "centroid_distances": stats.centroid_distances.tolist(),
    }
