"""Random-features (RF) score model: exact noise-averaged moments and closed-form gradient flow, per class.

Model and conventions (``DESIGN.md``; Bonnaire et al. 2505.17638 eqs. 9–11, Prop. C.1):

    s_A(x) = A phi(x) / sqrt(p),   phi(x) = sigma(W x / sqrt(d)),   W (p, d) i.i.d. N(0, 1) fixed,  A(0) = 0
    L(A)   = (1/(n d)) sum_nu E_eta || sqrt(Delta_t) s_A(x_t^nu) + eta ||^2,   x_t = e^{-t} x_0 + sqrt(Delta_t) eta
           = 1 + (Delta_t/(d p)) tr(A U A^T) + (2 sqrt(Delta_t)/(d sqrt p)) tr(A V)                       (1)
    U = (1/n) sum_nu E_eta[phi phi^T]  (p, p),       V = (1/n) sum_nu E_eta[phi eta^T]  (p, d)
    dA/dtau = -2 Delta_t (d/p) A U - (2 d sqrt(Delta_t)/sqrt(p)) V^T        (tau = k eta / d^2 for GD)     (2)

With B = A/sqrt(p) and the cached eigendecomposition U = Q diag(lambda) Q^T, the solution of (2) is

    B(tau) Q = -(1/sqrt(Delta_t)) M^T diag(gamma(tau)),   M = Q^T V,
    gamma_k(tau) = (1 - exp(-2 Delta_t lambda_k tau / psi_p)) / lambda_k    (-> 1/lambda_k at tau = inf)    (3)

and every loss that is quadratic in A is evaluated for all tau at once from traces in the eigenbasis:

    L_c(tau) = 1 + (1/d) [ gamma^T (Q^T U_c Q o N) gamma - 2 gamma . rowsum(M o Q^T V_c) ],   N = M M^T    (4)
    E_c(tau) = (1/d) [ (1/Delta_t) gamma^T (Q^T S_c Q o N) gamma + (2/sqrt(Delta_t)) gamma . rowsum(M o Q^T Z_c)
                       + e_c ]                                                                             (5)

where U_c, V_c are the class-c moments (train: the n_c training points; test: fresh class-c points), and
the score-error moments are S_c = E[phi phi^T], Z_c = E[phi s*^T], e_c = E|s*|^2 at x ~ P_t restricted to
class c (s* the exact mixture score). ``o`` is the entrywise product. A ridge r replaces U by U + r I in
the flow (the reported losses stay the un-penalised ones); modes with lambda <= rcond * lambda_max are
frozen (pseudo-inverse convention at tau = inf).

Noise average (``method``):

* ``"series"`` (default, exact up to a controlled truncation): given x_0, the pre-activations
  h_i = m_i + s_i z_i are jointly Gaussian with m = e^{-t} W x_0/sqrt(d), s_i^2 = Delta_t |W_i|^2/d and
  correlations R_ij = W_i.W_j / (|W_i| |W_j|), the same for every point. Mehler's formula gives
  E[sigma(h_i) sigma(h_j)] = sum_k R_ij^k c_k(i) c_k(j) / k!, c_k = E[sigma(m + s z) He_k(z)]; the series
  is truncated at ``series_order`` (error per entry <= |R_ij|^{K+1} sqrt(T_i T_j) with the exactly known
  tails T_i = E sigma^2 - sum_{k<=K} c_k^2/k!, reported as ``series_error_bound_``) and the diagonal is exact.
  V is exact by Stein's lemma: E[sigma(h_i) eta_j] = (sqrt(Delta_t) W_ij/sqrt(d)) E[sigma'(h_i)].
* ``"mc"``: ``noise_samples`` fixed noise draws per point (seeded), processed in chunks; the loss is then the
  empirical quadratic of those draws (what GD with the same fixed draws minimises).

Cost (``fit``, series): the Hermite coefficients by Gauss–Hermite quadrature in cache-sized chunks; the
Mehler sum of each group (class, or batch of fresh points) by Horner's rule, acc <- C_k^T C_k + (R o acc)/(k+1),
with one symmetric rank-k update per order ((K+1) n p^2 flops in all); the geometry R computed once per fit;
rotations Q^T U Q through a Cholesky factor (7/3 p^3 flops, one class of the training set follows from
diag(lambda)); the curves through triangular products (T p^2 flops per quadratic form).

Memory: no array larger than ``chunk_bytes`` (besides a few p x p matrices) is ever allocated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike, NDArray
from scipy.linalg import blas as _blas
from scipy.linalg import lapack as _lapack
from scipy.special import ndtr

from classdiff.core.config import FEATURE_MOMENTS
from classdiff.core.memory import check_memory
from classdiff.core.readoff import ORDER_KEYS, class_order, generalization_time, memorization_time
from classdiff.core.results import Time, reached
from classdiff.data.mixture import GaussianMixture, TrainingSet
from classdiff.data.process import diffuse, noise_variance, signal_scale
from classdiff.rf.features import activation as activation_function
from classdiff.rf.features import gauss_hermite
from classdiff.rf.gaussian_equivalence import gaussian_equivalent_covariance, group_moments

__all__ = [
    "ClassMoments",
    "RandomFeaturesScore",
    "dynamics_from_config",
    "hermite_coefficients",
    "noise_averaged_moments",
]

Array = NDArray[np.float64]
METHODS = ("series", "mc")
#: feature_moments (:data:`classdiff.core.config.FEATURE_MOMENTS`) -> closure of
#: :data:`classdiff.rf.gaussian_equivalence.CLOSURES`
_GE_CLOSURE = {"ge": "per-feature", "ge-centred": "centred", "ge-mean-type": "mean-type"}
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------------------
# Hermite coefficients of sigma(m + s z)


def hermite_coefficients(
    activation: str, mean: ArrayLike, scale: ArrayLike, order: int, n_nodes: int = 0
) -> tuple[Array, Array]:
    """c_k = E_z[sigma(m + s z) He_k(z)], k = 0..order, and E_z[sigma(m + s z)^2], z ~ N(0, 1).

    ``mean`` and ``scale`` broadcast to a common shape S; returns ``(coefficients (order+1, *S), second (S))``.
    ReLU and identity are closed form (Stein: c_k = s E[sigma^{(k)}]); tanh and erf use
    Gauss–Hermite quadrature with ``n_nodes`` points (0: :func:`default_nodes` of the largest scale).
    """
    m, s = np.broadcast_arrays(np.asarray(mean, dtype=np.float64), np.asarray(scale, dtype=np.float64))
    out = np.zeros((order + 1, *m.shape))
    if activation == "identity":
        out[0] = m
        if order >= 1:
            out[1] = s
        return out, m**2 + s**2
    if activation == "relu":
        a = m / s
        pdf = np.exp(-0.5 * a**2) * _INV_SQRT_2PI
        cdf = ndtr(a)
        out[0] = m * cdf + s * pdf
        if order >= 1:
            out[1] = s * cdf
        # sigma'' = s delta(z + m/s): c_k = s phi(a) He_{k-2}(-a) for k >= 2
        he_prev, he = np.zeros_like(a), np.ones_like(a)
        for k in range(2, order + 1):
            out[k] = s * pdf * he
            he_prev, he = he, -a * he - (k - 2) * he_prev
        return out, (m**2 + s**2) * cdf + m * s * pdf
    if n_nodes <= 0:
        n_nodes = default_nodes(float(np.max(s)) if s.size else 0.0)
    z, w = gauss_hermite(n_nodes)
    he = np.empty((order + 1, z.size))
    he[0] = 1.0
    if order >= 1:
        he[1] = z
    for k in range(1, order):
        he[k + 1] = z * he[k] - k * he[k - 1]
    hw = np.ascontiguousarray((he * w).T)  # (Q, order+1)
    sig = activation_function(activation)
    total = m.size
    flat_out = out.reshape(order + 1, total)
    second = np.empty(total)
    # rows of the (points x nodes) tensor sigma(m + s z_q) in cache-sized chunks (~0.5 MB): every pass (fill,
    # sigma, one BLAS call for all k, square, one BLAS call for the second moment) then stays in cache
    rows = max(1, min(total, 2**19 // (8 * z.size)))
    buf = np.empty((rows, z.size))
    res = np.empty((rows, order + 1))
    scale = np.asarray(scale, dtype=np.float64)
    exp_table = None
    if m.ndim >= 1 and scale.ndim == 1 and scale.size == m.shape[-1] and m.shape[-1] > 1:
        # one scale per last-axis entry (a feature): the table s_i z_q is built once, each row is one add
        width = m.shape[-1]
        sz = scale[:, None] * z
        mf = m.reshape(-1, width)
        step = min(width, rows)
        spans = [(i, j0, min(width, j0 + step)) for i in range(mf.shape[0]) for j0 in range(0, width, step)]
        if activation == "tanh" and mf.size and 2 * max(np.abs(mf).max(), np.abs(sz).max()) < 700:
            # tanh(m + s z) = 1 - 2 / (1 + e^{2m} e^{2 s z}) from two exponential tables (no overflow to nan
            # below the guard; absolute error ~ 1 ulp like np.tanh), about twice as fast as tanh per entry
            exp_table, exp_m = np.exp(2.0 * sz), np.exp(2.0 * mf)
    else:
        sz = None
        mf, sf = m.reshape(-1), s.reshape(-1)
        spans = [(0, r0, min(total, r0 + rows)) for r0 in range(0, total, rows)]
    for i, j0, j1 in spans:
        v, o = buf[: j1 - j0], res[: j1 - j0]
        if exp_table is not None:
            np.multiply(exp_m[i, j0:j1, None], exp_table[j0:j1], out=v)
            v += 1.0
            np.divide(2.0, v, out=v)
            np.subtract(1.0, v, out=v)
            r0 = i * width + j0
        elif sz is not None:
            np.add(mf[i, j0:j1, None], sz[j0:j1], out=v)
            _apply_in_place(sig, v)
            r0 = i * width + j0
        else:
            np.multiply(sf[j0:j1, None], z, out=v)
            v += mf[j0:j1, None]
            _apply_in_place(sig, v)
            r0 = j0
        np.matmul(v, hw, out=o)
        r1 = r0 + j1 - j0
        flat_out[:, r0:r1] = o.T
        np.square(v, out=v)
        np.matmul(v, w, out=second[r0:r1])
    return out, second.reshape(m.shape)


def _apply_in_place(sig: Any, v: Array) -> None:
    if isinstance(sig, np.ufunc):
        sig(v, out=v)
    else:
        v[...] = sig(v)


def default_nodes(scale: float) -> int:
    """Gauss–Hermite order giving ~1e-14 on c_0..c_2 of tanh/erf(m + s z) for s <= ``scale`` (measured
    against 180 nodes: 48 nodes suffice up to s = 0.5; the poles of tanh at distance pi/(2s) slow the rule
    for larger s)."""
    return 48 if scale <= 0.55 else 96 if scale <= 0.8 else 160


# ---------------------------------------------------------------------------------------------------------
# noise-averaged moments


@dataclass
class ClassMoments:
    """Noise-averaged feature moments of one group of points (one class of a training set, or a batch).

    ``U`` (p, p) = mean E_eta[phi phi^T], ``V`` (p, d) = mean E_eta[phi eta^T], ``count`` the number of
    points, ``series_error_bound`` the largest bound on the truncation error of an entry of U (0 for MC),
    ``stein`` (series only) the vector v (p,) with V = v[:, None] * W / sqrt(d) (Stein's lemma), or None.
    """

    U: Array
    V: Array
    count: int
    series_error_bound: float = 0.0
    stein: Array | None = field(default=None, repr=False)


def _feature_geometry(W: Array) -> tuple[Array, Array]:
    """Row norms r_i = |W_i|^2/d (p,) and correlations R_ij = W_i.W_j/(|W_i||W_j|) (p, p)."""
    d = W.shape[1]
    r = (W * W).sum(1) / d
    R = (W @ W.T) / d
    R /= np.sqrt(np.outer(r, r))
    np.fill_diagonal(R, 1.0)
    return r, R


def noise_averaged_moments(
    x0: Array,
    labels: Array,
    n_classes: int,
    W: Array,
    activation: str,
    time: float,
    method: str = "series",
    series_order: int = 12,
    noise_samples: int = 100,
    seed: int = 0,
    chunk_bytes: int = 2**27,
) -> list[ClassMoments]:
    """Per-class U_c = mean_{nu in c} E_eta[phi phi^T] and V_c = mean_{nu in c} E_eta[phi eta^T] (eqs. (1)-(2)).

    ``x0`` (n, d) clean points, ``labels`` (n,) in 0..n_classes-1, ``W`` (p, d). ``method = "series"`` is the
    Mehler-series exact average (module docstring), ``"mc"`` averages ``noise_samples`` seeded draws per
    point. Work is done in blocks of points so that no temporary exceeds about ``chunk_bytes``.
    Returns one :class:`ClassMoments` per class (a class without points gets zeros and ``count = 0``).
    """
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: must be one of {', '.join(METHODS)}")
    x0 = np.asarray(x0, dtype=np.float64)
    labels = np.asarray(labels)
    if method == "series":
        return _series_moments(x0, labels, n_classes, W, activation, time, int(series_order), chunk_bytes)
    if noise_samples < 1:
        raise ValueError(f"noise_samples = {noise_samples!r}: must be >= 1 for method = 'mc'")
    n, d = x0.shape
    p = W.shape[0]
    U = [np.zeros((p, p)) for _ in range(n_classes)]
    V = [np.zeros((p, d)) for _ in range(n_classes)]
    counts = np.bincount(labels, minlength=n_classes)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E01]))
    block = max(1, min(n, chunk_bytes // (8 * noise_samples * (p + d))))
    sig = activation_function(activation)
    for start in range(0, n, block):
        sl = slice(start, min(n, start + block))
        b = sl.stop - sl.start
        eta = rng.standard_normal((b, noise_samples, d))
        xt, _ = diffuse(x0[sl][:, None, :], time, eta=eta)  # (b, M, d)
        phi = sig(xt.reshape(-1, d) @ W.T / math.sqrt(d)).reshape(b, noise_samples, p)
        lab = labels[sl]
        for c in np.unique(lab):
            rows = lab == c
            f = phi[rows].reshape(-1, p)
            U[c] += f.T @ f
            V[c] += f.T @ eta[rows].reshape(-1, d)
    for c in range(n_classes):
        if counts[c]:
            U[c] /= counts[c] * noise_samples
            V[c] /= counts[c] * noise_samples
    return [ClassMoments(U[c], V[c], int(counts[c]), 0.0) for c in range(n_classes)]


def _series_moments(
    x0: Array,
    labels: Array,
    n_groups: int,
    W: Array,
    activation: str,
    time: float,
    order: int,
    chunk_bytes: int,
    geometry: tuple[Array, Array] | None = None,
) -> list[ClassMoments]:
    """The ``"series"`` branch of :func:`noise_averaged_moments` (same arguments; ``geometry`` the cached
    :func:`_feature_geometry` of W, shared by every call with the same W).

    Points are sorted by group so that a group is a contiguous run of rows of a block: its Hermite
    coefficients (order+1, rows, p) are views, and its Mehler sum sum_k R^k o C_k^T C_k / k! is built by
    Horner's rule, acc <- C_k^T C_k + (R o acc)/(k+1) for k = K..0, one symmetric rank-k update (BLAS syrk,
    upper triangle, half the flops of a product) and one in-place Hadamard product per order, no temporaries.
    """
    n, d = x0.shape
    p = W.shape[0]
    e_t, delta = float(signal_scale(time)), float(noise_variance(time))
    r, R = _feature_geometry(W) if geometry is None else geometry
    s = np.sqrt(delta * r)
    n_nodes = default_nodes(float(s.max()))
    counts = np.bincount(labels, minlength=n_groups)
    sort = np.argsort(labels, kind="stable")
    xs, ls = x0[sort], labels[sort]
    # blocks of points: coefficients (order+1, B, p) within chunk_bytes (V needs c_1 even for order 0)
    h_order = max(order, 1)
    block = max(1, min(n, chunk_bytes // (8 * p * (h_order + 2))))
    U: list[Array | None] = [None] * n_groups
    diag = [np.zeros(p) for _ in range(n_groups)]
    c1 = [np.zeros(p) for _ in range(n_groups)]
    tails = np.zeros(p)
    inv_fact = np.array([1.0 / math.factorial(k) for k in range(order + 1)])
    scratch: Array | None = None  # for a group split over blocks; its lower triangle stays 0
    for start in range(0, n, block):
        stop = min(n, start + block)
        m = (xs[start:stop] @ W.T) * (e_t / math.sqrt(d))  # (B, p)
        coef, second = hermite_coefficients(activation, m, s, h_order, n_nodes)
        tail = second.copy()  # T = E sigma^2 - sum_{k<=K} c_k^2/k!
        sq = np.empty_like(tail)
        for k in range(order + 1):
            np.square(coef[k], out=sq)
            sq *= inv_fact[k]
            tail -= sq
        np.maximum(tail, 0.0, out=tail)
        tails = np.maximum(tails, np.sqrt(tail.max(0)))
        lab = ls[start:stop]
        edges = [0, *(np.flatnonzero(np.diff(lab)) + 1).tolist(), lab.size]
        for a, b in itertools.pairwise(edges):
            c = int(lab[a])
            if U[c] is None:
                U[c] = target = np.zeros((p, p))
            else:
                if scratch is None:
                    scratch = np.zeros((p, p))
                target = scratch
            _mehler_sum(coef[: order + 1, a:b], R, target)
            if target is scratch:
                U[c] += scratch
            diag[c] += second[a:b].sum(0)
            c1[c] += coef[1, a:b].sum(0)
    # bound on the truncation error of an off-diagonal entry: max |R_ij|^(K+1) sqrt(T_i T_j)
    np.fill_diagonal(R, 0.0)
    off = max(float(R.max()), -float(R.min())) if p > 1 else 0.0
    np.fill_diagonal(R, 1.0)
    bound = float(off ** (order + 1) * tails.max() ** 2)
    out = []
    for c in range(n_groups):
        Uc = U[c] if U[c] is not None else np.zeros((p, p))
        V, v = np.zeros((p, d)), np.zeros(p)
        if counts[c]:
            Uc /= counts[c]
            _symmetrize_from_upper(Uc)
            np.fill_diagonal(Uc, diag[c] / counts[c])
            # E[sigma(h_i) eta_j] = Cov(h_i, eta_j) E[sigma'(h_i)] = (sqrt(Delta) W_ij/sqrt d) c_1/s_i
            v = (c1[c] / counts[c]) / np.sqrt(r)
            V = v[:, None] * W / math.sqrt(d)
        out.append(ClassMoments(Uc, V, int(counts[c]), bound, stein=v))
    return out


def _mehler_sum(coef: Array, R: Array, target: Array) -> None:
    """Upper triangle of target <- sum_k R^k o (C_k^T C_k) / k! for coef = C (K+1, b, p), by Horner's rule.

    ``target`` (p, p) C-ordered; its upper triangle is overwritten (the lower one is only multiplied by R).
    """
    K = coef.shape[0] - 1
    for k in range(K, -1, -1):
        if k < K:
            target *= R
        # C-ordered upper triangle = lower triangle of the Fortran view target.T; coef[k].T is Fortran (p, b)
        _blas.dsyrk(1.0, coef[k].T, beta=1.0 / (k + 1) if k < K else 0.0, c=target.T, trans=0, lower=1,
                    overwrite_c=1)


def _symmetrize_from_upper(a: Array, block: int = 256) -> None:
    """Copy the upper triangle of the square C-ordered ``a`` onto its lower triangle, in place, by blocks."""
    p = a.shape[0]
    for j0 in range(0, p, block):
        j1 = min(p, j0 + block)
        a[j0:j1, :j0] = a[:j0, j0:j1].T
        blk = a[j0:j1, j0:j1]
        low = np.tril_indices(j1 - j0, -1)
        blk[low] = blk.T[low]


def _rotate(U: Array, Q: Array) -> Array:
    """Q^T U Q (p, p) for a symmetric U, in fewer flops than the 4 p^3 of two products.

    Positive definite U (every noise-averaged second moment: a Schur-product sum of PSD terms plus a
    positive diagonal): Cholesky U = L L^T (p^3/3), Y = L^T Q (triangular product, p^3), Y^T Y (symmetric
    rank-k update, p^3). Otherwise (semi-definite, e.g. the identity activation with p > d): with
    T = triu(U) - diag(U)/2, U = T + T^T and Q^T U Q = X + X^T, X = Q^T (T Q) (3 p^3).
    """
    Qf = np.asfortranarray(Q)
    # U is C-ordered and symmetric: its Fortran view U.T is U itself
    chol, info = _lapack.dpotrf(U.T, lower=1, clean=1, overwrite_a=0)
    if info == 0:
        Y = _blas.dtrmm(1.0, chol, Qf, side=0, lower=1, trans_a=1)  # L^T Q
        return Y.T @ Y
    T = np.triu(U)  # C-ordered upper triangle: its Fortran view T.T is the lower triangle of U
    T.flat[:: T.shape[0] + 1] *= 0.5
    X = Q.T @ _blas.dtrmm(1.0, T.T, Qf, side=0, lower=1)
    return X + X.T


def _quadratic_rows(G: Array, H: Array) -> Array:
    """g_t^T H g_t for every row g_t of G (T, p), H (p, p) symmetric, in T p^2 flops instead of 2 T p^2:
    with T_H = triu(H) - diag(H)/2, g^T H g = 2 g^T T_H g, and G T_H is a triangular product (BLAS trmm)."""
    T = np.triu(H)
    T.flat[:: T.shape[0] + 1] *= 0.5
    # Fortran views: T.T is the lower triangular T_H^T, G.T is G^T; Z = T_H^T G^T = (G T_H)^T, (p, T)
    Z = _blas.dtrmm(1.0, T.T, G.T, side=0, lower=1)
    return 2.0 * np.einsum("kt,tk->t", Z, G)


# ---------------------------------------------------------------------------------------------------------
# the estimator


@dataclass
class _BatchMoments:
    """Per-class moments of fresh points, rotated into the eigenbasis of U, one entry per batch."""

    quad: list[Array] = field(default_factory=list)  # Q^T U_b Q or Q^T S_b Q, (p, p)
    lin: list[Array] = field(default_factory=list)  # rowsum(M o Q^T V_b) or rowsum(M o Q^T Z_b), (p,)
    const: list[float] = field(default_factory=list)  # e_b (score error only)


class RandomFeaturesScore:
    """RF score model at one diffusion time, trained by gradient flow in closed form (eqs. (1)–(5)).

    Parameters
    ----------
    n_features : p, the number of random features.
    activation : ``"tanh"`` (default), ``"relu"``, ``"erf"`` or ``"identity"``.
    time : diffusion time t > 0.
    seed : seeds W and every Monte Carlo draw (same seed, same numbers).
    ridge : r >= 0, flow on U + r I (0: ridgeless; tau = inf is then the minimum-norm minimiser).
    method : noise average, ``"series"`` (exact Mehler series) or ``"mc"`` (``noise_samples`` draws per point).
    series_order : truncation order K of the Mehler series.
    noise_samples : draws per point for ``method = "mc"``.
    test_samples : fresh points per class for the test-loss moments.
    score_samples : fresh points of P_t per class for the score-error moments.
    n_batches : the fresh points are split in this many batches; standard errors are batch-means SEs.
    rcond : eigenvalues <= rcond * lambda_max are treated as null modes.
    chunk_bytes : memory budget of temporaries.
    feature_moments : ``"exact"`` (default), or the Gaussian-equivalent moments of
        :func:`classdiff.rf.gaussian_equivalence.group_moments` (``"ge"`` per feature, ``"ge-centred"`` without
        the class-mean features, ``"ge-mean-type"`` the theory's one-type closure); the GE needs the mixture,
        and the flow, read-off and test points are the same, so the three locate what a closure loses
        (``docs/theory.md`` §6.3). The score error always uses the real features.

    Attributes after :meth:`fit`
    ----------------------------
    W_ (p, d); U_ (p, p); V_ (p, d); U_by_class_, V_by_class_ (lists over classes); class_counts_ (K,);
    eigenvalues_ (p,) ascending and eigenvectors_ (p, p) of U_ (+ ridge); n_, dim_, n_classes_, delta_;
    series_error_bound_; and, when a mixture was given, test/score moments for :meth:`predict_curves`.
    """

    def __init__(
        self,
        n_features: int,
        activation: str = "tanh",
        time: float = 0.1,
        seed: int = 0,
        ridge: float = 0.0,
        method: str = "series",
        series_order: int = 12,
        noise_samples: int = 100,
        test_samples: int = 2000,
        score_samples: int = 2000,
        n_batches: int = 8,
        rcond: float = 1e-12,
        chunk_bytes: int = 2**27,
        feature_moments: str = "exact",
    ) -> None:
        self.n_features = n_features
        self.activation = activation
        self.time = time
        self.seed = seed
        self.ridge = ridge
        self.method = method
        self.series_order = series_order
        self.noise_samples = noise_samples
        self.test_samples = test_samples
        self.score_samples = score_samples
        self.n_batches = n_batches
        self.rcond = rcond
        self.chunk_bytes = chunk_bytes
        self.feature_moments = feature_moments

    # ------------------------------------------------------------------------------------------ helpers
    def _check_params(self) -> None:
        from classdiff.rf.features import ACTIVATIONS

        if not isinstance(self.n_features, int | np.integer) or self.n_features < 1:
            raise ValueError(f"n_features = {self.n_features!r}: must be an integer >= 1")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation = {self.activation!r}: must be one of {', '.join(ACTIVATIONS)}")
        if not np.isfinite(self.time) or self.time <= 0:
            raise ValueError(f"time = {self.time!r}: must be finite and > 0")
        if not np.isfinite(self.ridge) or self.ridge < 0:
            raise ValueError(f"ridge = {self.ridge!r}: must be finite and >= 0")
        if self.method not in METHODS:
            raise ValueError(f"method = {self.method!r}: must be one of {', '.join(METHODS)}")
        if self.feature_moments not in FEATURE_MOMENTS:
            raise ValueError(f"feature_moments = {self.feature_moments!r}: must be one of {', '.join(FEATURE_MOMENTS)}")
        if self.n_batches < 2:
            raise ValueError(f"n_batches = {self.n_batches!r}: must be >= 2 (standard errors need two batches)")

    def _rng(self, stream: int) -> np.random.Generator:
        # a non-zero tag last: SeedSequence([s, 0]) equals SeedSequence(s), i.e. default_rng(s), which is what
        # ``mixture.sample(n, seed=s)`` uses; W must not share that stream
        return np.random.default_rng(np.random.SeedSequence([int(self.seed), int(stream), 0x52F5]))

    def _moments(self, x0: Array, labels: Array, n_classes: int, stream: int,
                 classes: Sequence[int] | None = None) -> list[ClassMoments]:
        """Moments of the groups 0..n_classes-1 of ``labels``; ``classes`` the mixture class of each group
        (default: group g is class g), used by the Gaussian-equivalent moments only."""
        if self.feature_moments != "exact":
            return self._ge_moments(x0, labels, n_classes, stream,
                                    list(range(n_classes)) if classes is None else list(classes))
        if self.method == "series":  # deterministic: no stream; the geometry of W is computed once per fit
            return _series_moments(x0, labels, n_classes, self.W_, self.activation, self.time,
                                   int(self.series_order), self.chunk_bytes, self._geometry)
        return noise_averaged_moments(
            x0, labels, n_classes, self.W_, self.activation, self.time, self.method, self.series_order,
            self.noise_samples, seed=int(self.seed) * 1000 + stream, chunk_bytes=self.chunk_bytes,
        )

    def _ge_moments(self, x0: Array, labels: Array, n_groups: int, stream: int,
                    classes: list[int]) -> list[ClassMoments]:
        mix = self._ge_mixture
        out = []
        for g in range(n_groups):
            xg = x0[labels == g]
            c = int(classes[g])
            if len(xg) == 0:
                p = int(self.n_features)
                out.append(ClassMoments(U=np.zeros((p, p)), V=np.zeros((p, self.dim_)), count=0,
                                        stein=np.zeros(p)))
                continue
            omega = np.random.default_rng(np.random.SeedSequence(
                [int(self.seed), int(stream), c, g, 0x6E0])).standard_normal((len(xg), int(self.n_features)))
            U, b = group_moments(self.W_, self.activation, self.time, mix.centroids[c], mix.variances[c],
                                 xg - mix.centroids[c], omega, _GE_CLOSURE[self.feature_moments])
            out.append(ClassMoments(U=U, V=b[:, None] * self.W_ / math.sqrt(self.dim_), count=len(xg), stein=b))
        return out

    def features(self, x: ArrayLike) -> Array:
        """phi(x) = sigma(W x / sqrt d) for points x (m, d); shape (m, p)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return activation_function(self.activation)(x @ self.W_.T / math.sqrt(self.dim_))

    # ------------------------------------------------------------------------------------------ fit
    def fit(
        self,
        data: TrainingSet | GaussianMixture,
        mixture: GaussianMixture | None = None,
        n_samples: int | None = None,
        test_data: TrainingSet | None = None,
    ) -> RandomFeaturesScore:
        """Compute U, V (total and per class), the eigendecomposition of U, and, if a mixture is known,
        the per-class test and score-error moments on fresh samples.

        ``data`` is a :class:`TrainingSet`, or a :class:`GaussianMixture` from which ``n_samples`` points are
        drawn (seeded by ``seed``). ``mixture`` defaults to ``data`` when ``data`` is a mixture.
        ``test_data`` (real data, no mixture): held-out points per class whose noise-averaged moments give the
        per-class test loss, split into ``n_batches`` batches for its standard error; there is no exact score,
        so no score error.
        """
        self._check_params()
        if test_data is not None and (mixture is not None or isinstance(data, GaussianMixture)):
            raise ValueError("test_data: give either a mixture (fresh samples) or held-out test points, not both")
        if isinstance(data, GaussianMixture):
            if n_samples is None:
                raise ValueError("n_samples: must be given when fit() receives a GaussianMixture")
            mixture = data if mixture is None else mixture
            data = data.sample(int(n_samples), seed=self._rng(1))
        if not isinstance(data, TrainingSet):
            raise TypeError(f"data: expected a TrainingSet or GaussianMixture, got {type(data).__name__}")
        x0 = data.x
        self.n_, self.dim_ = x0.shape
        self.n_classes_ = int(max(data.counts.size, (mixture.n_classes if mixture is not None else 0)))
        if mixture is not None and mixture.dim != self.dim_:
            raise ValueError(f"mixture: dimension {mixture.dim} differs from the training set's {self.dim_}")
        p, d = int(self.n_features), self.dim_
        _check_dynamics_memory(self.n_, p, d, self.n_classes_, int(self.n_batches) if mixture is not None else 0)
        if self.feature_moments != "exact" and mixture is None:
            raise ValueError(f"feature_moments = {self.feature_moments!r}: the Gaussian-equivalent moments need the "
                             "mixture (fit(data, mixture)); use 'exact' for real data")
        self._ge_mixture = mixture
        self.W_ = self._rng(0).standard_normal((p, d))
        self._geometry = _feature_geometry(self.W_) if self.method == "series" else None
        self.delta_ = float(noise_variance(self.time))
        moments = self._moments(x0, data.labels, self.n_classes_, stream=2)
        self.class_counts_ = np.array([m.count for m in moments])
        self.U_by_class_ = [m.U for m in moments]
        self.V_by_class_ = [m.V for m in moments]
        w = self.class_counts_ / self.n_
        self.U_ = sum(wc * m.U for wc, m in zip(w, moments))
        self.V_ = sum(wc * m.V for wc, m in zip(w, moments))
        self.series_error_bound_ = max(m.series_error_bound for m in moments)
        # MRRR driver: as accurate as the default here and far less sensitive to an oversubscribed BLAS pool
        flow = self.U_.copy()
        flow.flat[:: p + 1] += self.ridge
        lam, Q = scipy.linalg.eigh(flow, driver="evr", overwrite_a=True, check_finite=False)
        self.eigenvalues_, self.eigenvectors_ = lam, Q
        self.M_ = Q.T @ self.V_  # (p, d)
        self.N_ = self.M_ @ self.M_.T  # (p, p)
        # sum_c (n_c/n) Q^T U_c Q = diag(lambda) - ridge I: the largest class follows from the others (K-1 rotations)
        big = int(np.argmax(self.class_counts_))
        quads: list[Array | None] = [None if c == big else _rotate(U, Q) for c, U in enumerate(self.U_by_class_)]
        rest = np.diag(lam - self.ridge)
        for c, X in enumerate(quads):
            if X is not None:
                rest -= w[c] * X
        quads[big] = rest / w[big]
        self.train_quad_ = quads
        # rowsum(M o Q^T V_c); with V_c = v_c W / sqrt(d) (series) it is P^T v_c, P = Q o (W M^T)/sqrt(d): one
        # p x p x d product for all classes and batches instead of one per class and batch
        self._stein_P = Q * (self.W_ @ self.M_.T) / math.sqrt(d) if self.method == "series" else None
        self.train_lin_ = [self._lin(m) for m in moments]
        self.mixture_ = mixture
        self.has_test_ = mixture is not None or test_data is not None
        if mixture is not None:
            self._fit_population(mixture)
            self.test_weights_ = mixture.weights
        elif test_data is not None:
            self._fit_test_points(test_data)
            self.test_weights_ = self.class_counts_ / self.n_
        return self

    def _fit_test_points(self, test: TrainingSet) -> None:
        """Per-class test moments of held-out points (``test.x`` (m, d), ``test.labels``), ``n_batches`` batches
        per class (a class needs at least 2 points per batch), rotated by Q; no score-error moments."""
        Q, K, nb, d = self.eigenvectors_, self.n_classes_, int(self.n_batches), self.dim_
        if test.x.ndim != 2 or test.x.shape[1] != d:
            raise ValueError(f"test_data: points of shape {test.x.shape}; expected (m, {d}) like the training set")
        self.test_ = [_BatchMoments() for _ in range(K)]
        self.score_ = None
        self._test_lin_full = [np.zeros((self.n_features, d)) for _ in range(K)]
        self._score_lin_full = None
        sizes = []
        for c in range(K):
            xc = test.x[test.labels == c]
            m = len(xc) // nb
            if m < 2:
                raise ValueError(f"test_data: class {c} has {len(xc)} held-out points; need at least 2 per batch "
                                 f"({2 * nb} for n_batches = {nb})")
            xc = xc[: m * nb]
            sizes.append(m * nb)
            if self.method == "series":
                moms = self._moments(xc, np.repeat(np.arange(nb), m), nb, stream=0)
            else:
                moms = [self._moments(xc[b * m:(b + 1) * m], np.zeros(m, dtype=np.int64), 1,
                                      stream=100 + nb * c + b)[0] for b in range(nb)]
            if all(mom.stein is not None for mom in moms):
                v_mean = np.mean([mom.stein for mom in moms], axis=0)
                self._test_lin_full[c] = Q.T @ (v_mean[:, None] * self.W_) / math.sqrt(d)
            else:
                self._test_lin_full[c] = np.mean([Q.T @ mom.V for mom in moms], axis=0)
            for b in range(nb):
                self.test_[c].quad.append(_rotate(moms[b].U, Q))
                self.test_[c].lin.append(self._lin(moms[b]))
                moms[b] = None
        self.test_samples_per_class_ = sizes
        self.score_samples_per_class_ = 0

    def _lin(self, mom: ClassMoments) -> Array:
        """rowsum(M o Q^T V) (p,) of a group's moments."""
        if self._stein_P is not None and mom.stein is not None:
            return self._stein_P.T @ mom.stein
        return (self.M_ * (self.eigenvectors_.T @ mom.V)).sum(1)

    def _fit_population(self, mixture: GaussianMixture) -> None:
        """Per-class test moments (fresh clean points, noise-averaged) and score-error moments (fresh points
        of P_t with the exact mixture score), split in ``n_batches`` equal batches, rotated by Q."""
        Q, K, nb = self.eigenvectors_, self.n_classes_, int(self.n_batches)
        self.test_ = [_BatchMoments() for _ in range(K)]
        self.score_ = [_BatchMoments() for _ in range(K)]
        rng = self._rng(3)
        m_test = max(1, int(self.test_samples) // nb)
        m_score = max(1, int(self.score_samples) // nb)
        d = self.dim_
        self._test_lin_full: list[Array] = [np.zeros((self.n_features, d)) for _ in range(K)]
        self._score_lin_full = [np.zeros((self.n_features, d)) for _ in range(K)]
        for c in range(K):
            # the draws of the class first, in the order of one batch after the other (test points, score
            # points, score noise), then every batch of the class in one pass
            draws = [(mixture.sample_class(c, m_test, rng), mixture.sample_class(c, m_score, rng),
                      rng.standard_normal((m_score, d))) for _ in range(nb)]
            x_test = np.concatenate([dr[0] for dr in draws])
            if self.method == "series":  # the nb batches of a class in one pass (groups = batches)
                moms = self._moments(x_test, np.repeat(np.arange(nb), m_test), nb, stream=0, classes=[c] * nb)
            else:  # one seeded noise stream per batch
                moms = [self._moments(x_test[b * m_test:(b + 1) * m_test], np.zeros(m_test, dtype=np.int64), 1,
                                      stream=100 + nb * c + b, classes=[c])[0] for b in range(nb)]
            # score error: x_t ~ class c of P_t, exact mixture score; features of the nb batches in one product
            xt, _ = diffuse(np.concatenate([dr[1] for dr in draws]), self.time,
                            eta=np.concatenate([dr[2] for dr in draws]))
            target = mixture.score(xt, self.time)
            pq = self.features(xt) @ Q
            if all(mom.stein is not None for mom in moms):
                v_mean = np.mean([mom.stein for mom in moms], axis=0)
                self._test_lin_full[c] = Q.T @ (v_mean[:, None] * self.W_) / math.sqrt(d)
            else:
                self._test_lin_full[c] = np.mean([Q.T @ mom.V for mom in moms], axis=0)
            for b in range(nb):
                mom = moms[b]
                self.test_[c].quad.append(_rotate(mom.U, Q))
                self.test_[c].lin.append(self._lin(mom))
                rows = slice(b * m_score, (b + 1) * m_score)
                pb, tb = pq[rows], target[rows]
                self.score_[c].quad.append(pb.T @ pb / m_score)
                qz = pb.T @ tb / m_score
                self.score_[c].lin.append((self.M_ * qz).sum(1))
                self._score_lin_full[c] += qz / nb
                self.score_[c].const.append(float((tb * tb).sum(1).mean()))
                moms[b] = None  # release U_b once rotated
        self.test_samples_per_class_ = m_test * nb
        self.score_samples_per_class_ = m_score * nb

    # ------------------------------------------------------------------------------------------ flow
    def gamma(self, tau: ArrayLike) -> Array:
        """gamma_k(tau) of eq. (3), shape (T, p); ``tau`` may contain ``np.inf`` (the minimiser)."""
        self._check_fitted()
        tau = np.atleast_1d(np.asarray(tau, dtype=np.float64))
        if np.any(tau < 0) or np.any(np.isnan(tau)):
            raise ValueError("tau: every training time must be >= 0 (np.inf allowed)")
        lam = self.eigenvalues_
        live = lam > self.rcond * max(lam[-1], 0.0)
        rate = 2.0 * self.delta_ / (self.n_features / self.dim_)  # 2 Delta_t / psi_p
        g = np.zeros((tau.size, lam.size))
        finite = np.isfinite(tau)
        with np.errstate(over="ignore", invalid="ignore"):
            x = rate * np.outer(tau[finite], lam[live])
            g[np.ix_(finite, live)] = -np.expm1(-x) / lam[live]
        g[np.ix_(~finite, live)] = 1.0 / lam[live]
        return g

    def coefficients(self, tau: float) -> Array:
        """The trained matrix A(tau) (d, p) of the closed form (3) (forms it; for checks and sampling)."""
        g = self.gamma([tau])[0]
        bq = -(self.M_.T * g) / math.sqrt(self.delta_)  # B Q, (d, p)
        return math.sqrt(self.n_features) * bq @ self.eigenvectors_.T

    def _quadratic_curve(self, gam: Array, quad: Array, lin: Array, qscale: float, lscale: float,
                         const: float) -> Array:
        return (qscale * _quadratic_rows(gam, quad * self.N_) + lscale * gam @ lin + const) / self.dim_

    def predict_curves(self, tau: ArrayLike) -> dict[str, Any]:
        """Per-class curves of the gradient flow at the times ``tau`` (T,), ``np.inf`` allowed.

        Returns a dict of arrays of shape (K, T): ``train_loss`` (exact), ``test_loss`` and
        ``test_loss_se``, ``score_error`` and ``score_error_se`` (batch-means standard errors of the fresh-
        sample estimates; the test keys present only if fit() knew the mixture or held-out test points, the
        score keys only with the mixture), plus ``tau`` (T,) and the class-weighted totals ``train_loss_total``
        (weights n_c/n) and ``test_loss_total`` (weights rho_c, or n_c/n for held-out points), shape (T,).
        """
        self._check_fitted()
        tau_arr = np.atleast_1d(np.asarray(tau, dtype=np.float64))
        gam = self.gamma(tau_arr)
        sq = math.sqrt(self.delta_)
        K = self.n_classes_
        out: dict[str, Any] = {"tau": tau_arr}
        train = np.stack([1.0 + self._quadratic_curve(gam, self.train_quad_[c], self.train_lin_[c], 1.0, -2.0, 0.0)
                          for c in range(K)])
        out["train_loss"] = train
        out["train_loss_total"] = (self.class_counts_ / self.n_) @ train
        if self.has_test_:
            for key, store, qs, ls in (("test_loss", self.test_, 1.0, -2.0),
                                       ("score_error", self.score_, 1.0 / self.delta_, 2.0 / sq)):
                if store is None:  # held-out real points: no exact score
                    continue
                mean = np.empty((K, tau_arr.size))
                se = np.empty((K, tau_arr.size))
                for c in range(K):
                    nb = len(store[c].quad)
                    curves = np.stack([
                        self._quadratic_curve(gam, store[c].quad[b], store[c].lin[b], qs, ls,
                                              store[c].const[b] if store[c].const else 0.0)
                        for b in range(nb)])
                    if key == "test_loss":
                        curves += 1.0
                    mean[c] = curves.mean(0)
                    se[c] = curves.std(0, ddof=1) / math.sqrt(nb)
                out[key] = mean
                out[key + "_se"] = se
            out["test_loss_total"] = self.test_weights_ @ out["test_loss"]
        return out

    def losses(self, A: ArrayLike) -> dict[str, Array]:
        """Per-class losses (K,) of an arbitrary A (d, p), with the same moments as :meth:`predict_curves`.

        Used to evaluate iteratively trained A on exactly the same quadratics as the closed form.
        """
        self._check_fitted()
        A = np.asarray(A, dtype=np.float64)
        if A.shape != (self.dim_, self.n_features):
            raise ValueError(f"A: shape {A.shape}, expected (d, p) = ({self.dim_}, {self.n_features})")
        bq = A @ self.eigenvectors_ / math.sqrt(self.n_features)  # B Q
        sq, d = math.sqrt(self.delta_), self.dim_
        Q = self.eigenvectors_
        out: dict[str, Array] = {}
        out["train_loss"] = np.array([
            1.0 + (self.delta_ / d) * np.sum((bq @ self.train_quad_[c]) * bq)
            + (2 * sq / d) * np.sum(bq * (Q.T @ self.V_by_class_[c]).T) for c in range(self.n_classes_)])
        if self.has_test_:
            out.update(self._population_losses(bq))
        return out

    def _population_losses(self, bq: Array) -> dict[str, Array]:
        sq, d = math.sqrt(self.delta_), self.dim_
        test, score = [], []
        for c in range(self.n_classes_):
            tq = np.mean(self.test_[c].quad, axis=0)
            test.append(1.0 + (self.delta_ / d) * np.sum((bq @ tq) * bq) + (2 * sq / d) * np.sum(bq * self._test_lin_full[c].T))
            if self.score_ is not None:
                sqd = np.mean(self.score_[c].quad, axis=0)
                score.append((np.sum((bq @ sqd) * bq) - 2 * np.sum(bq * self._score_lin_full[c].T)
                              + np.mean(self.score_[c].const)) / d)
        out = {"test_loss": np.array(test)}
        if self.score_ is not None:
            out["score_error"] = np.array(score)
        return out

    # ------------------------------------------------------------------------------------------ readoff
    def timescales(
        self,
        tau: ArrayLike,
        gen_tolerance: float = 0.05,
        mem_fraction: float = 0.5,
        curves: dict[str, Any] | None = None,
    ) -> dict[str, Array]:
        """Per-class tau_gen,c and tau_mem,c read off the closed-form curves on the grid ``tau`` (finite).

        tau_gen,c = :func:`classdiff.core.readoff.generalization_time` of the test loss (``gen_tolerance``);
        tau_mem,c = :func:`classdiff.core.readoff.memorization_time` of the gap L_test - L_train with the final gap
        taken at tau = inf (``mem_fraction``). Returns arrays of shape (K,): ``tau_gen``, ``tau_mem``,
        ``final_gap``, and ``tau_gen_score`` (the same read-off on the score error; nan without a mixture).
        """
        if not getattr(self, "has_test_", False):
            raise ValueError("timescales: fit() needs the mixture or held-out test points to read off timescales")
        tau = np.asarray(tau, dtype=np.float64)
        if curves is None:
            curves = self.predict_curves(np.append(tau, np.inf))
        last = curves["test_loss"][:, -1] - curves["train_loss"][:, -1]
        test, train = curves["test_loss"][:, :-1], curves["train_loss"][:, :-1]
        return {
            "tau_gen": generalization_time(tau, test, gen_tolerance, initial=np.ones(self.n_classes_)),
            "tau_mem": memorization_time(tau, train, test, mem_fraction, final_gap=last),
            "final_gap": last,
            "tau_gen_score": (generalization_time(tau, curves["score_error"][:, :-1], gen_tolerance)
                              if "score_error" in curves else np.full(self.n_classes_, np.nan)),
        }

    # ------------------------------------------------------------------------------------------ GE
    def gaussian_equivalent_covariance(self, data: TrainingSet, mixture: GaussianMixture, seed: int = 0) -> Array:
        """Gaussian-equivalent U (p, p) for the same W, points and sizes: U_GE of
        :func:`classdiff.rf.gaussian_equivalence.gaussian_equivalent_covariance` (Bonnaire et al. Lemmas C.1–C.4)
        with the training points' offsets x_nu - mu_c from their class mean, the constants at the mixture's
        (mean) class variances, and omega drawn class by class (seeded by ``seed``).
        """
        self._check_fitted()
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6E]))
        p = int(self.n_features)
        omega = np.empty((data.n, p))
        for c in range(mixture.n_classes):
            rows = data.labels == c
            if np.any(rows):
                omega[rows] = rng.standard_normal((rows.sum(), p))
        deviations = data.x - mixture.centroids[data.labels]
        return gaussian_equivalent_covariance(self.W_, self.activation, self.time, mixture.centroids,
                                              mixture.mean_variances, data.labels, deviations, omega)

    def _check_fitted(self) -> None:
        if not hasattr(self, "eigenvalues_"):
            raise RuntimeError("RandomFeaturesScore: call fit() first")


