"""Deprecated aliases kept for :mod:`classdiff.images.evaluation`: use :mod:`classdiff.data.labelled` and
:func:`classdiff.theory.audit.predict_for_data` / :func:`~classdiff.theory.audit.predict_for_mixture`."""

from __future__ import annotations

from typing import Any

from classdiff.core.config import Config
from classdiff.core.readoff import ORDER_KEYS
from classdiff.data.labelled import ClassStatistics, class_statistics
from classdiff.data.mixture import GaussianMixture
from classdiff.theory.audit import predict_for_mixture

__all__ = ["image_class_statistics", "predicted_order"]

image_class_statistics = class_statistics


def predicted_order(stats: ClassStatistics, base: Config | None = None) -> dict[str, Any]:
    """The theory's prediction for these statistics as a dict: ``available``, ``classes`` [{label, tau_gen,
    tau_mem}], the orders under ORDER_KEYS names (and the retired "learning_order"), psi_p, psi_n, time; ``available`` False with a ``reason``
    when the theory fails for these statistics (the measurement side still runs)."""
    mixture = GaussianMixture(stats.weights, stats.centroids, stats.variances)
    mixture.labels_, mixture.counts_ = stats.labels, stats.counts
    try:
        prediction = predict_for_mixture(mixture, base)
    except Exception as exc:  # the theory may not converge for some statistics; report, do not crash
        return {"available": False, "reason": f"theory prediction failed: {type(exc).__name__}: {exc}"}
    out = {"available": True, **prediction.to_dict()}
    out["learning_order"] = out[ORDER_KEYS["tau_gen"]]  # retired name, still read by images.evaluation
    return out
