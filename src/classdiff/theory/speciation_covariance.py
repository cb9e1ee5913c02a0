"""Commitment curves and speciation times for classes with general (spiked) covariances (``docs/speciation.md`` §6c).

The definitions are those of :mod:`classdiff.theory.speciation`: with the exact score two clones branched at
x_t end in classes drawn independently from P(c | x_t), so the commitment curve of class c is

    phi_c(t) = E_{x ~ P_t(.|c)} [ P(c | x) ],       P_t(.|k) = N(e^{-t} mu_k, Gamma_k(t)),   Gamma_k = e^{-2t} Sigma_k + Delta_t I,

and t_S,c is read off it with :func:`~classdiff.theory.speciation.read_speciation_times`. Here each Sigma_k is
spiked (:class:`~classdiff.theory.covariance_types.SpikedCovariance`): floor_k I + V_k diag(s_k) V_k^T, the
representation the covariance-aware spectrum uses (``docs/theory.md`` §8). Let S (d, R) be an orthonormal basis
of span{mu_k, V_k}. Every Gamma_k is floor-isotropic on the complement of S, so with y = S^T x and
chi = |x - S y|^2,

    log p_k(x) = -(1/2) (y - e^{-t} S^T mu_k)^T G_k^{-1} (y - e^{-t} S^T mu_k) - (1/2) log det G_k
                 - chi / (2 g_k) - ((d - R)/2) log g_k,
    G_k = S^T Gamma_k S = g_k I_R + e^{-2t} W_k diag(s_k) W_k^T,   g_k = e^{-2t} floor_k + Delta_t,   W_k = S^T V_k.

For x from class c, y ~ N(e^{-t} S^T mu_c, G_c) and chi = g_c chi^2_{d - R} exactly, so phi_c(t) is an
(R + 1)-dimensional expectation, estimated by Monte Carlo with common random numbers over t (the curve is
smooth in t; standard error <= 0.5 / sqrt(n_samples)). Cost O(T K^2 n_samples R^2), independent of d after the
basis. With no spikes (r = 0) this is the isotropic integral of :func:`~classdiff.theory.speciation.commitment_curves`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.linalg import solve_triangular

from classdiff.core.results import Time, reached
from classdiff.data.process import noise_variance, signal_scale
from classdiff.theory.covariance_types import SpikedCovariance, _orthonormal_basis
from classdiff.theory.speciation import commitment_levels, read_speciation_times

__all__ = ["spiked_commitment_curves", "spiked_speciation_times"]

Array = NDArray[np.float64]


def spiked_commitment_curves(weights: ArrayLike, centroids: ArrayLike, covariances: Sequence[SpikedCovariance],
                             times: ArrayLike, n_samples: int = 20000, seed: int = 0) -> Array:
    """phi_c(t) (T, K) for classes N(mu_c, Sigma_c) with spiked Sigma_c (module docstring).

    Parameters
    ----------
    weights : (K,) class weights rho_c (sum 1); centroids : (K, d); covariances : K spiked covariances of
    dimension d; times : (T,) OU times > 0; n_samples : Monte Carlo draws per class (shared by all times).
    """
    rho = np.asarray(weights, dtype=np.float64)
    mu = np.atleast_2d(np.asarray(centroids, dtype=np.float64))
    k, d = mu.shape
    if rho.shape != (k,) or len(covariances) != k:
        raise ValueError(f"weights {rho.shape}, covariances {len(covariances)}: expected {k} classes as in centroids")
    if not np.all(rho >= 0) or abs(rho.sum() - 1) > 1e-9:
        raise ValueError(f"weights = {rho.tolist()}: must be >= 0 and sum to 1")
    if any(cv.vectors.shape[0] != d for cv in covariances):
        raise ValueError(f"covariances: every spiked covariance must have dimension d = {d}")
    if n_samples < 100:
        raise ValueError(f"n_samples = {n_samples!r}: must be >= 100")
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if not np.all(t > 0):
        raise ValueError("times: must be > 0")
    basis = _orthonormal_basis(np.concatenate([mu.T] + [cv.vectors for cv in covariances], axis=1))
    r = basis.shape[1]
    if r >= d:
        raise ValueError(f"the centroids and spikes span all of d = {d} dimensions; use fewer spikes")
    nu = mu @ basis  # (K, R)
    w = [basis.T @ cv.vectors for cv in covariances]  # (R, r_k)
    rng = np.random.default_rng(seed)
    zeta = rng.standard_normal((k, n_samples, r))
    chi = rng.chisquare(d - r, size=(k, n_samples))
    with np.errstate(divide="ignore"):
        log_rho = np.log(rho)
    out = np.full((t.size, k), np.nan)
    for i, ti in enumerate(t):
        a, delta = float(signal_scale(ti)), float(noise_variance(ti))
        g = np.array([a * a * cv.floor + delta for cv in covariances])  # (K,)
        cov = [g[j] * np.eye(r) + (a * a) * (w[j] * covariances[j].strengths) @ w[j].T for j in range(k)]
        chol = [np.linalg.cholesky(c) for c in cov]
        logdet = np.array([2.0 * np.log(np.diag(c)).sum() + (d - r) * np.log(g[j]) for j, c in enumerate(chol)])
        for c in range(k):
            if rho[c] == 0:
                continue
            y = a * nu[c] + zeta[c] @ chol[c].T  # (M, R)
            logits = np.empty((n_samples, k))
            for j in range(k):
                sol = solve_triangular(chol[j], (y - a * nu[j]).T, lower=True)  # (R, M): L^{-1}(y - m_j)
                logits[:, j] = log_rho[j] - 0.5 * ((sol * sol).sum(0) + g[c] * chi[c] / g[j] + logdet[j])
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            out[i, c] = float((p[:, c] / p.sum(axis=1)).mean())
    return out


def spiked_speciation_times(weights: ArrayLike, centroids: ArrayLike, covariances: Sequence[SpikedCovariance],
                            times: ArrayLike, threshold: float = 0.775, mode: str = "absolute",
                            n_samples: int = 20000, seed: int = 0) -> tuple[list[Time], Array]:
    """Per-class t_S,c (K,) for spiked classes and the curves phi (T, K) they are read from; the levels are
    :func:`~classdiff.theory.speciation.commitment_levels` of ``weights`` (``mode`` absolute or relative).
    +inf: committed at the largest time of ``times``; "not reached": never reaches its level on the grid."""
    phi = spiked_commitment_curves(weights, centroids, covariances, times, n_samples=n_samples, seed=seed)
    levels = commitment_levels(weights, threshold, mode)
    return [reached(v) for v in read_speciation_times(times, phi, levels)], phi
