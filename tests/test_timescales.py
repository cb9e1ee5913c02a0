"""Predicted per-class timescales vs the closed-form random-features dynamics, internal identities, and the claims.

The measured side is :class:`classdiff.rf.model.RandomFeaturesScore` (exact tanh features, exact noise average,
fresh test points), read off with the same :mod:`classdiff.core.readoff` functions as the theory.
"""

from __future__ import annotations

import numpy as np
import pytest

from classdiff.core.config import Config
from classdiff.theory.losses import LossModel, mean_type_approximation
from classdiff.theory.phase import centroid_vs_variance, reversal_boundary, variance_imbalance_diagram
from classdiff.theory.spectrum import FeatureSpectrum, types_from_config
from classdiff.theory.timescales import class_timescales, timescales_from_config

TAU = np.geomspace(0.1, 1e5, 120)
BASE = {"mixture.dim": 50, "training.tau_min": 0.1, "training.tau_max": 1e5, "training.n_times": 120,
        "theory.n_lambda": 160, "theory.n_scan": 150, "mixture.geometry": "antipodal"}

# (psi_p, psi_n, t, variances, weights, centroid norms)
SETTINGS = [
    (2.0, 1.0, 0.1, [0.5, 2.0], [0.5, 0.5], [0, 0]),
    (3.0, 1.5, 0.1, [0.5, 1.5], [0.7, 0.3], [0, 0]),
    (2.0, 1.0, 0.1, [0.5, 2.0], [0.9, 0.1], [0, 0]),
    (2.5, 2.0, 0.1, [0.5, 1.5], [0.5, 0.5], [0, 0]),
    (1.5, 1.5, 0.1, [1.0, 2.0], [0.3, 0.7], [0, 0]),
    (2.0, 1.0, 0.05, [0.5, 1.5], [0.5, 0.5], [0, 0]),
    (2.0, 1.0, 0.3, [0.5, 1.5], [0.5, 0.5], [0, 0]),
    (2.0, 1.5, 0.1, [1.5, 0.5], [0.8, 0.2], [0, 0]),
    (3.0, 2.0, 0.1, [0.7, 1.4], [0.6, 0.4], [0, 0]),
    (2.0, 1.0, 0.1, [0.5, 1.5], [0.5, 0.5], [0.5, 0.5]),
    (2.0, 1.0, 0.1, [1.0, 1.0], [0.7, 0.3], [1.0, 0.3]),
    (2.0, 1.0, 0.1, [0.5, 1.0, 2.0], [0.4, 0.3, 0.3], [0, 0, 0]),
]


def setting_config(psi_p, psi_n, t, var, w, m) -> Config:
    over = BASE | {"model.psi_p": psi_p, "model.psi_n": psi_n, "model.time": t, "mixture.variances": var,
                   "mixture.weights": w, "mixture.centroid_norms": m}
    if len(w) != 2:
        over["mixture.geometry"] = "orthogonal"
    return Config().with_overrides(over)


