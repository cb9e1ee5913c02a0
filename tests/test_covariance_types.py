"""Covariance-aware feature types (docs/theory.md §8) against exact reductions and sampled feature matrices.

Tolerances: reduction to the isotropic equations 1e-10; array-variance GE constants equal the scalar ones to 1e-12;
spectrum of the true tanh U of Gaussian points with spiked covariances (d = 200, psi_p 1.5, psi_n 1): bulk
W1/width < 0.03 and below the isotropic theory's, top outliers within 15%; Fashion-MNIST surrogate (d = 196):
W1/width < 0.03.
"""

from __future__ import annotations

import numpy as np
import pytest

from classdiff.rf.features import equivalence_constants
from classdiff.rf.model import noise_averaged_moments
from classdiff.theory.covariance_types import covariance_feature_types, spiked_covariance
from classdiff.theory.equations import feature_types, resolvent_parts
from classdiff.theory.solver import solve_points
from classdiff.theory.spectrum import FeatureSpectrum, wasserstein_over_width


def test_array_variance_constants_equal_scalar_ones():
    means = np.linspace(-1.5, 1.5, 7)
    variances = np.linspace(0.05, 2.0, 7)
    for act in ("tanh", "relu", "identity"):
        both = equivalence_constants(act, 0.3, variances, means)
        for i in range(7):
            one = equivalence_constants(act, 0.3, float(variances[i]), means[i])
            for name in ("kappa0", "a", "v2", "s2"):
                assert abs(getattr(both, name)[i] - getattr(one, name)) < 1e-12, (act, name, i)
    with pytest.raises(ValueError, match="variance"):
        equivalence_constants("tanh", 0.3, np.array([0.1, -1.0]), 0.0)


def test_spiked_representation_keeps_trace_and_top_eigenpairs():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 80))
    cov = a @ a.T / 80
    sc = spiked_covariance(cov, 5)
    evals, evecs = np.linalg.eigh(cov)
    approx = sc.floor * np.eye(50) + (sc.vectors * sc.strengths) @ sc.vectors.T
    assert abs(np.trace(approx) - np.trace(cov)) < 1e-10
    assert np.allclose(np.linalg.eigvalsh(approx)[::-1][:5], evals[::-1][:5], atol=1e-10)
    assert np.allclose(np.abs(sc.vectors.T @ evecs[:, ::-1][:, :5]), np.eye(5), atol=1e-8)
    with pytest.raises(ValueError, match="rank"):
        spiked_covariance(cov, 50)
    with pytest.raises(ValueError, match="square"):
        spiked_covariance(np.ones((3, 4)), 1)


def test_isotropic_covariances_reduce_to_the_isotropic_types():
    d, var = 120, [0.5, 1.5]
    covs = [v * np.eye(d) for v in var]
    ft_cov = covariance_feature_types([0.6, 0.4], covs, np.zeros((2, d)), 0.2, 2.0, 1.5, rank=0)
    ft_iso = feature_types([0.6, 0.4], var, np.zeros((2, d)), 0.2, 2.0, 1.5)
    assert ft_cov.n_nodes == ft_iso.n_nodes == 1
    for name in ("a", "v2", "s2", "kappa0", "signal_variances"):
        assert np.allclose(getattr(ft_cov, name), getattr(ft_iso, name), atol=1e-12), name
    z = np.array([0.3 + 0.05j, 1.2 + 0.02j])
    x_cov, _ = solve_points(ft_cov, z)
    x_iso, _ = solve_points(ft_iso, z)
    q = lambda ft, x: (resolvent_parts(ft, z, x)["Qbar"] * ft.node_weights).sum(axis=1)  # noqa: E731
    assert np.max(np.abs(q(ft_cov, x_cov) - q(ft_iso, x_iso))) < 1e-10


def _spiked_class(d: int, floor: float, strengths: list[float], rng) -> np.ndarray:
    v = np.linalg.qr(rng.standard_normal((d, len(strengths))))[0]
    return floor * np.eye(d) + (v * np.asarray(strengths)) @ v.T


