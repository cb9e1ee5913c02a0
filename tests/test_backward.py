"""Backward integrators and the cloning machinery (classdiff.data.backward), against independent computations."""

import numpy as np
import pytest

from classdiff.data.backward import (
    MixtureScore,
    agreement_by_class,
    bootstrap_agreement,
    cloning_experiment,
    integrate,
    mixture_labeller,
    nearest_point_labeller,
    sample_initial,
    snap_to_grid,
    time_grid,
)
from classdiff.data.mixture import GaussianMixture, empirical_score, make_centroids
from classdiff.data.process import noise_variance, signal_scale

torch = pytest.importorskip("torch")


def _mixtures():
    d = 40
    rng = np.random.default_rng(3)
    yield GaussianMixture([0.5, 0.5], make_centroids(d, [1.0, 1.0], "antipodal", 1), [1.0, 1.0])
    yield GaussianMixture([0.8, 0.2], make_centroids(d, [1.0, 0.5], "antipodal", 2), [0.5, 1.5])
    yield GaussianMixture([0.2, 0.3, 0.5], make_centroids(d, [1.0, 0.7, 0.3], "orthogonal", 3), [0.3, 1.0, 2.0])
    yield GaussianMixture([0.6, 0.4], rng.standard_normal((2, d)), [1.0, 1.0])


@pytest.mark.parametrize("gm", list(_mixtures()))
@pytest.mark.parametrize("t", [0.02, 0.5, 3.0])
def test_mixture_score_matches_reference(gm, t):
    x = np.random.default_rng(0).standard_normal((64, gm.dim)) * 1.5
    ref = gm.score(x, t)
    fast = MixtureScore(gm)
    np.testing.assert_allclose(fast(x, t), ref, rtol=0, atol=1e-10)
    from classdiff.images.backward_torch import TorchBackend

    got = MixtureScore(gm, backend=TorchBackend(0, "cpu", "float64"))(torch.from_numpy(x), t).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)
    shift, coef = fast.split(x, t, factor=0.3)
    np.testing.assert_allclose(shift / 0.3 - coef[:, None] * x, ref, rtol=0, atol=1e-10)


