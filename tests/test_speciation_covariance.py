"""Speciation for spiked (anisotropic) classes: the reduced (R + 1)-dimensional expectation against the isotropic
quadrature (no spikes), against a brute-force d-dimensional Monte Carlo with the full covariances, and against
cloning simulations of the backward SDE with the exact score of a diagonal-covariance mixture."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from classdiff.data.mixture import GaussianMixture
from classdiff.data.process import noise_variance, signal_scale
from classdiff.theory.covariance_types import SpikedCovariance
from classdiff.theory.speciation import commitment_curves, read_speciation_times, simulate_commitment
from classdiff.theory.speciation_covariance import spiked_commitment_curves, spiked_speciation_times


def _spiked(d: int, axes: list[int], strengths: list[float], floor: float) -> SpikedCovariance:
    vectors = np.eye(d)[:, axes]
    s = np.asarray(strengths, dtype=np.float64)
    return SpikedCovariance(vectors=vectors, strengths=s, floor=floor, captured=0.0,
                            trace_per_dim=floor + s.sum() / d)


def _dense(cv: SpikedCovariance) -> np.ndarray:
    return cv.floor * np.eye(cv.vectors.shape[0]) + (cv.vectors * cv.strengths) @ cv.vectors.T


def test_without_spikes_it_is_the_isotropic_integral():
    d = 50
    mu = np.zeros((2, d))
    mu[0, 0], mu[1, 0] = 3.0, -3.0
    var = [1.5, 0.7]
    times = np.array([0.3, 0.8, 1.2, 2.0])
    exact = commitment_curves(GaussianMixture([0.8, 0.2], mu, var), times)
    covs = [_spiked(d, [], [], v) for v in var]
    mc = spiked_commitment_curves([0.8, 0.2], mu, covs, times, n_samples=20000, seed=1)
    assert np.max(np.abs(mc - exact)) < 0.012, (mc, exact)  # 3.5 standard errors of 20000 draws


def test_matches_brute_force_monte_carlo_with_the_full_covariances():
    d = 10
    rng = np.random.default_rng(3)
    mu = rng.standard_normal((2, d))
    q0, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    q1, _ = np.linalg.qr(rng.standard_normal((d, 1)))
    covs = [SpikedCovariance(q0, np.array([6.0, 2.0]), 0.5, 0.0, 0.0), SpikedCovariance(q1, np.array([4.0]), 1.2, 0.0, 0.0)]
    rho = np.array([0.6, 0.4])
    times = np.array([0.2, 0.6, 1.0])
    reduced = spiked_commitment_curves(rho, mu, covs, times, n_samples=20000, seed=0)
    brute = np.empty_like(reduced)
    draws = rng.standard_normal((20000, d))
    for i, t in enumerate(times):
        a, delta = signal_scale(t), noise_variance(t)
        gam = [a * a * _dense(cv) + delta * np.eye(d) for cv in covs]
        for c in range(2):
            x = a * mu[c] + draws @ np.linalg.cholesky(gam[c]).T
            logp = np.stack([np.log(rho[k]) + multivariate_normal(a * mu[k], gam[k]).logpdf(x) for k in range(2)], 1)
            post = np.exp(logp - logp.max(1, keepdims=True))
            brute[i, c] = (post[:, c] / post.sum(1)).mean()
    assert np.max(np.abs(reduced - brute)) < 0.015, (reduced, brute)


def test_matches_cloning_with_the_exact_score_of_a_diagonal_mixture():
    """Diagonal covariances are spiked along coordinate axes: class 0 strong along axes 1, 2, class 1 along axis
    3, floor 1 elsewhere; centroids +-4 e_0, weights 0.7 / 0.3 (the classes barely overlap at t = 0, so the Bayes
    label of the end point is its class). Cloning with 2500 trajectories (read-off error ~0.05, see
    tests/test_speciation.py), tolerance 0.15 in OU time."""
    d = 32
    var = np.ones((2, d))
    var[0, 1], var[0, 2], var[1, 3] = 8.0, 4.0, 6.0
    mu = np.zeros((2, d))
    mu[0, 0], mu[1, 0] = 4.0, -4.0
    rho = [0.7, 0.3]
    gm = GaussianMixture(rho, mu, var)
    covs = [_spiked(d, [1, 2], [7.0, 3.0], 1.0), _spiked(d, [3], [5.0], 1.0)]
    grid = np.linspace(0.05, 4.0, 160)
    t_theory, _ = spiked_speciation_times(rho, mu, covs, grid, n_samples=20000, seed=0)
    assert all(np.isfinite(t_theory)), t_theory
    centre = float(np.mean(t_theory))
    branch = centre + np.array([0.6, 0.3, 0.1, -0.1, -0.3, -0.6])
    t_max, t_min = branch[0], 0.02
    sim = simulate_commitment(gm, branch, 2500, round((t_max - t_min) / 0.03), t_max, t_min, seed=0, n_boot=0)
    t_sim = read_speciation_times(sim["branch_times"], sim["phi"], [0.775, 0.775])
    assert np.all(np.abs(t_sim - np.asarray(t_theory)) < 0.15), (t_sim, t_theory)


def test_bad_input_is_refused():
    covs = [_spiked(4, [], [], 1.0)] * 2
    with pytest.raises(ValueError, match="weights"):
        spiked_commitment_curves([0.5, 0.6], np.zeros((2, 4)), covs, [1.0])
    with pytest.raises(ValueError, match="times"):
        spiked_commitment_curves([0.5, 0.5], np.zeros((2, 4)), covs, [0.0])


def test_speciation_of_labelled_data_caps_the_rank_for_small_classes():
    from classdiff.theory.audit import speciation_with_covariances

    rng = np.random.default_rng(0)
    d = 30
    x = np.concatenate([rng.standard_normal((6, d)) + 1.0, rng.standard_normal((40, d)) * 1.5 - 1.0])
    y = np.array([0] * 6 + [1] * 40)
    out = speciation_with_covariances(x, y, [0, 1], [6, 40], np.linspace(0.05, 5.0, 60), rank=16, n_samples=2000)
    assert len(out["t_speciation"]) == 2 and out["phi"].shape == (60, 2)
    t_abs, t_rel = out["t_speciation"], out["t_speciation_relative"]
    assert np.isfinite(t_abs[0]) and t_abs[1] == np.inf, t_abs  # weight 40/46 > 0.775: committed by its prior
    assert all(np.isfinite(t) for t in t_rel), t_rel  # chance-relative levels give both a finite time
