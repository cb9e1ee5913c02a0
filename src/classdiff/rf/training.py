"""Iterative training of the random-features score model with torch (full-batch GD or Adam, CPU or CUDA).

This validates the closed form of :mod:`classdiff.rf.model` and lets one study Adam. The parameters,
features and per-class evaluation are those of a fitted :class:`~classdiff.rf.model.RandomFeaturesScore`;
only the dynamics of A differ. Three versions of the training loss (``noise``):

``"moments"``  L(A) = 1 + (Delta_t/(d p)) tr(A U A^T) + (2 sqrt(Delta_t)/(d sqrt p)) tr(A V) with the model's
               U, V: exactly the quadratic whose gradient flow the closed form solves (``DESIGN.md`` eq. for L).
``"fixed"``    (1/(n M d)) sum_{nu, m} || sqrt(Delta_t) A phi(x_t^{nu, m})/sqrt(p) + eta^{nu, m} ||^2 over M fixed
               noise draws per point. The draws are the ones ``noise_averaged_moments(method="mc")`` uses with
               the same seed, so a model fitted with ``method="mc"`` has exactly this quadratic.
``"fresh"``    one fresh draw per point at every step (the precursor's protocol, Bonnaire et al. code): an
               unbiased stochastic gradient of the noise-averaged loss.

Time: after k steps with learning rate eta, tau = k eta / d^2 (for GD this is the flow time of ``DESIGN.md``;
for Adam the same formula is used as a unit of training time). The per-class train / test loss and score
error are evaluated at log-spaced steps with :meth:`RandomFeaturesScore.losses`, i.e. on the same moments
as the closed-form curves.

torch is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.data.mixture import TrainingSet
from classdiff.data.process import diffuse
from classdiff.rf.model import RandomFeaturesScore

__all__ = ["TrainingHistory", "gd_learning_rate", "train_random_features"]

Array = NDArray[np.float64]
NOISE_MODES = ("moments", "fixed", "fresh")
OPTIMIZERS = ("gd", "adam")


@dataclass
class TrainingHistory:
    """Logged curves of one iterative run. Per-class arrays have shape (K, L) for L logged steps."""

    tau: Array
    steps: NDArray[np.int64]
    train_loss: Array
    test_loss: Array
    score_error: Array
    optimizer: str
    noise: str
    learning_rate: float
    seconds: float
    A: Array = field(repr=False)
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("tau", "steps", "train_loss", "test_loss", "score_error",
                                               "optimizer", "noise", "learning_rate", "seconds", "device")}


def gd_learning_rate(model: RandomFeaturesScore, fraction: float = 0.1) -> float:
    """GD step eta = fraction * d p / (Delta_t lambda_max): each step contracts the stiffest mode of U by
    2 * fraction (stable for fraction < 1); the flow time per step is eta / d^2."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction = {fraction!r}: must lie in (0, 1) for a stable GD step")
    lam_max = float(model.eigenvalues_[-1])
    return fraction * model.dim_ * model.n_features / (model.delta_ * lam_max)


def _log_steps(tau_log: Array, eta: float, d: int) -> NDArray[np.int64]:
    """Whole steps k = round(tau d^2 / eta) >= 1 nearest to the requested log times (unique, sorted)."""
    return np.unique(np.maximum(np.round(np.asarray(tau_log) * d * d / eta), 1).astype(np.int64))


