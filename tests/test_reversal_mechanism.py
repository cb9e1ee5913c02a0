"""Where the theory loses the imbalance reversal (docs/theory.md §6.3): the same exact flow on Gaussian-equivalent
moments per feature keeps the reversal, on one mean feature type per class (the theory's closure) it is gone, and
there the flow agrees with the theory."""

from __future__ import annotations

import numpy as np
import pytest

from classdiff.core.config import Config
from classdiff.core.results import time_or_nan
from classdiff.data.mixture import GaussianMixture
from classdiff.rf.gaussian_equivalence import class_constants, group_moments
from classdiff.rf.model import RandomFeaturesScore, dynamics_from_config
from classdiff.theory.timescales import timescales_from_config

SETTING = {
    "mixture.dim": 120, "mixture.geometry": "orthogonal", "mixture.centroid_norms": [3.0, 3.0],
    "mixture.variances": [0.9759, 1.0247], "mixture.weights": [0.8, 0.2],
    "model.psi_p": 2.0, "model.psi_n": 1.0, "model.time": 0.1, "model.series_order": 6,
    "training.tau_min": 0.1, "training.tau_max": 1e5, "training.n_times": 100, "training.seeds": 2,
    "training.test_samples": 200, "training.score_samples": 20, "training.n_batches": 2,
}


def _times(cfg: Config, model: str) -> dict[str, np.ndarray]:
    dyn = dynamics_from_config(cfg.with_overrides({"model.feature_moments": model}))
    assert dyn["feature_moments"] == model
    return {k: np.array([time_or_nan(c[k]) for c in dyn["classes"]]) for k in ("tau_gen", "tau_mem")}


def test_per_feature_moments_keep_the_reversal_and_the_mean_type_closure_loses_it() -> None:
    cfg = Config().with_overrides(SETTING)
    exact, ge, mean_type = (_times(cfg, m) for m in ("exact", "ge", "ge-mean-type"))
    ratio = {name: {k: t[k][0] / t[k][1] for k in t} for name, t in
             (("exact", exact), ("ge", ge), ("mean", mean_type))}
    # the exact dynamics reverse the variance order (the majority class 0, of smaller variance, is learned first)
    assert ratio["exact"]["tau_gen"] < 0.95
    # per-feature GE: the same reversal, within 5% of the exact ratio; the minority memorized later
    assert ratio["ge"]["tau_gen"] < 0.95
    assert abs(ratio["ge"]["tau_gen"] / ratio["exact"]["tau_gen"] - 1) < 0.05
    assert ratio["ge"]["tau_mem"] < 0.8 and ratio["exact"]["tau_mem"] < 0.8
    # one mean type per class: no reversal, no delayed minority memorization
    assert ratio["mean"]["tau_gen"] > 1.0
    assert ratio["mean"]["tau_mem"] > 0.95
    # and the mean-type theory, whose loss model is that closure, agrees with that flow within 10% per class
    th = timescales_from_config(cfg.with_overrides({"theory.loss_model": "mean-type"}))
    for key in ("tau_gen", "tau_mem"):
        theory = np.array([time_or_nan(getattr(c, key)) for c in th.classes])
        np.testing.assert_allclose(theory, mean_type[key], rtol=0.10)


def test_mean_type_closure_keeps_the_average_feature_variance() -> None:
    """Averaged over the features, diag(U) of the mean-type moments equals that of the per-feature (centred) ones:
    the closure only moves the spread of a_c over the features into the diagonal."""
    rng = np.random.default_rng(3)
    p, d, m = 3000, 200, 400
    W = rng.standard_normal((p, d))
    mu = np.zeros(d)
    mu[0] = 3.0 * np.sqrt(d)
    dev = rng.standard_normal((m, d))
    omega = rng.standard_normal((m, p))
    diag = {c: np.diag(group_moments(W, "tanh", 0.1, mu, 1.0, dev, omega, c)[0]).mean() for c in ("centred", "mean-type")}
    assert diag["mean-type"] == pytest.approx(diag["centred"], rel=0.01)
    k = class_constants(W, "tanh", 0.1, mu, 1.0)
    assert k["a"].std() > 0.1  # the types really differ here (norm 3: many saturated features)
    km = class_constants(W, "tanh", 0.1, mu, 1.0, "mean-type")
    assert np.all(km["a"] == k["a"].mean()) and np.all(km["kappa0"] == 0)


def test_bad_closure_and_feature_moments_name_the_field() -> None:
    W = np.ones((4, 2))
    with pytest.raises(ValueError, match="closure = 'mean'.*per-feature, centred, mean-type"):
        class_constants(W, "tanh", 0.1, np.zeros(2), 1.0, "mean")
    with pytest.raises(ValueError, match="model.feature_moments"):
        Config().with_overrides({"model.feature_moments": "gaussian"})
    mix = GaussianMixture([0.5, 0.5], np.zeros((2, 3)), [1.0, 1.0])
    data = mix.sample(10, seed=0)
    with pytest.raises(ValueError, match="feature_moments = 'ge': the Gaussian-equivalent moments need the mixture"):
        RandomFeaturesScore(4, feature_moments="ge").fit(data)
    with pytest.raises(ValueError, match="feature_moments = 'xx': must be one of exact, ge, ge-centred, ge-mean-type"):
        RandomFeaturesScore(4, feature_moments="xx").fit(data)


def test_class_constants_with_a_full_covariance() -> None:
    """A full Sigma_c gives each feature its variance w^T Sigma_c w / d: equal to the diagonal form for a diagonal
    Sigma_c, and the slope a_i = E[sigma'(h_i)] agrees with a Monte Carlo over x ~ N(mu, Sigma), x_t = e^{-t} x +
    sqrt(Delta) eta (tolerance 1%, 200,000 draws). The rows of W are scaled to |w|^2 = d, the large-d value the
    constants assume for the noise part w.eta / sqrt(d)."""
    from classdiff.data.process import noise_variance, signal_scale

    rng = np.random.default_rng(11)
    p, d, t = 5, 20, 0.1
    W = rng.standard_normal((p, d))
    W *= np.sqrt(d) / np.linalg.norm(W, axis=1, keepdims=True)
    mu = rng.standard_normal(d)
    diag = rng.uniform(0.2, 2.0, d)
    full = class_constants(W, "tanh", t, mu, np.diag(diag))
    vec = class_constants(W, "tanh", t, mu, diag)
    for key in ("kappa0", "a", "b", "v2", "s2"):
        np.testing.assert_allclose(full[key], vec[key], rtol=1e-12, atol=1e-14)
    root = rng.standard_normal((d, d)) / np.sqrt(d)
    sigma = root @ root.T + 0.1 * np.eye(d)
    k = class_constants(W, "tanh", t, mu, sigma)
    x = mu + rng.standard_normal((200_000, d)) @ np.linalg.cholesky(sigma).T
    xt = signal_scale(t) * x + np.sqrt(noise_variance(t)) * rng.standard_normal(x.shape)
    slope = (1.0 - np.tanh(xt @ W.T / np.sqrt(d)) ** 2).mean(axis=0)
    np.testing.assert_allclose(k["a"], slope, rtol=0.01)
    with pytest.raises(ValueError, match=r"variance: shape \(3, 20\)"):
        class_constants(W, "tanh", t, mu, np.ones((3, d)))