# ---------------------------------------------------------------------------------------------------------
# config-driven run


def _seed_mean(times: Array) -> Time:
    """Mean over seeds of one class's read-off times (S,), nan (never reached) entries left out; :data:`NOT_REACHED`
    when no seed reached the event."""
    return reached(np.nanmean(times) if np.any(np.isfinite(times)) else np.nan)


def dynamics_memory_estimate(n: int, p: int, d: int, n_classes: int, n_batches: int = 1) -> float:
    """Bytes the closed-form dynamics hold at their peak (float64): the training set and the fresh points (n x d),
    W and the feature matrix (p x d, n x p), and the p x p matrices (U, its eigenvectors, N, the rotated class
    moments of the training set and of every test and score-error batch)."""
    square = (4 + n_classes * (2 + 2 * n_batches)) * float(p) ** 2
    return 8.0 * (square + 3.0 * p * d + float(n) * (d + p) + 2.0 * n_classes * p * d)


def _check_dynamics_memory(n: int, p: int, d: int, n_classes: int, n_batches: int) -> None:
    check_memory(dynamics_memory_estimate(n, p, d, n_classes, n_batches),
                 f"dynamics with n = {n} points, p = {p} features, d = {d}, K = {n_classes} classes",
                 "lower mixture.dim, model.psi_p or model.psi_n (or training.n_batches)")