def train_random_features(
    model: RandomFeaturesScore,
    training_set: TrainingSet,
    tau: ArrayLike,
    optimizer: str = "gd",
    noise: str = "moments",
    learning_rate: float | None = None,
    noise_samples: int | None = None,
    max_steps: int = 10_000_000,
    device: str = "auto",
    seed: int = 0,
) -> TrainingHistory:
    """Train A from A(0) = 0 by full-batch GD or Adam and log per-class curves near the times ``tau``.

    Parameters
    ----------
    model : a fitted :class:`RandomFeaturesScore` (its W, moments and fresh-sample moments are used).
    training_set : the points the model was fitted on (needed for ``noise = "fixed"`` / ``"fresh"``).
    tau : increasing training times (T,) at which to log; rounded to whole steps k = round(tau d^2 / eta).
    optimizer : ``"gd"`` (torch SGD without momentum) or ``"adam"`` (torch Adam, default betas).
    noise : ``"moments"``, ``"fixed"`` or ``"fresh"`` (module docstring).
    learning_rate : eta; default :func:`gd_learning_rate` with fraction 0.1 for GD and 1e-3 for Adam.
    noise_samples : M for ``noise = "fixed"`` (default ``model.noise_samples``).
    max_steps : refuse to run more steps than this.
    device : ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``. Computation is float64.
    seed : seed of the fresh noise draws.
    """
    import torch

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer = {optimizer!r}: must be one of {', '.join(OPTIMIZERS)}")
    if noise not in NOISE_MODES:
        raise ValueError(f"noise = {noise!r}: must be one of {', '.join(NOISE_MODES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device = {device!r}: must be 'auto', 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device = 'cuda': no CUDA device is available")
    model._check_fitted()
    d, p = model.dim_, int(model.n_features)
    if training_set.x.shape != (model.n_, d):
        raise ValueError(f"training_set: shape {training_set.x.shape}, the model was fitted on ({model.n_}, {d})")
    eta = float(learning_rate) if learning_rate is not None else (
        gd_learning_rate(model) if optimizer == "gd" else 1e-3)
    if not np.isfinite(eta) or eta <= 0:
        raise ValueError(f"learning_rate = {learning_rate!r}: must be finite and > 0")
    tau_log = np.atleast_1d(np.asarray(tau, dtype=np.float64))
    if tau_log.ndim != 1 or np.any(~np.isfinite(tau_log)) or np.any(tau_log <= 0):
        raise ValueError("tau: must be a 1-D array of finite times > 0")
    total = round(float(tau_log.max()) * d * d / eta)
    if total > max_steps:
        raise ValueError(f"tau: reaching tau = {tau_log.max():g} with learning_rate {eta:g} needs {total} steps "
                         f"> max_steps = {max_steps}")
    steps = _log_steps(tau_log, eta, d)

    dev = torch.device(device)
    f64 = torch.float64
    delta = model.delta_
    sq_delta, sq_p = math.sqrt(delta), math.sqrt(p)
    A = torch.zeros((d, p), dtype=f64, device=dev, requires_grad=True)
    opt = (torch.optim.SGD([A], lr=eta) if optimizer == "gd" else torch.optim.Adam([A], lr=eta))
    W = torch.as_tensor(model.W_, dtype=f64, device=dev)
    X = torch.as_tensor(training_set.x, dtype=f64, device=dev)
    act = {"tanh": torch.tanh, "relu": torch.relu, "erf": torch.erf, "identity": lambda z: z}[model.activation]

    if noise == "moments":
        U = torch.as_tensor(model.U_, dtype=f64, device=dev)
        V = torch.as_tensor(model.V_, dtype=f64, device=dev)

        def loss_fn(_k: int):
            return 1.0 + (delta / (d * p)) * ((A @ U) * A).sum() + (2 * sq_delta / (d * sq_p)) * (A * V.T).sum()
    elif noise == "fixed":
        m = int(noise_samples if noise_samples is not None else model.noise_samples)
        if m < 1:
            raise ValueError(f"noise_samples = {m!r}: must be >= 1")
        if model.n_ * m * (p + d) * 8 > 2**31:
            raise ValueError("noise = 'fixed': the (n M, p) feature tensor would exceed 2 GB; lower noise_samples")
        # the draws of noise_averaged_moments(method="mc") for the training moments (stream 2)
        rng = np.random.default_rng(np.random.SeedSequence([int(model.seed) * 1000 + 2, 0x4E01]))
        eta_np = rng.standard_normal((model.n_, m, d))
        E = torch.as_tensor(eta_np.reshape(-1, d), dtype=f64, device=dev)
        Xt, _ = diffuse(X.repeat_interleave(m, dim=0), model.time, eta=E)
        Phi = act(Xt @ W.T / math.sqrt(d))
        rows = Phi.shape[0]

        def loss_fn(_k: int):
            return ((sq_delta / sq_p) * Phi @ A.T + E).pow(2).sum() / (rows * d)
    else:
        gen = torch.Generator(device=dev)
        gen.manual_seed(int(seed))

        def loss_fn(_k: int):
            e = torch.randn(X.shape, generator=gen, dtype=f64, device=dev)
            phi = act(diffuse(X, model.time, eta=e)[0] @ W.T / math.sqrt(d))
            return ((sq_delta / sq_p) * phi @ A.T + e).pow(2).sum() / (X.shape[0] * d)

    logs: list[dict[str, Array]] = []
    t0 = _time.perf_counter()
    k = 0
    for target in steps:
        while k < target:
            opt.zero_grad(set_to_none=True)
            loss_fn(k).backward()
            opt.step()
            k += 1
        logs.append(model.losses(A.detach().cpu().numpy()))
    seconds = _time.perf_counter() - t0
    keys = ("train_loss", "test_loss", "score_error")
    arrays = {key: np.stack([lg[key] for lg in logs], axis=1) if key in logs[0] else
              np.full((model.n_classes_, steps.size), np.nan) for key in keys}
    return TrainingHistory(
        tau=steps * eta / d**2, steps=steps, optimizer=optimizer, noise=noise, learning_rate=eta, seconds=seconds,
        A=A.detach().cpu().numpy(), device=str(dev), **arrays,
    )

