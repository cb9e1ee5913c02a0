"""Gaussian-equivalence constants (features.py) against independent numerical integration and Monte Carlo."""

import numpy as np
import pytest
from scipy import integrate

from classdiff.data.process import noise_variance, signal_scale
from classdiff.rf.features import ACTIVATIONS, activation, activation_derivative, equivalence_constants


def _gauss_expect(f, mean: float, std: float) -> float:
    """E[f(mean + std z)], z ~ N(0, 1), by adaptive scipy quadrature (independent of Gauss–Hermite)."""
    dens = lambda z: np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)  # noqa: E731
    val, _ = integrate.quad(lambda z: f(mean + std * z) * dens(z), -40, 40, limit=400, epsabs=1e-14, epsrel=1e-13,
                            points=[-mean / std] if std > 0 else None)
    return val


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("t, var, mean", [(0.01, 0.25, 0.0), (0.1, 1.0, 0.3), (0.5, 4.0, -0.7), (0.1, 2.0, 1.5)])
def test_stein_identities_to_1e12(name, t, var, mean):
    ge = equivalence_constants(name, t, var, mean)
    delta = float(noise_variance(t))
    gamma = np.sqrt(float(signal_scale(t)) ** 2 * var + delta)
    # b-type identity: b = E[v sigma(h)] = sqrt(Delta_t) E[sigma'(h)]
    assert abs(ge.b - np.sqrt(delta) * ge.a) < 1e-12
    if name == "relu":
        return  # the kink limits the quadrature; the closed forms below cover relu
    # Stein: E[sigma(h) (h - m)] = Gamma^2 E[sigma'(h)], checked by independent adaptive quadrature
    sig, dsig = activation(name), activation_derivative(name)
    lhs = _gauss_expect(lambda h: sig(h) * (h - mean), mean, gamma)
    assert abs(lhs - gamma**2 * ge.a) < 1e-12
    assert abs(_gauss_expect(dsig, mean, gamma) - ge.a) < 1e-12
    assert abs(_gauss_expect(sig, mean, gamma) - ge.kappa0) < 1e-12
    assert abs(_gauss_expect(lambda h: sig(h) ** 2, mean, gamma) - ge.norm2) < 1e-12
    # mu1 = E[sigma(Gamma z) z] = Gamma a (m = 0 convention of the precursor)
    if mean == 0.0:
        assert abs(_gauss_expect(lambda h: sig(h) * h / gamma, 0.0, gamma) - ge.mu1) < 1e-12


def test_relu_closed_forms():
    from scipy.stats import norm

    for t, var, m in [(0.1, 1.0, 0.0), (0.5, 2.0, 0.4), (0.05, 0.5, -0.3)]:
        ge = equivalence_constants("relu", t, var, m)
        g = np.sqrt(np.exp(-2 * t) * var + noise_variance(t))
        assert abs(ge.a - norm.cdf(m / g)) < 1e-9
        assert abs(ge.kappa0 - (m * norm.cdf(m / g) + g * norm.pdf(m / g))) < 1e-9
        assert abs(ge.norm2 - ((m * m + g * g) * norm.cdf(m / g) + m * g * norm.pdf(m / g))) < 1e-9


def test_v2_by_independent_2d_quadrature():
    t, var, m = 0.1, 2.0, 0.4
    ge = equivalence_constants("tanh", t, var, m)
    s_u, s_v = np.exp(-t) * np.sqrt(var), np.sqrt(noise_variance(t))
    f = lambda u: _gauss_expect(np.tanh, m + s_u * u, s_v)  # noqa: E731  noise-averaged feature
    dens = lambda u: np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)  # noqa: E731
    ef2, _ = integrate.quad(lambda u: f(u) ** 2 * dens(u), -12, 12, epsabs=1e-14, limit=200)
    assert abs((ef2 - ge.kappa0**2 - s_u**2 * ge.a**2) - ge.v2) < 1e-11
    assert abs((ge.norm2 - ef2 - ge.b**2) - ge.s2) < 1e-11


# the lead's reference table (paper.md §a.2, 6 decimals)
TABLE = [
    (0.01, 0.25, 0.819182, 0.115273, 0.002422, 0.000665, 0.180818, 0.421581),
    (0.01, 1, 0.605706, 0.085233, 0.025542, 0.001874, 0.394294, 0.605706),
    (0.01, 4, 0.367040, 0.051649, 0.099691, 0.002399, 0.632961, 0.728609),
    (0.1, 0.25, 0.766763, 0.326455, 0.000881, 0.005445, 0.233237, 0.476352),
    (0.1, 1, 0.605706, 0.257884, 0.013841, 0.013574, 0.394294, 0.605706),
    (0.1, 4, 0.387607, 0.165027, 0.073609, 0.019527, 0.612393, 0.720595),
    (0.5, 1, 0.605706, 0.481572, 0.001124, 0.026291, 0.394294, 0.605706),
]


@pytest.mark.parametrize("row", TABLE)
def test_reference_table(row):
    t, var, a, b, v2, s2, norm2, mu1 = row
    ge = equivalence_constants("tanh", t, var)
    got = [ge.a, ge.b, ge.v2, ge.s2, ge.norm2, ge.mu1]
    np.testing.assert_allclose(got, [a, b, v2, s2, norm2, mu1], atol=1.5e-6)


@pytest.mark.parametrize("t, var, m", [(0.1, 0.5, 0.0), (0.05, 3.0, 0.5)])
def test_constants_agree_with_brute_force_monte_carlo(t, var, m):
    """Sample u, v, w and check every constant within 4 Monte Carlo standard errors."""
    rng = np.random.default_rng(7)
    n = 400_000
    u, v, w = rng.standard_normal((3, n))
    s_u, s_v = np.exp(-t) * np.sqrt(var), np.sqrt(noise_variance(t))
    h1, h2 = m + s_u * u + s_v * v, m + s_u * u + s_v * w
    ge = equivalence_constants("tanh", t, var, m)
    sig1, sig2 = np.tanh(h1), np.tanh(h2)
    checks = {
        "kappa0": (sig1, ge.kappa0),
        "a": (sig1 * u / s_u, ge.a),
        "b": (sig1 * v, ge.b),
        "norm2": (sig1**2, ge.norm2),
        # E[sigma(h(u,v)) sigma(h(u,w))] = E f^2 = kappa0^2 + e^{-2t} var a^2 + v2
        "v2": (sig1 * sig2 - ge.kappa0**2 - s_u**2 * ge.a**2, ge.v2),
    }
    for name, (samples, exact) in checks.items():
        se = samples.std() / np.sqrt(n)
        assert abs(samples.mean() - exact) < 4 * se + 1e-12, name


def test_broadcast_over_means_and_variance_matters():
    means = np.linspace(-1, 1, 7)
    ge = equivalence_constants("tanh", 0.1, 1.5, means)
    assert ge.a.shape == (7,)
    one = equivalence_constants("tanh", 0.1, 1.5, means[2])
    assert abs(ge.v2[2] - one.v2) < 1e-15
    # v2 grows with the class variance (paper.md, key monotonicity)
    assert equivalence_constants("tanh", 0.01, 4.0).v2 > 10 * equivalence_constants("tanh", 0.01, 0.25).v2


@pytest.mark.parametrize("kwargs, field", [
    (dict(activation_name="tanh", time=0.0, variance=1.0), "time"),
    (dict(activation_name="tanh", time=0.1, variance=-1.0), "variance"),
    (dict(activation_name="softplus", time=0.1, variance=1.0), "activation"),
])
def test_errors_name_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        equivalence_constants(**kwargs)