def dynamics_from_config(config: Any, tau: Sequence[float] | None = None) -> dict[str, Any]:
    """Closed-form per-class dynamics for a :class:`classdiff.core.config.Config` (pure function of the config).

    For each of ``training.seeds`` seeds s (W, training set and fresh samples seeded by model.seed + s):
    fit :class:`RandomFeaturesScore` with n = round(psi_n d), p = round(psi_p d) on
    ``mixture.sample(n, seed)``, evaluate the curves on ``training.n_times`` log-spaced tau in
    [tau_min, tau_max] (plus tau = inf) and read off per-class timescales. Returns the JSON-able dict of the
    ``dynamics`` command (curves of the first seed; timescales as mean and standard deviation over the seeds
    that reached them, :data:`~classdiff.core.results.NOT_REACHED` when none did; the class orders by
    :func:`~classdiff.core.readoff.class_order` under the :data:`~classdiff.core.readoff.ORDER_KEYS` names).
    """
    mc, model, tr = config.mixture, config.model, config.training
    d = mc.dim
    n, p = round(model.psi_n * d), round(model.psi_p * d)
    _check_dynamics_memory(n, p, d, len(mc.weights), tr.n_batches)
    mixture = GaussianMixture.from_config(mc)
    taus = np.geomspace(tr.tau_min, tr.tau_max, tr.n_times) if tau is None else np.asarray(tau, dtype=np.float64)
    method = "series" if model.noise_samples == 0 else "mc"
    runs = []
    for s in range(tr.seeds):
        seed = model.seed + s
        est = RandomFeaturesScore(
            n_features=p, activation=model.activation, time=model.time, seed=seed, ridge=model.ridge,
            method=method, series_order=model.series_order,
            noise_samples=max(model.noise_samples, 1), test_samples=tr.test_samples,
            score_samples=tr.score_samples, n_batches=tr.n_batches, feature_moments=model.feature_moments,
        )
        data = mixture.sample(n, seed=seed)
        est.fit(data, mixture)
        curves = est.predict_curves(np.append(taus, np.inf))
        ts = est.timescales(taus, tr.gen_tolerance, tr.mem_fraction, curves=curves)
        runs.append((est, curves, ts))
    est, curves, _ = runs[0]
    gen = np.array([r[2]["tau_gen"] for r in runs])  # (S, K)
    mem = np.array([r[2]["tau_mem"] for r in runs])
    K = mixture.n_classes
    classes = []
    for c in range(K):
        classes.append({
            "label": c,
            "n_train": int(est.class_counts_[c]),
            "variance": float(mixture.mean_variances[c]),
            "weight": float(mixture.weights[c]),
            "train_loss": curves["train_loss"][c, :-1],
            "test_loss": curves["test_loss"][c, :-1],
            "test_loss_se": curves["test_loss_se"][c, :-1],
            "score_error": curves["score_error"][c, :-1],
            "score_error_se": curves["score_error_se"][c, :-1],
            "train_loss_inf": float(curves["train_loss"][c, -1]),
            "test_loss_inf": float(curves["test_loss"][c, -1]),
            "score_error_inf": float(curves["score_error"][c, -1]),
            "tau_gen": _seed_mean(gen[:, c]),
            "tau_mem": _seed_mean(mem[:, c]),
            "tau_gen_std": float(np.nanstd(gen[:, c], ddof=1)) if np.sum(np.isfinite(gen[:, c])) > 1 else None,
            "tau_mem_std": float(np.nanstd(mem[:, c], ddof=1)) if np.sum(np.isfinite(mem[:, c])) > 1 else None,
            "tau_gen_seeds": [reached(v) for v in gen[:, c]],
            "tau_mem_seeds": [reached(v) for v in mem[:, c]],
            "tau_gen_reached_seeds": int(np.sum(np.isfinite(gen[:, c]))),
            "tau_mem_reached_seeds": int(np.sum(np.isfinite(mem[:, c]))),
        })

    return {
        "tau": taus,
        "classes": classes,
        ORDER_KEYS["tau_gen"]: class_order([cl["tau_gen"] for cl in classes]),
        ORDER_KEYS["tau_mem"]: class_order([cl["tau_mem"] for cl in classes]),
        "n": n, "p": p, "d": d, "time": model.time, "delta": est.delta_, "seeds": tr.seeds,
        "method": method, "feature_moments": model.feature_moments, "series_error_bound": est.series_error_bound_,
        "definitions": {
            "tau": "gradient-flow time, tau = k eta / d^2 for GD with step eta on L",
            "tau_gen": f"readoff.generalization_time of the class test loss, tolerance {tr.gen_tolerance}",
            "tau_mem": f"readoff.memorization_time of the class gap, fraction {tr.mem_fraction}, final gap at tau=inf",
            "test_loss_se": "batch-means standard error over fresh samples",
            "seeds": "curves of the first seed; tau_gen/tau_mem: mean over the seeds that reached the event "
                     "(tau_*_reached_seeds of them), tau_*_std their standard deviation, tau_*_seeds every seed's value",
        },
        "eigenvalues": est.eigenvalues_,
    }
