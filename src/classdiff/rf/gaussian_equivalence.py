"""The Gaussian-equivalent (GE) covariance of random features (``docs/theory.md`` §2; Bonnaire et al. 2505.17638,
Lemmas C.1–C.4), the one place it is computed.

For features phi_i(x_t) = sigma(w_i . x_t / sqrt(d)) of points x_nu = mu_c + delta_nu of class c, diffused to
time t, the noise-averaged covariance U = (1/n) sum_nu E_eta[phi(x_t^nu) phi(x_t^nu)^T] is replaced by

    U_GE = (1/n) sum_nu g_nu g_nu^T + sum_c (n_c/n) [ D_{b_c} K D_{b_c} + D_{s2_c} ],        K = W W^T / d,
    g_nu = kappa0_c + a_c o (e^{-t} W delta_nu / sqrt(d)) + sqrt(v2_c) o omega_nu,   omega_nu ~ N(0, I_p),

where kappa0_c, a_c, b_c, v2_c, s2_c (vectors over the features i) are the constants of
:func:`classdiff.rf.features.equivalence_constants` for class c, evaluated at each feature's mean
m_{c,i} = e^{-t} w_i . mu_c / sqrt(d) with the class variance sigma_c^2, and D_v = diag(v). v2 and s2 are
variances (non-negative by Cauchy–Schwarz); the quadrature can leave them a few ulps (relu: up to ~1e-8)
below zero, so both are clipped at 0.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.data.process import signal_scale
from classdiff.rf.features import equivalence_constants

__all__ = ["gaussian_equivalent_covariance"]

Array = NDArray[np.float64]


def gaussian_equivalent_covariance(
    W: ArrayLike,
    activation: str,
    time: float,
    centroids: ArrayLike,
    variances: ArrayLike,
    labels: ArrayLike,
    deviations: ArrayLike,
    omega: ArrayLike,
) -> Array:
    """U_GE (p, p) of the module docstring.

    ``W`` (p, d) the feature weights, ``activation`` and ``time`` those of the features, ``centroids`` (K, d)
    the class means mu_c, ``variances`` (K,) the class variances sigma_c^2 the constants are computed with,
    ``labels`` (n,) the class of each point in 0..K-1, ``deviations`` (n, d) the points' offsets
    delta_nu = x_nu - mu_c from their class mean (training points, or sigma_c z_nu for sampled ones) and
    ``omega`` (n, p) the standard normals of the non-linear part. Classes without points contribute nothing.
    """
    W = np.asarray(W, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    labels = np.asarray(labels)
    deviations = np.asarray(deviations, dtype=np.float64)
    omega = np.asarray(omega, dtype=np.float64)
    p, d = W.shape
    n = labels.shape[0]
    if deviations.shape != (n, d) or omega.shape != (n, p):
        raise ValueError(f"deviations {deviations.shape} and omega {omega.shape}: must be ({n}, {d}) and ({n}, {p})")
    k = centroids.shape[0]
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels: must lie in 0..{k - 1} (one per centroid), got {labels.min()}..{labels.max()}")
    e_t = float(signal_scale(time))
    root_d = math.sqrt(d)
    K = W @ W.T / d
    G = np.empty((n, p))
    noise = np.zeros((p, p))
    for c in range(k):
        rows = labels == c
        n_c = int(rows.sum())
        if n_c == 0:
            continue
        ge = equivalence_constants(activation, time, float(variances[c]), e_t * W @ centroids[c] / root_d)
        z = deviations[rows] @ W.T / root_d  # (n_c, p): W delta_nu / sqrt(d)
        G[rows] = ge.kappa0 + ge.a * e_t * z + np.sqrt(np.maximum(ge.v2, 0.0)) * omega[rows]
        noise += (n_c / n) * (np.outer(ge.b, ge.b) * K + np.diag(np.maximum(ge.s2, 0.0)))
    return G.T @ G / n + noise
