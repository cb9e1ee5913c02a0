"""RF score model (rf_model.py): exact noise averages, closed-form flow, per-class curves, timescales, CLI.

Every quantity is compared with an independent computation: scipy quadrature, brute-force Monte Carlo with
its standard error, scipy.linalg.expm of the flow, the pseudo-inverse minimiser, or direct sample averages.
"""

import json
import math

import numpy as np
import pytest
from scipy import integrate
from scipy.linalg import expm
from scipy.stats import wasserstein_distance

from classdiff.core.config import Config
from classdiff.data.mixture import GaussianMixture
from classdiff.data.process import noise_variance, signal_scale
from classdiff.rf.model import (
    RandomFeaturesScore,
    dynamics_from_config,
    hermite_coefficients,
    noise_averaged_moments,
)

T = 0.1
DELTA = float(noise_variance(T))


def _openblas_setters():
    """(get, set) pairs of the OpenBLAS thread count of numpy's and scipy's bundled libraries (empty if absent)."""
    import ctypes

    pairs = []
    for line in sorted({ln.split()[-1] for ln in open("/proc/self/maps") if "openblas" in ln and ".so" in ln}):
        try:
            lib = ctypes.CDLL(line)
        except OSError:
            continue
        for get, set_ in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                          ("openblas_get_num_threads", "openblas_set_num_threads")):
            if hasattr(lib, get) and hasattr(lib, set_):
                pairs.append((getattr(lib, get), getattr(lib, set_)))
                break
    return pairs


@pytest.fixture(autouse=True, scope="module")
def _single_blas_thread():
    """These tests do many small dense products and eigh calls: on a shared, oversubscribed 2-core machine a
    multi-threaded BLAS pool is ~10x slower than one thread. Use one thread here and restore afterwards."""
    import scipy.linalg  # noqa: F401  (load scipy's BLAS so that it is found)

    pairs = _openblas_setters()
    old = [get() for get, _ in pairs]
    for _, set_ in pairs:
        set_(1)
    yield
    for (_, set_), n in zip(pairs, old):
        set_(n)


@pytest.fixture(scope="module")
def two_class():
    d = 12
    gm = GaussianMixture([0.7, 0.3], np.vstack([0.5 * np.ones(d), -0.5 * np.ones(d)]), [0.5, 2.0])
    data = gm.sample(24, seed=1)
    est = RandomFeaturesScore(30, time=T, seed=0, test_samples=1600, score_samples=1600).fit(data, gm)
    return gm, data, est


# ------------------------------------------------------------------------------------- noise averages


@pytest.mark.parametrize("name", ["tanh", "erf", "relu", "identity"])
def test_hermite_coefficients_by_scipy_quadrature(name):
    from classdiff.rf.features import activation

    sig = activation(name)
    m, s = 0.37, 0.45
    coef, second = hermite_coefficients(name, m, s, 6)
    he = [lambda z: 1.0, lambda z: z, lambda z: z * z - 1, lambda z: z**3 - 3 * z, lambda z: z**4 - 6 * z * z + 3]
    dens = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    for k, h in enumerate(he):
        ref, _ = integrate.quad(lambda z, h=h: sig(np.array(m + s * z)) * h(z) * dens(z), -30, 30,
                                points=[-m / s], limit=200, epsabs=1e-14)
        assert abs(coef[k] - ref) < 1e-12, k
    ref2, _ = integrate.quad(lambda z: sig(np.array(m + s * z)) ** 2 * dens(z), -30, 30, points=[-m / s],
                             limit=200, epsabs=1e-14)
    assert abs(second - ref2) < 1e-12


def test_series_moments_agree_with_monte_carlo_within_error_bars():
    """U and V of the Mehler series vs brute-force noise draws, entry by entry within 4.5 standard errors."""
    rng = np.random.default_rng(3)
    d, p, n, m = 6, 5, 3, 60_000
    W = rng.standard_normal((p, d))
    x0 = 1.3 * rng.standard_normal((n, d))
    mom = noise_averaged_moments(x0, np.zeros(n, dtype=int), 1, W, "tanh", T)[0]
    eta = rng.standard_normal((n, m, d))
    xt = signal_scale(T) * x0[:, None, :] + math.sqrt(DELTA) * eta
    phi = np.tanh(xt @ W.T / math.sqrt(d))  # (n, m, p)
    uu = np.einsum("nmi,nmj->mij", phi, phi) / n  # per-draw estimates, (m, p, p)
    vv = np.einsum("nmi,nmj->mij", phi, eta) / n
    for est, samples in ((mom.U, uu), (mom.V, vv)):
        se = samples.std(0) / math.sqrt(m)
        z = np.abs(samples.mean(0) - est) / se
        assert z.max() < 4.5


