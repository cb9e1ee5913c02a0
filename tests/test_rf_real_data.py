"""Random features on real pixels: closed-form per-class dynamics against real gradient-descent steps and against
a Monte-Carlo test loss with real noise draws on the held-out images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from classdiff.commands.cli import main
from classdiff.core.config import Config
from classdiff.data.fashion_mnist import find_fashion_mnist, to_model_space, write_synthetic_fashion_mnist
from classdiff.data.image_sets import ImageSet, load_image_set
from classdiff.data.process import diffuse
from classdiff.rf.model import RandomFeaturesScore
from classdiff.rf.real_data import real_data_dynamics, real_subset


@pytest.fixture(scope="module")
def pixels(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    """Fashion-MNIST training images (the real ones when installed, else the synthetic stand-in), pooled 2x2."""
    if find_fashion_mnist() is not None:
        return load_image_set("fashion-mnist:train").pooled(2)
    folder = write_synthetic_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=600, n_test=100)
    from classdiff.data.fashion_mnist import load_fashion_mnist

    data = load_fashion_mnist(folder, checksums=None)
    return ImageSet(to_model_space(data.train_images), data.train_labels.astype(np.int64), "synthetic").pooled(2)


def _config() -> Config:
    return Config().with_overrides({
        "model.psi_p": 1.0, "model.time": 0.1, "training.n_times": 30, "training.tau_min": 0.1,
        "training.tau_max": 1e4, "training.n_batches": 4, "training.seeds": 1, "training.optimizer": "gd",
        "training.noise": "moments", "training.learning_rate": 0.9, "training.max_steps": 2000,
        "training.device": "cpu"})


def test_closed_form_matches_gradient_descent_on_real_pixels(pixels: ImageSet) -> None:
    res = real_data_dynamics(pixels.flat(), pixels.y, [1, 8], [90, 30], _config(), test_per_class=160,
                             iterative=True)
    assert res["d"] == 196 and res["p"] == 196 and res["n"] == 120 and "score_error" not in res["classes"][0]
    it = res["iterative"]
    tau = np.asarray(res["tau"])
    # GD runs past every class's tau_mem (the gap has opened) before the comparison ends
    assert it["tau"][-1] > max(float(cl["tau_mem"]) for cl in res["classes"])
    for k, cl in enumerate(res["classes"]):
        for key in ("train_loss", "test_loss"):
            exact = np.interp(np.log(it["tau"]), np.log(tau), np.asarray(cl[key]))
            # log-interpolating the closed form between its grid points costs < 0.5 %; the tolerance is 3 %
            np.testing.assert_allclose(np.asarray(it[key][k]), exact, rtol=0.03)
        assert cl["train_loss_inf"] < cl["test_loss_inf"]  # a finite training set is memorized at tau = inf


def test_held_out_test_loss_against_noise_draws(pixels: ImageSet) -> None:
    """The test moments of held-out images against the plain average of ||sqrt(D) s_A(x_t) + eta||^2 / d over
    real noise draws, at the trained A(tau) of the closed form."""
    train, test = real_subset(pixels.flat(), pixels.y, [1, 8], [90, 30], 160, seed=0)
    est = RandomFeaturesScore(n_features=196, time=0.1, seed=0, n_batches=4).fit(train, test_data=test)
    tau = 50.0
    curve = est.predict_curves([tau])
    A = est.coefficients(tau)
    rng = np.random.default_rng(3)
    sq = math.sqrt(est.delta_)
    for c in range(2):
        x0 = np.repeat(test.x[test.labels == c], 40, axis=0)
        xt, eta = diffuse(x0, 0.1, rng)
        per = ((sq * est.features(xt) @ A.T / math.sqrt(196) + eta) ** 2).sum(1) / 196
        mc, se = per.mean(), per.std(ddof=1) / math.sqrt(per.size)
        assert abs(curve["test_loss"][c, 0] - mc) < 4 * se + 1e-3
        assert curve["test_loss"][c, 0] == pytest.approx(est.losses(A)["test_loss"][c], rel=1e-9)


def test_real_subset_is_disjoint_seeded_and_checked(pixels: ImageSet) -> None:
    a_tr, a_te = real_subset(pixels.flat(), pixels.y, [3, 5], [10, 4], 6, seed=1)
    b_tr, _ = real_subset(pixels.flat(), pixels.y, [3, 5], [10, 4], 6, seed=1)
    np.testing.assert_array_equal(a_tr.x, b_tr.x)
    assert a_tr.counts.tolist() == [10, 4] and a_te.counts.tolist() == [6, 6]
    rows_tr = {r.tobytes() for r in a_tr.x}
    assert not any(r.tobytes() in rows_tr for r in a_te.x)
    with pytest.raises(ValueError, match="class 3: .* fewer than"):
        real_subset(pixels.flat(), pixels.y, [3], [10**6], 1)
    with pytest.raises(ValueError, match="appears twice"):
        real_subset(pixels.flat(), pixels.y, [3, 3], [1, 1], 1)


def test_dynamics_command_on_an_npz(tmp_path: Path, pixels: ImageSet, capsys: pytest.CaptureFixture[str]) -> None:
    from classdiff.core.io import read_json
    from classdiff.core.results import decode
    from classdiff.core.seed_statistics import interval_text, order_text

    keep = np.isin(pixels.y, [1, 8])
    np.savez(tmp_path / "two.npz", x=pixels.x[keep][:400], y=pixels.y[keep][:400])
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["dynamics", "--data", str(tmp_path / "two.npz"), "--classes", "8,1", "--counts", "30,10",
                 "--test-per-class", "40", "--seeds", "2", "--out", str(out)]) == 0
    assert (out / "dynamics_class0.png").is_file() and (out / "curves.npz").is_file()
    assert "score_error" not in np.load(out / "curves.npz").files
    # the text table shows each class's intervals and the interval orders that the JSON holds
    printed = capsys.readouterr().out
    res = decode(read_json(out / "results.json"))
    for cl in res["classes"]:
        assert f"class {cl['label']} (n_c = {cl['n_train']}," in printed
        for key in ("tau_gen", "tau_mem"):
            assert f"{key:<8} {interval_text(cl[f'{key}_summary'])}  (" in printed
    for key, o in res["orders_with_intervals"].items():
        assert f"order by {key}: {order_text(o)}" in printed
    assert main(["dynamics", "--data", str(tmp_path / "two.npz"), "--classes", "8", "--out",
                 str(tmp_path / "bad")]) == 1


def test_seed_summaries_and_pooled_readoff(pixels: ImageSet) -> None:
    """Over 3 seeds: each class's interval holds its geometric mean and lies inside the seeds' range, the pooled
    read-off (seed-averaged curves) equals a read-off of the averaged curves computed here, and the interval order
    is either resolved with disjoint intervals or says which neighbours tie."""
    from classdiff.core.readoff import memorization_time

    cfg = _config().with_overrides({"training.seeds": 3})
    res = real_data_dynamics(pixels.flat(), pixels.y, [1, 8], [60, 20], cfg, test_per_class=100)
    for cl in res["classes"]:
        s = cl["tau_mem_summary"]
        seeds = np.array(cl["tau_mem_seeds"], dtype=float)
        assert s["n_seeds"] == 3 and s["n_reached"] == 3
        assert s["estimate"] == pytest.approx(float(np.exp(np.log(seeds).mean())), rel=1e-12)
        lo, hi = s["interval"]
        assert lo < s["estimate"] < hi and lo > 0
    # the pooled read-off against an independent re-run of the three seeds' closed forms
    curves = []
    for seed in range(3):
        one = real_data_dynamics(pixels.flat(), pixels.y, [1, 8], [60, 20],
                                 cfg.with_overrides({"training.seeds": 1, "model.seed": cfg.model.seed + seed}),
                                 test_per_class=100)
        curves.append([(np.asarray(c["train_loss"]), np.asarray(c["test_loss"]),
                        c["test_loss_inf"] - c["train_loss_inf"]) for c in one["classes"]])
    for k, cl in enumerate(res["classes"]):
        train = np.mean([c[k][0] for c in curves], axis=0)
        test = np.mean([c[k][1] for c in curves], axis=0)
        final = np.mean([c[k][2] for c in curves])
        expected = float(memorization_time(res["tau"], train, test, cfg.training.mem_fraction, final_gap=final))
        assert float(cl["tau_mem_pooled"]) == pytest.approx(expected, rel=1e-9)
    order = res["orders_with_intervals"]["tau_mem"]
    if order["resolved"]:
        (a, b) = [order["intervals"][lab] for lab in order["order"]]
        assert a[1] < b[0]
    else:
        assert order["order"] == "not resolved" and order["ties"]
