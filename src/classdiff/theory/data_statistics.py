"""Per-class statistics of an image training subset, and the Gaussian mixture the theory sees in it.

For images flattened to x in R^d (pixels in [-1, 1], d = 784) with labels y, and the global mean
x_bar of the subset, each class c has

* weight rho_c = n_c / n;
* variance  v_c = tr(Sigma_c) / d, Sigma_c the (unbiased) covariance of class c;
* centroid norm m_c = |mu_c - x_bar| / sqrt(d), so that |mu_c - x_bar| = m_c sqrt(d) as in DESIGN.md;
* centroid distances |mu_c - mu_c'| / sqrt(d);
* the top eigenvalues of Sigma_c (how far the class is from the isotropic model sigma_c^2 I_d).

:func:`theory_config` maps them to a ``[mixture]`` section (isotropic classes, explicit centred centroids,
psi_n = n / d) for :func:`classdiff.theory.timescales.timescales_from_config`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from classdiff.data.labelled import ClassStatistics, class_statistics

__all__ = ["ImageClassStatistics", "image_class_statistics", "predicted_order", "theory_config"]


ImageClassStatistics = ClassStatistics
image_class_statistics = class_statistics


def theory_config(stats: ImageClassStatistics, base=None):
    """A :class:`classdiff.core.config.Config` whose ``[mixture]`` is the isotropic mixture with these statistics.

    weights = n_c/n, variances = tr(Sigma_c)/d, centroid_norms = m_c, geometry = "explicit" with the centred
    centroids, model.psi_n = n/d; psi_p, t and the theory settings come from ``base`` (default config).
    """
    from classdiff.core.config import Config

    base = base if base is not None else Config()
    w = stats.counts / stats.counts.sum()
    return base.with_overrides({
        "mixture.dim": int(stats.dim),
        "mixture.weights": [float(v) for v in w / w.sum()],
        "mixture.variances": [float(v) for v in stats.variances],
        "mixture.centroid_norms": [float(v) for v in stats.centroid_norms],
        "mixture.geometry": "explicit",
        "mixture.centroids": [[float(v) for v in row] for row in stats.centroids],
        "model.psi_n": float(stats.counts.sum() / stats.dim),
    })


def predicted_order(stats: ImageClassStatistics, base=None) -> dict[str, Any]:
    """The theory's per-class tau_gen, tau_mem and orders for these statistics.

    Calls :func:`classdiff.theory.timescales.timescales_from_config` when that module exists; otherwise returns
    ``{"available": False, "reason": ...}`` (the measurement side still runs).
    """
    try:
        from classdiff.theory.timescales import timescales_from_config
    except ImportError as exc:
        return {"available": False, "reason": f"classdiff.theory.timescales is not available ({exc}); "
                "no theory prediction beside the measurement"}
    config = theory_config(stats, base)
    try:
        theory = timescales_from_config(config)
    except Exception as exc:  # the theory may not converge for some statistics; report, do not crash
        return {"available": False, "reason": f"timescales_from_config failed: {type(exc).__name__}: {exc}"}
    classes = []
    for i, rec in enumerate(theory.get("classes", [])):
        label = int(stats.labels[i]) if i < len(stats.labels) else int(rec.get("label", i))
        classes.append({"label": label, "tau_gen": rec.get("tau_gen"), "tau_mem": rec.get("tau_mem")})

    def order(key: str) -> list[int]:
        vals = [(np.inf if c[key] is None else float(c[key]), c["label"]) for c in classes]
        return [lab for _, lab in sorted(vals)]

    return {"available": True, "classes": classes, "learning_order": order("tau_gen"),
            "memorization_order": order("tau_mem"), "psi_p": config.model.psi_p, "psi_n": config.model.psi_n,
            "time": config.model.time}
