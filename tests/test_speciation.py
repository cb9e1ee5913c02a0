"""Speciation theory (classdiff.theory.speciation) against independent computations, and against cloning simulations."""

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.stats import norm

from classdiff.core.config import Config
from classdiff.data.mixture import GaussianMixture, make_centroids
from classdiff.theory.speciation import (
    balanced_snr,
    closed_form_speciation_times,
    collapse_time,
    commitment_curves,
    commitment_levels,
    covariance_top_eigenvalue,
    read_speciation_times,
    required_snr,
    simulate_collapse,
    simulate_commitment,
    speciation_from_config,
    speciation_times,
)


def antipodal(d, weights, variances=(1.0, 1.0), norm_=1.0):
    return GaussianMixture(list(weights), make_centroids(d, [norm_, norm_], "antipodal", 0), list(variances))


# ------------------------------------------------------------------------------------------- theory


def test_balanced_curve_is_the_biroli_integral():
    """phi(t) = (1/2) int (G+^2 + G-^2) / (G+ + G-) dy with G+- = N(+-|mu| e^{-t}, Gamma_t^2), by adaptive quad."""
    gm = antipodal(256, (0.5, 0.5), (0.7, 0.7))
    times = [1.5, 2.5, 2.9, 3.5]
    phi = commitment_curves(gm, times)
    for t, row in zip(times, phi):
        m = np.linalg.norm(gm.centroids[0]) * np.exp(-t)
        s = np.sqrt(0.7 * np.exp(-2 * t) + 1 - np.exp(-2 * t))

        def f(y, m=m, s=s):
            gp, gm_ = norm.pdf(y, m, s), norm.pdf(y, -m, s)
            return 0.5 * (gp * gp + gm_ * gm_) / (gp + gm_) if gp + gm_ > 0 else 0.0

        ref = quad(f, -m - 12 * s, m + 12 * s, limit=200, points=[-m, 0, m])[0]
        np.testing.assert_allclose(row, [ref, ref], atol=1e-7)


@pytest.mark.parametrize(
    "gm",
    [
        antipodal(64, (0.85, 0.15), (0.5, 1.5)),  # unequal variances: chi-square quadrature
        GaussianMixture([0.2, 0.3, 0.5], make_centroids(30, [1.2, 1.0, 0.8], "orthogonal", 1), [0.5, 1.0, 1.5]),
        GaussianMixture([0.7, 0.3], make_centroids(50, [1.0, 0.6], "random", 2), [1.0, 1.0]),  # r = 2
    ],
)
def test_curves_match_full_dimensional_monte_carlo(gm):
    """phi_c(t) = E_{x ~ class c at t}[P(c | x)], estimated in full dimension with GaussianMixture.posterior."""
    rng = np.random.default_rng(0)
    n = 20000
    times = [0.3, 1.0, 2.0]
    phi = commitment_curves(gm, times, n_samples=100000)
    for i, t in enumerate(times):
        mean, var = gm.marginal(t)
        for c in range(gm.n_classes):
            x = mean[c] + np.sqrt(var[c]) * rng.standard_normal((n, gm.dim))
            p = gm.posterior(x, t)[:, c]
            se = p.std() / np.sqrt(n)
            assert abs(phi[i, c] - p.mean()) < 4 * se + 4e-3, (t, c, phi[i, c], p.mean(), se)


