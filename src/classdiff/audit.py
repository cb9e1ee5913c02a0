"""Audit any labelled data set: per-class statistics and the theory's predicted learning / memorization order.

Given points ``x`` (n, d) and integer labels ``y`` (n,), the audit

1. measures per class: count and weight rho_c = n_c/n, variance tr(Sigma_c)/d, centroid norm
   m_c = |mu_c - mean| / sqrt(d) (centred by the global mean), pairwise centroid distances / sqrt(d), and the
   top eigenvalues of each class covariance (how far the class is from isotropic);
2. maps those onto the Gaussian mixture the theory handles (isotropic classes with the measured variances,
   weights and centred centroids, ``geometry = "explicit"``) at the random-features settings (psi_p, psi_n, t);
3. asks :func:`classdiff.timescales.timescales_from_config` for each class's predicted tau_gen and tau_mem,
   and warns about every class predicted to be memorized before another class has generalized
   (tau_mem,c < max_c' tau_gen,c').
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.config import Config

__all__ = ["ClassStatistics", "audit", "class_statistics", "load_labelled", "mixture_config_from_statistics"]


@dataclass(frozen=True)
class ClassStatistics:
    """Per-class statistics of a labelled data set (arrays have one entry per class, in ``labels`` order)."""

    labels: NDArray[np.int64]
    counts: NDArray[np.int64]
    weights: NDArray[np.float64]
    variances: NDArray[np.float64]
    centroids: NDArray[np.float64]  # (K, d), centred by the global mean
    centroid_norms: NDArray[np.float64]
    centroid_distances: NDArray[np.float64]  # (K, K), |mu_c - mu_c'| / sqrt(d)
    top_eigenvalues: NDArray[np.float64]  # (K, k)
    dim: int

    def as_records(self) -> list[dict[str, Any]]:
        return [
            {
                "label": int(lab),
                "count": int(self.counts[i]),
                "weight": float(self.weights[i]),
                "variance": float(self.variances[i]),
                "centroid_norm": float(self.centroid_norms[i]),
                "top_eigenvalue": float(self.top_eigenvalues[i, 0]),
                "anisotropy": float(self.top_eigenvalues[i, 0] / self.variances[i]),
            }
            for i, lab in enumerate(self.labels)
        ]


def class_statistics(x: ArrayLike, y: ArrayLike, n_eigenvalues: int = 5) -> ClassStatistics:
    """Per-class statistics of ``x`` (n, d) with labels ``y`` (n,); see the module docstring."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"x: shape {x.shape}, expected (n, d)")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y: shape {y.shape}, expected (n,) = ({x.shape[0]},) to match x")
    if not np.all(np.isfinite(x)):
        raise ValueError("x: every entry must be finite")
    labels, counts = np.unique(y, return_counts=True)
    if np.any(counts < 2):
        raise ValueError(f"y: class {labels[np.argmin(counts)]!r} has fewer than 2 points; cannot estimate its variance")
    n, d = x.shape
    mean = x.mean(0)
    centroids = np.stack([x[y == lab].mean(0) for lab in labels]) - mean
    k_eig = min(n_eigenvalues, d)
    variances, tops = [], []
    for lab in labels:
        xc = x[y == lab]
        xc = xc - xc.mean(0)
        variances.append(float((xc * xc).sum() / ((len(xc) - 1) * d)))
        # top eigenvalues of the class covariance through the smaller Gram matrix
        gram = xc @ xc.T if len(xc) < d else xc.T @ xc
        ev = np.linalg.eigvalsh(gram / (len(xc) - 1))[::-1][:k_eig]
        tops.append(np.pad(ev, (0, k_eig - ev.size)))
    diff = centroids[:, None, :] - centroids[None, :, :]
    return ClassStatistics(
        labels=labels.astype(np.int64),
        counts=counts.astype(np.int64),
        weights=counts / n,
        variances=np.array(variances),
        centroids=centroids,
        centroid_norms=np.linalg.norm(centroids, axis=1) / np.sqrt(d),
        centroid_distances=np.linalg.norm(diff, axis=2) / np.sqrt(d),
        top_eigenvalues=np.array(tops),
        dim=d,
    )


def mixture_config_from_statistics(stats: ClassStatistics, base: Config | None = None) -> Config:
    """The theory's mixture for these statistics: isotropic classes, measured weights/variances/centroids,
    and psi_n = n/d of the data set (psi_p and t come from ``base``)."""
    base = base or Config()
    weights = stats.counts / stats.counts.sum()
    weights = weights / weights.sum()
    return base.with_overrides({
        "mixture.dim": stats.dim,
        "model.psi_n": float(stats.counts.sum() / stats.dim),
        "mixture.weights": [float(w) for w in weights],
        "mixture.variances": [float(v) for v in stats.variances],
        "mixture.centroid_norms": [float(m) for m in stats.centroid_norms],
        "mixture.geometry": "explicit",
        "mixture.centroids": [[float(v) for v in row] for row in stats.centroids],
    })


def load_labelled(path: Path) -> tuple[NDArray[np.float64], NDArray]:
    """Arrays ``x`` (n, ...) flattened to (n, d) and ``y`` (n,) from an ``.npz`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("x", "y") if k not in data.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; expected 'x' (n, d) and 'y' (n,), "
                             f"found {', '.join(data.files) or 'none'}")
        x, y = data["x"], data["y"]
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1), y


def audit(x: ArrayLike, y: ArrayLike, base: Config | None = None) -> dict[str, Any]:
    """Statistics, predicted per-class timescales and orders, and warnings (JSON-able dict)."""
    from classdiff.timescales import timescales_from_config

    stats = class_statistics(x, y)
    config = mixture_config_from_statistics(stats, base)
    theory = timescales_from_config(config)
    records = stats.as_records()
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
