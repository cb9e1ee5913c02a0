"""Iterative torch trainer (rf_training.py) against the closed-form gradient flow of rf_model.py."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from classdiff.data.mixture import GaussianMixture  # noqa: E402
from classdiff.rf.model import RandomFeaturesScore  # noqa: E402
from classdiff.rf.training import gd_learning_rate, train_random_features  # noqa: E402

TAU = np.geomspace(0.1, 300, 12)
KEYS = ("train_loss", "test_loss", "score_error")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Thousands of tiny steps: one intra-op thread is ~10x faster than a pool on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def setup():
    d = 10
    gm = GaussianMixture([0.6, 0.4], np.vstack([0.5 * np.ones(d), -0.5 * np.ones(d)]), [0.5, 2.0])
    data = gm.sample(16, seed=2)
    est = RandomFeaturesScore(20, time=0.1, seed=1, test_samples=200, score_samples=200, n_batches=2).fit(data, gm)
    return gm, data, est


def _max_rel(hist, est):
    cur = est.predict_curves(hist.tau)
    return {k: float(np.abs(getattr(hist, k) / cur[k] - 1).max()) for k in KEYS}


def test_gd_on_the_moment_loss_matches_closed_form_within_2_percent(setup):
    _, data, est = setup
    hist = train_random_features(est, data, TAU, learning_rate=gd_learning_rate(est, 0.05), device="cpu")
    assert hist.tau[-1] == pytest.approx(300, rel=1e-3)
    err = _max_rel(hist, est)
    assert max(err.values()) < 0.02, err
    # and the curves move: the per-class train loss falls by more than 10% over the run
    assert np.all(hist.train_loss[:, -1] < 0.9 * hist.train_loss[:, 0])


def test_gd_with_fixed_noise_draws_matches_mc_closed_form(setup):
    gm, data, _ = setup
    est = RandomFeaturesScore(20, time=0.1, seed=1, method="mc", noise_samples=16, test_samples=200,
                              score_samples=200, n_batches=2).fit(data, gm)
    hist = train_random_features(est, data, TAU, noise="fixed", learning_rate=gd_learning_rate(est, 0.05),
                                 device="cpu")
    err = _max_rel(hist, est)
    assert max(err.values()) < 0.02, err


def test_fresh_noise_gd_converges_to_the_same_curves(setup):
    """Precursor protocol (one fresh draw per point per step): close to the noise-averaged flow, not equal."""
    _, data, est = setup
    hist = train_random_features(est, data, TAU, noise="fresh", learning_rate=gd_learning_rate(est, 0.01),
                                 device="cpu", seed=3)
    err = _max_rel(hist, est)
    assert err["train_loss"] < 0.03 and err["test_loss"] < 0.03, err
    again = train_random_features(est, data, TAU, noise="fresh", learning_rate=gd_learning_rate(est, 0.01),
                                  device="cpu", seed=3)
    np.testing.assert_array_equal(again.train_loss, hist.train_loss)


def test_adam_runs_and_lowers_every_class_loss(setup):
    _, data, est = setup
    hist = train_random_features(est, data, [1e-3, 1e-2, 1e-1], optimizer="adam", learning_rate=1e-2,
                                 device="cpu")
    assert hist.steps[-1] == 1000
    assert np.all(np.isfinite(hist.train_loss))
    assert np.all(hist.train_loss[:, -1] < hist.train_loss[:, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(setup):
    _, data, est = setup
    lr = gd_learning_rate(est, 0.05)
    a = train_random_features(est, data, TAU[:4], learning_rate=lr, device="cpu")
    b = train_random_features(est, data, TAU[:4], learning_rate=lr, device="cuda")
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-10)


def test_errors_name_the_argument(setup):
    _, data, est = setup
    with pytest.raises(ValueError, match="optimizer"):
        train_random_features(est, data, TAU, optimizer="sgd")
    with pytest.raises(ValueError, match="noise"):
        train_random_features(est, data, TAU, noise="none")
    with pytest.raises(ValueError, match="max_steps"):
        train_random_features(est, data, [1e6], learning_rate=1e-3, max_steps=100)
    with pytest.raises(ValueError, match="fraction"):
        gd_learning_rate(est, 1.5)


def test_benchmark_ratio_rows_for_run_all():
    """benchmarks/bench_rf_dynamics.ratios() at toy sizes: the keys run_all.py reads and consistent ratios."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import bench_rf_dynamics as bench
    finally:
        sys.path.pop(0)
    rows = bench.ratios({"gd": {"d": 8, "p": 16, "n": 12, "gd_prefix_steps": 20, "repeats": 1},
                         "memory": {"d": 8, "p": 16, "n_series": 6, "n_mc": 6, "draws": 4}})
    assert len(rows) == 2
    for r in rows:
        assert {"benchmark", "ours", "reference", "unit", "ratio", "target"} <= set(r)
        assert r["ours"] > 0 and r["reference"] > 0 and np.isfinite(r["ratio"])
    speed, memory = rows
    assert speed["ratio"] == pytest.approx(speed["reference"] / speed["ours"] / 1000)
    assert memory["ratio"] == pytest.approx(2.0 / memory["ours"])
