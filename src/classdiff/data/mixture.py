"""Gaussian-mixture data, its diffused density, exact scores, and the empirical (memorizing) score.

Data (``docs/theory.md`` §1): P_0 = sum_c rho_c N(mu_c, sigma_c^2 I_d), mu_c = m_c sqrt(d) u_c. Under the
forward process x_t = e^{-t} x_0 + sqrt(Delta_t) eta every class stays Gaussian:

    P_t = sum_c rho_c N(e^{-t} mu_c, Gamma_{c,t}^2 I_d),     Gamma_{c,t}^2 = e^{-2t} sigma_c^2 + Delta_t,

so the exact score is the posterior-weighted class score

    grad log P_t(x) = sum_c P(c | x, t) (e^{-t} mu_c - x) / Gamma_{c,t}^2.

Diagonal covariances (``variances`` of shape (K, d)) are supported throughout this module. Everything is
float64 and uses a log-sum-exp over classes, so scores stay finite where densities underflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import logsumexp

from classdiff.core.config import GEOMETRIES, MixtureConfig
from classdiff.data.process import noise_variance, signal_scale

__all__ = [
    "GaussianMixture",
    "TrainingSet",
    "class_counts",
    "empirical_denoiser",
    "empirical_log_density",
    "empirical_score",
    "make_centroids",
]

_LOG_2PI = np.log(2.0 * np.pi)


def class_counts(n: int, weights: ArrayLike) -> NDArray[np.int64]:
    """Exact per-class counts n_c summing to ``n`` by largest-remainder rounding of rho_c n, every n_c >= 1.

    Shape (K,). Raises if n < K (a class would be empty).
    """
    w = np.asarray(weights, dtype=np.float64)
    k = w.size
    if not isinstance(n, int | np.integer) or n < k:
        raise ValueError(f"n = {n!r}: must be an integer >= K = {k} so that every class has a point")
    if np.any(w < 0) or abs(w.sum() - 1) > 1e-9:
        raise ValueError(f"weights = {w.tolist()}: must be non-negative and sum to 1")
    raw = w * n
    counts = np.floor(raw).astype(np.int64)
    remainder = raw - counts
    # largest remainders first; ties broken by class index (stable)
    order = np.argsort(-remainder, kind="stable")
    counts[order[: n - counts.sum()]] += 1
    # every class gets at least one point: take from the largest classes
    while np.any(counts < 1):
        c = int(np.argmin(counts))
        donor = int(np.argmax(counts))
        counts[c] += 1
        counts[donor] -= 1
    return counts


def make_centroids(
    dim: int, norms: Sequence[float], geometry: str, seed: int = 0, explicit: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Centroids mu_c = m_c sqrt(d) u_c, shape (K, d).

    ``orthogonal``: u_c a random orthonormal set (QR of a Gaussian matrix); ``antipodal`` (K = 2): u_2 = -u_1;
    ``random``: independent uniform unit vectors; ``explicit``: the rows of ``explicit`` as given.
    """
    m = np.asarray(norms, dtype=np.float64)
    k = m.size
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry = {geometry!r}: must be one of {', '.join(GEOMETRIES)}")
    if geometry == "explicit":
        if explicit is None:
            raise ValueError("centroids: must be given when geometry = 'explicit'")
        c = np.asarray(explicit, dtype=np.float64)
        if c.shape != (k, dim):
            raise ValueError(f"centroids: shape {c.shape}, expected (K, d) = ({k}, {dim})")
        return c.copy()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC3]))
    if geometry == "orthogonal":
        if k > dim:
            raise ValueError(f"geometry = 'orthogonal': needs K <= d, got K = {k}, d = {dim}")
        q, _ = np.linalg.qr(rng.standard_normal((dim, k)))
        u = q.T
    elif geometry == "antipodal":
        if k != 2:
            raise ValueError(f"geometry = 'antipodal': needs K = 2, got K = {k}")
        g = rng.standard_normal(dim)
        g /= np.linalg.norm(g)
        u = np.stack([g, -g])
    else:
        g = rng.standard_normal((k, dim))
        u = g / np.linalg.norm(g, axis=1, keepdims=True)
    return m[:, None] * np.sqrt(dim) * u


@dataclass(frozen=True)
class TrainingSet:
    """A finite sample: ``x`` (n, d), integer ``labels`` (n,), and ``counts`` (K,) per class."""

    x: NDArray[np.float64]
    labels: NDArray[np.int64]
    counts: NDArray[np.int64]

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def of_class(self, c: int) -> NDArray[np.float64]:
        return self.x[self.labels == c]