def _sampled_eigenvalues(mus, covs, counts, p, t, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = mus.shape[1]
    xs, labels = [], []
    for c, (mu, cov) in enumerate(zip(mus, covs, strict=True)):
        ev, vec = np.linalg.eigh(cov)
        xs.append(mu + rng.standard_normal((counts[c], d)) @ (vec * np.sqrt(np.maximum(ev, 0))).T)
        labels.append(np.full(counts[c], c))
    W = rng.standard_normal((p, d))
    mom = noise_averaged_moments(np.concatenate(xs), np.concatenate(labels), len(covs), W, "tanh", t,
                                 series_order=8)
    return np.linalg.eigvalsh(sum(m.U * (m.count / sum(counts)) for m in mom))


def test_spiked_classes_spectrum_matches_sampled_tanh_features():
    d, psi_p, psi_n, t = 200, 1.5, 1.0, 0.1
    rng = np.random.default_rng(3)
    covs = [_spiked_class(d, 0.15, [30.0, 16.0, 8.0], rng), _spiked_class(d, 0.3, [20.0, 6.0], rng)]
    mus = rng.standard_normal((2, d)) * 0.4
    counts = [100, 100]
    ev = _sampled_eigenvalues(mus, covs, counts, round(psi_p * d), t, seed=1)
    ft = covariance_feature_types([0.5, 0.5], covs, mus, t, psi_p, psi_n, rank=3, n_nodes=512)
    spec = FeatureSpectrum(n_lambda=300, n_scan=200).fit(ft)
    iso = FeatureSpectrum(n_lambda=300, n_scan=200).fit(
        feature_types([0.5, 0.5], [np.trace(c) / d for c in covs], mus, t, psi_p, psi_n))
    w_cov = wasserstein_over_width(spec, ev)
    w_iso = wasserstein_over_width(iso, ev)
    assert w_cov < 0.03, w_cov
    assert w_cov < w_iso, (w_cov, w_iso)
    assert wasserstein_over_width(spec, ev, include_outliers=True) < wasserstein_over_width(
        iso, ev, include_outliers=True)
    top = ev[::-1][:3]
    assert spec.outliers_.size >= 3
    assert np.all(np.abs(spec.outliers_[::-1][:3] / top - 1) < 0.15), (spec.outliers_[::-1][:3], top)


def test_fashion_mnist_surrogate_spectrum():
    from classdiff.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist, to_model_space

    folder = find_fashion_mnist()
    if folder is None:
        pytest.skip("Fashion-MNIST is not installed (make test installs dataset-fashion-mnist)")
    data = load_fashion_mnist(folder)
    x = to_model_space(data.train_images).astype(np.float64)[:, 0].reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4))
    x = x.reshape(len(x), -1)
    classes = (1, 8)
    mus = np.stack([x[data.train_labels == c].mean(axis=0) for c in classes])
    covs = [np.cov(x[data.train_labels == c].T) for c in classes]
    ev = _sampled_eigenvalues(mus, covs, [98, 98], 196, 0.1, seed=0)
    spec = FeatureSpectrum(n_lambda=300, n_scan=200).fit(
        covariance_feature_types([0.5, 0.5], covs, mus, 0.1, 1.0, 1.0, rank=16, n_nodes=1024))
    assert wasserstein_over_width(spec, ev) < 0.03


def test_covariance_prediction_sees_the_global_mean_unless_centred() -> None:
    """Random features are not shift-invariant, so the covariance-aware prediction takes the class means in the
    data's own coordinates by default (``docs/theory.md`` §8.5): shifting every point changes it. Centred
    (``centre=True``) it does not change."""
    from classdiff.core.config import Config
    from classdiff.theory.audit import class_surrogates, predict_with_covariances

    rng = np.random.default_rng(5)
    d = 30
    x = np.concatenate([rng.standard_normal((300, d)) * 0.8 + 0.3, rng.standard_normal((300, d)) * 0.5 - 0.3])
    y = np.repeat([0, 1], 300)
    rho, raw, _, _ = class_surrogates(x, y, [0, 1], [40, 20], centre=False)
    _, centred, _, _ = class_surrogates(x, y, [0, 1], [40, 20])
    np.testing.assert_allclose(raw, np.stack([x[y == 0].mean(0), x[y == 1].mean(0)]))
    np.testing.assert_allclose(rho @ centred, 0.0, atol=1e-12)
    base = Config().with_overrides({"model.psi_p": 2.0, "model.time": 0.1, "training.n_times": 60})

    def times(data: np.ndarray, centre: bool) -> list[float]:
        pred = predict_with_covariances(data, y, [0, 1], [40, 20], base, rank=2, n_nodes=128, centre=centre)
        return [float(c.tau_gen) for c in pred.timescales.classes]

    shifted = x - 1.0  # a background level, as the -1 of image pixels in [-1, 1]
    assert times(shifted, True) == pytest.approx(times(x, True), rel=1e-3)  # measured 1e-4 (round-off)
    raw_x, raw_shifted = times(x, False), times(shifted, False)
    assert max(abs(a / b - 1.0) for a, b in zip(raw_shifted, raw_x, strict=True)) > 0.05