def test_time_grid_and_snapping():
    g = time_grid(2.0, 0.0, 4)
    np.testing.assert_allclose(g, [2.0, 1.5, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(snap_to_grid([1.4, 0.1, 1.6], g), [1, 4])
    with pytest.raises(ValueError, match="t_max"):
        time_grid(0.5, 1.0, 10)
    with pytest.raises(ValueError, match="n_steps"):
        time_grid(1.0, 0.0, 0)


@pytest.mark.parametrize("method", ["euler_maruyama", "heun"])
def test_single_gaussian_reproduces_forward_marginals(method):
    """Moment test: with the exact score of N(mu, sigma^2 I) the backward SDE / ODE keeps x_t ~ N(e^{-t} mu,
    Gamma_t^2 I). 4000 x 48 coordinates: the sampling error of the mean of a coordinate average is ~1e-3."""
    d, n, sigma2 = 48, 4000, 0.6
    mu = make_centroids(d, [0.8], "random", 5)
    gm = GaussianMixture([1.0], mu, [sigma2])
    grid = time_grid(3.0, 0.01, 400)
    x0 = sample_initial(gm, n, 3.0, seed=4)
    rec = [100, 200, 300, 400]
    xf, snaps = integrate(gm, x0, grid, method, seed=7, record=rec)
    np.testing.assert_array_equal(snaps[400], xf)
    u = mu[0] / np.linalg.norm(mu[0])
    for k in rec:
        t = grid[k]
        x = snaps[k]
        a, g2 = signal_scale(t), sigma2 * signal_scale(t) ** 2 + noise_variance(t)
        resid = x - a * mu[0]
        # mean along the centroid and on average over coordinates; variance per coordinate and along u
        assert abs(resid.mean()) < 4 * np.sqrt(g2 / (n * d)) + 0.01
        assert abs((resid @ u).mean()) < 4 * np.sqrt(g2 / n) + 0.02
        assert abs(resid.var(axis=0).mean() / g2 - 1) < 0.02
        assert abs((resid @ u).var() / g2 - 1) < 0.1


def test_heun_is_second_order_on_a_gaussian():
    """Probability-flow ODE for one Gaussian is linear: x_t = e^{-t} mu + (Gamma_t / Gamma_T)(x_T - e^{-T} mu).
    Heun's error shrinks ~4x when the step halves; Euler's ~2x."""
    d = 8
    mu = make_centroids(d, [1.0], "random", 0)
    gm = GaussianMixture([1.0], mu, [0.3])
    x0 = sample_initial(gm, 16, 2.0, seed=1)
    g = lambda t: np.sqrt(0.3 * np.exp(-2 * t) + noise_variance(t))  # noqa: E731
    exact = np.exp(-0.1) * mu[0] + (g(0.1) / g(2.0)) * (x0 - np.exp(-2.0) * mu[0])
    errs = {}
    for method in ("euler", "heun"):
        errs[method] = [np.abs(integrate(gm, x0, time_grid(2.0, 0.1, n), method)[0] - exact).max() for n in (40, 80)]
    assert 3.5 < errs["heun"][0] / errs["heun"][1] < 4.5
    assert 1.7 < errs["euler"][0] / errs["euler"][1] < 2.3
    assert errs["heun"][1] < 1e-3


def test_agreement_matches_direct_count():
    rng = np.random.default_rng(0)
    orig = rng.integers(0, 3, 500)
    clones = np.where(rng.random((4, 500)) < 0.7, orig, rng.integers(0, 3, (4, 500)))
    phi, ends = agreement_by_class(orig, clones, 3)
    for b in range(4):
        for c in range(3):
            both = np.sum((orig == c) & (clones[b] == c))
            assert phi[b, c] == pytest.approx(2 * both / (np.sum(orig == c) + np.sum(clones[b] == c)), abs=1e-14)
            assert ends[b, c] == np.sum(orig == c) + np.sum(clones[b] == c)
    lo, hi = bootstrap_agreement(orig, clones, 3, n_boot=200, seed=1)
    assert np.all(lo <= phi) and np.all(phi <= hi) and np.all(hi - lo < 0.2)
    again = bootstrap_agreement(orig, clones, 3, n_boot=200, seed=1)
    np.testing.assert_array_equal(lo, again[0])
    np.testing.assert_array_equal(hi, again[1])


def test_nearest_point_labeller_matches_brute_force():
    rng = np.random.default_rng(1)
    pts, lab = rng.standard_normal((30, 5)), rng.integers(0, 2, 30)
    x = rng.standard_normal((100, 5))
    brute = np.linalg.norm(x[:, None] - pts[None], axis=2).argmin(1)
    np.testing.assert_array_equal(nearest_point_labeller(pts, chunk=7)(x), brute)
    np.testing.assert_array_equal(nearest_point_labeller(pts, lab)(torch.from_numpy(x)), lab[brute])


def _small_cloning(seed, backend="numpy", dtype="float64"):
    gm = GaussianMixture([0.7, 0.3], make_centroids(32, [1.0, 1.0], "antipodal", 0), [1.0, 1.0])
    grid = time_grid(4.0, 0.01, 80)
    return cloning_experiment(gm, mixture_labeller(gm), sample_initial(gm, 200, 4.0, seed), grid,
                              [3.0, 2.0, 1.0], seed=seed, backend=backend, dtype=dtype, device="cpu")


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds latency on a loaded machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_seeds_reproduce_and_backends_agree(one_torch_thread):
    a, b, c = _small_cloning(3), _small_cloning(3), _small_cloning(4)
    np.testing.assert_array_equal(a.clones["class"], b.clones["class"])
    np.testing.assert_array_equal(a.original["class"], b.original["class"])
    assert not np.array_equal(a.clones["class"], c.clones["class"])
    t = _small_cloning(3, "torch", "float64")  # same noise streams on CPU in float64
    assert np.mean(t.clones["class"] == a.clones["class"]) > 0.99
    assert (_small_cloning(3, "torch", "float32").clones["class"].shape == (3, 200))
    h = 3.99 / 80
    assert np.all(np.abs(a.branch_times - [3.0, 2.0, 1.0]) <= h / 2 + 1e-12)
    assert np.all(np.isin(a.branch_times, time_grid(4.0, 0.01, 80)))


def test_branch_time_results_do_not_depend_on_other_branches():
    gm = GaussianMixture([0.5, 0.5], make_centroids(16, [1.0, 1.0], "antipodal", 0), [1.0, 1.0])
    grid = time_grid(3.0, 0.01, 60)
    x0 = sample_initial(gm, 100, 3.0, 0)
    lab = mixture_labeller(gm)
    one = cloning_experiment(gm, lab, x0, grid, [2.0], seed=1)
    two = cloning_experiment(gm, lab, x0, grid, [2.0, 1.0], seed=1)
    # branching at 2.0 is stream 1 in both runs
    np.testing.assert_array_equal(one.clones["class"][0], two.clones["class"][0])
    np.testing.assert_array_equal(one.original["class"], two.original["class"])


def test_cloning_with_empirical_score_shows_collapse():
    """Any callable score works: with the empirical score of n points, clones branched well below the collapse
    time t_C end on the same training point; branched well above it they mostly do not."""
    d, n = 16, 20
    gm = GaussianMixture([0.5, 0.5], make_centroids(d, [1.0, 1.0], "antipodal", 0), [1.0, 1.0])
    train = gm.sample(n, seed=0)
    score = lambda x, t: empirical_score(x, train.x, t)  # noqa: E731
    grid = time_grid(3.0, 0.005, 150)
    x0 = sample_initial(gm, 300, 3.0, 1)
    res = cloning_experiment(score, {"class": nearest_point_labeller(train.x, train.labels),
                                     "point": nearest_point_labeller(train.x)}, x0, grid, [2.5, 0.05], seed=2)
    same_point = (res.clones["point"] == res.original["point"][None, :]).mean(1)
    assert same_point[1] > 0.95  # t = 0.05 << t_C ~ 0.58
    assert same_point[0] < 0.5   # t = 2.5 >> t_C
    phi, _ = agreement_by_class(res.original["class"], res.clones["class"], 2)
    assert phi[1].min() > 0.95


def test_errors_name_the_argument():
    gm = GaussianMixture([1.0], np.zeros((1, 4)), [1.0])
    with pytest.raises(ValueError, match="method"):
        integrate(gm, np.zeros((2, 4)), time_grid(1, 0, 2), method="rk4")
    with pytest.raises(ValueError, match="backend"):
        integrate(gm, np.zeros((2, 4)), time_grid(1, 0, 2), backend="jax")
    with pytest.raises(ValueError, match="times"):
        integrate(gm, np.zeros((2, 4)), [0.0, 1.0])
    with pytest.raises(TypeError, match="score"):
        integrate(3.0, np.zeros((2, 4)), time_grid(1, 0, 2))


def test_fused_mixture_path_equals_generic_callable_path():
    """The fused Euler–Maruyama update for the exact score equals the generic one with gm.score (same noise)."""
    gm = GaussianMixture([0.3, 0.7], make_centroids(20, [1.0, 0.8], "random", 4), [0.5, 1.2])
    x0 = sample_initial(gm, 50, 3.0, 2)
    grid = time_grid(3.0, 0.05, 60)
    fused = integrate(gm, x0, grid, seed=5)[0]
    generic = integrate(lambda x, t: gm.score(x, t), x0, grid, seed=5)[0]
    np.testing.assert_allclose(fused, generic, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend,dtype,atol", [("numpy", "float64", 1e-10), ("torch", "float64", 1e-10),
                                                ("torch", "float32", 2e-4)])
def test_fused_path_equals_generic_path_for_every_backend_and_rank(backend, dtype, atol, one_torch_thread):
    """Fused exact-mixture steps (rank r = 5 > 3: one gemm; unequal variances: |x|^2 term) equal the generic
    path with the reference score, with the same per-block noise, on more than one block of rows."""
    gm = GaussianMixture([0.1, 0.2, 0.3, 0.15, 0.25], make_centroids(12, [1.0, 0.8, 0.6, 1.2, 0.4], "orthogonal", 0),
                         [0.5, 1.0, 1.5, 0.8, 2.0])
    x0 = sample_initial(gm, 300, 2.0, 1)
    grid = time_grid(2.0, 0.05, 30)
    kw = dict(seed=3, backend=backend, dtype=dtype, device="cpu", threads=2)
    fused = integrate(gm, x0, grid, **kw)[0]

    def ref(x, t):
        arr = x.detach().cpu().numpy().astype(np.float64) if hasattr(x, "detach") else x
        out = gm.score(arr, t)
        return torch.as_tensor(out, dtype=x.dtype) if hasattr(x, "detach") else out

    generic = integrate(ref, x0, grid, **kw)[0]
    np.testing.assert_allclose(fused, generic, rtol=0, atol=atol)


@pytest.mark.parametrize("backend,dtype", [("numpy", "float64"), ("torch", "float32")])
def test_results_do_not_depend_on_threads_and_follow_the_block_layout(backend, dtype, one_torch_thread):
    """Seed layout: rows are cut into blocks of NOISE_BLOCK, each with its own stream, so threads change
    nothing and the first block's trajectories are the same whatever other rows are simulated."""
    from classdiff.data.backward import NOISE_BLOCK, _openblas_thread_setters

    gm = GaussianMixture([0.6, 0.4], make_centroids(8, [1.0, 1.0], "antipodal", 0), [1.0, 1.0])
    n = 2 * NOISE_BLOCK + 37
    x0 = sample_initial(gm, n, 3.0, 0)
    grid = time_grid(3.0, 0.01, 40)
    kw = dict(seed=9, backend=backend, dtype=dtype, device="cpu", record=[0, 20, 40])
    one, snaps1 = integrate(gm, x0, grid, threads=1, **kw)
    blas = [get() for get, _ in _openblas_thread_setters()]
    torch_threads = torch.get_num_threads()
    three, snaps3 = integrate(gm, x0, grid, threads=3, **kw)
    assert [get() for get, _ in _openblas_thread_setters()] == blas  # the caller's settings are restored
    assert torch.get_num_threads() == torch_threads
    np.testing.assert_array_equal(one, three)
    for k in (0, 20, 40):
        np.testing.assert_array_equal(snaps1[k], snaps3[k])
    np.testing.assert_array_equal(snaps1[40], one)
    np.testing.assert_allclose(snaps1[0], x0, rtol=1e-6, atol=0)
    head = integrate(gm, x0[:NOISE_BLOCK], grid, threads=1, **kw)[0]
    np.testing.assert_array_equal(head, one[:NOISE_BLOCK])
    lab = mixture_labeller(gm)
    c1 = cloning_experiment(gm, lab, x0, grid, [2.0, 1.0], seed=2, backend=backend, dtype=dtype, device="cpu",
                            threads=1)
    c2 = cloning_experiment(gm, lab, x0, grid, [2.0, 1.0], seed=2, backend=backend, dtype=dtype, device="cpu",
                            threads=2)
    np.testing.assert_array_equal(c1.clones["class"], c2.clones["class"])
    np.testing.assert_array_equal(c1.original["class"], c2.original["class"])
    with pytest.raises(ValueError, match="threads"):
        integrate(gm, x0, grid, threads=0)


def test_box_muller_float32_noise_is_standard_normal():
    from scipy import stats

    from classdiff.data.backward import BoxMuller32

    gen = BoxMuller32(np.random.SeedSequence(0))
    z = np.empty(400_001, dtype=np.float32)
    gen.fill(z, 1.0)
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01
    assert abs(stats.kurtosis(z)) < 0.05 and np.abs(z).max() <= 5.8
    assert stats.kstest(z.astype(np.float64), "norm").pvalue > 1e-3
    again = np.empty_like(z)
    BoxMuller32(np.random.SeedSequence(0)).fill(again, 2.0)
    np.testing.assert_allclose(again, 2.0 * z, rtol=1e-6, atol=0)


def test_whole_array_fused_path_matches_block_path(monkeypatch, one_torch_thread):
    """The GPU code path (fused step on the whole array, noise still drawn block by block), run on the CPU,
    gives the block-by-block result up to float32 rounding."""
    from classdiff.data import backward

    gm = GaussianMixture([0.7, 0.3], make_centroids(16, [1.0, 0.7], "random", 1), [0.6, 1.4])
    x0 = sample_initial(gm, 600, 3.0, 2)
    grid = time_grid(3.0, 0.02, 40)
    kw = dict(seed=4, backend="torch", dtype="float32", device="cpu", threads=2, record=[10])
    blocks, snaps_b = integrate(gm, x0, grid, **kw)
    init = backward._Stepper.__init__

    def whole_array(self, *args):
        init(self, *args)
        self.blocked = False

    monkeypatch.setattr(backward._Stepper, "__init__", whole_array)
    whole, snaps_w = integrate(gm, x0, grid, **kw)
    np.testing.assert_allclose(whole, blocks, rtol=0, atol=1e-3)
    np.testing.assert_allclose(snaps_w[10], snaps_b[10], rtol=0, atol=1e-3)
    res = cloning_experiment(gm, mixture_labeller(gm), x0, grid, [2.0], seed=1, backend="torch", dtype="float32",
                             device="cpu")
    assert res.clones["class"].shape == (1, 600)


def test_torch_back_end_is_found_by_name_and_numpy_arrays_need_no_back_end():
    """backend="torch" resolves to classdiff.images.backward_torch (entry point / registry); a MixtureScore
    given a tensor without its back end says what to pass; unknown names list the allowed ones."""
    import torch

    from classdiff.data.backward import _backend
    from classdiff.images.backward_torch import TorchBackend

    assert isinstance(_backend("torch", 0, "cpu", "float32"), TorchBackend)
    with pytest.raises(ValueError, match="backend = 'jax': must be one of numpy, torch"):
        _backend("jax", 0, "cpu", "float64")
    gm = GaussianMixture(weights=[0.5, 0.5], centroids=np.eye(2, 4), variances=[1.0, 2.0])
    x = np.random.default_rng(0).normal(size=(5, 4))
    with pytest.raises(TypeError, match=r"MixtureScore\(mixture, backend=...\)"):
        MixtureScore(gm)(torch.as_tensor(x), 0.5)
    bk = TorchBackend(0, "cpu", "float64")
    np.testing.assert_allclose(MixtureScore(gm, backend=bk)(torch.as_tensor(x), 0.5).numpy(), gm.score(x, 0.5),
                               rtol=1e-12, atol=1e-12)