def test_series_truncation_bound_holds():
    rng = np.random.default_rng(4)
    d, p, n = 8, 12, 10
    W = rng.standard_normal((p, d))
    x0 = rng.standard_normal((n, d))
    ref = noise_averaged_moments(x0, np.zeros(n, dtype=int), 1, W, "tanh", 0.5, series_order=40)[0].U
    for order in (2, 4, 8):
        mom = noise_averaged_moments(x0, np.zeros(n, dtype=int), 1, W, "tanh", 0.5, series_order=order)[0]
        err = np.abs(mom.U - ref).max()
        assert err <= mom.series_error_bound * (1 + 1e-6) + 1e-15
    assert err < 1e-4


def test_mc_method_converges_to_series_and_chunking_is_invisible():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((7, 5))
    x0 = rng.standard_normal((9, 5))
    lab = np.array([0] * 5 + [1] * 4)
    exact = noise_averaged_moments(x0, lab, 2, W, "tanh", T)
    a = noise_averaged_moments(x0, lab, 2, W, "tanh", T, method="mc", noise_samples=4000, seed=1)
    b = noise_averaged_moments(x0, lab, 2, W, "tanh", T, method="mc", noise_samples=4000, seed=1, chunk_bytes=5000)
    for c in range(2):
        np.testing.assert_allclose(a[c].U, b[c].U, rtol=1e-12, atol=1e-14)
        assert np.abs(a[c].U - exact[c].U).max() < 0.01
        assert np.abs(a[c].V - exact[c].V).max() < 0.02


def test_fit_decomposes_moments_by_class(two_class):
    _, data, est = two_class
    w = data.counts / data.n
    np.testing.assert_allclose(est.U_, w[0] * est.U_by_class_[0] + w[1] * est.U_by_class_[1], atol=1e-14)
    whole = noise_averaged_moments(data.x, np.zeros(data.n, dtype=int), 1, est.W_, "tanh", T)[0]
    np.testing.assert_allclose(est.U_, whole.U, atol=1e-13)
    np.testing.assert_allclose(est.V_, whole.V, atol=1e-13)
    assert np.all(est.eigenvalues_ > 0)


# ------------------------------------------------------------------------------------- fast paths vs naive formulas


def _naive_series(x0, W, name, time, order, n_nodes=120):
    """The Mehler-series U (mean over the points) and V written as plainly as possible: one (n, p, nodes)
    quadrature tensor (120 nodes), entrywise powers R^k, sum over k term by term, exact diagonal."""
    from numpy.polynomial.hermite_e import hermevander

    from classdiff.rf.features import activation, gauss_hermite

    n, d = x0.shape
    r = (W * W).sum(1) / d
    R = (W @ W.T / d) / np.sqrt(np.outer(r, r))
    np.fill_diagonal(R, 1.0)
    s = np.sqrt(float(noise_variance(time)) * r)
    m = float(signal_scale(time)) * x0 @ W.T / math.sqrt(d)
    if name == "relu":  # closed-form coefficients (a quadrature of the kink would not be accurate)
        coef, second = hermite_coefficients(name, m, s[None, :], order)
        coef = np.moveaxis(coef, 0, -1)
    else:
        z, w = gauss_hermite(n_nodes)
        vals = activation(name)(m[..., None] + s[:, None] * z)  # (n, p, Q)
        coef = vals @ (hermevander(z, order) * w[:, None])  # (n, p, order+1)
        second = vals**2 @ w
    U = sum(R**k * (coef[..., k].T @ coef[..., k]) / math.factorial(k) for k in range(order + 1)) / n
    np.fill_diagonal(U, second.mean(0))
    V = (coef[..., 1].mean(0) / np.sqrt(r))[:, None] * W / math.sqrt(d)
    return U, V


