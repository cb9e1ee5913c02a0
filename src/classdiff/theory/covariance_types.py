"""Feature types for classes with general covariances Sigma_c (``docs/theory.md`` §8).

A class of real images is far from isotropic: a few eigen-directions of Sigma_c carry an O(d) share of its trace
(Fashion-MNIST: effective rank 5-17 at d = 784). Along such a direction v the projection w_i.v of a random
feature is O(1), exactly like the projection on a centroid, so these directions are treated as the centroids
are: they become coordinates of the feature *type*. Each class is written as

    Sigma_c = sigma_perp,c^2 I + sum_{k <= r_c} s_{c,k} v_{c,k} v_{c,k}^T,     s_{c,k} = lambda_{c,k} - sigma_perp,c^2,

with lambda_{c,k} its top r_c eigenvalues and sigma_perp,c^2 the mean of the others (:func:`spiked_covariance`).
With S an orthonormal basis of span{mu_c, v_{c,k}} (R columns) a feature's type is tau = S^T w ~ N(0, I_R), and

    m_{c}(tau)  = e^{-t} (S^T mu_c / sqrt d) . tau                             (pre-activation mean)
    var_c(tau)  = sigma_perp,c^2 + sum_k s_{c,k} ((S^T v_{c,k}) . tau)^2 / d     (w^T Sigma_c w / d)

give the GE constants a, v2, s2, kappa0 per class and per type; the isotropic floor sets A_c = e^{-2t}
sigma_perp,c^2 in the equations (F), and the rank-r_c linear part e^{-2t} D_a W (Sigma_c - sigma_perp^2 I) W^T
D_a / d adds spike vectors f_{c,k}(tau) = e^{-t} sqrt(s_{c,k}/d) a_c(tau) ((S^T v_{c,k}) . tau), whose outliers
:class:`classdiff.theory.spectrum.FeatureSpectrum` finds beside the centroid ones. The type average is a seeded
scrambled Sobol rule in R dimensions.

Cost: one eigendecomposition of each d x d covariance (O(K d^3), done once) and an SVD of the d x R basis;
everything after that works on the N type nodes and is independent of d (no p x p matrix is ever formed).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm, qmc

from classdiff.data.process import signal_scale
from classdiff.rf.features import equivalence_constants, hermite_coefficient
from classdiff.theory.equations import FeatureTypes

__all__ = ["SpikedCovariance", "covariance_feature_types", "hermite_vectors", "spiked_covariance"]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class SpikedCovariance:
    """Sigma ~= floor I + vectors diag(strengths) vectors^T: ``vectors`` (d, r) orthonormal, ``strengths`` (r,)
    = top eigenvalues - floor, ``floor`` = mean of the remaining d - r eigenvalues; ``captured`` is the share of
    tr(Sigma) in the top r eigenvalues and ``trace_per_dim`` = tr(Sigma)/d (kept exactly by the representation)."""

    vectors: Array
    strengths: Array
    floor: float
    captured: float
    trace_per_dim: float

    @property
    def rank(self) -> int:
        return int(self.strengths.size)


def spiked_covariance(covariance: ArrayLike, rank: int) -> SpikedCovariance:
    """Top-``rank`` spikes plus an isotropic floor of a symmetric positive semi-definite (d, d) ``covariance``.

    The representation keeps the top ``rank`` eigenvalues and eigenvectors exactly and the trace exactly; the
    other eigenvalues are replaced by their mean (the floor), which must be > 0.
    """
    cov = np.asarray(covariance, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance: shape {cov.shape}; expected a square (d, d) matrix")
    d = cov.shape[0]
    if not 0 <= rank < d:
        raise ValueError(f"rank = {rank!r}: must be an integer in [0, {d - 1}] for d = {d}")
    evals, evecs = np.linalg.eigh(0.5 * (cov + cov.T))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    trace = float(evals.sum())
    floor = float(evals[rank:].mean())
    if not floor > 0:
        raise ValueError(f"covariance: the mean of its eigenvalues beyond the top {rank} is {floor!r}; must be > 0")
    top = evals[:rank]
    return SpikedCovariance(vectors=evecs[:, :rank].copy(), strengths=np.maximum(top - floor, 0.0), floor=floor,
                            captured=float(top.sum() / trace) if trace > 0 else 0.0, trace_per_dim=trace / d)


def _orthonormal_basis(columns: Array) -> Array:
    """Orthonormal basis (d, R) of the span of ``columns`` (d, J), rank-revealing (relative 1e-10)."""
    if columns.shape[1] == 0:
        return np.zeros((columns.shape[0], 0))
    u, sv, _ = np.linalg.svd(columns, full_matrices=False)
    keep = sv > 1e-10 * max(1.0, float(sv.max()))
    return u[:, keep]


def _sobol_normal(dim: int, n_nodes: int, seed: int) -> Array:
    """(dim, N) standard normal nodes from a seeded scrambled Sobol rule of N = 2^ceil(log2 n_nodes) points."""
    if dim == 0:
        return np.zeros((0, 1))
    u = qmc.Sobol(d=dim, scramble=True, seed=seed).random(int(2 ** np.ceil(np.log2(max(n_nodes, 2)))))
    return norm.ppf(u).T


def covariance_feature_types(
    weights: ArrayLike, covariances: Sequence[ArrayLike | SpikedCovariance], centroids: ArrayLike, time: float,
    psi_p: float, psi_n: float, activation: str = "tanh", rank: int = 16, n_nodes: int = 1024, seed: int = 0,
    hermite_degree: int = 1, hermite_rank: int | Sequence[int] | None = None,
) -> FeatureTypes:
    """:class:`FeatureTypes` of a K-class mixture with general class covariances (module docstring).

    Parameters
    ----------
    weights : (K,) training fractions rho_c (sum 1).
    covariances : K full (d, d) covariances Sigma_c, or their :class:`SpikedCovariance` representations.
    centroids : (K, d) class means mu_c.
    time, psi_p, psi_n, activation : model parameters (as :func:`classdiff.theory.equations.feature_types`).
    rank : spikes r_c kept per class when a full covariance is given.
    n_nodes : Sobol type nodes (rounded up to a power of 2).
    seed : seed of the scrambled Sobol rule.
    hermite_degree : 1 (the linear spike vectors only), 2 or 3: also the Hermite parts of degree 2 (and 3) of the
        feature in the spike amplitudes, as C(r'+n-1, n) further spike vectors per class and degree n whose
        variance leaves v2 (:func:`hermite_vectors`, ``docs/theory.md`` §8.9).
    hermite_rank : the top r' spikes of each class whose products enter the blocks (default all r_c): one integer
        for every degree, or one per degree 2..hermite_degree.
    """
    if hermite_degree not in (1, 2, 3):
        raise ValueError(f"hermite_degree = {hermite_degree!r}: must be 1, 2 or 3")
    ranks = _hermite_ranks(hermite_rank, hermite_degree)
    rho = np.asarray(weights, dtype=np.float64)
    mu = np.atleast_2d(np.asarray(centroids, dtype=np.float64))
    k, d = mu.shape
    if rho.shape != (k,) or len(covariances) != k:
        raise ValueError(f"weights, covariances: {rho.shape}, {len(covariances)} entries; expected {k} to match "
                         "the centroids")
    if psi_p <= 0 or psi_n <= 0:
        raise ValueError(f"psi_p = {psi_p!r}, psi_n = {psi_n!r}: must be > 0")
    spiked = [c if isinstance(c, SpikedCovariance) else spiked_covariance(c, rank) for c in covariances]
    for c, sc in enumerate(spiked):
        if sc.vectors.shape[0] != d:
            raise ValueError(f"covariances[{c}]: dimension {sc.vectors.shape[0]}; expected d = {d}")
    basis = _orthonormal_basis(np.concatenate([mu.T / np.sqrt(d)] + [sc.vectors for sc in spiked], axis=1))
    tau = _sobol_normal(basis.shape[1], n_nodes, seed)  # (R, N)
    n = tau.shape[1]
    e_t = float(signal_scale(time))
    means = e_t * (mu @ basis / np.sqrt(d)) @ tau  # (K, N)
    variances = np.empty((k, n))
    projections = []  # per class (r_c, N): v_{c,k} . w in type coordinates
    for c, sc in enumerate(spiked):
        proj = (sc.vectors.T @ basis) @ tau
        projections.append(proj)
        variances[c] = sc.floor + (sc.strengths[:, None] * proj**2).sum(axis=0) / d
    consts = [equivalence_constants(activation, time, variances[c], means[c]) for c in range(k)]
    a = np.stack([g.a for g in consts])
    loadings = [e_t * np.sqrt(sc.strengths[:, None] / d) * projections[c] for c, sc in enumerate(spiked)]
    spikes = [a[c] * g for c, g in enumerate(loadings)]
    classes = [np.full(sc.rank, c, dtype=np.intp) for c, sc in enumerate(spiked)]
    v2 = np.stack([g.v2 for g in consts])
    for degree, rank_n in zip(range(2, hermite_degree + 1), ranks, strict=True):
        for c in range(k):
            coefficient = hermite_coefficient(activation, time, variances[c], means[c], order=degree)
            block = hermite_vectors(coefficient, loadings[c][:rank_n], degree)
            spikes.append(block)
            classes.append(np.full(block.shape[0], c, dtype=np.intp))
            v2[c] -= (block**2).sum(axis=0)
    return FeatureTypes(
        weights=rho, variances=np.array([sc.floor for sc in spiked]), node_weights=np.full(n, 1.0 / n), means=means,
        a=a, v2=np.maximum(v2, 0.0), s2=np.maximum(np.stack([g.s2 for g in consts]), 0.0),
        kappa0=np.stack([g.kappa0 for g in consts]), time=float(time), psi_p=float(psi_p), psi_n=float(psi_n),
        dim=int(d), activation=activation, spike_vectors=np.concatenate(spikes) if spikes else None,
        spike_classes=np.concatenate(classes),
    )


def _hermite_ranks(hermite_rank: int | Sequence[int] | None, hermite_degree: int) -> list[int | None]:
    """The spike count r' of each Hermite degree 2..hermite_degree (None: all), checked."""
    count = hermite_degree - 1
    if hermite_rank is None or isinstance(hermite_rank, int | np.integer):
        ranks = [hermite_rank] * count
    else:
        ranks = list(hermite_rank)
        if len(ranks) != count:
            raise ValueError(f"hermite_rank = {hermite_rank!r}: one entry per degree 2..{hermite_degree} "
                             f"({count}) expected")
    for r in ranks:
        if r is not None and (isinstance(r, bool) or not isinstance(r, int | np.integer) or r < 0):
            raise ValueError(f"hermite_rank = {hermite_rank!r}: must be None, an integer >= 0 or a sequence of them")
    return ranks


def hermite_vectors(coefficient: Array, loadings: Array, degree: int = 2) -> Array:
    """Degree-n spike vectors (C(r+n-1, n), N) of one class (``docs/theory.md`` §8.9), n = ``degree`` >= 2.

    With the spike amplitudes xi ~ N(0, I_r) of a point and g_k(tau) = e^{-t} sqrt(s_k/d) (v_k . w) the feature's
    ``loadings`` (r, N), the spike part of the pre-activation is dm = sum_k g_k xi_k (variance s^2 = sum_k g_k^2)
    and the degree-n Hermite term of the noise-averaged feature is (c_n/n!) s^n He_n(dm/s) = sum_alpha eta_alpha
    f_alpha over the multi-indices |alpha| = n, with the unit-variance, mutually uncorrelated amplitudes
    eta_alpha = prod_k He_{alpha_k}(xi_k) / sqrt(alpha!), uncorrelated with every lower degree, and the vectors
    f_alpha = c_n g^alpha / sqrt(alpha!). ``coefficient`` (N,) is c_n = E sigma^(n)(h) per type
    (:func:`classdiff.rf.features.hermite_coefficient`). For n = 2: f_kk = c2 g_k^2 / sqrt 2, f_kl = c2 g_k g_l,
    eta_kk = (xi_k^2 - 1)/sqrt 2, eta_kl = xi_k xi_l. The squares of the vectors sum to the term's variance
    c_n^2 s^{2n} / n!. Rows in the order of ``itertools.combinations_with_replacement(range(r), n)``.
    """
    if isinstance(degree, bool) or not isinstance(degree, int | np.integer) or degree < 2:
        raise ValueError(f"degree = {degree!r}: must be an integer >= 2")
    r = loadings.shape[0]
    rows = []
    for combo in itertools.combinations_with_replacement(range(r), degree):
        factorial = math.prod(math.factorial(count) for count in Counter(combo).values())
        rows.append(np.prod(loadings[list(combo)], axis=0) / math.sqrt(factorial))
    if not rows:
        return np.zeros((0, loadings.shape[1]))
    return coefficient[None, :] * np.stack(rows)