def measured_timescales(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form RF dynamics (exact features), as rf_model.dynamics_from_config, with a lighter test estimate."""
    from classdiff.data.mixture import GaussianMixture
    from classdiff.rf.model import RandomFeaturesScore

    mixture = GaussianMixture.from_config(cfg.mixture)
    d = cfg.mixture.dim
    n, p = round(cfg.model.psi_n * d), round(cfg.model.psi_p * d)
    est = RandomFeaturesScore(n_features=p, activation="tanh", time=cfg.model.time, seed=0, series_order=6,
                              test_samples=300, score_samples=4, n_batches=2)
    est.fit(mixture.sample(n, seed=0), mixture)
    ts = est.timescales(TAU, 0.05, 0.5)
    return ts["tau_gen"], ts["tau_mem"]


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [0, 1])
def test_predicted_timescales_match_measured_dynamics(chunk):
    """12 settings (6 per chunk): every tau within 25%; same learning order everywhere; same memorization order
    wherever the measured tau_mem differ by more than 5% (below that the order is within seed scatter)."""
    for setting in SETTINGS[chunk * 6 : (chunk + 1) * 6]:
        cfg = setting_config(*setting)
        th = class_timescales(cfg, tau=TAU)
        gen, mem = measured_timescales(cfg)
        np.testing.assert_allclose(th["tau_gen"], gen, rtol=0.25, err_msg=str(setting))
        np.testing.assert_allclose(th["tau_mem"], mem, rtol=0.25, err_msg=str(setting))
        assert list(np.argsort(th["tau_gen"])) == list(np.argsort(gen)), setting
        for i in range(len(mem)):
            for j in range(i + 1, len(mem)):
                if abs(np.log(mem[i] / mem[j])) > np.log(1.05):
                    assert (th["tau_mem"][i] < th["tau_mem"][j]) == (mem[i] < mem[j]), setting


@pytest.fixture(scope="module")
def loss_model() -> tuple[Config, LossModel]:
    cfg = setting_config(2.0, 1.0, 0.1, [0.5, 2.0], [0.6, 0.4], [0, 0])
    ft = mean_type_approximation(types_from_config(cfg))
    spec = FeatureSpectrum(n_lambda=160, n_scan=150, outliers=False).fit(ft)
    g = spec.grid_
    return cfg, LossModel(ft, g["lambda"], g["weights"], g["solution"], spec.epsilon)


def test_full_train_loss_matches_single_resolvent(loss_model):
    """sum_c rho_c L_train,c(tau) = 1 - int w_VV(lambda) (1 - e^{-4 Delta lambda tau/psi_p}) / lambda dlambda, the exact
    single-resolvent full train loss: checks the two-resolvent equations and the product quadrature."""
    _, model = loss_model
    ft = model.ft
    curves = model.curves(np.append(TAU, np.inf))
    full = ft.weights @ curves["train_loss"]
    lam, w = model.lam, model.weights
    e2 = np.exp(-4 * ft.delta_t * np.outer(lam, np.append(TAU, 0.0)) / ft.psi_p)
    e2[:, -1] = 0.0
    exact = 1 - ((w * model.vv_density() / lam)[:, None] * (1 - e2)).sum(0)
    np.testing.assert_allclose(full, exact, atol=2e-3)


def test_losses_start_at_one_and_gap_is_positive(loss_model):
    _, model = loss_model
    curves = model.curves(np.array([1e-6, np.inf]))
    np.testing.assert_allclose(curves["train_loss"][:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(curves["test_loss"][:, 0], 1.0, atol=1e-5)
    assert np.all(curves["test_loss"][:, -1] > curves["train_loss"][:, -1])


def test_timescales_json_keys_and_determinism():
    from classdiff.core.readoff import ORDER_KEYS
    from classdiff.core.results import encode

    cfg = setting_config(2.0, 1.0, 0.1, [0.5, 2.0], [0.5, 0.5], [0, 0]).with_overrides({"training.n_times": 60})
    res = timescales_from_config(cfg)
    out = encode(res)
    assert [c["label"] for c in out["classes"]] == [0, 1]
    for c in out["classes"]:
        assert c["tau_gen"] > 0 and c["tau_mem"] > c["tau_gen"]
    assert out[ORDER_KEYS["tau_gen"]] == [1, 0]  # the higher-variance class generalizes first
    assert "two-resolvent" in out["definitions"]["closure"] and "mode-diagonal" not in out["definitions"]["closure"]
    again = timescales_from_config(cfg)
    assert [c.tau_gen for c in again.classes] == [c.tau_gen for c in res.classes]


@pytest.mark.parametrize("over", [
    {},  # the demo config as shipped
    {"mixture.weights": [0.9, 0.1], "mixture.centroid_norms": [1.0, 1.0], "model.psi_p": 2.0},
])
def test_timescales_edges_are_the_spectrum_edges(over):
    """``timescales`` reports the bulk edges of the mixture's spectrum, the same numbers as ``spectrum`` for the
    same config; the loss model's one-type edges are a separate field (they differ when the types differ)."""
    from importlib.resources import files

    from classdiff.core.config import load_config
    from classdiff.theory.spectrum import spectrum_from_config

    cfg = load_config(files("classdiff") / "demo.toml").with_overrides(over | {"training.n_times": 40})
    res = timescales_from_config(cfg)
    want = spectrum_from_config(cfg).edges
    np.testing.assert_allclose(np.asarray(res.edges), np.asarray(want), rtol=1e-12, atol=0)
    assert np.asarray(res.loss_model_edges).shape[1] == 2


def test_mixture_entry_point_is_the_config_path():
    from classdiff.theory.spectrum import training_mixture
    from classdiff.theory.timescales import class_timescales_for_mixture

    cfg = setting_config(2.0, 1.0, 0.1, [0.5, 2.0], [0.5, 0.5], [0, 0]).with_overrides({"training.n_times": 60})
    a = timescales_from_config(cfg)
    mixture = training_mixture(cfg)
    b = class_timescales_for_mixture(mixture, cfg.model, cfg.theory, cfg.training, labels=[7, 3])
    assert [c.tau_gen for c in b.classes] == [c.tau_gen for c in a.classes]
    assert [c.tau_mem for c in b.classes] == [c.tau_mem for c in a.classes]
    assert b.generalization_order == [{0: 7, 1: 3}[i] for i in a.generalization_order]


def test_reversal_boundary_interpolates_sign_change():
    x = np.log(np.array([0.25, 0.5, 1.0, 2.0, 4.0]))
    y = np.array([[1.0, 0.5, -0.5, -1.0, -2.0],   # flips at log 0.5/1: between 0.5 and 1 -> log ratio -0.3466
                  [-1.0, -1.0, -1.0, -1.0, -1.0]])
    b = reversal_boundary(x, y)
    assert np.isnan(b[1])
    np.testing.assert_allclose(b[0], 0.5 * (np.log(0.5) + np.log(1.0)))


PHASE = {"mixture.dim": 50, "model.psi_p": 2.0, "model.psi_n": 1.0, "model.time": 0.1, "theory.n_lambda": 100,
         "theory.n_scan": 120, "mixture.centroid_norms": [0.0, 0.0], "mixture.variances": [1.0, 1.0],
         "mixture.weights": [0.5, 0.5]}


def test_claims_on_the_phase_diagram():
    """Claim 1: at balance the higher-variance class is learned first. Claim 2: centroid norms 0 -> 1 at fixed
    variance move tau_gen less than the variance ratio 1/2 -> 2. Claim 3 (imbalance reverses the order) is not
    produced by the theory predictor with zero centroids (there is no class-specific direction for imbalance to act
    on): its reversal boundary is nan on this grid; see the next test for the reversal (docs/theory.md §6.1)."""
    cfg = Config().with_overrides(PHASE)
    tau = np.geomspace(0.1, 1e5, 100)
    diag = variance_imbalance_diagram(cfg, [0.5, 2.0], [1 / 19, 1.0, 19.0], tau=tau)
    bal = int(np.argmin(np.abs(np.log(diag["weight_ratios"]))))
    # variance ratio sigma_0^2/sigma_1^2 = 0.5 -> class 1 (higher variance) first; 2.0 -> class 0 first
    assert diag["learned_first"][0, bal] == 1 and diag["learned_first"][1, bal] == 0
    assert np.all(np.isnan(diag["reversal_gen"]))
    spread = centroid_vs_variance(cfg, [0.0, 1.0], [0.5, 2.0], tau=tau)
    assert np.all(spread["centroid_spread_gen"] < spread["variance_spread_gen"])


def test_claim3_imbalance_reverses_the_order_in_the_exact_dynamics():
    """Claim 3 on the phase diagram of the exact closed-form random-features dynamics (finite size, 3 seeds), with
    class-specific (orthogonal) centroids of norm 3 sqrt(d): class 1 has the higher variance (ratio 1.05) and is
    learned first at balance, where both classes are memorized at the same time within the seed spread; making class 0
    the majority delays the minority: the learning order reverses (boundary rho_0/rho_1 ~ 1.5) and the minority is
    memorized clearly later. With the variance ratio 1.2 the learning order holds up to 9:1 on this grid."""
    cfg = Config().with_overrides({
        "mixture.dim": 120, "model.psi_p": 2.0, "model.psi_n": 1.0, "model.time": 0.1,
        "mixture.geometry": "orthogonal", "mixture.centroid_norms": [3.0, 3.0], "mixture.variances": [1.0, 1.0],
        "mixture.weights": [0.5, 0.5], "model.series_order": 6, "training.seeds": 3, "training.test_samples": 300,
        "training.score_samples": 8, "training.n_batches": 2})
    diag = variance_imbalance_diagram(cfg, [1 / 1.05, 1 / 1.2], [1.0, 2.0, 4.0, 9.0],
                                      tau=np.geomspace(0.1, 1e5, 120), predictor="dynamics")
    assert diag["predictor"] == "dynamics"
    gen_ratio = diag["tau_gen"][..., 0] / diag["tau_gen"][..., 1]  # (variance ratio, weight ratio)
    mem_ratio = diag["tau_mem"][..., 0] / diag["tau_mem"][..., 1]
    # at balance (column 0) the higher-variance class 1 is learned first; memorization times agree within 10%
    assert list(diag["learned_first"][:, 0]) == [1, 1]
    assert np.all(np.abs(np.log(mem_ratio[:, 0])) < 0.1)
    # 4:1 against it: learning order reversed at variance ratio 1.05 (not at 1.2), minority memorized >= 1.4x later
    assert diag["learned_first"][0, 2] == 0 and diag["learned_first"][1, 2] == 1
    assert gen_ratio[0, 0] > 1.02 and gen_ratio[0, 2] < 0.95
    assert np.all(mem_ratio[:, 2:] < 0.7)
    assert 1.0 < diag["reversal_gen"][0] < 4.0 and np.isnan(diag["reversal_gen"][1])


def test_unknown_predictor_is_a_clear_error():
    cfg = Config().with_overrides(PHASE)
    with pytest.raises(ValueError, match="predictor = 'exact': allowed values are theory, dynamics"):
        variance_imbalance_diagram(cfg, [2.0], [1.0], tau=np.geomspace(0.1, 1e3, 20), predictor="exact")


@pytest.mark.parametrize("predictor", ["theory", "dynamics"])
def test_timescales_command_writes_phase_diagrams(tmp_path, predictor):
    import json

    from classdiff.commands import cli
    from classdiff.core.config import save_config

    cfg = Config().with_overrides(PHASE | {"mixture.dim": 30, "theory.phase_points": 2, "training.n_times": 40,
                                           "training.tau_min": 0.1, "training.tau_max": 1e4,
                                           "training.test_samples": 100, "training.score_samples": 4,
                                           "training.n_batches": 2, "model.series_order": 4})
    path = save_config(cfg, tmp_path / "c.toml")
    out = tmp_path / "run"
    assert cli.main(["timescales", str(path), "--out", str(out), "--phase", "--predictor", predictor]) == 0
    res = json.loads((out / "results.json").read_text())
    vi = res["phase"]["variance_imbalance"]
    assert vi["predictor"] == predictor
    assert np.array(vi["tau_gen"]).shape == (2, 3, 2)  # 2 variance ratios x (2 weight ratios + balance) x 2 classes
    assert (out / "phase.png").is_file() and (out / "phase.pdf").is_file()


def _direct_two_resolvent(model: LossModel) -> tuple[np.ndarray, np.ndarray]:
    """Reference for LossModel's two-resolvent measures: the Theta equation solved as a dense K x K system at every
    grid pair, each trace integrated separately with the one-polynomial integral (no rank-2 reduction)."""
    from classdiff.theory.losses import _int2

    ft, pt, k, L = model.ft, model.pt, model.k, model.lam.size
    ratio, b2, a2 = ft.psi_p / ft.psi_n, model.bbar**2, ft.a[:, 0] ** 2
    mul = lambda p, q: (p[0] * q[0], p[0] * q[1] + p[1] * q[0], p[1] * q[1])  # noqa: E731
    X = (0.0, b2, 0.0)
    C = [(model.cb[c], model.ca[c], 0.0) for c in range(k)]
    Yt = [(model.cb[c] + ft.s2[c, 0], model.ca[c] + ft.delta_t * a2[c], 0.0) for c in range(k)]
    Yb = [(ft.s2[c, 0], ft.delta_t * a2[c], 0.0) for c in range(k)]
    ii, jj = (g.ravel() for g in np.meshgrid(np.arange(L), np.arange(L), indexing="ij"))
    F = {}
    for sign, p2 in (("pp", pt), ("pm", pt.conj())):
        den = (1.0 + pt.delta[ii]) * (1.0 + p2.delta[jj])
        S = np.stack([ratio * _int2(pt, p2, mul(C[c], X), ii, jj) for c in range(k)], axis=1)
        R = np.empty((ii.size, k, k), dtype=np.complex128)
        for a in range(k):
            for c in range(k):
                R[:, a, c] = ft.weights[c] * ratio * _int2(pt, p2, mul(C[a], C[c]), ii, jj) / den[:, c]
        theta = np.linalg.solve(np.eye(k)[None] - R, S[:, :, None])[:, :, 0]
        coef = ft.weights * theta / den
        test = np.stack([ft.psi_p * (_int2(pt, p2, mul(X, Yt[y]), ii, jj) + sum(
            coef[:, c] * _int2(pt, p2, mul(Yt[y], C[c]), ii, jj) for c in range(k))) for y in range(k)], 1)
        train = np.stack([ft.psi_p * (_int2(pt, p2, mul(X, Yb[y]), ii, jj) + sum(
            coef[:, c] * _int2(pt, p2, mul(Yb[y], C[c]), ii, jj) for c in range(k))) + ft.psi_n * theta[:, y] / den[:, y]
            for y in range(k)], 1)
        F[sign] = (test.reshape(L, L, k), train.reshape(L, L, k))
    out = []
    for i in (0, 1):
        mu = (F["pm"][i] - F["pp"][i]).real / (2 * np.pi**2)
        mu[np.arange(L), np.arange(L)] = 0.0
        out.append(mu)
    return out[0], out[1]


def test_rank_two_theta_solve_matches_the_dense_solve():
    """The Woodbury (rank-2) solve of the Theta equation in LossModel equals a dense K x K solve, K = 3."""
    cfg = setting_config(2.0, 1.0, 0.1, [0.5, 1.0, 2.0], [0.5, 0.3, 0.2], [0, 0, 0])
    ft = mean_type_approximation(types_from_config(cfg))
    spec = FeatureSpectrum(n_lambda=60, n_scan=80, outliers=False).fit(ft)
    g = spec.grid_
    model = LossModel(ft, g["lambda"], g["weights"], g["solution"], spec.epsilon)
    mu_test, mu_train = _direct_two_resolvent(model)
    scale = np.abs(mu_test).max()
    np.testing.assert_allclose(model.mu_test, mu_test, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(model.mu_train, mu_train, rtol=0, atol=1e-10 * np.abs(mu_train).max())


def test_order_agreement_scores_points_and_leaves_ties_and_missing_apart():
    from classdiff.theory.phase import order_agreement

    theory = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [1.0, 2.0], [1.0, 2.0]])
    measured = np.array([[1.0, 3.0], [3.0, 1.0], [1.0, 1.05], [np.nan, 1.0], [5.0, 1.0]])
    ag = order_agreement(theory, measured, tie=0.1)
    assert (ag["agree"], ag["disagree"], ag["ties"], ag["unscored"]) == (1, 2, 1, 1)
    assert ag["agrees"].tolist() == [True, False, False, False, False]
    assert ag["is_tie"].tolist() == [False, False, True, False, False]


