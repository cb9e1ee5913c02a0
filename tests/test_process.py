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
