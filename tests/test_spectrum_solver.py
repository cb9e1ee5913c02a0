"""Solver internals of the K-class spectrum: analytic Jacobian of the map (F), small-system solves, and edges that
separate gap from bulk (``docs/theory.md`` §4)."""

from __future__ import annotations

import numpy as np
import pytest

from classdiff.core.config import Config
from classdiff.theory.equations import feature_types, fixed_point_map, map_and_jacobian
from classdiff.theory.solver import _cramer, solve_on_line
from classdiff.theory.spectrum import FeatureSpectrum


@pytest.mark.parametrize("k,centroids", [(1, False), (2, False), (3, False), (1, True), (2, True), (3, True)])
def test_analytic_jacobian_matches_central_differences(k, centroids):
    rng = np.random.default_rng(k)
    mu = np.zeros((k, 60))
    if centroids:
        mu[:, :k] = 1.3 * np.sqrt(60) * np.eye(k)
    ft = feature_types(np.full(k, 1.0 / k), np.linspace(0.5, 1.5, k), mu, 0.1, 2.0, 1.5)
    z = rng.uniform(0.1, 3.0, 6) + 1j * rng.uniform(0.01, 0.5, 6)
    x = 0.3 * (rng.normal(size=(6, ft.n_unknowns)) + 1j * rng.normal(size=(6, ft.n_unknowns)))
    fx, q, jac, fz = map_and_jacobian(ft, z, x)
    ref, parts = fixed_point_map(ft, z, x)
    np.testing.assert_allclose(fx, ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(q, parts["Qbar"] @ ft.node_weights, rtol=1e-13)
    h = 1e-6
    fd = np.stack([(fixed_point_map(ft, z, x + h * e)[0] - fixed_point_map(ft, z, x - h * e)[0]) / (2 * h)
                   for e in np.eye(ft.n_unknowns)], axis=2)
    np.testing.assert_allclose(jac, fd, atol=1e-7 * np.abs(fd).max())
    fd_z = (fixed_point_map(ft, z + h, x)[0] - fixed_point_map(ft, z - h, x)[0]) / (2 * h)
    np.testing.assert_allclose(fz, fd_z, atol=1e-7 * np.abs(fd_z).max())


@pytest.mark.parametrize("n", [1, 2, 3])
def test_cramer_solves_small_batches(n):
    rng = np.random.default_rng(n)
    a = rng.normal(size=(40, n, n)) + 1j * rng.normal(size=(40, n, n))
    b = rng.normal(size=(40, n)) + 1j * rng.normal(size=(40, n))
    np.testing.assert_allclose(_cramer(a, b), np.linalg.solve(a, b[:, :, None])[:, :, 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mixture", [
    {"weights": [0.5, 0.5], "variances": [0.5, 1.5]},
    {"weights": [0.6, 0.4], "variances": [0.5, 1.5]},
])
def test_edges_separate_gap_from_bulk(mixture):
    """Just outside each fitted edge Im q(lambda + i eps) is proportional to eps (a gap), just inside it is not."""
    cfg = Config().with_overrides({"mixture.dim": 300, "model.psi_p": 2.0, "model.psi_n": 1.5, "model.time": 0.1,
                                   "mixture.centroid_norms": [0.0, 0.0]}
                                  | {f"mixture.{k}": v for k, v in mixture.items()})
    spec = FeatureSpectrum(n_lambda=200, n_scan=250, outliers=False).fit(cfg)
    ft = spec.types_
    edges = spec.edges_.ravel()
    into_bulk = np.tile([1.0, -1.0], len(spec.edges_))
    delta = 1e-6 * edges
    lam = np.concatenate([edges - into_bulk * delta, edges + into_bulk * delta])  # gap side, then bulk side
    imq = []
    for eps in (1e-11, 1e-12):
        x, res, _ = solve_on_line(ft, lam, eps, eps_start=spec.upper_bound_)
        assert res.max() < 1e-10
        imq.append(map_and_jacobian(ft, lam + 1j * eps, x, jacobian=False)[1].imag)
    ratio = imq[1] / imq[0]
    m = edges.size
    np.testing.assert_allclose(ratio[:m], 0.1, rtol=0.05)  # gap: Im q ~ eps
    assert np.all(ratio[m:] > 0.9), ratio[m:]  # bulk: Im q -> pi rho > 0
