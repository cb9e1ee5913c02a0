"""The Gaussian equivalence conditional on a class's spike coordinates (``docs/theory.md`` §8.8).

The plain GE (:mod:`classdiff.rf.gaussian_equivalence`) keeps the linear part of a feature in the data and
replaces the rest by noise independent across features. For a class with strong spikes,
Sigma_c = floor I + V diag(s) V^T with s_k of order d, the pre-activation of feature i on a point
x = mu_c + V zeta + delta_perp (zeta = V^T (x - mu_c), delta_perp orthogonal to span V) is

    h_i = M_i + e^{-t} w_i . delta_perp / sqrt d + sqrt(Delta_t) v,     M_i = e^{-t} w_i . (mu_c + V zeta) / sqrt d,

and M_i, an O(1) function of the r spike coordinates shared by all the features of the point, is not small: the
non-linear terms of sigma in M_i (its Hermite terms of degree >= 2 in zeta) are common to every feature of a
point, not independent noise. The conditional GE linearises only the bulk delta_perp: with the constants of
:func:`classdiff.rf.features.equivalence_constants` taken at the point's own mean M_i and the bulk variance
w_i^T P Sigma_c P w_i / d (P = I - V V^T),

    g_{nu,i} = kappa0(M_{nu,i}) + a(M_{nu,i}) e^{-t} w_i . delta_perp,nu / sqrt d + sqrt(v2(M_{nu,i})) omega_{nu,i},

and the noise-averaged second moment of the point is g g^T + D_{b_nu} K D_{b_nu} + D_{s2_nu} (K = W W^T / d).
On Gaussian surrogates of Fashion-MNIST classes (d = 196, rank 16) this gives the tau_gen and tau_mem of the exact
tanh features within 2.5%, seed by seed, where the plain GE memorizes up to 1.66x late (``docs/theory.md`` §8.8).

The constants are needed at m x p different means; :class:`ConstantTable` interpolates them from a grid.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.data.process import signal_scale
from classdiff.rf.features import equivalence_constants

__all__ = ["ConstantTable", "conditional_features", "conditional_group_moments"]

Array = NDArray[np.float64]
_KEYS = ("kappa0", "a", "b", "v2", "s2")


def _cubic_weights(pos: Array, size: int) -> tuple[Array, Array]:
    """4-point Lagrange interpolation on a unit-spaced grid of ``size`` nodes: for fractional positions ``pos``
    (any shape, inside [0, size - 1]), the index j of the first stencil node (j..j+3, clamped to the grid) and
    the 4 weights (shape + (4,))."""
    j = np.clip(np.floor(pos).astype(int) - 1, 0, size - 4)
    u = pos - (j + 1)  # in [0, 1) away from the grid's ends
    w = np.stack([-u * (u - 1) * (u - 2) / 6, (u + 1) * (u - 1) * (u - 2) / 2,
                  -(u + 1) * u * (u - 2) / 2, (u + 1) * u * (u - 1) / 6], axis=-1)
    return j, w


class ConstantTable:
    """GE constants (kappa0, a, b, v2, s2) at arrays of pre-activation means (m, p) with one data variance per
    feature (p,), interpolated (cubic Lagrange in both) from a table of ``nodes`` means x ``levels`` variances
    (uniform in the mean, geometric in the variance).

    With the defaults, at t = 0.1 on tanh, the interpolation error is below 1e-5 of each constant's largest value
    when the variances span a factor 1.5 (a bulk variance over the features) and below 2e-4 when they span a
    factor 64 (tests/test_conditional_equivalence.py); a build costs ``nodes x levels`` quadratures (about 1.5 s).
    The table covers 1.5 times the range of means and [0.7, 1.4] times the range of variances it was first asked
    for, and is rebuilt wider when a call falls outside it.
    """

    def __init__(self, activation: str, time: float, nodes: int = 401, levels: int = 17) -> None:
        if nodes < 4 or levels < 4:
            raise ValueError(f"nodes = {nodes}, levels = {levels}: both must be >= 4 (cubic interpolation)")
        self.activation, self.time, self.nodes, self.levels = activation, float(time), int(nodes), int(levels)
        self.means_: Array | None = None
        self.variances_: Array | None = None
        self.table_: dict[str, Array] = {}

    def _covers(self, means: Array, variances: Array) -> bool:
        if self.means_ is None or self.variances_ is None:
            return False
        return bool(means.min() >= self.means_[0] and means.max() <= self.means_[-1]
                    and variances.min() >= self.variances_[0] and variances.max() <= self.variances_[-1])

    def _build(self, m_lo: float, m_hi: float, v_lo: float, v_hi: float) -> None:
        half, mid = 0.75 * (m_hi - m_lo) + 1e-3, 0.5 * (m_hi + m_lo)
        self.means_ = np.linspace(mid - half, mid + half, self.nodes)
        self.variances_ = np.geomspace(0.7 * v_lo, 1.4 * v_hi, self.levels)
        ge = equivalence_constants(self.activation, self.time, self.variances_[None, :], self.means_[:, None])
        self.table_ = {key: np.broadcast_to(getattr(ge, key), (self.nodes, self.levels)).copy() for key in _KEYS}

    def __call__(self, means: ArrayLike, variances: ArrayLike) -> dict[str, Array]:
        """``means`` (m, p), ``variances`` (p,) > 0: each constant as an (m, p) array (v2, s2 clipped at 0)."""
        means = np.asarray(means, dtype=np.float64)
        variances = np.asarray(variances, dtype=np.float64)
        if means.ndim != 2 or variances.shape != (means.shape[1],):
            raise ValueError(f"means {means.shape}, variances {variances.shape}: must be (m, p) and (p,)")
        if not np.all(variances > 0):
            raise ValueError(f"variances: must be > 0, got min {variances.min()!r}")
        if not self._covers(means, variances):
            lo, hi = float(means.min()), float(means.max())
            if self.means_ is not None:
                lo, hi = min(lo, float(self.means_[0])), max(hi, float(self.means_[-1]))
            self._build(lo, hi, float(variances.min()), float(variances.max()))
        assert self.means_ is not None and self.variances_ is not None
        log_v = np.log(self.variances_)
        jv, wv = _cubic_weights((np.log(variances) - log_v[0]) / (log_v[1] - log_v[0]), self.levels)
        jm, wm = _cubic_weights((means - self.means_[0]) / (self.means_[1] - self.means_[0]), self.nodes)
        feature = np.arange(means.shape[1])
        out = {}
        for key, table in self.table_.items():
            # each feature's column at its own variance (nodes, p), then each point's mean in that column
            column = sum(wv[:, k] * table[:, jv + k] for k in range(4))
            col = sum(wm[..., k] * column[jm + k, feature] for k in range(4))
            out[key] = np.maximum(col, 0.0) if key in ("v2", "s2") else col
        return out


def conditional_features(
    W: ArrayLike, activation: str, time: float, centroid: ArrayLike, covariance: ArrayLike, basis: ArrayLike,
    deviations: ArrayLike, table: ConstantTable | None = None,
) -> dict[str, Array]:
    """The conditional GE of m points of one class (module docstring), without its independent part.

    ``W`` (p, d), ``centroid`` (d,) mu_c, ``covariance`` (d, d) Sigma_c, ``basis`` (d, r) orthonormal V (the
    spike directions; r = 0 gives the plain GE), ``deviations`` (m, d) x - mu_c. Returns ``"mean"`` (m, p),
    kappa0(M) + a(M) e^{-t} W delta_perp / sqrt d, the noise-averaged feature without its independent part, and the
    constants ``"v2"``, ``"b"``, ``"s2"`` (m, p) at each point's M. ``table`` reuses a :class:`ConstantTable`
    across calls (its activation and time must be these).
    """
    W = np.asarray(W, dtype=np.float64)
    V = np.asarray(basis, dtype=np.float64)
    dev = np.atleast_2d(np.asarray(deviations, dtype=np.float64))
    cov = np.asarray(covariance, dtype=np.float64)
    d = W.shape[1]
    if V.ndim != 2 or V.shape[0] != d or dev.shape[1] != d or cov.shape != (d, d):
        raise ValueError(f"basis {V.shape}, deviations {dev.shape}, covariance {cov.shape}: must be (d, r), (m, d), "
                         f"(d, d) with d = {d}")
    if table is None:
        table = ConstantTable(activation, time)
    elif (table.activation, table.time) != (activation, float(time)):
        raise ValueError(f"table: built for ({table.activation}, t = {table.time}), not ({activation}, t = {time})")
    e_t = float(signal_scale(time))
    spike = (dev @ V) @ V.T
    bulk = dev - spike
    projector = np.eye(d) - V @ V.T
    bulk_variance = np.einsum("ij,ij->i", W @ (projector @ cov @ projector), W) / d
    means = e_t * (np.asarray(centroid, dtype=np.float64) + spike) @ W.T / math.sqrt(d)
    k = table(means, bulk_variance)
    return {"mean": k["kappa0"] + k["a"] * (e_t * bulk @ W.T / math.sqrt(d)), "v2": k["v2"], "b": k["b"],
            "s2": k["s2"]}


def conditional_group_moments(
    W: ArrayLike, activation: str, time: float, centroid: ArrayLike, covariance: ArrayLike, basis: ArrayLike,
    deviations: ArrayLike, omega: ArrayLike, table: ConstantTable | None = None,
) -> tuple[Array, Array]:
    """Conditional-GE moments of m points of one class: U (p, p) = (1/m) sum_nu [g_nu g_nu^T + D_{b_nu} K
    D_{b_nu} + D_{s2_nu}] and the Stein vector (1/m) sum_nu b_nu (p,), with which V = b W / sqrt(d) — the same
    layout as :func:`classdiff.rf.gaussian_equivalence.group_moments`. ``omega`` (m, p) standard normals; the rest
    as in :func:`conditional_features`."""
    W = np.asarray(W, dtype=np.float64)
    omega = np.asarray(omega, dtype=np.float64)
    f = conditional_features(W, activation, time, centroid, covariance, basis, deviations, table)
    m, p = f["mean"].shape
    if omega.shape != (m, p):
        raise ValueError(f"omega {omega.shape}: must be ({m}, {p})")
    G = f["mean"] + np.sqrt(f["v2"]) * omega
    U = G.T @ G / m + (f["b"].T @ f["b"] / m) * (W @ W.T / W.shape[1])
    U.flat[:: p + 1] += f["s2"].mean(axis=0)
    return U, f["b"].mean(axis=0)
