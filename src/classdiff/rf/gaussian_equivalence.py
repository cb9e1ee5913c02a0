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

:func:`group_moments` gives the same moments for one class's points in three closures, to locate what the
theory's loss model loses (``docs/theory.md`` §6.3):

* ``"per-feature"``: the constants above, one value per feature (the GE proper);
* ``"centred"``: the same without the class-mean features kappa0_c (the centroid spikes);
* ``"mean-type"``: no kappa0_c, and every feature given the class's mean constants, the variance of a_c over the
  features moved into the diagonal (a_c -> E a_c, b_c -> E b_c, v2_c -> E v2_c + e^{-2t} sigma_c^2 Var a_c,
  s2_c -> E s2_c + Delta_t Var a_c): the matrix that ``classdiff.theory.losses.mean_type_approximation`` describes.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.data.process import noise_variance, signal_scale
from classdiff.rf.features import equivalence_constants

__all__ = ["CLOSURES", "class_constants", "gaussian_equivalent_covariance", "group_moments"]

CLOSURES = ("per-feature", "centred", "mean-type")

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
        ge = class_constants(W, activation, time, centroids[c], float(variances[c]))
        z = deviations[rows] @ W.T / root_d  # (n_c, p): W delta_nu / sqrt(d)
        G[rows] = ge["kappa0"] + ge["a"] * e_t * z + np.sqrt(ge["v2"]) * omega[rows]
        noise += (n_c / n) * (np.outer(ge["b"], ge["b"]) * K + np.diag(ge["s2"]))
    return G.T @ G / n + noise


def class_constants(
    W: Array, activation: str, time: float, centroid: ArrayLike, variance: float | ArrayLike,
    closure: str = "per-feature",
) -> dict[str, Array]:
    """GE constants of one class, one value per feature: ``kappa0``, ``a``, ``b``, ``v2``, ``s2``, each (p,).

    ``W`` (p, d), ``centroid`` (d,) mu_c, ``variance`` sigma_c^2 (scalar), the diagonal of Sigma_c (d,) or the
    full Sigma_c (d, d); with a diagonal or full Sigma_c each feature's data variance is w_i^T Sigma_c w_i / d.
    ``closure`` one of :data:`CLOSURES` (module docstring).
    """
    if closure not in CLOSURES:
        raise ValueError(f"closure = {closure!r}: must be one of {', '.join(CLOSURES)}")
    W = np.asarray(W, dtype=np.float64)
    d = W.shape[1]
    e_t = float(signal_scale(time))
    var = np.asarray(variance, dtype=np.float64)
    if var.ndim == 0:
        feature_var: float | Array = float(var)
    elif var.shape == (d,):
        feature_var = (W * W) @ var / d
    elif var.shape == (d, d):
        feature_var = np.einsum("ij,ij->i", W @ var, W) / d
    else:
        raise ValueError(f"variance: shape {var.shape}; expected a scalar, ({d},) or ({d}, {d})")
    ge = equivalence_constants(activation, time, feature_var, e_t * W @ np.asarray(centroid, np.float64) / math.sqrt(d))
    out = {"kappa0": np.broadcast_to(ge.kappa0, (W.shape[0],)).copy(), "a": ge.a, "b": ge.b,
           "v2": np.maximum(ge.v2, 0.0), "s2": np.maximum(ge.s2, 0.0)}
    if closure == "per-feature":
        return out
    out["kappa0"] = np.zeros_like(out["kappa0"])
    if closure == "mean-type":
        var_a = float(out["a"].var())
        signal = e_t**2 * float(np.mean(feature_var))
        ones = np.ones_like(out["a"])
        out["a"], out["b"] = out["a"].mean() * ones, out["b"].mean() * ones
        out["v2"] = (out["v2"].mean() + signal * var_a) * ones
        out["s2"] = (out["s2"].mean() + float(noise_variance(time)) * var_a) * ones
    return out


def group_moments(
    W: Array, activation: str, time: float, centroid: ArrayLike, variance: float | ArrayLike,
    deviations: ArrayLike, omega: ArrayLike, closure: str = "per-feature",
) -> tuple[Array, Array]:
    """GE moments of m points of one class: U (p, p) = (1/m) sum_nu g_nu g_nu^T + D_b K D_b + D_{s2} and the
    Stein vector b (p,), with which V = E[phi eta^T] = b W / sqrt(d) (module docstring).

    ``deviations`` (m, d) the offsets x_nu - mu_c, ``omega`` (m, p) standard normals; the rest as in
    :func:`class_constants`.
    """
    W = np.asarray(W, dtype=np.float64)
    deviations = np.asarray(deviations, dtype=np.float64)
    omega = np.asarray(omega, dtype=np.float64)
    p, d = W.shape
    m = deviations.shape[0]
    if deviations.shape != (m, d) or omega.shape != (m, p) or m == 0:
        raise ValueError(f"deviations {deviations.shape} and omega {omega.shape}: must be (m, {d}) and (m, {p}), m >= 1")
    k = class_constants(W, activation, time, centroid, variance, closure)
    e_t = float(signal_scale(time))
    G = k["kappa0"] + k["a"] * (e_t * deviations @ W.T / math.sqrt(d)) + np.sqrt(k["v2"]) * omega
    U = G.T @ G / m + np.outer(k["b"], k["b"]) * (W @ W.T / d)
    U.flat[:: p + 1] += k["s2"]
    return U, k["b"]