@pytest.mark.parametrize("name", ["tanh", "erf", "relu"])
def test_series_moments_equal_the_naive_sum_for_any_grouping_and_chunking(name):
    """Horner + symmetric rank-k updates, sorted groups split over blocks, the exp form of tanh and the cached
    geometry give the plain term-by-term Mehler sum (to rounding), whatever the block size."""
    rng = np.random.default_rng(21)
    d, p, n = 9, 13, 17
    W = rng.standard_normal((p, d))
    x0 = 1.2 * rng.standard_normal((n, d))
    lab = rng.integers(0, 3, n)  # interleaved groups
    lab[:3] = [0, 1, 2]
    ref = [_naive_series(x0[lab == c], W, name, 0.3, 9) for c in range(3)]
    for chunk in (2**27, 3000, 1):  # one block; groups straddling blocks; one point per block
        moms = noise_averaged_moments(x0, lab, 3, W, name, 0.3, series_order=9, chunk_bytes=chunk)
        for c in range(3):
            np.testing.assert_allclose(moms[c].U, ref[c][0], rtol=0, atol=1e-13)
            np.testing.assert_array_equal(moms[c].U, moms[c].U.T)
            np.testing.assert_allclose(moms[c].V, ref[c][1], rtol=0, atol=1e-13)
            np.testing.assert_allclose(moms[c].stein[:, None] * W / math.sqrt(d), moms[c].V, atol=1e-15)
            assert moms[c].count == int((lab == c).sum())


def test_hermite_fast_paths_equal_the_generic_quadrature():
    """Per-feature scales (s_i z table, exp form of tanh, cache-sized chunks) vs a fully broadcast scale (generic
    path, np.tanh) vs one big quadrature tensor."""
    from numpy.polynomial.hermite_e import hermevander
    from scipy.special import erf

    from classdiff.rf.features import gauss_hermite

    rng = np.random.default_rng(22)
    m = 0.8 * rng.standard_normal((37, 29))
    s = 0.3 + 0.2 * rng.random(29)
    for name in ("tanh", "erf"):
        fast, fast2 = hermite_coefficients(name, m, s, 12, 48)
        slow, slow2 = hermite_coefficients(name, m, np.broadcast_to(s, m.shape).copy(), 12, 48)
        z, w = gauss_hermite(48)
        vals = (np.tanh if name == "tanh" else erf)(m[..., None] + s[:, None] * z)
        rule = hermevander(z, 12) * w[:, None]
        plain = np.moveaxis(vals @ rule, -1, 0)
        # rounding floor of c_k: a few ulps of sigma times sum_q |w_q He_k(z_q)| (1e4 at k = 12)
        floor = 16 * np.finfo(float).eps * np.abs(rule).sum(0)
        for a in (fast, slow):
            assert np.all(np.abs(a - plain).max(axis=(1, 2)) <= floor)
        for a in (fast2, slow2):
            np.testing.assert_allclose(a, vals**2 @ w, rtol=0, atol=1e-15)
    # huge pre-activations: the exp form is guarded (no overflow to nan)
    m_big = np.array([[400.0, -400.0, 0.1]])
    big, _ = hermite_coefficients("tanh", m_big, np.array([0.5, 0.5, 0.5]), 3)
    ref, _ = hermite_coefficients("tanh", m_big, np.full((1, 3), 0.5), 3)
    assert np.all(np.isfinite(big))
    np.testing.assert_allclose(big, ref, rtol=0, atol=1e-15)
    np.testing.assert_allclose(big[0, 0, :2], [1.0, -1.0])


def test_rotations_and_quadratic_rows_equal_direct_products():
    from classdiff.rf.model import _quadratic_rows, _rotate

    rng = np.random.default_rng(23)
    p = 40
    Q = np.linalg.qr(rng.standard_normal((p, p)))[0]
    A = rng.standard_normal((p, p))
    for U in (A @ A.T + 0.1 * np.eye(p), A[:, :7] @ A[:, :7].T):  # positive definite (Cholesky), singular (trmm)
        X = _rotate(U, Q)
        np.testing.assert_allclose(X, Q.T @ U @ Q, rtol=0, atol=1e-12 * np.abs(U).max())
        np.testing.assert_array_equal(X, X.T)
    G = rng.standard_normal((9, p))
    H = A + A.T
    np.testing.assert_allclose(_quadratic_rows(G, H), np.einsum("tk,kl,tl->t", G, H, G), rtol=1e-12)


