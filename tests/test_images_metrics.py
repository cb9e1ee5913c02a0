"""Memorization fraction (nearest neighbours, per-class attribution, bootstrap) and quality metrics."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.linalg

from classdiff.images.memorization import bootstrap_interval, memorization_by_class, nearest_two
from classdiff.images.quality import class_histogram, frechet_by_class, frechet_distance

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _training_set(rng, n_per=(30, 10), d=784):
    x = rng.uniform(-1, 1, size=(sum(n_per), d)).astype(np.float32)
    y = np.repeat([3, 6], n_per)
    return x, y


def test_nearest_two_matches_brute_force():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(300, 20))
    q = rng.normal(size=(50, 20))
    d1, d2, i1, i2 = nearest_two(q, r, chunk=7)
    full = np.linalg.norm(q[:, None, :] - r[None, :, :], axis=2)
    order = np.argsort(full, axis=1)
    np.testing.assert_array_equal(i1, order[:, 0])
    np.testing.assert_array_equal(i2, order[:, 1])
    np.testing.assert_allclose(d1, full[np.arange(50), order[:, 0]], rtol=1e-6)
    np.testing.assert_allclose(d2, full[np.arange(50), order[:, 1]], rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu not installed (optional)")
def test_faiss_backend_agrees():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(500, 30)).astype(np.float32)
    q = rng.normal(size=(80, 30)).astype(np.float32)
    a = nearest_two(q, r, backend="torch")
    b = nearest_two(q, r, backend="faiss")
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_training_images_plus_tiny_noise_are_memorized_test_images_are_not():
    rng = np.random.default_rng(2)
    x, y = _training_set(rng)
    copies = x[rng.integers(0, len(x), 64)] + 1e-3 * rng.normal(size=(64, x.shape[1])).astype(np.float32)
    res = memorization_by_class(copies, x, y, n_bootstrap=200)
    assert res["f_mem"] == 1.0
    assert res["f_mem_ci"] == [1.0, 1.0]
    fresh = rng.uniform(-1, 1, size=(64, x.shape[1])).astype(np.float32)  # independent "test images"
    res = memorization_by_class(fresh, x, y, n_bootstrap=200)
    assert res["f_mem"] == 0.0
    assert all(c["f_mem"] in (0.0, None) for c in res["classes"])


def test_per_class_attribution_exact_on_constructed_case():
    rng = np.random.default_rng(3)
    x, y = _training_set(rng)  # class 3: rows 0..29, class 6: rows 30..39
    d = x.shape[1]
    # class 3: 6 memorized copies + 4 novel samples near a class-3 image but halfway to another class-3 image
    mem3 = x[[0, 1, 2, 3, 4, 5]] + 1e-3
    novel3 = 0.5 * (x[[6, 7, 8, 9]] + x[[10, 11, 12, 13]])
    # class 6: 2 memorized copies + 8 blends (not memorized)
    mem6 = x[[30, 31]] - 1e-3
    novel6 = 0.5 * (x[32:40] + x[[31, 30, 39, 38, 37, 36, 35, 34]])
    samples = np.concatenate([mem3, novel3, mem6, novel6]).astype(np.float32)
    clf_labels = np.array([3] * 10 + [6] * 10)
    clf_labels[0] = 6  # the classifier disagrees on one memorized class-3 sample
    res = memorization_by_class(samples, x, y, classifier_labels=clf_labels, n_bootstrap=300, seed=1)
    by = {c["label"]: c for c in res["classes"]}
    assert by[3]["n_nearest"] == 10 and by[6]["n_nearest"] == 10
    assert by[3]["f_mem"] == pytest.approx(6 / 10)
    assert by[6]["f_mem"] == pytest.approx(2 / 10)
    assert by[3]["share"] == pytest.approx(6 / 20) and by[6]["share"] == pytest.approx(2 / 20)
    assert res["f_mem"] == pytest.approx(8 / 20)
    assert by[3]["n_classifier"] == 9 and by[6]["n_classifier"] == 11
    assert by[3]["f_mem_classifier"] == pytest.approx(5 / 9)
    assert by[6]["f_mem_classifier"] == pytest.approx(3 / 11)
    lo, hi = by[3]["f_mem_ci"]
    assert lo <= 0.6 <= hi and hi - lo > 0.1
    assert d == 784


def test_memorization_threshold_is_strict_ratio():
    x = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 30.0]])
    y = np.array([0, 1, 1])
    s = np.array([[0.75, 0.0]])  # d1 = 0.75, d2 = 2.25: ratio exactly 1/3 -> not memorized
    assert memorization_by_class(s, x, y, n_bootstrap=0)["f_mem"] == 0.0
    s = np.array([[0.7, 0.0]])
    assert memorization_by_class(s, x, y, n_bootstrap=0)["f_mem"] == 1.0


def test_bootstrap_interval_of_a_proportion():
    rng = np.random.default_rng(4)
    v = (rng.random(2000) < 0.3).astype(float)
    std, lo, hi = bootstrap_interval(v, None, 2000, np.random.default_rng(0))
    se = np.sqrt(0.3 * 0.7 / 2000)
    assert std == pytest.approx(se, rel=0.1)
    assert lo < v.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(5)
    # commuting (diagonal) covariances: FD = |dmu|^2 + sum (sqrt a - sqrt b)^2
    a, b = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    exact = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(exact, rel=1e-12)
    # rotating both Gaussians by the same orthogonal matrix leaves FD unchanged
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert frechet_distance(q @ m1, q @ np.diag(a) @ q.T, q @ m2, q @ np.diag(b) @ q.T) == pytest.approx(exact, rel=1e-9)
    # general (non-commuting) case against scipy's sqrtm of S1 S2
    g1, g2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = g1 @ g1.T + 0.1 * np.eye(6), g2 @ g2.T + 0.1 * np.eye(6)
    ref = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_by_class_and_histogram():
    rng = np.random.default_rng(6)
    real = np.concatenate([rng.normal(0, 1, (4000, 2)), rng.normal(3, 2, (4000, 2))])
    real_lab = np.repeat([0, 1], 4000)
    samp = np.concatenate([rng.normal(0, 1, (4000, 2)), rng.normal(4, 2, (4000, 2))])
    samp_lab = np.repeat([0, 1], 4000)
    fd = frechet_by_class(samp, samp_lab, real, real_lab, classes=(0, 1, 2))
    assert fd[0] == pytest.approx(0.0, abs=0.01)
    assert fd[1] == pytest.approx(2.0, abs=0.15)  # |dmu|^2 = 2, equal covariances
    assert fd[2] is None
    assert class_histogram([0, 0, 1, 5], (0, 1)) == [0.5, 0.25]