class GaussianMixture:
    """A K-class Gaussian mixture sum_c rho_c N(mu_c, diag(v_c)) in R^d.

    Parameters
    ----------
    weights : (K,) class weights rho_c, non-negative, summing to 1.
    centroids : (K, d) class means mu_c.
    variances : (K,) isotropic variances sigma_c^2, or (K, d) diagonal covariances.
    """

    def __init__(self, weights: ArrayLike, centroids: ArrayLike, variances: ArrayLike) -> None:
        w = np.asarray(weights, dtype=np.float64)
        mu = np.atleast_2d(np.asarray(centroids, dtype=np.float64))
        v = np.asarray(variances, dtype=np.float64)
        k, d = mu.shape
        if w.shape != (k,):
            raise ValueError(f"weights: shape {w.shape}, expected (K,) = ({k},) to match centroids")
        if np.any(w < 0) or abs(w.sum() - 1) > 1e-9:
            raise ValueError(f"weights = {w.tolist()}: must be non-negative and sum to 1 within 1e-9")
        if v.shape not in ((k,), (k, d)):
            raise ValueError(f"variances: shape {v.shape}, expected (K,) = ({k},) or (K, d) = ({k}, {d})")
        if np.any(~np.isfinite(v)) or np.any(v <= 0):
            raise ValueError("variances: every entry must be finite and > 0")
        if np.any(~np.isfinite(mu)):
            raise ValueError("centroids: every entry must be finite")
        self.weights = w
        self.centroids = mu
        self.variances = v
        self.dim = d
        self.n_classes = k
        self.isotropic = v.ndim == 1

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: MixtureConfig) -> GaussianMixture:
        mu = make_centroids(config.dim, config.centroid_norms, config.geometry, config.seed, config.centroids)
        return cls(config.weights, mu, config.variances)

    @classmethod
    def fit(cls, x: ArrayLike, y: ArrayLike, *, covariance: str = "isotropic",
            labels: ArrayLike | None = None) -> GaussianMixture:
        """The mixture of a labelled data set (``classdiff.data.labelled``): rho_c = n_c/n, centroids mu_c - x_bar
        (centred by the global mean), and per class the variance tr(Sigma_c)/d (``covariance="isotropic"``) or the
        diagonal of Sigma_c (``"diagonal"``), unbiased.

        ``x`` (n, ...) is flattened to (n, d); ``y`` (n,) holds integer labels; ``labels`` chooses and orders the
        classes (default: the sorted labels present). The fitted mixture has ``labels_`` (K,) and ``counts_`` (K,).
        """
        from classdiff.data.labelled import check_labelled, class_statistics

        if covariance not in ("isotropic", "diagonal"):
            raise ValueError(f"covariance = {covariance!r}: must be 'isotropic' or 'diagonal'")
        stats = class_statistics(x, y, labels=labels, n_eigenvalues=1)
        variances = stats.variances
        if covariance == "diagonal":
            xf, yi = check_labelled(x, y)
            variances = np.stack([xf[yi == c].var(axis=0, ddof=1) for c in stats.labels])
            variances = np.maximum(variances, np.finfo(np.float64).tiny)
        mixture = cls(stats.weights, stats.centroids, variances)
        mixture.labels_ = stats.labels
        mixture.counts_ = stats.counts
        return mixture

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(K={self.n_classes}, d={self.dim}, weights={np.round(self.weights, 4).tolist()}, "
            f"variances={np.round(self.mean_variances, 4).tolist()}, "
            f"centroid_norms={np.round(self.centroid_norms, 4).tolist()})"
        )

    # ------------------------------------------------------------------ statistics
    @property
    def mean_variances(self) -> NDArray[np.float64]:
        """tr(Sigma_c)/d per class, shape (K,)."""
        return self.variances if self.isotropic else self.variances.mean(axis=1)

    @property
    def centroid_norms(self) -> NDArray[np.float64]:
        """m_c = |mu_c| / sqrt(d), shape (K,)."""
        return np.linalg.norm(self.centroids, axis=1) / np.sqrt(self.dim)

    def marginal(self, t: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Class means e^{-t} mu_c (K, d) and variances Gamma_{c,t}^2 ((K,) or (K, d)) of P_t."""
        _check_time(t, allow_zero=True)
        return signal_scale(t) * self.centroids, signal_scale(t) ** 2 * self.variances + noise_variance(t)

    def class_second_moment(self, c: int, t: float = 0.0) -> NDArray[np.float64]:
        """E[x_t x_t^T | class c] = e^{-2t}(mu_c mu_c^T + Sigma_c) + Delta_t I, shape (d, d)."""
        mean, var = self.marginal(t)
        m = np.outer(mean[c], mean[c])
        m[np.diag_indices(self.dim)] += var[c]
        return m

    def covariance(self, t: float = 0.0) -> NDArray[np.float64]:
        """Total covariance of P_t, shape (d, d)."""
        mean, var = self.marginal(t)
        bar = self.weights @ mean
        cov = np.einsum("c,ci,cj->ij", self.weights, mean - bar, mean - bar)
        cov[np.diag_indices(self.dim)] += self.weights @ (var[:, None] if self.isotropic else var)
        return cov

    # ------------------------------------------------------------------ sampling
    def class_counts(self, n: int) -> NDArray[np.int64]:
        return class_counts(n, self.weights)

    def sample_class(self, c: int, n: int, rng: np.random.Generator) -> NDArray[np.float64]:
        """``n`` points of class ``c``, shape (n, d)."""
        std = np.sqrt(self.variances[c])
        return self.centroids[c] + std * rng.standard_normal((n, self.dim))

    def sample(self, n: int, seed: int | np.random.Generator = 0, exact_counts: bool = True) -> TrainingSet:
        """Draw ``n`` points. With ``exact_counts`` class c gets exactly n_c = round(rho_c n) points
        (largest remainder, every n_c >= 1, points grouped by class); otherwise labels are i.i.d. from rho."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        if exact_counts:
            counts = self.class_counts(n)
        else:
            counts = rng.multinomial(n, self.weights).astype(np.int64)
        labels = np.repeat(np.arange(self.n_classes), counts)
        x = np.concatenate([self.sample_class(c, int(nc), rng) for c, nc in enumerate(counts)], axis=0)
        return TrainingSet(x=x, labels=labels, counts=counts)

    # ------------------------------------------------------------------ density and score
    def log_class_densities(self, x: ArrayLike, t: float) -> NDArray[np.float64]:
        """log rho_c + log N(x; e^{-t} mu_c, Gamma_{c,t}^2), shape (n, K) for x of shape (n, d)."""
        x = _as_points(x, self.dim)
        mean, var = self.marginal(t)
        if self.isotropic:
            sq = (x * x).sum(1)[:, None] - 2.0 * x @ mean.T + (mean * mean).sum(1)[None, :]
            np.maximum(sq, 0.0, out=sq)
            quad = sq / var[None, :]
            logdet = self.dim * np.log(var)
        else:
            inv = 1.0 / var
            quad = (x * x) @ inv.T - 2.0 * x @ (mean * inv).T + ((mean * mean) * inv).sum(1)[None, :]
            np.maximum(quad, 0.0, out=quad)
            logdet = np.log(var).sum(1)
        with np.errstate(divide="ignore"):
            logw = np.log(self.weights)
        return logw[None, :] - 0.5 * (quad + logdet[None, :] + self.dim * _LOG_2PI)

    def logit_terms(self, t: float) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
        """The split form of the class log-densities of an isotropic mixture at time t (``docs/theory.md`` §1):

            log rho_c N(x; a mu_c, G_c^2 I) = a x.mu_c / G_c^2 + base_c - |x|^2 / (2 G_c^2) - (d/2) log 2 pi,
            a = e^{-t},  G_c^2 = a^2 sigma_c^2 + Delta_t,  base_c = log rho_c - a^2 |mu_c|^2 / (2 G_c^2) - (d/2) log G_c^2,

        from which the score s = sum_c p_c (a mu_c - x) / G_c^2 follows with one (n, d) @ (d, K) product (the
        backward integrators of :mod:`classdiff.data.backward` fuse it into their update). Returns
        (a, G^2 (K,), base (K,)).
        """
        if not self.isotropic:
            raise ValueError("logit_terms: needs an isotropic mixture (variances of shape (K,))")
        a = float(signal_scale(t))
        var = a * a * self.variances + float(noise_variance(t))
        inv = 1.0 / var
        with np.errstate(divide="ignore"):
            base = np.log(self.weights) - 0.5 * a * a * (self.centroids**2).sum(1) * inv - 0.5 * self.dim * np.log(var)
        return a, var, base

    def log_density(self, x: ArrayLike, t: float) -> NDArray[np.float64]:
        """log P_t(x), shape (n,)."""
        return logsumexp(self.log_class_densities(x, t), axis=1)

    def posterior(self, x: ArrayLike, t: float) -> NDArray[np.float64]:
        """Class posteriors P(c | x_t = x), shape (n, K), rows summing to 1."""
        lc = self.log_class_densities(x, t)
        lc -= lc.max(axis=1, keepdims=True)
        np.exp(lc, out=lc)
        lc /= lc.sum(axis=1, keepdims=True)
        return lc

    def score(self, x: ArrayLike, t: float) -> NDArray[np.float64]:
        """Exact score grad_x log P_t(x), shape (n, d)."""
        x = _as_points(x, self.dim)
        post = self.posterior(x, t)
        mean, var = self.marginal(t)
        if self.isotropic:
            inv = 1.0 / var  # (K,)
            return (post * inv[None, :]) @ mean - x * (post @ inv)[:, None]
        inv = 1.0 / var  # (K, d)
        return post @ (mean * inv) - x * (post @ inv)

    def class_score(self, x: ArrayLike, t: float, c: int) -> NDArray[np.float64]:
        """Score of class c alone, (e^{-t} mu_c - x) / Gamma_{c,t}^2, shape (n, d)."""
        x = _as_points(x, self.dim)
        mean, var = self.marginal(t)
        return (mean[c] - x) / var[c]

    def denoiser(self, x: ArrayLike, t: float) -> NDArray[np.float64]:
        """Optimal denoiser E[x_0 | x_t = x] = e^{t}(x + Delta_t score), shape (n, d) (Tweedie)."""
        x = _as_points(x, self.dim)
        return (x + noise_variance(t) * self.score(x, t)) / signal_scale(t)


# ---------------------------------------------------------------------- empirical score


def _empirical_logits(x: NDArray, train: NDArray, t: float) -> NDArray[np.float64]:
    a, delta = signal_scale(t), noise_variance(t)
    sq = (x * x).sum(1)[:, None] - 2.0 * a * (x @ train.T) + (a * a) * (train * train).sum(1)[None, :]
    np.maximum(sq, 0.0, out=sq)
    return -sq / (2.0 * delta)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def empirical_weights(x: ArrayLike, train: ArrayLike, t: float) -> NDArray[np.float64]:
    """Posterior weights P(nu | x_t = x) over training points under P_t^emp, shape (m, n)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    train = np.atleast_2d(np.asarray(train, dtype=np.float64))
    _check_time(t)
    logits = _empirical_logits(x, train, t)
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def empirical_denoiser(x: ArrayLike, train: ArrayLike, t: float, chunk: int = 4096) -> NDArray[np.float64]:
    """Optimal empirical denoiser E^emp[x_0 | x_t = x] = sum_nu w_nu(x) x^nu, shape (m, d).

    As t -> 0 the weights concentrate and the denoiser returns the nearest training point.
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    train = np.atleast_2d(np.asarray(train, dtype=np.float64))
    out = np.empty_like(x)
    for sl in _chunks(x.shape[0], chunk):
        out[sl] = empirical_weights(x[sl], train, t) @ train
    return out


def empirical_score(x: ArrayLike, train: ArrayLike, t: float, chunk: int = 4096) -> NDArray[np.float64]:
    """Score of P_t^emp = (1/n) sum_nu N(e^{-t} x^nu, Delta_t I) (Bonnaire et al. eq. 5), shape (m, d):

        grad log P_t^emp(x) = (e^{-t} E^emp[x_0 | x] - x) / Delta_t.
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return (signal_scale(t) * empirical_denoiser(x, train, t, chunk) - x) / noise_variance(t)


def empirical_log_density(x: ArrayLike, train: ArrayLike, t: float) -> NDArray[np.float64]:
    """log P_t^emp(x), shape (m,)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    train = np.atleast_2d(np.asarray(train, dtype=np.float64))
    _check_time(t)
    delta = noise_variance(t)
    d = x.shape[1]
    return logsumexp(_empirical_logits(x, train, t), axis=1) - np.log(train.shape[0]) - 0.5 * d * np.log(
        2 * np.pi * delta
    )


# ---------------------------------------------------------------------- helpers


def _as_points(x: ArrayLike, dim: int) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"x: shape {np.shape(x)}, expected (n, d) with d = {dim}")
    return arr


def _check_time(t: float, allow_zero: bool = False) -> None:
    if not np.isfinite(t) or t < 0 or (t == 0 and not allow_zero):
        raise ValueError(f"t = {t!r}: diffusion time must be finite and {'>= 0' if allow_zero else '> 0'}")
