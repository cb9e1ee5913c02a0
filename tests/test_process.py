import numpy as np
import pytest

from classdiff.data.process import (
    ddpm_alpha_bar,
    ddpm_time,
    diffuse,
    noise_variance,
    ou_time_to_alpha_bar,
    signal_scale,
)


def test_signal_and_noise_are_variance_preserving():
    t = np.logspace(-6, 1, 50)
    np.testing.assert_allclose(signal_scale(t) ** 2 + noise_variance(t), 1.0, rtol=1e-14)
    # small-t accuracy: Delta_t ~ 2t
    np.testing.assert_allclose(noise_variance(1e-12), 2e-12, rtol=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_time_roundtrip(schedule):
    ab = ddpm_alpha_bar(schedule, 1000)
    assert ab.shape == (1000,)
    assert np.all(np.diff(ab) < 0) and 0 < ab[-1] < ab[0] < 1
    t = ddpm_time(ab)
    assert np.all(np.diff(t) > 0)
    np.testing.assert_allclose(ou_time_to_alpha_bar(t), ab, rtol=1e-13)
    # e^{-t} = sqrt(alpha-bar) and Delta_t = 1 - alpha-bar
    np.testing.assert_allclose(signal_scale(t), np.sqrt(ab), rtol=1e-13)
    np.testing.assert_allclose(noise_variance(t), 1 - ab, rtol=1e-10)


def test_linear_schedule_matches_ho_et_al_first_step():
    ab = ddpm_alpha_bar("linear", 1000, 1e-4, 0.02)
    assert ab[0] == pytest.approx(1 - 1e-4)
    assert ab[1] == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999)))


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match="schedule"):
        ddpm_alpha_bar("quadratic")
    with pytest.raises(ValueError, match="num_steps"):
        ddpm_alpha_bar("linear", 0)
    with pytest.raises(ValueError, match="alpha_bar"):
        ddpm_time([0.5, 1.5])


def test_diffuse_moments():
    rng = np.random.default_rng(0)
    x0 = np.full((200000, 1), 2.0)
    xt, _ = diffuse(x0, 0.3, rng)
    se = np.sqrt(noise_variance(0.3) / x0.shape[0])
    assert abs(xt.mean() - 2 * signal_scale(0.3)) < 4 * se
    assert abs(xt.var() - noise_variance(0.3)) < 4 * noise_variance(0.3) * np.sqrt(2 / x0.shape[0])


def test_diffuse_is_the_closed_form_for_a_given_noise():
    """x_t = e^{-t} x_0 + sqrt(1 - e^{-2t}) eta exactly (same bits), for numpy, broadcasting and torch inputs."""
    rng = np.random.default_rng(1)
    x0, eta = rng.standard_normal((5, 1, 3)), rng.standard_normal((5, 4, 3))
    xt, back = diffuse(x0, 0.7, eta=eta)
    assert back is eta and xt.shape == (5, 4, 3)
    np.testing.assert_array_equal(xt, np.exp(-0.7) * x0 + np.sqrt(-np.expm1(-1.4)) * eta)
    np.testing.assert_allclose(xt, np.exp(-0.7) * x0 + np.sqrt(1 - np.exp(-1.4)) * eta, rtol=1e-15, atol=1e-15)
    # one time per row, (n, 1) against (n, d)
    t = np.array([[0.01], [0.5], [3.0]])
    x2, e2 = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    np.testing.assert_allclose(diffuse(x2, t, eta=e2)[0], np.exp(-t) * x2 + np.sqrt(1 - np.exp(-2 * t)) * e2,
                               rtol=1e-15, atol=1e-15)
    # drawing from rng is the same as passing rng.standard_normal(x0.shape)
    xr, er = diffuse(x2, 0.3, np.random.default_rng(7))
    np.testing.assert_array_equal(er, np.random.default_rng(7).standard_normal((3, 2)))
    np.testing.assert_array_equal(xr, diffuse(x2, 0.3, eta=er)[0])
    with pytest.raises(ValueError, match="either rng"):
        diffuse(x2, 0.3)
    with pytest.raises(ValueError, match="not both"):
        diffuse(x2, 0.3, np.random.default_rng(0), eta=e2)


def test_diffuse_on_torch_tensors_matches_numpy_bit_for_bit():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x0, eta = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    ref = diffuse(x0, 0.4, eta=eta)[0]
    out, _ = diffuse(torch.as_tensor(x0), 0.4, eta=torch.as_tensor(eta))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), ref)
    t = np.linspace(0.1, 2.0, 6)[:, None]
    out_t, _ = diffuse(torch.as_tensor(x0), t, eta=torch.as_tensor(eta))
    np.testing.assert_array_equal(out_t.numpy(), diffuse(x0, t, eta=eta)[0])


def test_diffuse_moments_match_the_ou_marginal():
    """Mean e^{-t} x_0 and covariance Delta_t I of x_t given x_0, at several times (4 standard errors)."""
    rng = np.random.default_rng(3)
    n = 100000
    x0 = np.tile([1.5, -0.5], (n, 1))
    for t in (0.05, 0.5, 2.0):
        xt, _ = diffuse(x0, t, rng)
        e, dv = np.exp(-t), 1 - np.exp(-2 * t)
        np.testing.assert_array_less(np.abs(xt.mean(0) - e * x0[0]), 4 * np.sqrt(dv / n))
        cov = np.cov(xt.T)
        np.testing.assert_array_less(np.abs(np.diag(cov) - dv), 4 * dv * np.sqrt(2 / n))
        assert abs(cov[0, 1]) < 4 * dv / np.sqrt(n)
