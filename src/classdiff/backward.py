"""Backward diffusion with any score: integrators, and the cloning experiment that measures commitment.

Conventions (``docs/speciation.md``, Bonnaire et al. 2505.17638 §2, Biroli et al. 2402.18491). The forward
process is the OU process x_t = e^{-t} x_0 + sqrt(Delta_t) eta. Writing the backward time as a decreasing
grid t_max = t_0 > t_1 > ... > t_S = t_min with steps h_k = t_k - t_{k+1} > 0:

* backward SDE  -dx = [x + 2 s(x, t)] dt + sqrt(2) dW, Euler–Maruyama step
      x_{k+1} = x_k + h_k [x_k + 2 s(x_k, t_k)] + sqrt(2 h_k) xi_k,      xi_k ~ N(0, I_d);
* probability-flow ODE  dx/dt = -x - s(x, t), integrated from t_max down to t_min with Euler or Heun
      k_1 = x_k + s(x_k, t_k),  x~ = x_k + h_k k_1,  k_2 = x~ + s(x~, t_{k+1}),  x_{k+1} = x_k + h_k (k_1 + k_2)/2.

Cloning experiment (Biroli et al. 2402.18491): N trajectories run from t_max; at every branching time t_b on
the grid each trajectory is copied and the copy (the *clone*) is continued to t_min with its own noise,
while the original continues with its noise. Both ends are labelled (any ``labeller(x) -> int labels``) and
the per-class agreement phi_c(t_b) = P(clone ends in c | original ends in c) is estimated with the
symmetrised estimator 2 n_cc / (n_c^orig + n_c^clone), with percentile-bootstrap intervals over
trajectories. With the ODE every clone repeats its original exactly, so cloning uses the SDE; the ODE is
provided for sampling and for the moment tests.

Array back ends: ``"numpy"`` (float64) or ``"torch"`` (CPU or CUDA, float64 or float32), chosen per call.
Random streams are derived from one integer seed with ``numpy.random.SeedSequence`` (the original
trajectories use stream 0, the clones of branching time j use stream j + 1), so a seed fixes every number
and the result for one branching time does not depend on which other branching times are simulated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.mixture import GaussianMixture
from classdiff.process import noise_variance, signal_scale

__all__ = [
    "BACKENDS",
    "METHODS",
    "CloningResult",
    "MixtureScore",
    "agreement_by_class",
    "bootstrap_agreement",
    "cloning_experiment",
    "integrate",
    "mixture_labeller",
    "nearest_point_labeller",
    "sample_initial",
    "snap_to_grid",
    "time_grid",
]

BACKENDS = ("numpy", "torch")
METHODS = ("euler_maruyama", "euler", "heun")  # SDE; ODE (probability flow); ODE (probability flow)
ScoreFn = Callable[[Any, float], Any]
Labeller = Callable[[Any], Any]


# ---------------------------------------------------------------------------------------------- time grid


def time_grid(t_max: float, t_min: float, n_steps: int) -> NDArray[np.float64]:
    """Uniform decreasing grid t_max = t_0 > ... > t_{n_steps} = t_min, shape (n_steps + 1,)."""
    if not (np.isfinite(t_max) and np.isfinite(t_min) and t_max > t_min >= 0):
        raise ValueError(f"t_max = {t_max!r}, t_min = {t_min!r}: need t_max > t_min >= 0, both finite")
    if not isinstance(n_steps, int | np.integer) or n_steps < 1:
        raise ValueError(f"n_steps = {n_steps!r}: must be an integer >= 1")
    return np.linspace(float(t_max), float(t_min), int(n_steps) + 1)


def snap_to_grid(times: ArrayLike, grid: NDArray[np.float64]) -> NDArray[np.int64]:
    """Indices of the grid points nearest to ``times`` (unique, sorted by increasing index = decreasing t)."""
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    idx = np.abs(grid[None, :] - t[:, None]).argmin(axis=1)
    return np.unique(idx)


# ---------------------------------------------------------------------------------------------- back ends


_NOISE_CHUNKS = 8  # fixed number of row blocks per noise draw, each with its own stream (thread-count free)
_POOL: Any = None


def _pool():
    """A small shared thread pool for filling noise blocks (numpy's generators release the GIL)."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    return _POOL


class _NumpyNoise:
    """Standard normals from ``_NOISE_CHUNKS`` independent numpy streams, one per block of rows.

    The numbers depend only on (seed, stream) and the array shape, not on how many threads fill them.
    """

    def __init__(self, seed: int, stream: int) -> None:
        children = np.random.SeedSequence([seed, stream]).spawn(_NOISE_CHUNKS)
        # SFC64: the fastest of numpy's bit generators here (~25% faster normals than the default PCG64)
        self.gens = [np.random.Generator(np.random.SFC64(c)) for c in children]

    def fill(self, out: NDArray[np.float64]) -> NDArray[np.float64]:
        n = out.shape[0]
        bounds = np.linspace(0, n, _NOISE_CHUNKS + 1).astype(int)
        jobs = [(g, out[a:b]) for g, a, b in zip(self.gens, bounds[:-1], bounds[1:]) if b > a]
        if out.size < 200_000:
            for g, blk in jobs:
                g.standard_normal(out=blk)
        else:
            list(_pool().map(lambda job: job[0].standard_normal(out=job[1]), jobs))
        return out


class _Numpy:
    """numpy float64 back end."""

    name = "numpy"

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.dtype = np.float64

    def generator(self, stream: int) -> _NumpyNoise:
        return _NumpyNoise(self.seed, stream)

    def normal(self, gen: _NumpyNoise, out: NDArray) -> NDArray:
        return gen.fill(out)

    def asarray(self, x: Any) -> NDArray:
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=np.float64)

    def to_numpy(self, x: Any) -> NDArray:
        return np.asarray(x)

    def empty_like(self, x: NDArray) -> NDArray:
        return np.empty_like(x)

    def copy(self, x: NDArray) -> NDArray:
        return x.copy()

    @staticmethod
    def axpy(x: NDArray, a: float, y: NDArray) -> NDArray:
        """x += a y in place; ``y`` is overwritten (it is a scratch buffer)."""
        y *= a
        x += y
        return x

    @staticmethod
    def add_scaled(x: NDArray, a: float, y: NDArray) -> NDArray:
        """x += a y in place; ``y`` (e.g. a score callable's output) is left untouched."""
        x += a * y
        return x


