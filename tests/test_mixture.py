"""Gaussian mixture: exact score vs finite differences, posteriors vs Bayes, empirical score limits, sampling."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from classdiff.core.config import MixtureConfig
from classdiff.data.mixture import (
    GaussianMixture,
    class_counts,
    empirical_denoiser,
    empirical_log_density,
    empirical_score,
    make_centroids,
)
from classdiff.data.process import noise_variance, signal_scale


def _mixture(k: int, d: int, seed: int = 0, diagonal: bool = False) -> GaussianMixture:
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(k))
    mu = rng.standard_normal((k, d)) * 0.7
    v = rng.uniform(0.3, 2.0, size=(k, d) if diagonal else k)
    return GaussianMixture(w, mu, v)


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("diagonal", [False, True])
def test_score_matches_finite_difference_of_log_density(k, diagonal):
    d = 6
    gm = _mixture(k, d, seed=k, diagonal=diagonal)
    rng = np.random.default_rng(1)
    for t in (0.01, 0.3, 2.0):
        x = rng.standard_normal((7, d)) * 1.5
        score = gm.score(x, t)
        h = 1e-5
        fd = np.empty_like(x)
        for j in range(d):
            e = np.zeros(d)
            e[j] = h
            fd[:, j] = (gm.log_density(x + e, t) - gm.log_density(x - e, t)) / (2 * h)
        rel = np.linalg.norm(score - fd) / np.linalg.norm(score)
        assert rel < 1e-6, (k, t, rel)


def test_log_density_matches_scipy():
    gm = _mixture(3, 4, seed=2)
    x = np.random.default_rng(3).standard_normal((5, 4))
    t = 0.4
    mean, var = gm.marginal(t)
    ref = np.log(sum(gm.weights[c] * multivariate_normal(mean[c], var[c] * np.eye(4)).pdf(x) for c in range(3)))
    np.testing.assert_allclose(gm.log_density(x, t), ref, rtol=1e-12)


def test_posterior_is_bayes_rule():
    gm = _mixture(5, 3, seed=4, diagonal=True)
    x = np.random.default_rng(5).standard_normal((9, 3))
    t = 0.2
    post = gm.posterior(x, t)
    np.testing.assert_allclose(post.sum(1), 1.0, rtol=1e-14)
    mean, var = gm.marginal(t)
    lik = np.stack([multivariate_normal(mean[c], np.diag(var[c])).pdf(x) for c in range(5)], axis=1)
    joint = lik * gm.weights
    np.testing.assert_allclose(post, joint / joint.sum(1, keepdims=True), rtol=1e-10)


def test_score_is_finite_far_from_the_data():
    gm = _mixture(2, 50, seed=6)
    x = np.full((3, 50), 1e3)
    s = gm.score(x, 0.001)
    assert np.all(np.isfinite(s))
    assert np.all(np.isfinite(gm.posterior(x, 0.001)))


def test_denoiser_is_tweedie_for_one_gaussian():
    mu = np.array([[1.0, -2.0, 0.5]])
    gm = GaussianMixture([1.0], mu, [0.7])
    t = 0.5
    x = np.random.default_rng(0).standard_normal((4, 3))
    a, delta = signal_scale(t), noise_variance(t)
    # posterior mean of x0 given x_t for a Gaussian prior
    gain = a * 0.7 / (a * a * 0.7 + delta)
    ref = mu + gain * (x - a * mu)
    np.testing.assert_allclose(gm.denoiser(x, t), ref, rtol=1e-12)


def test_empirical_score_one_point_is_gaussian_score():
    y = np.array([[0.3, -1.2, 2.0, 0.0]])
    x = np.random.default_rng(7).standard_normal((6, 4))
    t = 0.37
    ref = (signal_scale(t) * y - x) / noise_variance(t)
    np.testing.assert_allclose(empirical_score(x, y, t), ref, rtol=1e-13, atol=1e-13)


def test_empirical_denoiser_returns_nearest_point_at_small_t():
    rng = np.random.default_rng(8)
    train = rng.standard_normal((30, 10))
    x = train[[3, 17, 25]] + 0.05 * rng.standard_normal((3, 10))
    den = empirical_denoiser(x, train, 1e-4)
    np.testing.assert_allclose(den, train[[3, 17, 25]], atol=1e-10)


def test_empirical_score_matches_finite_difference():
    rng = np.random.default_rng(9)
    train = rng.standard_normal((20, 5))
    x = rng.standard_normal((4, 5))
    t = 0.25
    s = empirical_score(x, train, t)
    h = 1e-5
    fd = np.stack(
        [
            (empirical_log_density(x + h * e, train, t) - empirical_log_density(x - h * e, train, t)) / (2 * h)
            for e in np.eye(5)
        ],
        axis=1,
    )
    np.testing.assert_allclose(s, fd, rtol=1e-6)


@pytest.mark.parametrize(
    ("n", "w", "expected"),
    [
        (10, [0.5, 0.5], [5, 5]),
        (10, [0.85, 0.15], [9, 1]),  # 8.5/1.5: tie on remainders -> lower index first
        (7, [1 / 3, 1 / 3, 1 / 3], [3, 2, 2]),
        (3, [0.98, 0.01, 0.01], [1, 1, 1]),
        (100, [0.9, 0.1], [90, 10]),
    ],
)
def test_class_counts_largest_remainder(n, w, expected):
    counts = class_counts(n, w)
    assert counts.tolist() == expected
    assert counts.sum() == n


def test_class_counts_rejects_too_few_points():
    with pytest.raises(ValueError, match="n = 1"):
        class_counts(1, [0.5, 0.5])


def test_sample_moments_and_exact_counts():
    cfg = MixtureConfig(dim=20, weights=(0.7, 0.3), variances=(0.5, 2.0), centroid_norms=(1.0, 0.5), geometry="orthogonal")
    gm = GaussianMixture.from_config(cfg)
    ts = gm.sample(20001, seed=3)
    assert ts.counts.tolist() == class_counts(20001, [0.7, 0.3]).tolist()
    assert ts.x.shape == (20001, 20)
    for c in range(2):
        xc = ts.of_class(c)
        n = xc.shape[0]
        assert n == ts.counts[c]
        se_mean = np.sqrt(cfg.variances[c] / n)
        assert np.all(np.abs(xc.mean(0) - gm.centroids[c]) < 4 * se_mean * 1.2)  # 20 coords: loose family bound
        var = xc.var(0, ddof=1).mean()
        se_var = cfg.variances[c] * np.sqrt(2 / (n - 1) / 20)
        assert abs(var - cfg.variances[c]) < 4 * se_var


def test_sampling_is_seeded():
    gm = GaussianMixture.from_config(MixtureConfig(dim=5))
    a, b = gm.sample(50, seed=11), gm.sample(50, seed=11)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, gm.sample(50, seed=12).x)


@pytest.mark.parametrize("geometry", ["orthogonal", "antipodal", "random"])
def test_centroid_geometries_have_requested_norms(geometry):
    k = 2 if geometry == "antipodal" else 3
    norms = [1.0, 2.0] if k == 2 else [1.0, 2.0, 0.5]
    mu = make_centroids(64, norms, geometry, seed=0)
    np.testing.assert_allclose(np.linalg.norm(mu, axis=1), np.array(norms) * 8.0, rtol=1e-12)
    u = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    if geometry == "orthogonal":
        np.testing.assert_allclose(u @ u.T, np.eye(3), atol=1e-12)
    if geometry == "antipodal":
        assert u[0] @ u[1] == pytest.approx(-1.0)


def test_second_moment_and_covariance():
    gm = GaussianMixture([0.25, 0.75], [[1.0, 0.0], [-1.0, 2.0]], [0.5, 1.5])
    t = 0.3
    ts = gm.sample(400000, seed=0)
    rng = np.random.default_rng(1)
    xt = signal_scale(t) * ts.x + np.sqrt(noise_variance(t)) * rng.standard_normal(ts.x.shape)
    np.testing.assert_allclose(np.cov(xt.T), gm.covariance(t), atol=0.01)
    x1 = xt[ts.labels == 1]
    np.testing.assert_allclose(x1.T @ x1 / len(x1), gm.class_second_moment(1, t), atol=0.02)


def test_bad_mixture_arguments():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([0.5, 0.6], np.zeros((2, 3)), [1.0, 1.0])
    with pytest.raises(ValueError, match="variances"):
        GaussianMixture([0.5, 0.5], np.zeros((2, 3)), [1.0, -1.0])
    with pytest.raises(ValueError, match="x: shape"):
        GaussianMixture([1.0], np.zeros((1, 3)), [1.0]).score(np.zeros((2, 4)), 0.1)
    with pytest.raises(ValueError, match="t = "):
        empirical_score(np.zeros((1, 3)), np.zeros((2, 3)), 0.0)


def test_fit_recovers_the_mixture_of_labelled_data():
    """GaussianMixture.fit against the plain estimators: weights, centred centroids, unbiased variances."""
    from classdiff.data.mixture import GaussianMixture

    rng = np.random.default_rng(3)
    d = 40
    x = np.concatenate([rng.normal(1.0, 0.5, size=(300, d)), rng.normal(-1.0, 2.0, size=(100, d))])
    y = np.concatenate([np.full(300, 7), np.full(100, 2)])
    m = GaussianMixture.fit(x, y)
    assert m.labels_.tolist() == [2, 7] and m.counts_.tolist() == [100, 300]
    np.testing.assert_allclose(m.weights, [0.25, 0.75])
    mean = x.mean(0)
    np.testing.assert_allclose(m.centroids[0], x[y == 2].mean(0) - mean, rtol=1e-12)
    np.testing.assert_allclose(m.variances, [x[y == 2].var(0, ddof=1).mean(), x[y == 7].var(0, ddof=1).mean()])
    assert abs(m.variances[0] - 4.0) < 0.3 and abs(m.variances[1] - 0.25) < 0.02
    diag = GaussianMixture.fit(x, y, covariance="diagonal")
    np.testing.assert_allclose(diag.variances[1], x[y == 7].var(0, ddof=1))
    with pytest.raises(ValueError, match="covariance"):
        GaussianMixture.fit(x, y, covariance="full")


@pytest.mark.parametrize(("x", "y", "match"), [
    (np.ones((4, 3)) * 1j, [0, 0, 1, 1], "complex"),
    (np.array([[0.0, np.nan], [1, 1], [2, 2], [3, 3]]), [0, 0, 1, 1], "non-finite"),
    (np.ones((4, 3)), [0.2, 0.7, 1.0, 1.0], "integer labels"),
    (np.ones((4, 3)), [0, 1], "one label per point"),
    (np.ones(4), [0, 0, 1, 1], "expected"),
])
def test_labelled_data_rejects_bad_input(x, y, match):
    from classdiff.data.labelled import check_labelled

    with pytest.raises(ValueError, match=match):
        check_labelled(x, y, source="mydata.npz")


def test_logit_terms_recombine_to_the_class_log_densities():
    """a x.mu_c/G_c^2 + base_c - |x|^2/(2 G_c^2) - (d/2) log 2 pi = log rho_c N(x; a mu_c, G_c^2 I), float64."""
    rng = np.random.default_rng(5)
    gm = GaussianMixture([0.2, 0.5, 0.3], rng.normal(size=(3, 7)), [0.5, 1.0, 2.0])
    x = rng.normal(size=(11, 7)) * 2
    for t in (0.01, 0.4, 3.0):
        a, var, base = gm.logit_terms(t)
        got = a * (x @ gm.centroids.T) / var + base - 0.5 * (x * x).sum(1)[:, None] / var - 3.5 * np.log(2 * np.pi)
        np.testing.assert_allclose(got, gm.log_class_densities(x, t), rtol=1e-12, atol=1e-10)
