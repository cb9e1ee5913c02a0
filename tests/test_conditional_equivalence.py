"""The Gaussian equivalence conditional on the spike coordinates (classdiff.rf.conditional_equivalence) against
exact noise-averaged tanh features of a strongly spiked Gaussian class, and against the plain GE."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss

from classdiff.data.process import noise_variance, signal_scale
from classdiff.rf.conditional_equivalence import (
    ConstantTable,
    conditional_features,
    conditional_group_moments,
)
from classdiff.rf.features import equivalence_constants
from classdiff.rf.gaussian_equivalence import class_constants, group_moments

T = 0.1


@pytest.fixture(scope="module")
def spiked_class() -> dict:
    """d = 200, two spikes of strength 60 and 30 over a floor 0.05 (spike pre-activation variance 0.36, the
    scale of Fashion-MNIST's top eigenvalues at d = 784), |mu|^2 / d = 0.3, p = 150 features, m = 400 points."""
    rng = np.random.default_rng(3)
    d, p, m = 200, 150, 400
    V = np.linalg.qr(rng.standard_normal((d, 2)))[0]
    cov = 0.05 * np.eye(d) + (V * np.array([60.0, 30.0])) @ V.T
    mu = rng.standard_normal(d) * math.sqrt(0.3)
    dev = rng.standard_normal((m, d)) @ np.linalg.cholesky(cov).T
    return {"W": rng.standard_normal((p, d)), "V": V, "cov": cov, "mu": mu, "dev": dev}


def _exact_noise_averaged(W, mu, dev) -> np.ndarray:
    """E_v tanh(e^{-t} w . x / sqrt d + sqrt(Delta_t) v) per point and feature, by an 80-node Gauss–Hermite rule."""
    z, w = hermegauss(80)
    h = float(signal_scale(T)) * (mu + dev) @ W.T / math.sqrt(W.shape[1])
    return (np.tanh(h[..., None] + math.sqrt(float(noise_variance(T))) * z) * (w / w.sum())).sum(-1)


def test_table_interpolates_the_constants() -> None:
    """ConstantTable against direct quadrature at 1500 random (mean, variance) pairs, relative to each constant's
    largest value: below 1e-5 with variances over a factor 1.5 (also after a wider call has rebuilt the table),
    below 3e-4 with variances over a factor 12."""
    rng = np.random.default_rng(0)
    table = ConstantTable("tanh", T)
    for scale, (v_lo, v_hi), tol in ((0.6, (0.04, 0.06), 1e-5), (1.5, (0.04, 0.06), 1e-5), (1.0, (0.1, 1.2), 3e-4)):
        means, variances = rng.normal(0.0, scale, (50, 30)), rng.uniform(v_lo, v_hi, 30)
        got = table(means, variances)
        ref = equivalence_constants("tanh", T, variances[None, :], means)
        for key in ("kappa0", "a", "b", "v2", "s2"):
            err = np.abs(got[key] - getattr(ref, key)).max() / np.abs(getattr(ref, key)).max()
            assert err < tol, (scale, key, err)
    with pytest.raises(ValueError, match="variances"):
        table(np.zeros((2, 3)), np.array([0.1, 0.0, 0.1]))


def test_without_spikes_it_is_the_plain_equivalence(spiked_class: dict) -> None:
    """With an empty basis (r = 0) the conditional GE is the per-feature GE: U within 1e-4 (relative, Frobenius)."""
    c = spiked_class
    omega = np.random.default_rng(1).standard_normal((c["dev"].shape[0], c["W"].shape[0]))
    empty = np.zeros((c["W"].shape[1], 0))
    U, b = conditional_group_moments(c["W"], "tanh", T, c["mu"], c["cov"], empty, c["dev"], omega)
    U_ge, b_ge = group_moments(c["W"], "tanh", T, c["mu"], c["cov"], c["dev"], omega)
    assert np.linalg.norm(U - U_ge) / np.linalg.norm(U_ge) < 1e-4
    assert np.abs(b - b_ge).max() / np.abs(b_ge).max() < 1e-4


def test_residual_is_independent_noise_of_the_stated_variance(spiked_class: dict) -> None:
    """Exact noise-averaged features minus the model's mean part: for the conditional GE the residual has the
    variance v2 the model gives its independent part (within 10%) and no shared direction (top eigenvalue of
    its feature covariance < 5% of the trace; i.i.d. noise of this shape gives ~2%). For the plain GE the
    residual is 50x larger and shared: its top 5 directions carry more than half of it (the degree >= 2
    Hermite terms of the two spike coordinates)."""
    c = spiked_class
    exact = _exact_noise_averaged(c["W"], c["mu"], c["dev"])
    f = conditional_features(c["W"], "tanh", T, c["mu"], c["cov"], c["V"], c["dev"])
    k = class_constants(c["W"], "tanh", T, c["mu"], c["cov"])
    e_t, d = float(signal_scale(T)), c["W"].shape[1]
    plain = k["kappa0"] + k["a"] * (e_t * c["dev"] @ c["W"].T / math.sqrt(d))
    shares = {}
    for name, model in (("conditional", f["mean"]), ("plain", plain)):
        ev = np.linalg.eigvalsh(np.cov((exact - model).T))
        shares[name] = (ev[-1] / ev.sum(), ev[-5:].sum() / ev.sum(), float(np.mean((exact - model) ** 2)))
    resid = shares["conditional"][2]
    assert abs(resid / f["v2"].mean() - 1.0) < 0.1, (resid, f["v2"].mean())
    assert shares["conditional"][0] < 0.05, shares
    assert shares["plain"][2] > 50 * resid and shares["plain"][1] > 0.5, shares


def test_bad_input_is_named(spiked_class: dict) -> None:
    c = spiked_class
    with pytest.raises(ValueError, match="basis"):
        conditional_features(c["W"], "tanh", T, c["mu"], c["cov"], c["V"][:10], c["dev"])
    with pytest.raises(ValueError, match="table: built for"):
        conditional_features(c["W"], "tanh", T, c["mu"], c["cov"], c["V"], c["dev"], ConstantTable("tanh", 1.0))
    with pytest.raises(ValueError, match="omega"):
        conditional_group_moments(c["W"], "tanh", T, c["mu"], c["cov"], c["V"], c["dev"], np.zeros((3, 3)))
