"""The Hermite blocks of the spike amplitudes (docs/theory.md §8.9) against direct quadrature.

Tolerances: c2 = E sigma''(h) equals the central difference of a = E sigma'(h) in the mean to 1e-7, and each
c_{n+1} = E sigma^(n+1)(h) that of c_n (n = 1..3) to 1e-6; the scaled Hermite polynomials equal numpy's
``hermeval``; the degree-2 and degree-3 spike vectors equal the projections of the exact noise-averaged feature, as
a function of three spike amplitudes, on the orthonormal Hermite coordinates of that degree (tensor Gauss–Hermite
rule, 40^3 nodes) to 1e-8; the variance they carry leaves v2 exactly.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from classdiff.data.process import noise_variance, signal_scale
from classdiff.rf.features import (
    curvature,
    equivalence_constants,
    gauss_hermite,
    hermite_coefficient,
    hermite_e,
)
from classdiff.theory.covariance_types import covariance_feature_types, hermite_vectors


def test_curvature_is_the_mean_derivative_of_a() -> None:
    means, variances = np.linspace(-2.0, 2.0, 9), np.linspace(0.1, 1.5, 9)
    for act in ("tanh", "erf", "relu"):
        eps = 1e-5
        fd = (equivalence_constants(act, 0.2, variances, means + eps).a
              - equivalence_constants(act, 0.2, variances, means - eps).a) / (2 * eps)
        assert np.max(np.abs(curvature(act, 0.2, variances, means) - fd)) < 1e-7, act
    assert np.all(curvature("identity", 0.2, variances, means) == 0.0)
    with pytest.raises(ValueError, match="variance"):
        curvature("tanh", 0.2, -1.0)


def test_hermite_coefficients_are_successive_mean_derivatives() -> None:
    means, variances = np.linspace(-2.0, 2.0, 9), np.linspace(0.1, 1.5, 9)
    for act in ("tanh", "erf", "relu"):
        np.testing.assert_allclose(hermite_coefficient(act, 0.2, variances, means, order=1),
                                   equivalence_constants(act, 0.2, variances, means).a, atol=1e-12)
        np.testing.assert_array_equal(hermite_coefficient(act, 0.2, variances, means, order=2),
                                      curvature(act, 0.2, variances, means))
        eps = 1e-4
        for n in (1, 2, 3):
            fd = (hermite_coefficient(act, 0.2, variances, means + eps, order=n)
                  - hermite_coefficient(act, 0.2, variances, means - eps, order=n)) / (2 * eps)
            assert np.max(np.abs(hermite_coefficient(act, 0.2, variances, means, order=n + 1) - fd)) < 1e-6, (act, n)
    assert np.all(hermite_coefficient("identity", 0.2, variances, means, order=1) == 1.0)
    assert np.all(hermite_coefficient("identity", 0.2, variances, means, order=3) == 0.0)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="order"):
            hermite_coefficient("tanh", 0.2, 1.0, order=bad)


def test_scaled_hermite_polynomials() -> None:
    x = np.linspace(-3.0, 3.0, 13)
    for n in range(6):
        coefficients = np.zeros(n + 1)
        coefficients[n] = 1.0
        np.testing.assert_allclose(hermite_e(n, x), np.polynomial.hermite_e.hermeval(x, coefficients), atol=1e-10)
        s = 0.7  # s^n He_n(x / s)
        np.testing.assert_allclose(hermite_e(n, x, s**2), s**n * np.polynomial.hermite_e.hermeval(x / s, coefficients),
                                   atol=1e-10)
    np.testing.assert_array_equal(hermite_e(3, x, 0.0), x**3)


@pytest.mark.parametrize("degree", [2, 3])
def test_spike_vectors_are_the_hermite_projections_of_the_feature(degree: int) -> None:
    t, m, floor = 0.1, 0.7, 0.2
    g = np.array([0.6, -0.35, 0.2])  # spike loadings g_k of one feature type
    e_t = float(signal_scale(t))
    rest = np.sqrt(e_t**2 * floor + noise_variance(t))  # bulk + diffusion-noise standard deviation
    z, w = gauss_hermite(80)

    def feature(u: np.ndarray) -> np.ndarray:  # exact E over bulk and noise of tanh(m + u + rest z)
        return (np.tanh(m + u[..., None] + rest * z) * w).sum(-1)

    x, wx = gauss_hermite(40)
    grid = np.stack(np.meshgrid(x, x, x, indexing="ij"), axis=-1).reshape(-1, 3)
    weight = np.prod(np.stack(np.meshgrid(wx, wx, wx, indexing="ij"), axis=-1).reshape(-1, 3), axis=1)
    values = feature(grid @ g)
    variance = floor + float(g @ g) / e_t**2  # data-space variance w^T Sigma w / d of the full pre-activation
    coefficient = hermite_coefficient("tanh", t, np.array([variance]), np.array([m]), order=degree)
    vectors = hermite_vectors(coefficient, g[:, None], degree)[:, 0]
    combos = list(itertools.combinations_with_replacement(range(3), degree))
    assert len(vectors) == len(combos)
    for combo, f in zip(combos, vectors, strict=True):
        eta = np.ones(len(grid))  # prod_k He_{alpha_k}(xi_k) / sqrt(alpha_k!)
        for k in set(combo):
            count = combo.count(k)
            eta *= hermite_e(count, grid[:, k]) / np.sqrt(math.factorial(count))
        assert abs(float((weight * values * eta).sum()) - f) < 1e-8, combo
    total = coefficient[0] ** 2 * float(g @ g) ** degree / math.factorial(degree)
    assert abs((vectors**2).sum() - total) < 1e-12


def test_covariance_types_carry_the_block_and_take_it_out_of_v2() -> None:
    rng = np.random.default_rng(3)
    d = 60
    covs = []
    for _ in range(2):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        covs.append((q * np.r_[30.0, 12.0, 6.0, np.full(d - 3, 0.2)]) @ q.T)
    mu = rng.standard_normal((2, d)) * 0.8
    args = ([0.5, 0.5], covs, mu, 0.1, 1.5, 1.0)
    one = covariance_feature_types(*args, rank=3, n_nodes=64)
    two = covariance_feature_types(*args, rank=3, n_nodes=64, hermite_degree=2)
    part = covariance_feature_types(*args, rank=3, n_nodes=64, hermite_degree=2, hermite_rank=2)
    assert one.spike_vectors.shape[0] == 6 and two.spike_vectors.shape[0] == 6 + 2 * 6
    assert part.spike_vectors.shape[0] == 6 + 2 * 3
    assert np.bincount(two.spike_classes).tolist() == [9, 9]
    np.testing.assert_array_equal(two.spike_vectors[:6], one.spike_vectors)
    for c in range(2):
        extra = (two.spike_vectors[6:][two.spike_classes[6:] == c] ** 2).sum(axis=0)
        np.testing.assert_allclose(one.v2[c] - two.v2[c], extra, atol=1e-14)
    assert np.all(two.v2 >= 0)
    three = covariance_feature_types(*args, rank=3, n_nodes=64, hermite_degree=3, hermite_rank=[3, 2])
    assert three.spike_vectors.shape[0] == 6 + 2 * 6 + 2 * 4
    np.testing.assert_array_equal(three.spike_vectors[:18], two.spike_vectors)
    for c in range(2):
        extra = (three.spike_vectors[18:][three.spike_classes[18:] == c] ** 2).sum(axis=0)
        np.testing.assert_allclose(two.v2[c] - three.v2[c], extra, atol=1e-14)
    with pytest.raises(ValueError, match="hermite_degree"):
        covariance_feature_types(*args, rank=3, n_nodes=64, hermite_degree=4)
    for bad in (-1, [2], [2, -1]):
        with pytest.raises(ValueError, match="hermite_rank"):
            covariance_feature_types(*args, rank=3, n_nodes=64, hermite_degree=3, hermite_rank=bad)
    with pytest.raises(ValueError, match="degree"):
        hermite_vectors(np.ones(4), np.ones((3, 4)), 1)