def test_timescales_overlay_maps_theory_with_dynamics_points(tmp_path, capsys):
    """--phase --overlay: the theory's order maps over (variance ratio x imbalance) and (centroid norm x imbalance),
    the exact dynamics at the sampled points (the same configs), the agreement counts and the figure."""
    import json

    from classdiff.commands import cli
    from classdiff.core.config import save_config
    from classdiff.theory.phase import centroid_imbalance_diagram

    cfg = Config().with_overrides(PHASE | {"mixture.dim": 30, "theory.phase_points": 3, "training.n_times": 40,
                                           "training.tau_min": 0.1, "training.tau_max": 1e4,
                                           "training.test_samples": 100, "training.score_samples": 4,
                                           "training.n_batches": 2, "model.series_order": 4,
                                           "mixture.geometry": "orthogonal"})
    path = save_config(cfg, tmp_path / "c.toml")
    out = tmp_path / "run"
    assert cli.main(["timescales", str(path), "--out", str(out), "--phase", "--overlay", "2"]) == 0
    printed = capsys.readouterr().out
    assert "centroid_imbalance tau_mem: theory and dynamics agree on" in printed
    res = json.loads((out / "results.json").read_text())
    ov = res["phase_overlay"]["centroid_imbalance"]
    assert np.array(ov["theory"]["tau_gen"]).shape == (3, 3, 2)
    assert ov["rows"] == [0, 2] and ov["columns"] == [0, 1, 2]  # the sampled weights include balance
    assert np.array(ov["dynamics"]["tau_gen"]).shape == (2, 3, 2)
    ag = ov["agreement_tau_gen"]
    assert ag["agree"] + ag["disagree"] + ag["ties"] + ag["unscored"] == 6
    assert (out / "phase_overlay.png").is_file() and (out / "phase_overlay.pdf").is_file()
    # the dynamics points are the theory's configs: the same diagram at the sampled values reproduces them
    tau = np.asarray(res["tau"])
    again = centroid_imbalance_diagram(cfg, np.asarray(ov["axis_values"])[ov["rows"]],
                                       np.asarray(ov["weight_ratios"])[ov["columns"]], tau=tau, predictor="theory")
    np.testing.assert_allclose(again["tau_gen"], np.asarray(ov["theory"]["tau_gen"])[np.ix_(ov["rows"], ov["columns"])],
                               rtol=1e-10)
    assert cli.main(["timescales", str(path), "--out", str(tmp_path / "bad"), "--overlay", "2"]) == 1
    assert "--overlay = 2: needs --phase" in capsys.readouterr().err