def test_fit_rotated_moments_equal_direct_rotations(two_class):
    """train_quad_ (K-1 rotations, the largest class from diag(lambda)) and the linear terms (one product via
    Stein's form of V) equal Q^T U_c Q and rowsum(M o Q^T V_c) computed directly."""
    _, _, est = two_class
    Q = est.eigenvectors_
    scale = np.abs(est.U_).max()
    for c in range(est.n_classes_):
        np.testing.assert_allclose(est.train_quad_[c], Q.T @ est.U_by_class_[c] @ Q, rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(est.train_lin_[c], (est.M_ * (Q.T @ est.V_by_class_[c])).sum(1), rtol=1e-11,
                                   atol=1e-14)
    for method in ("series", "mc"):
        a = RandomFeaturesScore(30, time=T, seed=0, method=method, noise_samples=20, test_samples=60,
                                score_samples=60, n_batches=3, ridge=0.01)
        gm, data, _ = two_class
        a.fit(data, gm)
        for c in range(2):
            np.testing.assert_allclose(a.train_quad_[c], a.eigenvectors_.T @ a.U_by_class_[c] @ a.eigenvectors_,
                                       rtol=0, atol=1e-12 * np.abs(a.U_).max())
            assert len(a.test_[c].quad) == 3 and len(a.score_[c].lin) == 3


# ------------------------------------------------------------------------------------- closed form


def test_closed_form_matches_expm_of_the_flow(two_class):
    _, _, est = two_class
    p, d = est.n_features, est.dim_
    U, V = est.U_, est.V_
    b_inf = -V.T @ np.linalg.inv(U) / math.sqrt(DELTA)
    for tau in (0.3, 7.0, 250.0):
        b = b_inf @ (np.eye(p) - expm(-2 * DELTA * (d / p) * U * tau))
        np.testing.assert_allclose(est.coefficients(tau), math.sqrt(p) * b, atol=1e-10)
    # tau = inf is the minimiser of the train loss: gradient (1) vanishes
    A = est.coefficients(np.inf)
    grad = 2 * DELTA / (d * p) * A @ U + 2 * math.sqrt(DELTA) / (d * math.sqrt(p)) * V.T
    assert np.abs(grad).max() < 1e-10


def test_ridge_minimiser(two_class):
    _, data, _ = two_class
    est = RandomFeaturesScore(30, time=T, seed=0, ridge=0.05).fit(data)
    A = est.coefficients(np.inf)
    expected = -math.sqrt(30) * est.V_.T @ np.linalg.inv(est.U_ + 0.05 * np.eye(30)) / math.sqrt(DELTA)
    np.testing.assert_allclose(A, expected, atol=1e-10)
    assert "test_loss" not in est.predict_curves([1.0, np.inf])


def test_curves_equal_direct_quadratic_forms(two_class):
    """The vectorised traces (4)-(5) equal the losses of the formed A(tau) (independent formula)."""
    _, _, est = two_class
    tau = np.array([0.05, 2.0, 40.0, 3e3, np.inf])
    cur = est.predict_curves(tau)
    for i, t in enumerate(tau):
        direct = est.losses(est.coefficients(t))
        for key in ("train_loss", "test_loss", "score_error"):
            np.testing.assert_allclose(cur[key][:, i], direct[key], rtol=1e-10)
    np.testing.assert_allclose(cur["train_loss"][:, 0], 1.0, atol=0.05)
    w = est.class_counts_ / est.n_
    np.testing.assert_allclose(cur["train_loss_total"], w @ cur["train_loss"])


def test_train_loss_by_brute_force_noise_average(two_class):
    """Per-class train loss of A(tau) vs averaging || sqrt(Delta) s_A(x_t) + eta ||^2 / d over noise draws."""
    _, data, est = two_class
    tau = 30.0
    A = est.coefficients(tau)
    cur = est.predict_curves([tau])
    rng = np.random.default_rng(11)
    m = 4000
    for c in range(2):
        x0 = data.of_class(c)
        eta = rng.standard_normal((m, *x0.shape))
        xt = signal_scale(T) * x0 + math.sqrt(DELTA) * eta
        s = est.features(xt.reshape(-1, est.dim_)) @ A.T / math.sqrt(est.n_features)
        per_draw = ((math.sqrt(DELTA) * s + eta.reshape(-1, est.dim_)) ** 2).sum(1).reshape(m, -1).mean(1) / est.dim_
        se = per_draw.std() / math.sqrt(m)
        assert abs(per_draw.mean() - cur["train_loss"][c, 0]) < 4 * se


def test_test_loss_and_score_error_by_fresh_samples(two_class):
    """Test loss and score error vs plain sample averages on independent fresh points (within 4 combined SEs)."""
    gm, _, est = two_class
    tau = 30.0
    A = est.coefficients(tau)
    cur = est.predict_curves([tau])
    rng = np.random.default_rng(12)
    m = 20_000
    for c in range(2):
        x0 = gm.sample_class(c, m, rng)
        eta = rng.standard_normal(x0.shape)
        xt = signal_scale(T) * x0 + math.sqrt(DELTA) * eta
        s = est.features(xt) @ A.T / math.sqrt(est.n_features)
        loss = ((math.sqrt(DELTA) * s + eta) ** 2).sum(1) / est.dim_
        err = ((s - gm.score(xt, T)) ** 2).sum(1) / est.dim_
        for key, v in (("test_loss", loss), ("score_error", err)):
            se = math.hypot(v.std() / math.sqrt(m), cur[key + "_se"][c, 0])
            assert abs(v.mean() - cur[key][c, 0]) < 4 * se, (key, c)


def test_seeded_and_validated():
    gm = GaussianMixture([1.0], np.zeros((1, 6)), [1.0])
    a = RandomFeaturesScore(8, seed=3, test_samples=40, score_samples=40).fit(gm, n_samples=10)
    b = RandomFeaturesScore(8, seed=3, test_samples=40, score_samples=40).fit(gm, n_samples=10)
    np.testing.assert_array_equal(a.predict_curves([1.0])["test_loss"], b.predict_curves([1.0])["test_loss"])
    with pytest.raises(ValueError, match="activation"):
        RandomFeaturesScore(8, activation="gelu").fit(gm, n_samples=10)
    with pytest.raises(ValueError, match="n_samples"):
        RandomFeaturesScore(8).fit(gm)
    with pytest.raises(RuntimeError, match="fit"):
        RandomFeaturesScore(8).predict_curves([1.0])
    with pytest.raises(ValueError, match="tau"):
        a.predict_curves([-1.0])


# ------------------------------------------------------------------------------------- Gaussian equivalence


def test_gaussian_equivalent_spectrum_converges_with_d():
    """W1 distance between the eigenvalues of the true tanh-feature U and of its GE counterpart shrinks
    as d = 100, 200, 400 (psi_p = psi_n = 1, t = 0.1, one class of variance 1)."""
    dists = []
    for d in (100, 200, 400):
        gm = GaussianMixture([1.0], np.zeros((1, d)), [1.0])
        data = gm.sample(d, seed=d)
        est = RandomFeaturesScore(d, time=T, seed=d, series_order=6).fit(data)
        u_ge = est.gaussian_equivalent_covariance(data, gm, seed=d)
        dists.append(wasserstein_distance(est.eigenvalues_, np.linalg.eigvalsh(u_ge)))
    assert dists[2] < dists[1] < dists[0]
    assert dists[2] < 0.6 * dists[0]


# ------------------------------------------------------------------------------------- regimes and timescales


def test_precursor_regimes_and_linear_memorization_time():
    """One class of variance 1, psi_p = 32 (precursor-like), psi_n = 2, 4, 8, d = 20, t = 0.1.

    Regimes: between 2 tau_gen and tau_mem/10 the test loss moves less than the train loss falls, and ever less
    so as n grows (the plateau of the precursor's Fig. 5); tau_gen = O(1/Delta_t) stays put; tau_mem ~ n with
    log-log slope within 15% of 1 (measured 0.93 with two seeds per n).
    """
    d = 20
    gm = GaussianMixture([1.0], np.zeros((1, d)), [1.0])
    tau = np.geomspace(1e-2, 1e6, 90)
    mem, ratios = [], []
    for psi_n in (2, 4, 8):
        runs = []
        for seed in range(2):
            est = RandomFeaturesScore(32 * d, time=T, seed=seed, test_samples=300, score_samples=20,
                                      n_batches=2, series_order=8).fit(gm, n_samples=psi_n * d)
            cur = est.predict_curves(np.append(tau, np.inf))
            ts = est.timescales(tau, curves=cur)
            runs.append(ts["tau_mem"][0])
        mem.append(np.mean(runs))
        window = np.log([2 * ts["tau_gen"][0], ts["tau_mem"][0] / 10])
        test = np.interp(window, np.log(tau), cur["test_loss"][0, :-1])
        train = np.interp(window, np.log(tau), cur["train_loss"][0, :-1])
        assert train[1] < train[0]
        ratios.append(abs(test[1] - test[0]) / (train[0] - train[1]))
        assert cur["train_loss"][0, -1] < train[1] - 0.05  # train keeps falling after the window
        assert cur["test_loss"][0, -1] > test[1] + 0.05  # and the test loss rises at memorization
        assert 3 < ts["tau_gen"][0] < 30  # tau_gen = O(1/Delta_t), independent of n
    assert ratios[0] > ratios[1] > ratios[2] and ratios[2] < 0.6, ratios
    slope = np.polyfit(np.log([2, 4, 8]), np.log(mem), 1)[0]
    assert abs(slope - 1) < 0.15, slope


def _two_class_config(**over):
    data = {
        "mixture": {"dim": 16, "weights": [0.5, 0.5], "variances": [0.5, 2.0], "centroid_norms": [0.0, 0.0],
                    "geometry": "antipodal"},
        "model": {"psi_p": 8.0, "psi_n": 2.0, "time": 0.1, "series_order": 8},
        "training": {"tau_min": 0.01, "tau_max": 1e6, "n_times": 60, "test_samples": 200, "score_samples": 200,
                     "seeds": 2, "n_batches": 4},
    }
    for key, value in over.items():
        sec, name = key.split(".")
        data[sec][name] = value
    return Config.from_dict(data)


def test_unequal_variances_give_different_ordered_timescales():
    res = dynamics_from_config(_two_class_config())
    gen = [c["tau_gen"] for c in res["classes"]]
    mem = [c["tau_mem"] for c in res["classes"]]
    assert all(np.isfinite(gen)) and all(np.isfinite(mem))
    # the high-variance class (1) generalizes first; the difference exceeds the seed spread
    assert gen[1] < gen[0]
    spread = max(res["classes"][0]["tau_gen_std"], res["classes"][1]["tau_gen_std"])
    assert gen[0] - gen[1] > 2 * spread
    for cl in res["classes"]:  # per-seed values, their count and spread
        seeds = np.array(cl["tau_gen_seeds"], dtype=float)
        assert cl["tau_gen_reached_seeds"] == len(seeds) == res["seeds"]
        assert np.isclose(cl["tau_gen"], seeds.mean()) and np.isclose(cl["tau_gen_std"], seeds.std(ddof=1))
    assert res["generalization_order"] == [1, 0]
    assert sorted(res["memorization_order"]) == [0, 1]
    assert len(res["tau"]) == 60 and len(res["classes"][0]["train_loss"]) == 60


def test_dynamics_reports_events_outside_the_window_as_not_reached():
    """A window that ends before memorization: tau_mem,c is NOT_REACHED (JSON "not reached"), the classes still
    appear in the memorization order (not reached last, by label), and the phase predictor reads nan."""
    from classdiff.core.readoff import ORDER_KEYS
    from classdiff.core.results import NOT_REACHED, encode
    from classdiff.theory.phase import _times

    cfg = _two_class_config(**{"training.seeds": 1})
    tau = np.geomspace(1e-3, 0.05, 20)
    res = dynamics_from_config(cfg, tau=tau)
    assert [c["tau_mem"] for c in res["classes"]] == [NOT_REACHED, NOT_REACHED]
    assert res[ORDER_KEYS["tau_mem"]] == [0, 1]
    enc = json.loads(json.dumps(encode(res)))["classes"][0]
    assert enc["tau_mem"] == "not reached" and enc["tau_mem_seeds"] == ["not reached"]
    assert enc["tau_mem_reached_seeds"] == 0 and enc["tau_mem_std"] is None
    gen, mem = _times(cfg, tau, "dynamics")
    assert np.all(np.isnan(mem))
    np.testing.assert_array_equal(gen, [c["tau_gen"] if c["tau_gen"] is not NOT_REACHED else np.nan
                                        for c in res["classes"]])


def test_dynamics_command_json_and_figures(tmp_path, capsys):
    from classdiff.commands import cli
    from classdiff.core.config import save_config

    cfg = tmp_path / "c.toml"
    save_config(_two_class_config(**{"training.seeds": 1, "training.n_times": 20}), cfg)
    out = tmp_path / "run"
    assert cli.main(["dynamics", str(cfg), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"tau", "classes"}
    for cl in res["classes"]:
        assert set(cl) >= {"label", "train_loss", "test_loss", "score_error", "tau_gen", "tau_mem"}
        assert len(cl["train_loss"]) == len(res["tau"]) == 20
    for c in range(2):
        assert (out / f"dynamics_class{c}.png").stat().st_size > 1000
        assert (out / f"dynamics_class{c}.pdf").exists()
    with np.load(out / "curves.npz") as z:
        assert z["test_loss"].shape == (2, 20)
    assert json.loads((out / "results.json").read_text())["classes"][0]["label"] == 0
