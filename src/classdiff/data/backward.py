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

Array back ends: ``"numpy"`` (float64) or ``"torch"`` (CPU or CUDA, float64 or float32), chosen per call by
name; this module is numpy-only and reaches other back ends through :func:`register_backend` and the
``classdiff.backward_backends`` entry points (torch: :mod:`classdiff.images.backward_torch`, protocol
:class:`ArrayBackend`).
Seed layout: random streams are derived from one integer seed with ``numpy.random.SeedSequence`` (the
original trajectories use stream 0, the clones of branching time j use stream j + 1), and within a stream
trajectories are cut into fixed blocks of ``NOISE_BLOCK`` = 256 rows (the last one shorter): block b draws
its normals, one (rows, d) array per step, from its own generator seeded by SeedSequence([seed, stream, b])
(on the CPU: numpy's SFC64 with its ziggurat normals in float64, its bits through a vectorized Box–Muller
transform in float32, :class:`BoxMuller32`; on a GPU: torch's generator of the device). So a seed fixes every
number, the result for one branching time does not depend on which other branching times are simulated,
and results do not depend on the number of threads or on how blocks are scheduled (float32 and float64,
CPU and GPU use different generators, hence different numbers).

Speed: with the exact score of an isotropic mixture the Euler–Maruyama step is fused
(:class:`_FusedMixtureEM`: one (r x d) @ (d x n) product with r <= K the rank of the centroids, a float64
posterior on (n, K), the noise drawn straight into a preallocated buffer, in-place updates) and on the CPU
each block of trajectories is integrated over all steps while it sits in cache, blocks spread over threads.
Every coordinate of every trajectory is still integrated (no reduction of the dimension).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.data.mixture import GaussianMixture
from classdiff.data.process import diffuse

__all__ = [
    "BACKENDS",
    "METHODS",
    "ArrayBackend",
    "CloningResult",
    "MixtureScore",
    "agreement_by_class",
    "bootstrap_agreement",
    "cloning_experiment",
    "integrate",
    "mixture_labeller",
    "nearest_point_labeller",
    "register_backend",
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


NOISE_BLOCK = 256  # rows per noise stream: the fixed seed layout (module docstring); never depends on threads


def _n_blocks(n: int) -> int:
    return max(1, -(-int(n) // NOISE_BLOCK))


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def block_seed(seed: int, stream: int, block: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, stream, block])


class BoxMuller32:
    """float32 standard normals on the CPU: Box–Muller on the bits of a numpy SFC64 stream, vectorized.

    About 1.5x faster than torch's CPU ``normal_`` (whose Mersenne-Twister uniforms dominate) and 3x faster
    than numpy's float64 ziggurat. A draw of n numbers takes m = ceil(n / 2) 64-bit words, read as 2m 32-bit
    integers w_j (native, i.e. little-endian, order); with u1_i = ((w_i >> 8) + 1) 2^-24 in (0, 1] and
    u2_i = (w_{m+i} >> 8) 2^-24 in [0, 1) (the resolution of torch's own normals), out[i] = r_i cos(2 pi u2_i)
    and out[m + i] = r_i sin(2 pi u2_i), r_i = sqrt(-2 log u1_i); so |z| <= 5.77, as for torch's normals.
    """

    def __init__(self, seq: np.random.SeedSequence) -> None:
        self.bits = np.random.SFC64(seq)
        self.r = self.th = np.empty(0, dtype=np.float32)

    def fill(self, flat: NDArray[np.float32], std: float) -> None:
        """``flat`` (1-D, float32) <- std * standard normals."""
        n = flat.size
        m = (n + 1) // 2
        if self.r.size < m:
            self.r, self.th = np.empty(m, dtype=np.float32), np.empty(m, dtype=np.float32)
        r, th = self.r[:m], self.th[:m]
        words = self.bits.random_raw(m).view(np.uint32)
        words >>= 8
        k1, k2 = words[:m], words[m:]
        k1 += 1
        np.copyto(r, k1, casting="unsafe")  # exact: integers < 2^24 + 1
        r *= np.float32(2.0**-24)
        np.log(r, out=r)  # <= 0
        r *= np.float32(-2.0 * std * std)
        np.sqrt(r, out=r)
        np.copyto(th, k2, casting="unsafe")
        th *= np.float32(2.0 * np.pi * 2.0**-24)
        np.cos(th, out=flat[:m])
        flat[:m] *= r
        np.sin(th, out=th)
        np.multiply(th[: n - m], r[: n - m], out=flat[m:])


class _Numpy:
    """numpy float64 back end."""

    name = "numpy"
    blocked = True  # the exact-mixture fast path runs block by block (cache-sized, threads over blocks)

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.dtype = np.float64

    def block_generator(self, stream: int, block: int) -> np.random.Generator:
        # SFC64: the fastest of numpy's bit generators here (~25% faster normals than the default PCG64)
        return np.random.Generator(np.random.SFC64(block_seed(self.seed, stream, block)))

    @staticmethod
    def normal(gen: np.random.Generator, out: NDArray, std: float = 1.0) -> NDArray:
        gen.standard_normal(out=out)
        if std != 1.0:
            out *= std
        return out

    def asarray(self, x: Any) -> NDArray:
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=np.float64)

    def to_numpy(self, x: Any) -> NDArray:
        return np.asarray(x)

    def empty_like(self, x: NDArray) -> NDArray:
        return np.empty_like(x)

    def copy(self, x: NDArray) -> NDArray:
        return np.array(x, order="C", copy=True)

    @staticmethod
    def add_scaled(x: NDArray, a: float, y: NDArray) -> NDArray:
        """x += a y in place; ``y`` (e.g. a score callable's output) is left untouched."""
        x += a * y
        return x

    @staticmethod
    def like(values: NDArray, x: Any) -> NDArray:
        return values

    @staticmethod
    def get_threads() -> int | None:
        return None  # numpy's BLAS threads are handled by _run_blocks for every back end

    @staticmethod
    def set_threads(n: int) -> None:
        return None

    @staticmethod
    def mixture_split(x: NDArray, mu: NDArray, scale: NDArray, base: NDArray, inv: NDArray, var_differs: bool,
                      factor: float, out: NDArray | None) -> tuple[NDArray, NDArray]:
        """(factor * shift, coef) of :meth:`MixtureScore.split` for an array x (n, d), in place where it can."""
        logits = x @ mu.T  # (n, K)
        logits *= scale[None, :]
        logits += base[None, :]
        if var_differs:
            logits -= 0.5 * np.einsum("ij,ij->i", x, x)[:, None] * inv[None, :]
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        post = logits
        coef = post @ inv
        post *= (factor * scale)[None, :]
        shift = np.matmul(post, mu, out=out)
        return shift, coef

    @staticmethod
    def prepare_fused(fused: _FusedMixtureEM, basis: NDArray) -> None:
        from scipy.linalg import blas

        fused.q = np.ascontiguousarray(basis)
        fused.qt = np.ascontiguousarray(fused.q.T)
        fused.blas = blas

    @staticmethod
    def fused_step(fused: _FusedMixtureEM, x: NDArray, k: int, noise: _Noise, buf: NDArray) -> NDArray:
        """Step k of :class:`_FusedMixtureEM` in place on x: x *= coef, rank-r BLAS update x += w Q, x += noise."""
        z = x @ fused.qt
        sq = np.einsum("ij,ij->i", x, x) if fused.nhinv is not None else None
        coef, w = fused.posterior(z, sq, k)
        x *= coef[:, None]
        xt = x.T  # Fortran-ordered (d, n) view of the C-contiguous x: BLAS updates it in place
        for i in range(fused.r if fused.r <= 3 else 0):
            out = fused.blas.dger(1.0, fused.q[i], w[:, i], a=xt, overwrite_a=1)  # x += w_i q_i^T
            if out.ctypes.data != xt.ctypes.data:  # pragma: no cover - only if x were not C-contiguous
                xt[...] = out
        if fused.r > 3:
            out = fused.blas.dgemm(1.0, fused.qt, w.T, beta=1.0, c=xt, overwrite_c=1)  # x += w Q
            if out.ctypes.data != xt.ctypes.data:  # pragma: no cover
                xt[...] = out
        noise.fill(buf, float(fused.amp[k]))
        x += buf
        return x


class ArrayBackend(Protocol):
    """What an array back end gives the integrators (numpy here; torch in :mod:`classdiff.images.backward_torch`).

    ``name``, ``seed``, ``blocked`` (the exact-mixture fast path runs block by block) and ``dtype``; random
    streams (``block_generator(stream, block)``, ``normal(gen, out, std)``); array conversions (``asarray``,
    ``to_numpy``, ``like(values, x)``, ``empty_like``, ``copy``, ``add_scaled``); the library thread count
    (``get_threads``, ``set_threads``, run single-threaded inside block workers); and the two kernels of the
    exact isotropic mixture, ``mixture_split`` (:meth:`MixtureScore.split`) and ``prepare_fused`` /
    ``fused_step`` (:class:`_FusedMixtureEM`).
    """

    name: str
    seed: int
    blocked: bool

    def block_generator(self, stream: int, block: int) -> Any: ...
    def normal(self, gen: Any, out: Any, std: float = 1.0) -> Any: ...
    def asarray(self, x: Any) -> Any: ...
    def to_numpy(self, x: Any) -> NDArray: ...
    def like(self, values: NDArray, x: Any) -> Any: ...
    def empty_like(self, x: Any) -> Any: ...
    def copy(self, x: Any) -> Any: ...
    def add_scaled(self, x: Any, a: float, y: Any) -> Any: ...
    def get_threads(self) -> int | None: ...
    def set_threads(self, n: int) -> None: ...
    def mixture_split(self, x: Any, mu: Any, scale: NDArray, base: NDArray, inv: NDArray, var_differs: bool,
                      factor: float, out: Any) -> tuple[Any, Any]: ...
    def prepare_fused(self, fused: _FusedMixtureEM, basis: NDArray) -> None: ...
    def fused_step(self, fused: _FusedMixtureEM, x: Any, k: int, noise: _Noise, buf: Any) -> Any: ...


BackendFactory = Callable[[int, str, str], ArrayBackend]
_REGISTRY: dict[str, BackendFactory] = {}
ENTRY_POINT_GROUP = "classdiff.backward_backends"


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``backend=name`` build ``factory(seed, device, dtype)``. Back ends in other layers (torch) register
    themselves on import; others are found through the ``classdiff.backward_backends`` entry-point group."""
    _REGISTRY[name] = factory


def _backend(backend: str, seed: int, device: str, dtype: str) -> ArrayBackend:
    if backend == "numpy":
        if dtype != "float64":
            raise ValueError(f"dtype = {dtype!r}: the numpy back end runs in float64 only")
        return _Numpy(seed)
    if backend not in _REGISTRY:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP, name=backend):
            ep.load()  # the module registers its back end on import
            break
    if backend not in _REGISTRY:
        raise ValueError(f"backend = {backend!r}: must be one of {', '.join(BACKENDS)}")
    return _REGISTRY[backend](seed, device, dtype)


class _Noise:
    """Standard normals for an (n, d) state from one stream: rows [b B, (b + 1) B) (B = ``NOISE_BLOCK``) come
    from their own generator seeded by (seed, stream, b), which is drawn once per step. A block's numbers thus
    depend on (seed, stream, b, its number of rows, d) only: not on threads, on chunking or on other blocks."""

    def __init__(self, bk: ArrayBackend, stream: int, n: int, first_block: int = 0) -> None:
        """Generators of the blocks covering n rows that start at block ``first_block``."""
        self.bk = bk
        self.gens = [bk.block_generator(stream, first_block + b) for b in range(_n_blocks(n))]

    def fill(self, out: Any, std: float = 1.0) -> Any:
        for b, gen in enumerate(self.gens):
            self.bk.normal(gen, out[b * NOISE_BLOCK : (b + 1) * NOISE_BLOCK], std)
        return out


_BLAS_SETTERS: list[tuple[Any, Any]] | None = None


def _openblas_thread_setters() -> list[tuple[Any, Any]]:
    """(get, set) of the thread count of every OpenBLAS loaded in the process (numpy's and scipy's wheels
    bundle their own); empty where none is found or not on Linux."""
    global _BLAS_SETTERS
    if _BLAS_SETTERS is None:
        import ctypes

        pairs = []
        try:
            with open("/proc/self/maps") as fh:
                libs = sorted({ln.split()[-1] for ln in fh if "openblas" in ln and ".so" in ln})
        except OSError:  # pragma: no cover - not Linux
            libs = []
        for path in libs:
            try:
                lib = ctypes.CDLL(path)
            except OSError:  # pragma: no cover
                continue
            for get, set_ in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                              ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                              ("openblas_get_num_threads", "openblas_set_num_threads")):
                if hasattr(lib, get) and hasattr(lib, set_):
                    pairs.append((getattr(lib, get), getattr(lib, set_)))
                    break
        _BLAS_SETTERS = pairs
    return _BLAS_SETTERS


def _run_blocks(n_blocks: int, threads: int | None, work: Callable[[int], None], bk: ArrayBackend) -> None:
    """Call ``work(b)`` for every block b on ``threads`` worker threads (numpy and torch release the GIL).

    The parallelism is over blocks: torch (in each worker) and OpenBLAS run single-threaded meanwhile (their
    thread pools only add overhead on these small products; ``bk.set_threads``), and the caller's settings are restored
    afterwards. Results do not depend on the number of threads (each block is self-contained).
    """
    n_workers = max(1, min(int(threads or _default_threads()), n_blocks))
    old = bk.get_threads()
    import scipy.linalg.blas  # noqa: F401  (loaded before the one-time search, so that its OpenBLAS is found)

    blas = _openblas_thread_setters()
    blas_old = [get() for get, _ in blas]
    for _, set_ in blas:
        set_(1)
    try:
        if n_workers == 1:
            if old is not None:
                bk.set_threads(1)
            for b in range(n_blocks):
                work(b)
            return
        from concurrent.futures import ThreadPoolExecutor

        init = (lambda: bk.set_threads(1)) if old is not None else None
        with ThreadPoolExecutor(max_workers=n_workers, initializer=init) as pool:
            list(pool.map(work, range(n_blocks)))
    finally:
        for (_, set_), count in zip(blas, blas_old, strict=True):
            set_(count)
        if old is not None:
            bk.set_threads(old)


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

    def __init__(self, mixture: GaussianMixture, backend: ArrayBackend | None = None) -> None:
        self.mixture = mixture
        self.backend = backend
        self._cache: dict[tuple[str, str], Any] = {}

    def _array_backend(self, x: Any) -> ArrayBackend | type[_Numpy]:
        if isinstance(x, np.ndarray):
            return _Numpy
        if self.backend is None:
            raise TypeError(f"MixtureScore: x is a {type(x).__name__}; pass the array back end that makes it "
                            "(MixtureScore(mixture, backend=...)) for arrays other than numpy's")
        return self.backend

    def _centroids(self, x: Any, bk: ArrayBackend | type[_Numpy]) -> Any:
        if isinstance(x, np.ndarray):
            return self.mixture.centroids
        key = (str(x.device), str(x.dtype))
        if key not in self._cache:
            self._cache[key] = bk.like(self.mixture.centroids, x)
        return self._cache[key]

    def split(self, x: Any, t: float, factor: float = 1.0, out: Any = None) -> tuple[Any, Any]:
        """(factor * shift, coef) with s(x, t) = shift - coef[:, None] * x; shapes (n, d) and (n,).

        ``factor`` scales the shift inside the small (n, K) @ (K, d) product, which saves a pass over (n, d);
        ``out`` (n, d), if given, receives the shift (no allocation).
        """
        if not self.mixture.isotropic:
            raise ValueError("MixtureScore.split: needs an isotropic mixture (variances of shape (K,))")
        a, var, base = self.mixture.logit_terms(t)  # Gamma_{c,t}^2 = var, (K,)
        inv = 1.0 / var
        bk = self._array_backend(x)
        mu = self._centroids(x, bk)
        return bk.mixture_split(x, mu, a * inv, base, inv, bool(np.ptp(var) > 0), factor, out)

    def __call__(self, x: Any, t: float) -> Any:
        """Exact score s(x, t), shape (n, d), same array type as ``x``."""
        if not self.mixture.isotropic:
            if isinstance(x, np.ndarray):
                return self.mixture.score(x, t)
            bk = self._array_backend(x)
            return bk.like(self.mixture.score(bk.to_numpy(x), t), x)
        shift, coef = self.split(x, t)
        shift -= coef[:, None] * x
        return shift


class _FusedMixtureEM:
    """Euler–Maruyama for the exact score of an isotropic mixture, fused into few in-place passes over x.

    With Q (r x d) an orthonormal basis of the centroids' span (r <= K) and C = mu Q^T (K x r), a step from t
    (step h, a = e^{-t}, G_c^2 = a^2 sigma_c^2 + Delta_t) needs only z = x Q^T (n x r), and |x|^2 when the
    sigma_c differ:
        logit_c = a z.C_c / G_c^2 + log rho_c - a^2 |mu_c|^2 / (2 G_c^2) - (d/2) log G_c^2 - |x|^2 / (2 G_c^2),
        x <- (1 + h - 2h sum_c p_c / G_c^2) x + (2h a sum_c p_c C_c / G_c^2) Q + sqrt(2h) xi,
    i.e. the update of :func:`_step` with s = shift - coef x, term by term. The (n, K) posterior p is computed
    in float64 numpy whatever the back end (it is tiny); the (n, d) passes run in the back end's dtype:
    one (r x d) @ (d x n) product, the noise draw straight into a buffer scaled by sqrt(2h), one fused
    x <- noise + coef * x (torch; two passes in numpy) and r in-place rank-one updates (BLAS ger in numpy),
    with no allocation of (n, d) arrays. The (n, d) passes are the back end's ``fused_step``.
    """

    def __init__(self, mixture: GaussianMixture, grid: NDArray[np.float64], bk: ArrayBackend) -> None:
        t, h = grid[:-1], grid[:-1] - grid[1:]
        terms = [mixture.logit_terms(float(tk)) for tk in t]  # the split form of GaussianMixture, per step
        a = np.array([tm[0] for tm in terms])
        var = np.stack([tm[1] for tm in terms])  # (S, K)
        inv = 1.0 / var
        scale = a[:, None] * inv
        mu = mixture.centroids
        u, s, vt = np.linalg.svd(mu, full_matrices=False)
        r = int((s > s.max() * max(mu.shape) * np.finfo(float).eps).sum()) if s.size and s.max() > 0 else 0
        c = u[:, :r] * s[:r]  # (K, r): mu = c Q
        self.base = np.stack([tm[2] for tm in terms])  # (S, K)
        self.lin = np.ascontiguousarray((scale[:, :, None] * c[None]).transpose(0, 2, 1))  # (S, r, K)
        self.mix = 2.0 * h[:, None, None] * scale[:, :, None] * c[None]  # (S, K, r)
        self.coef_b = -2.0 * h[:, None] * inv  # (S, K)
        self.coef_a = 1.0 + h
        self.nhinv = -0.5 * inv if np.ptp(mixture.variances) > 0 else None
        self.amp = np.sqrt(2.0 * h)
        self.r = r
        self.bk = bk
        bk.prepare_fused(self, vt[:r])

    def posterior(self, z: NDArray, sq: NDArray | None, k: int) -> tuple[NDArray, NDArray]:
        """(coef (n,), w (n, r)) of step k from z = x Q^T (n, r) and |x|^2 (n,) (None: equal variances)."""
        logits = z @ self.lin[k]
        logits += self.base[k]
        if sq is not None:
            logits += sq[:, None] * self.nhinv[k][None, :]
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits @ self.coef_b[k] + self.coef_a[k], logits @ self.mix[k]

    def step(self, x: Any, k: int, noise: _Noise, buf: Any) -> Any:
        """Step k in place on x (n, d, C-contiguous); ``buf`` is a scratch array of x's shape."""
        return self.bk.fused_step(self, x, k, noise, buf)


def _as_score(score: GaussianMixture | ScoreFn, bk: ArrayBackend) -> ScoreFn:
    if isinstance(score, GaussianMixture):
        return MixtureScore(score, backend=bk)
    if isinstance(score, MixtureScore) and score.backend is None:
        score.backend = bk
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
    return diffuse(x0, t, rng)[0]


def _step(score: ScoreFn, x: Any, t0: float, t1: float, method: str, noise: _Noise | None, buf: Any, bk) -> Any:
    """One backward step from t0 to t1 < t0 with any score callable, in place on x (the generic path).

    ``noise`` (SDE only) supplies the step's normals into ``buf`` (shape of x), scaled by sqrt(2h).
    """
    h = t0 - t1
    if method == "euler_maruyama":
        s = bk.asarray(score(x, t0))
        x *= 1.0 + h
        bk.add_scaled(x, 2.0 * h, s)
        noise.fill(buf, float(np.sqrt(2.0 * h)))
        x += buf
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


class _Stepper:
    """Advances states along ``grid``: the fused exact-mixture Euler–Maruyama (:class:`_FusedMixtureEM`) when
    the score is an isotropic :class:`GaussianMixture`, else :func:`_step` with the score callable."""

    def __init__(self, fn: ScoreFn, grid: NDArray[np.float64], method: str, bk: ArrayBackend) -> None:
        self.fn, self.grid, self.method, self.bk = fn, grid, method, bk
        fast = method == "euler_maruyama" and isinstance(fn, MixtureScore) and fn.mixture.isotropic
        self.fused = _FusedMixtureEM(fn.mixture, grid, bk) if fast else None
        self.blocked = self.fused is not None and bk.blocked  # block by block, threads over blocks

    def scratch(self, x: Any) -> Any:
        """The noise buffer for states like x (None for the ODE)."""
        return self.bk.empty_like(x) if self.method == "euler_maruyama" else None

    def run(self, x: Any, k0: int, k1: int, noise: _Noise | None, buf: Any,
            on_step: Callable[[int, Any], None] | None = None) -> Any:
        """Steps k0 .. k1 - 1 in place on x; ``on_step(k, x)`` is called before each step k."""
        for k in range(k0, k1):
            if on_step is not None:
                on_step(k, x)
            if self.fused is not None:
                x = self.fused.step(x, k, noise, buf)
            else:
                x = _step(self.fn, x, self.grid[k], self.grid[k + 1], self.method, noise, buf, self.bk)
        return x


def _check_grid(times: ArrayLike) -> NDArray[np.float64]:
    grid = np.asarray(times, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) >= 0):
        raise ValueError("times: must be a strictly decreasing 1-D grid with at least 2 points")
    return grid


def _check_threads(threads: int | None) -> None:
    if threads is not None and (not isinstance(threads, int | np.integer) or threads < 1):
        raise ValueError(f"threads = {threads!r}: must be None (all available cores) or an integer >= 1")


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
    threads: int | None = None,
) -> tuple[NDArray[np.float64], dict[int, NDArray[np.float64]]]:
    """Integrate the backward SDE (``euler_maruyama``) or the probability-flow ODE (``euler``, ``heun``).

    ``x_init`` (n, d) are the states at ``times[0]``; ``times`` is a decreasing grid (see :func:`time_grid`).
    Returns the final states (n, d) at ``times[-1]`` and a dict {grid index: states (n, d)} for the indices in
    ``record``. ``score`` is a :class:`GaussianMixture` (exact score, fast path) or any callable
    ``score(x, t) -> (n, d)`` accepting the back end's array type.

    Every coordinate of every trajectory is integrated. With the exact score of an isotropic mixture on the
    CPU, trajectories run block by block (``NOISE_BLOCK`` rows, all steps of a block while it sits in cache) on
    ``threads`` threads (default: all available cores; torch runs single-threaded inside them and the caller's
    setting is restored). The noise has the fixed per-block seed layout of the module docstring, so the result
    does not depend on ``threads``.
    """
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: must be one of {', '.join(METHODS)}")
    grid = _check_grid(times)
    _check_threads(threads)
    bk = _backend(backend, seed, device, dtype)
    fn = _as_score(score, bk)
    x = bk.copy(bk.asarray(x_init))
    n_steps = grid.size - 1
    keep = set() if record is None else {int(i) for i in np.atleast_1d(record)}
    snaps = {k: np.empty(tuple(x.shape), dtype=np.float64) for k in sorted(keep) if 0 <= k <= n_steps}
    stepper = _Stepper(fn, grid, method, bk)
    sde = method == "euler_maruyama"

    def run_rows(rows: slice, first_block: int) -> None:
        xb = x[rows]

        def snap(k: int, state: Any) -> None:
            if k in snaps:
                snaps[k][rows] = bk.to_numpy(state)

        noise = _Noise(bk, 0, xb.shape[0], first_block) if sde else None
        xb = stepper.run(xb, 0, n_steps, noise, stepper.scratch(xb), snap)  # in place: xb is a view of x
        snap(n_steps, xb)

    n = x.shape[0]
    if stepper.blocked:
        _run_blocks(_n_blocks(n), threads, lambda b: run_rows(slice(b * NOISE_BLOCK, (b + 1) * NOISE_BLOCK), b),
                    bk)
    else:
        run_rows(slice(0, n), 0)
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
    threads: int | None = None,
) -> CloningResult:
    """Cloning experiment of Biroli et al. (2402.18491) with the backward SDE (Euler–Maruyama).

    ``x_init`` (N, d): states at ``times[0]``; ``branch_times`` are snapped to the grid ``times``. Each
    labeller maps end states (N, d) to integer labels (N,) row by row; a single callable is stored under
    ``"class"``. Cost: one pass for the originals plus, for each branching time t_b, a pass of the clones from
    t_b. With the exact score of an isotropic mixture on the CPU the experiment runs block by block of
    ``NOISE_BLOCK`` trajectories on ``threads`` threads (as :func:`integrate`; labellers then see one block at a
    time and are called from those threads); ``progress(done, total)`` counts blocks there and branching times
    otherwise. The numbers do not depend on ``threads``.
    """
    grid = _check_grid(times)
    _check_threads(threads)
    labs = dict(labellers) if isinstance(labellers, Mapping) else {"class": labellers}
    if not labs or not all(callable(f) for f in labs.values()):
        raise TypeError("labellers: must be a callable or a non-empty mapping of name -> callable(x) -> labels")
    bk = _backend(backend, seed, device, dtype)
    fn = _as_score(score, bk)
    idx = snap_to_grid(branch_times, grid)
    x = bk.copy(bk.asarray(x_init))
    n = x.shape[0]
    n_steps = grid.size - 1
    clones = {name: np.empty((idx.size, n), dtype=np.int64) for name in labs}
    original = {name: np.empty(n, dtype=np.int64) for name in labs}
    branch_at = {int(k): j for j, k in enumerate(idx)}
    stepper = _Stepper(fn, grid, "euler_maruyama", bk)

    def run_rows(rows: slice, first_block: int, report: Callable[[int], None] | None) -> None:
        xb = x[rows]
        m = xb.shape[0]
        buf = stepper.scratch(xb)  # shared by originals and clones: one step at a time
        main_noise = _Noise(bk, 0, m, first_block)
        clone = bk.empty_like(xb)
        for k in range(n_steps + 1):
            if k in branch_at:
                j = branch_at[k]
                clone[...] = xb
                clone = stepper.run(clone, k, n_steps, _Noise(bk, j + 1, m, first_block), buf)
                for name, f in labs.items():
                    clones[name][j, rows] = np.asarray(f(clone), dtype=np.int64)
                if report is not None:
                    report(j)
            if k < n_steps:
                xb = stepper.run(xb, k, k + 1, main_noise, buf)
        for name, f in labs.items():
            original[name][rows] = np.asarray(f(xb), dtype=np.int64)

    if stepper.blocked:
        n_blocks = _n_blocks(n)
        lock, done = threading.Lock(), [0]

        def work(b: int) -> None:
            run_rows(slice(b * NOISE_BLOCK, (b + 1) * NOISE_BLOCK), b, None)
            if progress is not None:
                with lock:
                    done[0] += 1
                    progress(done[0], n_blocks)

        _run_blocks(n_blocks, threads, work, bk)
    else:
        run_rows(slice(0, n), 0, None if progress is None else (lambda j: progress(j + 1, idx.size)))
    info = {"backend": bk.name, "dtype": str(bk.dtype), "n_trajectories": n, "n_steps": n_steps}
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