def test_curve_limits_and_two_class_identity():
    gm = antipodal(128, (0.9, 0.1))
    phi = commitment_curves(gm, [1e-3, 2.0, 2.5, 12.0])
    np.testing.assert_allclose(phi[0], [1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(phi[-1], [0.9, 0.1], atol=1e-4)
    # rho_1 (1 - phi_1) = rho_2 (1 - phi_2): both equal half the probability that two clones disagree
    np.testing.assert_allclose(0.9 * (1 - phi[:, 0]), 0.1 * (1 - phi[:, 1]), atol=1e-10)


def test_top_eigenvalue_matches_dense_covariance():
    for gm in (antipodal(40, (0.8, 0.2), (0.5, 1.5)),
               GaussianMixture([0.2, 0.3, 0.5], make_centroids(30, [1.2, 1.0, 0.8], "random", 1), [0.5, 1.0, 1.5])):
        dense = np.linalg.eigvalsh(gm.covariance(0.0))[-1]
        assert covariance_top_eigenvalue(gm) == pytest.approx(dense, rel=1e-10)
    # antipodal balanced: Lambda = sigma^2 + m^2 d
    assert covariance_top_eigenvalue(antipodal(100, (0.5, 0.5), (0.7, 0.7))) == pytest.approx(100.7)


@pytest.mark.parametrize("d", [256, 1024])
def test_balanced_theory_reduces_to_half_log_lambda(d):
    gm = antipodal(d, (0.5, 0.5))
    st = speciation_times(gm)
    t_half_log = 0.5 * np.log(covariance_top_eigenvalue(gm))
    assert np.all(np.abs(st.t_theory - t_half_log) < 0.01)
    assert np.all(np.abs(st.t_closed_form - t_half_log) < 0.01)
    assert st.t_balanced == pytest.approx(t_half_log)


def test_balanced_snr_defines_the_threshold():
    s = balanced_snr(0.775)
    z, w = np.polynomial.hermite_e.hermegauss(200)
    assert (w / w.sum()) @ (1 / (1 + np.exp(-(s / 2 + np.sqrt(s) * z)))) == pytest.approx(0.775, abs=1e-10)
    assert 3.9 < s < 4.1  # e^{-2t} |mu|^2 / Gamma^2 = 1 at t_S, as in Biroli et al.
    assert required_snr(0.0) == pytest.approx(s, rel=1e-12)
    assert required_snr(np.log(9)) == 0.0  # the majority of 0.9 / 0.1 is committed by its prior
    assert required_snr(-np.log(9)) > s


@pytest.mark.parametrize("weights", [(0.7, 0.3), (0.9, 0.1), (0.98, 0.02)])
def test_minority_speciates_later_and_closed_form_tracks_exact(weights):
    gm = antipodal(256, weights)
    st = speciation_times(gm)
    maj, mino = st.t_theory
    assert mino < maj  # later in the backward process (which runs from large t to small t)
    assert mino < 0.5 * np.log(covariance_top_eigenvalue(antipodal(256, (0.5, 0.5))))
    if weights[0] >= 0.775:
        assert maj == np.inf
    np.testing.assert_allclose(st.t_closed_form, st.t_theory, atol=0.05)
    # relative thresholds give the same time to both classes when K = 2
    rel = read_speciation_times(st.times, st.phi, commitment_levels(gm.weights, 0.775, "relative"))
    assert rel[0] == pytest.approx(rel[1], abs=1e-9)


def test_read_speciation_times_interpolates():
    t = np.linspace(0, 4, 9)
    phi = np.stack([1 - t / 8, 1 - t / 4, np.full(9, 0.9), np.full(9, 0.1)], axis=1)
    out = read_speciation_times(t, phi, [0.775, 0.775, 0.775, 0.775])
    assert out[0] == pytest.approx(1.8) and out[1] == pytest.approx(0.9)  # 1 - t/8 = 0.775, 1 - t/4 = 0.775
    assert out[2] == np.inf  # above the level everywhere: committed from the start
    assert np.isnan(out[3])  # never reaches it
    assert read_speciation_times(t[::-1], phi[::-1], [0.775] * 4)[1] == pytest.approx(0.9)


def test_levels_and_errors():
    np.testing.assert_allclose(commitment_levels([0.9, 0.1], 0.775, "relative"), [0.955, 0.595])
    np.testing.assert_allclose(commitment_levels([0.9, 0.1], 0.775, "absolute"), [0.775, 0.775])
    with pytest.raises(ValueError, match="mode"):
        commitment_levels([0.5, 0.5], 0.775, "quantile")
    with pytest.raises(ValueError, match="threshold"):
        commitment_levels([0.5, 0.5], 0.4)
    with pytest.raises(ValueError, match="isotropic"):
        commitment_curves(GaussianMixture([1.0], np.zeros((1, 3)), np.ones((1, 3))), [1.0])


def test_collapse_time_solves_the_excess_entropy_condition():
    """t_C is where f(t) = log(n)/d + (1/2) log(Delta_t / (Delta_t + sigma^2 e^{-2t})) vanishes (Biroli et al.)."""
    for n, d, s2 in ((20, 16, 1.0), (1000, 10, 0.5), (10**6, 30, 2.0)):
        f = lambda t, n=n, d=d, s2=s2: np.log(n) / d + 0.5 * np.log(  # noqa: E731
            -np.expm1(-2 * t) / (-np.expm1(-2 * t) + s2 * np.exp(-2 * t)))
        assert collapse_time(n, d, s2) == pytest.approx(brentq(f, 1e-9, 20), rel=1e-9)
    with pytest.raises(ValueError, match="n"):
        collapse_time(1, 4, 1.0)


def test_closed_form_unreachable_is_nan():
    gm = GaussianMixture([0.5, 0.5], np.array([[0.1, 0.0], [-0.1, 0.0]]), [1.0, 1.0])
    assert np.all(np.isnan(closed_form_speciation_times(gm)))


# ------------------------------------------------------------------------------------------- simulation


# The cloning runs start from exact draws of P_{t_max} at the first branching time (so no step is wasted above
# the window) and stop at t_min, where the projected SNR is ~100 and the Bayes classifier of x_{t_min} fixes
# the end class. Step h = 0.03. With N trajectories the read-off error is ~ sqrt(phi(1 - phi) / (rho_c N)) /
# slope, slope ~0.32 (balanced) and ~0.64 (minority of 0.9 / 0.1) per unit t: ~0.03 for the sizes below.


def _simulated_times(gm, centre, n, seed, levels):
    branch = centre + np.array([0.45, 0.15, -0.15, -0.45])
    t_max, t_min = branch[0], centre - 1.6
    sim = simulate_commitment(gm, branch, n, round((t_max - t_min) / 0.03), t_max, t_min, seed=seed, n_boot=0)
    return read_speciation_times(sim["branch_times"], sim["phi"], levels)


@pytest.mark.parametrize("d, n", [(256, 2500), (1024, 1500)])
def test_simulated_balanced_speciation_time(d, n):
    gm = antipodal(d, (0.5, 0.5))
    t_half_log = 0.5 * np.log(covariance_top_eigenvalue(gm))
    t_sim = _simulated_times(gm, t_half_log, n, 0, [0.775, 0.775])
    assert np.all(np.abs(t_sim - t_half_log) < 0.1), (t_sim, t_half_log)


def test_simulated_minority_speciation_matches_theory():
    gm = antipodal(256, (0.9, 0.1))
    st = speciation_times(gm)
    t_sim = _simulated_times(gm, st.t_theory[1], 3000, 1, st.levels)
    assert t_sim[0] == np.inf  # the majority's clones agree with probability >= 0.9 > 0.775 at every time
    assert abs(t_sim[1] - st.t_theory[1]) < 0.15, (t_sim, st.t_theory)


def test_empirical_score_collapse_per_class():
    """With the empirical score of n = 24 points (d = 12) clones branched far below t_C,c end on the same
    training point; far above it they do not; the class is decided even earlier (phi_c ~ 1 at small t)."""
    gm = antipodal(12, (0.75, 0.25))
    train = gm.sample(24, seed=0)
    out = simulate_collapse(gm, train.x, train.labels, [3.0, 0.03], 300, 120, 3.0, 0.005, seed=1, n_boot=20)
    assert np.all(out["t_collapse_theory"] > 0.3) and np.all(out["t_collapse_theory"] < 1.5)
    assert np.all(out["phi_collapse"][1] > 0.95) and np.all(out["phi_collapse"][0] < 0.5)
    assert np.all(out["phi"][1] > 0.95)
    assert np.all(out["collapse_lo"] <= out["phi_collapse"] + 1e-12)


def _config(**theory):
    base = {"n_trajectories": 300, "n_steps": 80, "n_branch_times": 6, "bootstrap": 20, "seed": 3}
    base.update(theory)
    return Config.from_dict({
        "mixture": {"dim": 48, "weights": [0.7, 0.3], "variances": [1.0, 1.0], "centroid_norms": [1.0, 1.0]},
        "theory": base,
    })


def test_speciation_from_config_keys_and_determinism():
    from classdiff.core.results import encode

    a = encode(speciation_from_config(_config()))
    b = encode(speciation_from_config(_config()))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = encode(speciation_from_config(_config(seed=4)))
    assert c["curves"]["phi"] != a["curves"]["phi"]
    assert [k["label"] for k in a["classes"]] == [0, 1]
    for cls in a["classes"]:
        assert {"label", "t_speciation_theory", "t_speciation_simulated"} <= set(cls)
    assert np.array(a["curves"]["phi"]).shape == (6, 2)
    assert a["speciation_order_theory"] == [0, 1]  # rho = 0.7 / 0.3: the majority commits first
    assert sorted(a["speciation_order_simulated"]) == [0, 1]


def test_committed_at_start_is_inf_not_null():
    from classdiff.core.results import encode

    res = speciation_from_config(_config().with_overrides({"mixture.weights": [0.95, 0.05]}))
    committed = [c for c in res.classes if c.committed_at_start]
    assert committed, "expected the majority to be committed at the start"
    out = encode(res)
    for c in committed:
        assert c.t_speciation_theory == np.inf
        assert out["classes"][c.label]["t_speciation_theory"] == "inf"
    assert res.speciation_order_theory[0] == committed[0].label


def test_cli_writes_results_and_figure(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        "[mixture]\ndim = 32\nweights = [0.5, 0.5]\nvariances = [1.0, 1.0]\ncentroid_norms = [1.0, 1.0]\n"
        "[theory]\nn_trajectories = 100\nn_steps = 40\nn_branch_times = 4\nbootstrap = 10\n"
    )
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "classdiff", "speciation", str(cfg), "--out", str(out), "--json"],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    assert result == json.loads((out / "results.json").read_text())
    assert len(result["classes"]) == 2
    assert (out / "speciation.png").is_file() and (out / "speciation.pdf").is_file()
    assert (out / "speciation.npz").is_file()


def test_cli_explains_inf_when_a_class_is_committed_from_the_start(tmp_path, capsys):
    from classdiff.commands import cli

    cfg = tmp_path / "s.toml"
    cfg.write_text(
        "[mixture]\ndim = 32\nweights = [0.9, 0.1]\nvariances = [1.0, 1.0]\ncentroid_norms = [1.0, 1.0]\n"
        "[theory]\nn_trajectories = 100\nn_steps = 40\nn_branch_times = 4\nbootstrap = 10\n"
    )
    assert cli.main(["speciation", str(cfg), "--out", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert "t_S theory inf" in text
    assert "inf = committed from the start" in text and "not reached = never reaches it" in text
