"""Per-class speciation times of the backward diffusion: theory, and its measurement by cloning.

Derivation and definitions: ``docs/speciation.md``. Summary (forward OU convention, ``docs/theory.md`` §1):

* Commitment curve. With the exact score the backward process reproduces the forward joint law of
  (x_t, x_0), so two clones branched from x_t end in classes drawn independently from the posterior
  p_c(x_t) = P(c | x_t). For a trajectory that ends in class c,

      phi_c(t) = P(clone ends in c | original ends in c) = E_{x ~ P_t}[p_c(x)^2] / rho_c = E_{x ~ P_t(.|c)}[p_c(x)],

  which rises from the chance level rho_c (t -> infinity) to 1 (t -> 0). It is an exact low-dimensional
  integral: p_c(x) depends on x only through its projection on the span of the centroids (dimension r <= K)
  and, when the classes' Gamma_{c,t} differ, on the squared norm of the rest (a chi-square with d - r
  degrees of freedom). Two classes with equal variances: the 1-D integral of Biroli et al. generalised to
  imbalance,  phi_c(t) = E_z[ sigmoid(log(rho_c / rho_c') + S_t / 2 + sqrt(S_t) z) ],  z ~ N(0, 1),
  with the projected signal-to-noise ratio S_t = e^{-2t} |mu_c - mu_c'|^2 / Gamma_t^2.
* Speciation time of class c (operational, the same for theory and simulation): the time at which phi_c(t),
  followed backward from large t, first reaches the level phi*_c. ``mode="absolute"``: phi*_c = phi*
  (``commitment_threshold``, default 0.775, the value of phi at t_S = (1/2) log Lambda for two balanced
  classes, Biroli et al.). ``mode="relative"``: phi*_c = rho_c + (2 phi* - 1)(1 - rho_c), the same fraction of
  the way from chance to 1. For K = 2 the relative definition gives *identical* times for both classes,
  because rho_1 (1 - phi_1) = rho_2 (1 - phi_2) (half the disagreement probability); only the absolute
  definition separates them. A class with rho_c >= phi* is committed by its prior alone (t_S,c = +inf).
* Closed form (leading order): the own-class log-odds of a class-c trajectory is Gaussian with mean
  m = log(rho_c / rho_c') + S_t / 2 and variance S_t; class c commits when sigmoid(m / sqrt(1 + pi S_t / 8))
  (probit approximation of phi_c) reaches phi*, calibrated on the balanced SNR S_bal (~= 4 for phi* = 0.775,
  which gives e^{-2t} Lambda = 1 at large d). To first order S* = S_bal - 2 log(rho_c / rho_c') (the median
  criterion): the log prior ratio delays the minority and advances the majority.
* Balanced reference: t_S = (1/2) log Lambda, Lambda the largest eigenvalue of the data covariance.
* Collapse (Biroli et al.): t_C = (1/2) log(1 + sigma^2 / (n^{2/d} - 1)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import brentq
from scipy.special import expit

from classdiff.core.memory import check_memory
from classdiff.core.readoff import ORDER_KEYS, class_order
from classdiff.core.results import Time, reached
from classdiff.data.mixture import GaussianMixture
from classdiff.data.process import diffuse, noise_variance, signal_scale

if TYPE_CHECKING:
    from classdiff.core.config import Config

__all__ = [
    "THRESHOLD_MODES",
    "MinorityDelay",
    "SpeciationClass",
    "SpeciationResult",
    "SpeciationTimes",
    "balanced_snr",
    "bootstrap_speciation_times",
    "closed_form_speciation_times",
    "collapse_time",
    "commitment_curves",
    "commitment_levels",
    "covariance_top_eigenvalue",
    "percentile_interval",
    "read_speciation_times",
    "required_snr",
    "simulate_collapse",
    "simulate_commitment",
    "simulation_window",
    "speciation_from_config",
    "speciation_times",
    "time_difference",
]

THRESHOLD_MODES = ("absolute", "relative")


# ---------------------------------------------------------------------------------------------- references


def covariance_top_eigenvalue(mixture: GaussianMixture) -> float:
    """Lambda, the largest eigenvalue of the data covariance Cov(x_0) (d x d).

    Isotropic classes: Cov = sum_c rho_c sigma_c^2 I + sum_c rho_c (mu_c - mu_bar)(mu_c - mu_bar)^T, whose top
    eigenvalue is sigma_bar^2 plus that of the K x K matrix sqrt(rho) M M^T sqrt(rho), M the centred centroids.
    Diagonal covariances: dense eigen-decomposition of :meth:`GaussianMixture.covariance`.
    """
    if not mixture.isotropic:
        return float(np.linalg.eigvalsh(mixture.covariance(0.0))[-1])
    w = mixture.weights
    m = mixture.centroids - w @ mixture.centroids
    small = np.sqrt(w)[:, None] * (m @ m.T) * np.sqrt(w)[None, :]
    return float(w @ mixture.variances + max(np.linalg.eigvalsh(small)[-1], 0.0))


def collapse_time(n: int | ArrayLike, dim: int, variance: float | ArrayLike) -> NDArray[np.float64]:
    """Collapse time of the empirical score, t_C = (1/2) log(1 + sigma^2 / (n^{2/d} - 1)) (Biroli et al.).

    Broadcasts over ``n`` and ``variance``; per class, use n_c and sigma_c^2 (after speciation a trajectory
    only sees the n_c points of its class).
    """
    n_arr = np.asarray(n, dtype=np.float64)
    if np.any(n_arr < 2):
        raise ValueError(f"n = {n!r}: needs at least 2 points")
    return 0.5 * np.log1p(np.asarray(variance, dtype=np.float64) / np.expm1(2.0 * np.log(n_arr) / dim))


# ---------------------------------------------------------------------------------------------- theory curve


def _span_basis(centroids: NDArray[np.float64]) -> NDArray[np.float64]:
    """Orthonormal basis (d, r) of the span of the centroids (r = 0 when all are zero)."""
    if not np.any(centroids):
        return np.zeros((centroids.shape[1], 0))
    q, r = np.linalg.qr(centroids.T)
    diag = np.abs(np.diag(r))
    keep = diag > 1e-10 * diag.max()
    if keep.all():
        return q
    u, s, _ = np.linalg.svd(centroids.T, full_matrices=False)
    return u[:, s > 1e-10 * s.max()]


def _nodes(r: int, dof: int, need_chi: bool, n_nodes: int, n_chi: int, n_samples: int, seed: int):
    """Integration nodes (y (M, r), chi (M,), w (M,)) for y ~ N(0, I_r), chi ~ chi^2_dof.

    Tensor Gauss–Hermite in y when r <= 2, Gauss–Legendre in the chi-square quantile when needed; otherwise
    Monte Carlo with ``n_samples`` seeded draws.
    """
    from scipy.stats import chi2

    if r <= 2:
        z, wz = np.polynomial.hermite_e.hermegauss(n_nodes)
        wz = wz / wz.sum()
        if r == 0:
            y, wy = np.zeros((1, 0)), np.ones(1)
        else:
            grids = np.meshgrid(*([z] * r), indexing="ij")
            y = np.stack([g.ravel() for g in grids], axis=1)
            wy = np.prod(np.meshgrid(*([wz] * r), indexing="ij"), axis=0).ravel()
        if need_chi and dof > 0:
            u, wu = np.polynomial.legendre.leggauss(n_chi)
            u, wu = 0.5 * (u + 1.0), 0.5 * wu
            chi = chi2.ppf(u, dof)
            yy = np.repeat(y, chi.size, axis=0)
            cc = np.tile(chi, y.shape[0])
            ww = np.repeat(wy, chi.size) * np.tile(wu, y.shape[0])
            return yy, cc, ww
        return y, np.full(y.shape[0], float(dof)), wy
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EC]))
    y = rng.standard_normal((n_samples, r))
    chi = rng.chisquare(dof, n_samples) if (need_chi and dof > 0) else np.full(n_samples, float(dof))
    return y, chi, np.full(n_samples, 1.0 / n_samples)


def commitment_curves(
    mixture: GaussianMixture,
    times: ArrayLike,
    n_nodes: int | None = None,
    n_chi: int = 128,
    n_samples: int = 40000,
    seed: int = 0,
) -> NDArray[np.float64]:
    """Exact phi_c(t) = E_{x ~ P_t(.|c)}[P(c | x)] for every class, shape (T, K) (``docs/speciation.md`` §2).

    Isotropic classes only. The class-c point is x = e^{-t} mu_c + Gamma_{c,t} z; writing z = B y + z_perp
    (B an orthonormal basis of the centroid span, rank r), the logits are

        log rho_k - (|e^{-t}(nu_c - nu_k) + Gamma_c y|^2 + Gamma_c^2 chi) / (2 Gamma_k^2) - (d/2) log Gamma_k^2,

    nu = B^T mu, y ~ N(0, I_r), chi = |z_perp|^2 ~ chi^2_{d - r} (it cancels when all Gamma_k are equal).
    Quadrature for r <= 2 (``n_nodes`` per Gauss–Hermite axis, default 200 for r <= 1 with equal variances,
    48 otherwise; ``n_chi`` chi-square nodes), otherwise seeded Monte Carlo with ``n_samples`` draws (standard error
    <= 0.5 / sqrt(n_samples)). Accuracy of the 1-D quadrature: ~1e-10 near the threshold, ~1e-8 at SNR ~ 50
    (the integrand becomes a steep sigmoid in z).
    """
    if not mixture.isotropic:
        raise ValueError("commitment_curves: needs isotropic classes (variances of shape (K,))")
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    basis = _span_basis(mixture.centroids)
    nu = mixture.centroids @ basis  # (K, r)
    r = basis.shape[1]
    d = mixture.dim
    k = mixture.n_classes
    equal_var = np.ptp(mixture.variances) == 0
    if n_nodes is None:
        n_nodes = 200 if (r <= 1 and equal_var) else 48
    y, chi, w = _nodes(r, d - r, not equal_var, n_nodes, n_chi, n_samples, seed)
    with np.errstate(divide="ignore"):
        logw = np.log(mixture.weights)
    proj = y @ nu.T  # (M, K): y . nu_k
    y2 = (y * y).sum(1)  # (M,)
    sep = ((nu[:, None, :] - nu[None, :, :]) ** 2).sum(-1)  # (K, K): |nu_c - nu_k|^2
    out = np.empty((t.size, k))
    for i, ti in enumerate(t):
        a = float(signal_scale(ti))
        g2 = a * a * mixture.variances + float(noise_variance(ti))  # (K,)
        for c in range(k):
            if mixture.weights[c] == 0:
                out[i, c] = np.nan
                continue
            # |a (nu_c - nu_k) + G_c y|^2 = a^2 |nu_c - nu_k|^2 + 2 a G_c (y.nu_c - y.nu_k) + G_c^2 |y|^2
            gc = np.sqrt(g2[c])
            quad = (2.0 * a * gc) * (proj[:, c : c + 1] - proj)
            quad += (a * a) * sep[c][None, :]
            quad += (g2[c] * (y2 + chi) if not equal_var else g2[c] * y2)[:, None]
            logits = (logw - 0.5 * d * np.log(g2))[None, :] - quad * (0.5 / g2)[None, :]
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            out[i, c] = float(w @ (logits[:, c] / logits.sum(axis=1)))
    return out


def balanced_snr(threshold: float = 0.775, n_nodes: int = 128) -> float:
    """S_bal: the projected SNR at which two balanced classes reach phi = threshold,
    i.e. E_z[sigmoid(S/2 + sqrt(S) z)] = threshold (S_bal ~= 4.0 for 0.775)."""
    if not 0.5 < threshold < 1:
        raise ValueError(f"threshold = {threshold!r}: must lie in (0.5, 1)")
    z, wz = np.polynomial.hermite_e.hermegauss(n_nodes)
    wz = wz / wz.sum()

    def f(s: float) -> float:
        return float(wz @ expit(0.5 * s + np.sqrt(s) * z)) - threshold

    return float(brentq(f, 1e-12, 1e4, xtol=1e-12))


def commitment_levels(weights: ArrayLike, threshold: float = 0.775, mode: str = "absolute") -> NDArray[np.float64]:
    """Per-class levels phi*_c (K,) that define t_S,c (``docs/speciation.md`` §3).

    ``absolute``: phi*_c = threshold. ``relative``: phi*_c = rho_c + (2 threshold - 1)(1 - rho_c), i.e. the
    fraction kappa* = 2 threshold - 1 of the way from the chance level rho_c to 1 (kappa* = 0.55 for 0.775,
    the balanced two-class value).
    """
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"mode = {mode!r}: must be one of {', '.join(THRESHOLD_MODES)}")
    if not 0.5 < threshold < 1:
        raise ValueError(f"threshold = {threshold!r}: must lie in (0.5, 1)")
    rho = np.asarray(weights, dtype=np.float64)
    if mode == "absolute":
        return np.full(rho.shape, float(threshold))
    return rho + (2.0 * threshold - 1.0) * (1.0 - rho)


def read_speciation_times(times: ArrayLike, phi: ArrayLike, levels: ArrayLike) -> NDArray[np.float64]:
    """t_S,c read off commitment curves, shape (K,).

    ``times`` (T,) any order, ``phi`` (T, K), ``levels`` (K,). Following the backward process (from the
    largest t down), t_S,c is the first time at which phi_c reaches its level, interpolated linearly in t
    between the two grid points that bracket the crossing. +inf when phi_c is at or above its level already
    at the largest t (committed from the start); nan when it never reaches it.
    """
    t = np.asarray(times, dtype=np.float64)
    p = np.asarray(phi, dtype=np.float64)
    lev = np.broadcast_to(np.asarray(levels, dtype=np.float64), (p.shape[1],))
    order = np.argsort(-t)
    t, p = t[order], p[order]
    out = np.full(p.shape[1], np.nan)
    for c in range(p.shape[1]):
        row = p[:, c]
        above = np.nonzero(row >= lev[c])[0]
        if above.size == 0:
            continue
        j = above[0]
        if j == 0:
            out[c] = np.inf
            continue
        y0, y1 = row[j - 1], row[j]
        frac = 1.0 if y1 == y0 or not np.isfinite(y0) else (lev[c] - y0) / (y1 - y0)
        out[c] = t[j - 1] + frac * (t[j] - t[j - 1])
    return out


def required_snr(log_prior_ratio: float | ArrayLike, threshold: float = 0.775) -> NDArray[np.float64]:
    """S*(l): projected SNR at which a class with prior log-odds l = log(rho_c / rho_c') reaches phi = threshold.

    Uses the probit approximation E_z[sigmoid(m + sqrt(S) z)] ~= sigmoid(m / sqrt(1 + pi S / 8)) with the
    mean own-class log-odds m = S/2 + l, calibrated so that S*(0) = S_bal exactly (``balanced_snr``):
    L*^2 = (S_bal/2)^2 / (1 + pi S_bal / 8), and S* is the root of

        S^2 + (4 l - pi L*^2 / 2) S + 4 (l^2 - L*^2) = 0   with S/2 + l > 0.

    Returns 0 where the prior alone suffices (l >= L*). Broadcasts over ``log_prior_ratio``.
    """
    s_bal = balanced_snr(threshold)
    l_star2 = (0.5 * s_bal) ** 2 / (1.0 + np.pi * s_bal / 8.0)
    lv = np.asarray(log_prior_ratio, dtype=np.float64)
    b = 4.0 * lv - 0.5 * np.pi * l_star2
    c = 4.0 * (lv * lv - l_star2)
    root = 0.5 * (-b + np.sqrt(np.maximum(b * b - 4.0 * c, 0.0)))
    return np.where(lv >= np.sqrt(l_star2), 0.0, root)


def closed_form_speciation_times(mixture: GaussianMixture, threshold: float = 0.775) -> NDArray[np.float64]:
    """Leading-order t_S,c from the projected two-class problem (``docs/speciation.md`` §4), shape (K,).

    For each competitor c' the SNR S_t = e^{-2t}|mu_c - mu_c'|^2 / Gamma_t^2 (Gamma_t^2 = e^{-2t} sigma_bar^2
    + Delta_t, sigma_bar^2 the pair's mean variance) must reach S* = :func:`required_snr` (log(rho_c/rho_c'));
    solving, e^{-2t} = S* / (|mu_c - mu_c'|^2 - S*(sigma_bar^2 - 1)). Class c is committed once it is separated
    from every competitor: t_S,c = min_c' t_cc'. +inf when S* = 0 for all c' (the prior alone commits), nan
    when the SNR never reaches S* for some competitor (or the formula gives t <= 0).
    """
    k = mixture.n_classes
    var = mixture.mean_variances
    out = np.full(k, np.inf)
    for c in range(k):
        if mixture.weights[c] == 0:
            out[c] = np.nan
            continue
        for cp in range(k):
            if cp == c or mixture.weights[cp] == 0:
                continue
            sep = float(np.sum((mixture.centroids[c] - mixture.centroids[cp]) ** 2))
            s_star = float(required_snr(np.log(mixture.weights[c] / mixture.weights[cp]), threshold))
            if s_star <= 0:
                continue
            num = sep - s_star * (0.5 * (var[c] + var[cp]) - 1.0)
            if num <= s_star:
                out[c] = np.nan
                break
            out[c] = min(out[c], 0.5 * np.log(num / s_star))
    return out


# ---------------------------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class SpeciationTimes:
    """Theory of the per-class speciation times of one mixture.

    ``t_theory`` (K,): read off the exact phi_c(t) at the levels ``levels`` (K,); ``t_closed_form`` (K,): the
    leading-order formula; ``t_balanced`` = (1/2) log Lambda; ``times`` (T,) and ``phi`` (T, K): the curves.
    """

    t_theory: NDArray[np.float64]
    t_closed_form: NDArray[np.float64]
    t_balanced: float
    top_eigenvalue: float
    levels: NDArray[np.float64]
    chance: NDArray[np.float64]
    times: NDArray[np.float64]
    phi: NDArray[np.float64]
    mode: str
    threshold: float


def speciation_times(
    mixture: GaussianMixture,
    threshold: float = 0.775,
    mode: str = "absolute",
    times: ArrayLike | None = None,
    **curve_options: Any,
) -> SpeciationTimes:
    """Per-class speciation times of ``mixture`` from the exact commitment curves (theory).

    ``times``: grid for phi_c(t) (default 400 points on [0.01, (1/2) log Lambda + 3]); ``curve_options`` go
    to :func:`commitment_curves`. See the module docstring for the definitions.
    """
    lam = covariance_top_eigenvalue(mixture)
    t_bal = 0.5 * np.log(lam) if lam > 1 else 0.0
    grid = np.linspace(0.01, max(t_bal, 0.5) + 3.0, 400) if times is None else np.asarray(times, dtype=np.float64)
    phi = commitment_curves(mixture, grid, **curve_options)
    levels = commitment_levels(mixture.weights, threshold, mode)
    return SpeciationTimes(
        t_theory=read_speciation_times(grid, phi, levels),
        t_closed_form=closed_form_speciation_times(mixture, threshold),
        t_balanced=float(t_bal),
        top_eigenvalue=lam,
        levels=levels,
        chance=mixture.weights.copy(),
        times=grid,
        phi=phi,
        mode=mode,
        threshold=float(threshold),
    )


def simulate_commitment(
    mixture: GaussianMixture,
    branch_times: ArrayLike,
    n_trajectories: int = 2000,
    n_steps: int = 500,
    t_max: float = 6.0,
    t_min: float = 1e-3,
    seed: int = 0,
    n_boot: int = 500,
    score: Any = None,
    labeller: Any = None,
    x_init: ArrayLike | None = None,
    backend: str = "numpy",
    device: str = "auto",
    dtype: str = "float64",
) -> dict[str, NDArray[np.float64]]:
    """Measured phi_c(t) by cloning (backward SDE, Euler–Maruyama), with bootstrap 95% intervals.

    ``score``: default the exact mixture score; any callable score(x, t) -> (n, d) works (empirical score,
    a network). ``labeller``: default the mixture's Bayes classifier of the end state at ``t_min``,
    argmax_c P(c | x_{t_min}) (with the exact score the end class is then exact up to the tiny posterior
    uncertainty left at t_min, so t_min can sit well below the speciation window to save steps); any
    callable(x) -> labels in 0..K-1. ``x_init``: default exact draws from P_{t_max} of the mixture (so t_max
    may also be chosen just above the window).
    Returns {"branch_times" (B,), "phi" (B, K), "lo" (B, K), "hi" (B, K), "ends" (B, K), "original" (N,) and
    "clones" (B, N), the end labels of the originals and of their clones (for :func:`bootstrap_speciation_times`)}.
    """
    from classdiff.data.backward import (
        agreement_by_class,
        bootstrap_agreement,
        cloning_experiment,
        mixture_labeller,
        sample_initial,
        time_grid,
    )

    grid = time_grid(t_max, t_min, n_steps)
    x0 = sample_initial(mixture, n_trajectories, t_max, seed) if x_init is None else np.asarray(x_init)
    res = cloning_experiment(
        mixture if score is None else score,
        mixture_labeller(mixture, t_min) if labeller is None else labeller,
        x0,
        grid,
        branch_times,
        seed=seed,
        backend=backend,
        device=device,
        dtype=dtype,
    )
    orig, clones = res.original["class"], res.clones["class"]
    phi, ends = agreement_by_class(orig, clones, mixture.n_classes)
    lo, hi = bootstrap_agreement(orig, clones, mixture.n_classes, n_boot=n_boot, seed=seed)
    return {"branch_times": res.branch_times, "phi": phi, "lo": lo, "hi": hi, "ends": ends,
            "original": np.asarray(orig), "clones": np.asarray(clones)}


def bootstrap_speciation_times(
    original: ArrayLike,
    clones: ArrayLike,
    branch_times: ArrayLike,
    levels: ArrayLike,
    n_boot: int = 500,
    seed: int = 0,
) -> NDArray[np.float64]:
    """Bootstrap draws of the simulated t_S,c, shape (n_boot, K) (``docs/speciation.md`` §5).

    ``original`` (N,) and ``clones`` (B, N) are the end labels of a cloning run at ``branch_times`` (B,);
    ``levels`` (K,) the commitment levels. Trajectories are resampled with replacement, jointly across branching
    times and classes (one original serves them all), and each resample's phi_c(t) is read off by
    :func:`read_speciation_times`, so differences between classes keep their correlation. Draws follow that
    function's convention: +inf committed at the top branching time, nan never reached.
    """
    from classdiff.data.backward import agreement_by_class

    a = np.asarray(original)
    b = np.atleast_2d(np.asarray(clones))
    lev = np.asarray(levels, dtype=np.float64)
    k = lev.size
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x75E5]))
    n = a.size
    out = np.empty((n_boot, k))
    for r in range(n_boot):
        i = rng.integers(0, n, n)
        phi, _ = agreement_by_class(a[i], b[:, i], k)
        out[r] = read_speciation_times(branch_times, phi, lev)
    return out


def percentile_interval(draws: ArrayLike, level: float = 0.95) -> list[Time]:
    """Percentile interval [lo, hi] of bootstrap draws of a time (+inf allowed; nan draws, never reached, are left
    out); [NOT_REACHED, NOT_REACHED] when no draw reached the level."""
    v = np.asarray(draws, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return [reached(np.nan), reached(np.nan)]
    v = np.sort(v)
    q = (1.0 - level) / 2.0  # order statistics, not interpolation: draws at +inf stay +inf
    return [float(v[int(np.floor(q * (v.size - 1)))]), float(v[int(np.ceil((1.0 - q) * (v.size - 1)))])]


def time_difference(a: float, b: float) -> float:
    """a - b for speciation times: +inf when a is +inf and b finite (committed at start vs a finite time), nan when
    either is nan (never reached) or both are infinite."""
    if np.isnan(a) or np.isnan(b) or (np.isinf(a) and np.isinf(b)):
        return float("nan")
    return float(a - b)


def simulate_collapse(
    mixture: GaussianMixture,
    train_x: ArrayLike,
    train_labels: ArrayLike,
    branch_times: ArrayLike,
    n_trajectories: int = 1000,
    n_steps: int = 300,
    t_max: float = 6.0,
    t_min: float = 1e-3,
    seed: int = 0,
    n_boot: int = 200,
    backend: str = "numpy",
) -> dict[str, Any]:
    """Cloning with the empirical score of a training set: per-class speciation *and* collapse curves.

    The score is :func:`classdiff.data.mixture.empirical_score` of ``train_x`` (n, d), which memorizes. Ends are
    labelled by the nearest training point: its class gives phi_c(t) (speciation), its index gives the
    collapse curve phi_C,c(t) = P(clone ends on the same training point | original ends in class c).
    Theory: t_C,c = (1/2) log(1 + sigma_c^2 / (n_c^{2/d} - 1)) (:func:`collapse_time`, Biroli et al.),
    asymptotic in d with log n_c / d fixed. Returns {"branch_times" (B,), "phi" (B, K), "phi_lo", "phi_hi",
    "phi_collapse" (B, K), "collapse_lo", "collapse_hi", "t_collapse_theory" (K,)}.
    """
    from classdiff.data.backward import (
        agreement_by_class,
        bootstrap_agreement,
        cloning_experiment,
        nearest_point_labeller,
        time_grid,
    )
    from classdiff.data.mixture import empirical_score

    x_train = np.asarray(train_x, dtype=np.float64)
    y_train = np.asarray(train_labels)
    k = mixture.n_classes
    counts = np.bincount(y_train, minlength=k)
    grid = time_grid(t_max, t_min, n_steps)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC011]))
    start = x_train[rng.integers(0, x_train.shape[0], n_trajectories)]  # exact draws of P_{t_max}^emp
    x0, _ = diffuse(start, t_max, rng)

    def score(x: Any, t: float) -> Any:
        return empirical_score(np.asarray(x), x_train, t)

    res = cloning_experiment(
        score,
        {"class": nearest_point_labeller(x_train, y_train), "point": nearest_point_labeller(x_train)},
        x0,
        grid,
        branch_times,
        seed=seed,
        backend=backend,
    )
    oc, cc = res.original["class"], res.clones["class"]
    op, cp = res.original["point"], res.clones["point"]
    phi, _ = agreement_by_class(oc, cc, k)
    lo, hi = bootstrap_agreement(oc, cc, k, n_boot=n_boot, seed=seed)
    phi_c, _ = agreement_by_class(op, cp, k, original_group=oc, clone_group=cc)
    clo, chi = bootstrap_agreement(op, cp, k, n_boot=n_boot, seed=seed, original_group=oc, clone_group=cc)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_c = np.where(counts >= 2, collapse_time(np.maximum(counts, 2), mixture.dim, mixture.mean_variances), np.nan)
    return {
        "branch_times": res.branch_times,
        "phi": phi,
        "phi_lo": lo,
        "phi_hi": hi,
        "phi_collapse": phi_c,
        "collapse_lo": clo,
        "collapse_hi": chi,
        "t_collapse_theory": t_c,
    }


def simulation_window(
    mixture: GaussianMixture, theory: SpeciationTimes, t_max: float, tol: float = 1e-3
) -> tuple[float, float, float]:
    """(branch_hi, branch_lo, t_end) for the cloning run of :func:`speciation_from_config`.

    Branching window [min t_S - 1, max t_S + 1.5] (t_S over the finite theory times and (1/2) log Lambda),
    clipped to (0, t_max]. The runs start at branch_hi from exact draws of P_t (nothing is lost above it) and
    end at t_end, the largest t below the window at which every class's exact phi_c exceeds 1 - ``tol``, so
    that the Bayes classifier of x_{t_end} gives the end class up to ~``tol``.
    """
    finite = np.concatenate([theory.t_theory[np.isfinite(theory.t_theory)], [theory.t_balanced]])
    hi = min(float(finite.max()) + 1.5, t_max)
    lo = max(float(finite.min()) - 1.0, 0.02)
    if hi <= lo:
        lo, hi = 0.02, t_max
    grid = np.linspace(1e-3, lo, 200)
    phi = commitment_curves(mixture, grid)
    done = np.nonzero(np.all(phi >= 1.0 - tol, axis=1))[0]
    t_end = float(grid[done[-1]]) if done.size else 1e-3
    return hi, lo, min(t_end, lo)


@dataclass
class SpeciationClass:
    """One class's speciation times t_S,c (:data:`~classdiff.core.results.Time`: +inf committed from the start,
    NOT_REACHED never committed within the window), absolute threshold unless ``relative``."""

    label: int
    weight: float
    chance_level: float
    level: float
    t_speciation_theory: Time
    t_speciation_simulated: Time
    t_speciation_closed_form: Time
    t_speciation_relative_theory: Time
    t_speciation_relative_simulated: Time
    committed_at_start: bool
    n_ends: list[int]
    t_speciation_simulated_interval: list[Time] = field(default_factory=list)
    t_speciation_relative_simulated_interval: list[Time] = field(default_factory=list)


@dataclass
class MinorityDelay:
    """How much later the minority speciates: delay = t_S(majority) - t_S(minority) in one threshold ``mode``.

    > 0: the minority commits later in the backward process (at a smaller t). +inf: the majority is committed
    at the start (its prior exceeds the absolute level) while the minority speciates at a finite time; nan:
    undefined (a time not reached, or not computed: the relative mode has a closed form only for K = 2, where the
    identity of ``docs/speciation.md`` §2 makes it exactly 0). ``simulated_interval``: 95% percentile bootstrap
    interval of the simulated delay (trajectories resampled jointly, so the two times keep their correlation).
    ``majority`` / ``minority``: the labels of the largest and smallest class.
    """

    mode: str
    majority: int
    minority: int
    theory: float
    closed_form: float
    simulated: float
    simulated_interval: list[Time]


@dataclass
class SpeciationResult:
    """The ``speciation`` result: per-class times, the orders (first to commit first, backward time), the
    settings of the cloning run and the commitment curves (``curves``: theory and simulated phi_c(t))."""

    classes: list[SpeciationClass]
    speciation_order_theory: list[int]
    speciation_order_simulated: list[int]
    t_half_log_lambda: float
    top_eigenvalue: float
    threshold: float
    threshold_mode: str
    n_trajectories: int
    n_steps: int
    backend: str
    dtype: str
    t_start: float
    t_end: float
    step: float
    curves: dict[str, list[Any]] = field(repr=False)
    minority_delay: list[MinorityDelay] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """DESIGN.md keys: ``classes`` [{label, t_speciation_theory, t_speciation_simulated, ...}], the orders
        under ``speciation_order_theory`` / ``_simulated`` (ORDER_KEYS), the settings and the curves."""
        out: dict[str, Any] = {"classes": [vars(c).copy() for c in self.classes]}
        key = ORDER_KEYS["t_speciation"]
        out[f"{key}_theory"] = self.speciation_order_theory
        out[f"{key}_simulated"] = self.speciation_order_simulated
        for name in ("t_half_log_lambda", "top_eigenvalue", "threshold", "threshold_mode", "n_trajectories",
                     "n_steps", "backend", "dtype", "t_start", "t_end", "step", "minority_delay", "curves"):
            out[name] = getattr(self, name)
        return out


def speciation_from_config(
    config: Config, backend: str = "numpy", device: str = "auto", dtype: str = "float64"
) -> SpeciationResult:
    """Theory and cloning simulation of the per-class speciation times for ``config`` (pure function).

    Uses ``config.mixture`` (the data) and ``config.theory`` (n_trajectories, n_steps, t_max,
    n_branch_times, commitment_threshold, bootstrap, seed). The step is h = t_max / n_steps; the cloning run
    covers only [t_end, branch_hi] (see :func:`simulation_window`), starting from exact draws of P_t there.
    The threshold is applied in the ``absolute`` mode (see :func:`commitment_levels`); the ``relative`` times
    are reported alongside. ``backend``/``device``/``dtype`` select the array back end of the simulation
    (:mod:`classdiff.data.backward`; e.g. ``"torch"`` on ``"cuda"``).
    """
    th = config.theory
    d = config.mixture.dim
    # trajectories, their clones, the noise buffer and the states kept at every branching time, float64
    need = 8.0 * d * th.n_trajectories * (th.n_branch_times + 4) + 8.0 * d * len(config.mixture.weights)
    check_memory(need, f"speciation with {th.n_trajectories} trajectories in d = {d}, {th.n_branch_times} "
                       "branching times", "lower mixture.dim, theory.n_trajectories or theory.n_branch_times")
    mixture = GaussianMixture.from_config(config.mixture)
    theory = speciation_times(mixture, th.commitment_threshold, "absolute")
    hi, lo, t_end = simulation_window(mixture, theory, th.t_max)
    branch = np.linspace(hi, lo, th.n_branch_times)
    h = th.t_max / th.n_steps
    n_steps = max(2, round((hi - t_end) / h))
    sim = simulate_commitment(
        mixture, branch, th.n_trajectories, n_steps, hi, t_end, th.seed, th.bootstrap,
        backend=backend, device=device, dtype=dtype,
    )
    levels_abs = commitment_levels(mixture.weights, th.commitment_threshold, "absolute")
    levels_rel = commitment_levels(mixture.weights, th.commitment_threshold, "relative")
    t_theory = [reached(v) for v in theory.t_theory]
    t_sim = [reached(v) for v in read_speciation_times(sim["branch_times"], sim["phi"], levels_abs)]
    t_rel_sim = read_speciation_times(sim["branch_times"], sim["phi"], levels_rel)
    t_rel_th = read_speciation_times(theory.times, theory.phi, levels_rel)
    phi_at_branch = commitment_curves(mixture, sim["branch_times"])
    n_boot = max(th.bootstrap, 1)
    draws_abs = bootstrap_speciation_times(sim["original"], sim["clones"], sim["branch_times"], levels_abs,
                                           n_boot, th.seed)
    draws_rel = bootstrap_speciation_times(sim["original"], sim["clones"], sim["branch_times"], levels_rel,
                                           n_boot, th.seed)
    t_sim_raw = read_speciation_times(sim["branch_times"], sim["phi"], levels_abs)
    w = mixture.weights
    major, minor = int(np.argmax(w)), int(mixture.n_classes - 1 - np.argmin(w[::-1]))
    if major == minor:  # all weights equal
        major, minor = 0, mixture.n_classes - 1
    delays = []
    cf_abs = time_difference(theory.t_closed_form[major], theory.t_closed_form[minor])
    cf_rel = 0.0 if mixture.n_classes == 2 else float("nan")  # K = 2: the identity of docs/speciation.md §2
    for mode, th_t, cf, sim_t, draws in (
        ("absolute", theory.t_theory, cf_abs, t_sim_raw, draws_abs),
        ("relative", t_rel_th, cf_rel, t_rel_sim, draws_rel),
    ):
        boot = [time_difference(r[major], r[minor]) for r in draws]
        delays.append(MinorityDelay(
            mode=mode, majority=major, minority=minor, theory=time_difference(th_t[major], th_t[minor]),
            closed_form=cf, simulated=time_difference(sim_t[major], sim_t[minor]),
            simulated_interval=percentile_interval(boot),
        ))
    classes = [
        SpeciationClass(
            label=c,
            weight=float(mixture.weights[c]),
            chance_level=float(mixture.weights[c]),
            level=float(levels_abs[c]),
            t_speciation_theory=t_theory[c],
            t_speciation_simulated=t_sim[c],
            t_speciation_closed_form=reached(theory.t_closed_form[c]),
            t_speciation_relative_theory=reached(t_rel_th[c]),
            t_speciation_relative_simulated=reached(t_rel_sim[c]),
            committed_at_start=bool(mixture.weights[c] >= levels_abs[c]),
            n_ends=sim["ends"][:, c].tolist(),
            t_speciation_simulated_interval=percentile_interval(draws_abs[:, c]),
            t_speciation_relative_simulated_interval=percentile_interval(draws_rel[:, c]),
        )
        for c in range(mixture.n_classes)
    ]
    return SpeciationResult(
        classes=classes,
        speciation_order_theory=class_order(t_theory, backward_time=True),
        speciation_order_simulated=class_order(t_sim, backward_time=True),
        t_half_log_lambda=theory.t_balanced,
        top_eigenvalue=theory.top_eigenvalue,
        threshold=th.commitment_threshold,
        threshold_mode="absolute",
        n_trajectories=th.n_trajectories,
        n_steps=th.n_steps,
        backend=backend,
        dtype=dtype,
        t_start=hi,
        t_end=t_end,
        step=(hi - t_end) / n_steps,
        curves={
            "theory_times": theory.times.tolist(),
            "theory_phi": theory.phi.tolist(),
            "branch_times": sim["branch_times"].tolist(),
            "phi": sim["phi"].tolist(),
            "phi_lo": sim["lo"].tolist(),
            "phi_hi": sim["hi"].tolist(),
            "theory_phi_at_branch": phi_at_branch.tolist(),
        },
        minority_delay=delays,
    )
