"""Real labelled data as the theory sees it: loading, validation and per-class statistics.

For points x in R^d (images flattened; pixels in [-1, 1] for Fashion-MNIST) with integer labels y and the
global mean x_bar, each class c has

* count n_c and weight rho_c = n_c / n;
* variance v_c = tr(Sigma_c) / d, Sigma_c the unbiased covariance of class c;
* centred centroid mu_c - x_bar and its norm m_c = |mu_c - x_bar| / sqrt(d) (DESIGN.md: |mu_c| = m_c sqrt(d));
* centroid distances |mu_c - mu_c'| / sqrt(d);
* the top eigenvalues of Sigma_c (how far the class is from the isotropic model v_c I_d).

:meth:`classdiff.data.mixture.GaussianMixture.fit` builds the Gaussian mixture of these statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ClassStatistics", "check_labelled", "class_statistics", "load_labelled"]


def check_labelled(x: ArrayLike, y: ArrayLike, *, source: str = "data",
                   min_per_class: int = 1) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Validated float64 points (n, d) (any trailing shape flattened) and int64 labels (n,).

    Rejected, with a message naming ``source`` and the problem: complex or non-numeric x, non-finite entries,
    fewer than 2 dimensions of samples, labels that are not integers (1.0 is accepted, 0.2 is not), a length
    mismatch, and classes with fewer than ``min_per_class`` points.
    """
    xa = np.asarray(x)
    ya = np.asarray(y)
    if np.iscomplexobj(xa):
        raise ValueError(f"{source}: x is complex ({xa.dtype}); classdiff needs real-valued data")
    if not (np.issubdtype(xa.dtype, np.number) or xa.dtype == np.bool_):
        raise ValueError(f"{source}: x has dtype {xa.dtype}; expected real numbers")
    if xa.ndim < 2 or xa.shape[0] == 0:
        raise ValueError(f"{source}: x has shape {xa.shape}; expected (n, d) or (n, ...) with n >= 1")
    xf = xa.reshape(xa.shape[0], -1).astype(np.float64)
    if not np.all(np.isfinite(xf)):
        raise ValueError(f"{source}: x has {int((~np.isfinite(xf)).sum())} non-finite entries (NaN or inf)")
    if ya.shape != (xf.shape[0],):
        raise ValueError(f"{source}: y has shape {ya.shape}; expected ({xf.shape[0]},), one label per point of x")
    if np.iscomplexobj(ya) or not (np.issubdtype(ya.dtype, np.number) or ya.dtype == np.bool_):
        raise ValueError(f"{source}: y has dtype {ya.dtype}; expected integer labels")
    if not np.issubdtype(ya.dtype, np.integer):
        yf = ya.astype(np.float64)
        if not np.all(np.isfinite(yf)) or np.any(yf != np.round(yf)):
            bad = yf[~np.isfinite(yf) | (yf != np.round(yf))][:3].tolist()
            raise ValueError(f"{source}: y must hold integer labels; found non-integer values such as {bad}")
        ya = yf
    yi = ya.astype(np.int64)
    if min_per_class > 1:
        labs, counts = np.unique(yi, return_counts=True)
        small = labs[counts < min_per_class]
        if small.size:
            raise ValueError(f"{source}: class(es) {small.tolist()} have fewer than {min_per_class} points")
    return xf, yi


def load_labelled(path: str | Path) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Arrays ``x`` (n, ...) flattened to (n, d) and ``y`` (n,) from an ``.npz`` file, validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; expected 'x' (n, d) and 'y' (n,), "
                                 f"found {', '.join(data.files) or 'none'}")
            x, y = data["x"], data["y"]
    except ValueError:
        raise
    except Exception as exc:  # truncated or corrupt archives: zipfile.BadZipFile, EOFError, OSError
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    return check_labelled(x, y, source=str(path))


@dataclass(frozen=True)
class ClassStatistics:
    """Per-class statistics of a labelled set; arrays have one entry per class, in the order of ``labels``."""

    labels: NDArray[np.int64]
    counts: NDArray[np.int64]
    weights: NDArray[np.float64]
    variances: NDArray[np.float64]
    centroids: NDArray[np.float64]  # (K, d), centred by the global mean
    centroid_norms: NDArray[np.float64]
    centroid_distances: NDArray[np.float64]  # (K, K)
    top_eigenvalues: NDArray[np.float64]  # (K, n_eigenvalues)
    dim: int

    def to_dict(self) -> dict[str, Any]:
        """The statistics without the (K, d) centroids."""
        return {
            "labels": self.labels.tolist(),
            "counts": self.counts.tolist(),
            "weights": self.weights.tolist(),
            "variances": self.variances.tolist(),
            "centroid_norms": self.centroid_norms.tolist(),
            "centroid_distances": self.centroid_distances.tolist(),
            "top_eigenvalues": self.top_eigenvalues.tolist(),
            "dim": self.dim,
        }


def class_statistics(x: ArrayLike, y: ArrayLike, labels: ArrayLike | None = None,
                     n_eigenvalues: int = 5) -> ClassStatistics:
    """Statistics of ``x`` (n, ...) flattened to (n, d) with labels ``y`` (n,), classes ``labels`` (default sorted).

    Each class needs at least 2 points (an unbiased covariance).
    """
    x, y = check_labelled(x, y)
    labs = np.unique(y) if labels is None else np.asarray(labels, dtype=np.int64)
    d = x.shape[1]
    mean = x.mean(axis=0)
    counts, variances, cents, tops = [], [], [], []
    k_eig = min(n_eigenvalues, d)
    for c in labs:
        xc = x[y == c]
        if len(xc) < 2:
            raise ValueError(f"class {int(c)}: has {len(xc)} point(s); need at least 2 to estimate a covariance")
        counts.append(len(xc))
        centred = xc - xc.mean(axis=0)
        variances.append(float(np.einsum("ij,ij->", centred, centred) / ((len(xc) - 1) * d)))
        gram = centred @ centred.T if len(xc) < d else centred.T @ centred
        ev = np.linalg.eigvalsh(gram / (len(xc) - 1))[::-1][:k_eig]
        tops.append(np.pad(ev, (0, k_eig - ev.size)))
        cents.append(xc.mean(axis=0) - mean)
    centroids = np.stack(cents)
    counts_a = np.array(counts, dtype=np.int64)
    diff = centroids[:, None, :] - centroids[None, :, :]
    return ClassStatistics(
        labels=labs.astype(np.int64), counts=counts_a, weights=counts_a / counts_a.sum(),
        variances=np.array(variances), centroids=centroids,
        centroid_norms=np.linalg.norm(centroids, axis=1) / np.sqrt(d),
        centroid_distances=np.linalg.norm(diff, axis=2) / np.sqrt(d),
        top_eigenvalues=np.array(tops), dim=d,
    )