class _Torch:
    """torch back end on ``device`` with ``dtype`` (float64 or float32); torch is imported lazily."""

    name = "torch"

    def __init__(self, seed: int, device: str = "auto", dtype: str = "float64") -> None:
        import torch

        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype = {dtype!r}: must be 'float64' or 'float32'")
        self.dtype = torch.float64 if dtype == "float64" else torch.float32
        self.seed = seed

    def generator(self, stream: int):
        if self.device.type == "cpu" and self.dtype == self.torch.float64:
            return _NumpyNoise(self.seed, stream)  # faster than torch's float64 randn on CPU, same numbers
        g = self.torch.Generator(device=self.device)
        g.manual_seed(int(np.random.SeedSequence([self.seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1))
        return g

    def normal(self, gen, out):
        if isinstance(gen, _NumpyNoise):
            gen.fill(out.numpy())
            return out
        return self.torch.randn(out.shape, generator=gen, out=out, dtype=out.dtype, device=self.device)

    def asarray(self, x: Any):
        if isinstance(x, self.torch.Tensor):
            return x.to(device=self.device, dtype=self.dtype)
        return self.torch.as_tensor(np.asarray(x), dtype=self.dtype, device=self.device)

    def to_numpy(self, x: Any) -> NDArray:
        if isinstance(x, self.torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def empty_like(self, x):
        return self.torch.empty_like(x)

    def copy(self, x):
        return x.clone()

    @staticmethod
    def axpy(x, a: float, y):
        """x += a y in place (fused)."""
        return x.add_(y, alpha=a)

    add_scaled = axpy


def _backend(backend: str, seed: int, device: str, dtype: str) -> _Numpy | _Torch:
    if backend == "numpy":
        if dtype != "float64":
            raise ValueError(f"dtype = {dtype!r}: the numpy back end runs in float64 only")
        return _Numpy(seed)
    if backend == "torch":
        return _Torch(seed, device, dtype)
    raise ValueError(f"backend = {backend!r}: must be one of {', '.join(BACKENDS)}")


# ---------------------------------------------------------------------------------------------- exact score


class MixtureScore:
    """Fast exact score of an isotropic Gaussian mixture for numpy arrays or torch tensors.

    Implements the same formula as :meth:`GaussianMixture.score` (``docs/theory.md`` §1),

        s(x, t) = sum_c p_c(x, t) (e^{-t} mu_c - x) / Gamma_{c,t}^2 = shift(x, t) - coef(x, t) x,

    with shift = sum_c p_c e^{-t} mu_c / Gamma_{c,t}^2 (n, d) and coef = sum_c p_c / Gamma_{c,t}^2 (n,), in the
    split form so that integrators can fuse it into their update. The class logits need one (n, d) @ (d, K)
    product; |x|^2 is computed only when the classes' Gamma_{c,t} differ (equal variances: it cancels).
    Diagonal-covariance mixtures fall back to :meth:`GaussianMixture.score` (numpy).
    """

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = mixture
        self._cache: dict[tuple[str, str], Any] = {}

    def _centroids(self, x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return self.mixture.centroids
        key = (str(x.device), str(x.dtype))
        if key not in self._cache:
            import torch

            self._cache[key] = torch.as_tensor(self.mixture.centroids, dtype=x.dtype, device=x.device)
        return self._cache[key]

    def split(self, x: Any, t: float, factor: float = 1.0, out: Any = None) -> tuple[Any, Any]:
        """(factor * shift, coef) with s(x, t) = shift - coef[:, None] * x; shapes (n, d) and (n,).

        ``factor`` scales the shift inside the small (n, K) @ (K, d) product, which saves a pass over (n, d);
        ``out`` (n, d), if given, receives the shift (no allocation).
        """
        gm = self.mixture
        if not gm.isotropic:
            raise ValueError("MixtureScore.split: needs an isotropic mixture (variances of shape (K,))")
        a = float(signal_scale(t))
        var = a * a * gm.variances + float(noise_variance(t))  # Gamma_{c,t}^2, (K,)
        inv = 1.0 / var
        mu = self._centroids(x)
        with np.errstate(divide="ignore"):
            base = np.log(gm.weights) - 0.5 * a * a * (gm.centroids**2).sum(1) * inv - 0.5 * gm.dim * np.log(var)
        is_np = isinstance(x, np.ndarray)
        logits = x @ mu.T  # (n, K)
        scale = a * inv
        if is_np:
            logits *= scale[None, :]
            logits += base[None, :]
            if np.ptp(var) > 0:
                logits -= 0.5 * np.einsum("ij,ij->i", x, x)[:, None] * inv[None, :]
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=1, keepdims=True)
            post = logits
            coef = post @ inv
            post *= (factor * scale)[None, :]
            shift = np.matmul(post, mu, out=out)
            return shift, coef
        import torch

        sc = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
        logits.mul_(sc).add_(torch.as_tensor(base, dtype=x.dtype, device=x.device))
        if np.ptp(var) > 0:
            logits.sub_(0.5 * (x * x).sum(1, keepdim=True) * torch.as_tensor(inv, dtype=x.dtype, device=x.device))
        post = torch.softmax(logits, dim=1)
        coef = post @ torch.as_tensor(inv, dtype=x.dtype, device=x.device)
        shift = torch.matmul(post * (sc * factor), mu, out=out)
        return shift, coef

    def __call__(self, x: Any, t: float) -> Any:
        """Exact score s(x, t), shape (n, d), same array type as ``x``."""
        if not self.mixture.isotropic:
            if isinstance(x, np.ndarray):
                return self.mixture.score(x, t)
            import torch

            return torch.as_tensor(self.mixture.score(x.detach().cpu().numpy(), t), dtype=x.dtype, device=x.device)
        shift, coef = self.split(x, t)
        shift -= coef[:, None] * x
        return shift


def _as_score(score: GaussianMixture | ScoreFn) -> ScoreFn:
    if isinstance(score, GaussianMixture):
        return MixtureScore(score)
    if not callable(score):
        raise TypeError(f"score: must be a GaussianMixture or a callable score(x, t) -> array, got {type(score)}")
    return score


# ---------------------------------------------------------------------------------------------- labellers


def mixture_labeller(mixture: GaussianMixture, t: float = 0.0) -> Labeller:
    """Bayes classifier of the mixture at diffusion time ``t``: argmax_c P(c | x_t = x), labels shape (n,)."""

    def label(x: Any) -> NDArray[np.int64]:
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        return mixture.log_class_densities(arr.astype(np.float64, copy=False), t).argmax(axis=1)

    return label


def nearest_point_labeller(points: ArrayLike, labels: ArrayLike | None = None, chunk: int = 4096) -> Labeller:
    """Label of the nearest of ``points`` (m, d) in L2: ``labels[j]`` (or the index j when ``labels`` is None).

    With a training set and its class labels this labels by class; with ``labels=None`` it returns the index
    of the nearest training point, which is what the collapse (memorization) cloning measurement compares.
    """
    pts = np.asarray(points, dtype=np.float64)
    sq = (pts * pts).sum(1)
    lab = None if labels is None else np.asarray(labels)

    def label(x: Any) -> NDArray[np.int64]:
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        arr = arr.astype(np.float64, copy=False)
        out = np.empty(arr.shape[0], dtype=np.int64)
        for start in range(0, arr.shape[0], chunk):
            xb = arr[start : start + chunk]
            out[start : start + chunk] = (sq[None, :] - 2.0 * xb @ pts.T).argmin(axis=1)
        return out if lab is None else lab[out]

    return label


# ---------------------------------------------------------------------------------------------- integration


def sample_initial(mixture: GaussianMixture, n: int, t: float, seed: int = 0) -> NDArray[np.float64]:
    """n exact draws from P_t of the mixture (class counts i.i.d. from rho), shape (n, d)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A17]))
    x0 = mixture.sample(n, rng, exact_counts=False).x
    rng.shuffle(x0, axis=0)
    return signal_scale(t) * x0 + np.sqrt(noise_variance(t)) * rng.standard_normal(x0.shape)


def _step(score: ScoreFn, x: Any, t0: float, t1: float, method: str, noise: Any, bk) -> Any:
    """One backward step from t0 to t1 < t0, in place on x.

    ``noise`` = (generator, noise buffer[, shift buffer]) for the SDE; buffers have the shape of x.
    """
    h = t0 - t1
    if method == "euler_maruyama":
        if isinstance(score, MixtureScore) and score.mixture.isotropic:
            shift, coef = score.split(x, t0, 2.0 * h, out=noise[2] if len(noise) > 2 else None)
            coef *= -2.0 * h
            coef += 1.0 + h
            x *= coef[:, None]
            x += shift
        else:
            s = bk.asarray(score(x, t0))
            x *= 1.0 + h
            bk.add_scaled(x, 2.0 * h, s)
        gen, buf = noise[0], noise[1]
        bk.normal(gen, buf)
        bk.axpy(x, float(np.sqrt(2.0 * h)), buf)
        return x
    k1 = bk.asarray(score(x, t0))
    k1 += x  # dx/d(-t) = x + s
    if method == "euler":
        x += h * k1
        return x
    xt = x + h * k1
    k2 = bk.asarray(score(xt, t1))
    k2 += xt
    k1 += k2
    x += (0.5 * h) * k1
    return x


def integrate(
    score: GaussianMixture | ScoreFn,
    x_init: ArrayLike,
    times: ArrayLike,
    method: str = "euler_maruyama",
    seed: int = 0,
    backend: str = "numpy",
    device: str = "auto",
    dtype: str = "float64",
    record: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], dict[int, NDArray[np.float64]]]:
    """Integrate the backward SDE (``euler_maruyama``) or the probability-flow ODE (``euler``, ``heun``).

    ``x_init`` (n, d) are the states at ``times[0]``; ``times`` is a decreasing grid (see :func:`time_grid`).
    Returns the final states (n, d) at ``times[-1]`` and a dict {grid index: states (n, d)} for the indices in
    ``record``. ``score`` is a :class:`GaussianMixture` (exact score, fast path) or any callable
    ``score(x, t) -> (n, d)`` accepting the back end's array type.
    """
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: must be one of {', '.join(METHODS)}")
    grid = np.asarray(times, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) >= 0):
        raise ValueError("times: must be a strictly decreasing 1-D grid with at least 2 points")
    fn = _as_score(score)
    bk = _backend(backend, seed, device, dtype)
    x = bk.copy(bk.asarray(x_init))
    keep = set() if record is None else {int(i) for i in np.atleast_1d(record)}
    snaps: dict[int, NDArray[np.float64]] = {}
    noise = (bk.generator(0), bk.empty_like(x), bk.empty_like(x)) if method == "euler_maruyama" else None
    for k in range(grid.size - 1):
        if k in keep:
            snaps[k] = bk.to_numpy(x).copy()
        x = _step(fn, x, grid[k], grid[k + 1], method, noise, bk)
    if grid.size - 1 in keep:
        snaps[grid.size - 1] = bk.to_numpy(x).copy()
    return bk.to_numpy(x).astype(np.float64), snaps


# ---------------------------------------------------------------------------------------------- cloning


@dataclass(frozen=True)
class CloningResult:
    """Labels of a cloning experiment.

    ``branch_times`` (B,) decreasing; ``original`` {name: labels (N,)} of the original trajectories' ends;
    ``clones`` {name: labels (B, N)} of the clones branched at each time; ``times`` the integration grid.
    """

    branch_times: NDArray[np.float64]
    original: Mapping[str, NDArray[np.int64]]
    clones: Mapping[str, NDArray[np.int64]]
    times: NDArray[np.float64]
    info: Mapping[str, Any] = field(default_factory=dict)


def cloning_experiment(
    score: GaussianMixture | ScoreFn,
    labellers: Labeller | Mapping[str, Labeller],
    x_init: ArrayLike,
    times: ArrayLike,
    branch_times: ArrayLike,
    seed: int = 0,
    backend: str = "numpy",
    device: str = "auto",
    dtype: str = "float64",
    progress: Callable[[int, int], None] | None = None,
) -> CloningResult:
    """Cloning experiment of Biroli et al. (2402.18491) with the backward SDE (Euler–Maruyama).

    ``x_init`` (N, d): states at ``times[0]``; ``branch_times`` are snapped to the grid ``times``. Each
    labeller maps end states (N, d) to integer labels (N,); a single callable is stored under ``"class"``.
    Cost: one pass for the originals plus, for each branching time t_b, a pass of the clones from t_b.
    """
    grid = np.asarray(times, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) >= 0):
        raise ValueError("times: must be a strictly decreasing 1-D grid with at least 2 points")
    labs = dict(labellers) if isinstance(labellers, Mapping) else {"class": labellers}
    if not labs or not all(callable(f) for f in labs.values()):
        raise TypeError("labellers: must be a callable or a non-empty mapping of name -> callable(x) -> labels")
    fn = _as_score(score)
    bk = _backend(backend, seed, device, dtype)
    idx = snap_to_grid(branch_times, grid)
    x = bk.copy(bk.asarray(x_init))
    n = x.shape[0]
    clones = {name: np.empty((idx.size, n), dtype=np.int64) for name in labs}
    scratch = bk.empty_like(x)  # shift buffer, shared: one step at a time
    main_noise = (bk.generator(0), bk.empty_like(x), scratch)
    clone_buf = bk.empty_like(x)
    clone_noise = bk.empty_like(x)
    branch_at = {int(k): j for j, k in enumerate(idx)}
    for k in range(grid.size):
        if k in branch_at:
            j = branch_at[k]
            clone_buf[...] = x
            cn = (bk.generator(j + 1), clone_noise, scratch)
            for kk in range(k, grid.size - 1):
                clone_buf = _step(fn, clone_buf, grid[kk], grid[kk + 1], "euler_maruyama", cn, bk)
            for name, f in labs.items():
                clones[name][j] = np.asarray(f(clone_buf), dtype=np.int64)
            if progress is not None:
                progress(j + 1, idx.size)
        if k < grid.size - 1:
            x = _step(fn, x, grid[k], grid[k + 1], "euler_maruyama", main_noise, bk)
    original = {name: np.asarray(f(x), dtype=np.int64) for name, f in labs.items()}
    info = {"backend": bk.name, "dtype": str(bk.dtype), "n_trajectories": n, "n_steps": grid.size - 1}
    return CloningResult(branch_times=grid[idx], original=original, clones=clones, times=grid, info=info)


def agreement_by_class(
    original: ArrayLike,
    clones: ArrayLike,
    n_classes: int,
    original_group: ArrayLike | None = None,
    clone_group: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-class agreement phi_c = P(clone label == original label | end class c), symmetrised.

    ``original`` (N,) and ``clones`` (B, N) are labels; the pair i is "the same" when they are equal. Pairs are
    grouped by end class: ``original_group``/``clone_group`` (default: the labels themselves), and each pair
    counts once for the class of each of its two ends, so phi_c = sum_i same_i ([g_i = c] + [g'_i = c]) /
    sum_i ([g_i = c] + [g'_i = c]). For class labels this is 2 n_cc / (n_c^orig + n_c^clone).
    Returns (phi (B, K), weight (B, K) = number of ends of class c); phi is nan where a class has no end.
    """
    a = np.asarray(original)
    b = np.atleast_2d(np.asarray(clones))
    ga = a if original_group is None else np.asarray(original_group)
    gb = b if clone_group is None else np.atleast_2d(np.asarray(clone_group))
    same = (b == a[None, :]).astype(np.float64)
    onehot_a = (ga[:, None] == np.arange(n_classes)[None, :]).astype(np.float64)  # (N, K)
    num = same @ onehot_a
    den = np.broadcast_to(onehot_a.sum(0), num.shape).copy()
    for c in range(n_classes):
        m = (gb == c).astype(np.float64)
        num[:, c] += (same * m).sum(1)
        den[:, c] += m.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = num / den
    return phi, den


def bootstrap_agreement(
    original: ArrayLike,
    clones: ArrayLike,
    n_classes: int,
    n_boot: int = 500,
    level: float = 0.95,
    seed: int = 0,
    original_group: ArrayLike | None = None,
    clone_group: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Percentile-bootstrap interval (lo, hi), each (B, K), of :func:`agreement_by_class`.

    Trajectories are resampled with replacement (jointly across branching times, since one original
    serves all of them). ``n_boot = 0`` returns nan intervals.
    """
    a = np.asarray(original)
    b = np.atleast_2d(np.asarray(clones))
    ga = a if original_group is None else np.asarray(original_group)
    gb = b if clone_group is None else np.atleast_2d(np.asarray(clone_group))
    shape = (b.shape[0], n_classes)
    if n_boot <= 0:
        return np.full(shape, np.nan), np.full(shape, np.nan)
    if not 0 < level < 1:
        raise ValueError(f"level = {level!r}: must lie in (0, 1)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB007]))
    n = a.size
    draws = np.empty((n_boot, *shape))
    for r in range(n_boot):
        i = rng.integers(0, n, n)
        draws[r] = agreement_by_class(a[i], b[:, i], n_classes, ga[i], gb[:, i])[0]
    q = (1 - level) / 2
    lo = np.nanquantile(draws, q, axis=0)
    hi = np.nanquantile(draws, 1 - q, axis=0)
    return lo, hi
