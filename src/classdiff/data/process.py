"""The forward Ornstein–Uhlenbeck (variance-preserving) process and its DDPM discretisation.

Convention (``docs/theory.md`` §1, Bonnaire et al. 2505.17638 eq. 1):

    x_t = e^{-t} x_0 + sqrt(Delta_t) eta,   Delta_t = 1 - e^{-2t},   eta ~ N(0, I_d).

A DDPM schedule with cumulative product alpha-bar_k maps to OU time t_k = -(1/2) log alpha-bar_k,
so that e^{-t_k} = sqrt(alpha-bar_k) and Delta_{t_k} = 1 - alpha-bar_k.

All functions accept scalars or arrays and broadcast (float64); :func:`diffuse` also takes torch tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ddpm_alpha_bar",
    "ddpm_time",
    "diffuse",
    "noise_variance",
    "ou_time_to_alpha_bar",
    "signal_scale",
]

SCHEDULES = ("linear", "cosine")


def signal_scale(t: ArrayLike) -> NDArray[np.float64]:
    """e^{-t}, the factor multiplying x_0 in x_t (shape of ``t``)."""
    return np.exp(-np.asarray(t, dtype=np.float64))


def noise_variance(t: ArrayLike) -> NDArray[np.float64]:
    """Delta_t = 1 - e^{-2t}, the variance of the added noise (shape of ``t``); -expm1 keeps small t exact."""
    return -np.expm1(-2.0 * np.asarray(t, dtype=np.float64))


def diffuse(x0: Any, t: ArrayLike, rng: np.random.Generator | None = None, *, eta: Any = None) -> tuple[Any, Any]:
    """The forward step x_t = e^{-t} x_0 + sqrt(Delta_t) eta; returns (x_t, eta).

    ``x0`` is a numpy array or a torch tensor, e.g. (n, d). ``eta`` is the noise, of the same kind as ``x0`` and
    broadcasting against it (e.g. (n, M, d) against x0 (n, 1, d)); when it is None, standard normals of the shape
    of ``x0`` are drawn from ``rng`` (numpy only). ``t`` is a scalar or a numpy array broadcasting against
    ``x0`` (e.g. (n, 1) for one time per row). The two coefficients are :func:`signal_scale` and the square root
    of :func:`noise_variance` in float64 (python floats for a scalar ``t`` on torch, tensors of ``x0``'s dtype
    and device for an array ``t``), and x_t is evaluated as ``e_t * x0 + sqrt_delta * eta`` in that order, so
    the same inputs give the same bits wherever the step is taken.
    """
    if eta is None:
        if rng is None:
            raise ValueError("diffuse: give either rng (to draw the noise) or eta")
        eta = rng.standard_normal(np.shape(x0))
    elif rng is not None:
        raise ValueError("diffuse: give rng or eta, not both")
    e_t, sq_delta = signal_scale(t), np.sqrt(noise_variance(t))
    if hasattr(x0, "detach"):  # torch: the coefficients as python floats or tensors on x0's device
        if e_t.ndim == 0:
            e_t, sq_delta = float(e_t), float(sq_delta)
        else:  # Tensor.new_tensor: x0's dtype and device, without importing torch here
            e_t, sq_delta = x0.new_tensor(e_t), x0.new_tensor(sq_delta)
    return e_t * x0 + sq_delta * eta, eta


def ddpm_alpha_bar(
    schedule: str = "linear",
    num_steps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_offset: float = 0.008,
) -> NDArray[np.float64]:
    """Cumulative products alpha-bar_k, k = 0..T-1, of a DDPM schedule (shape (T,)).

    ``linear``: beta_k linearly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020).
    ``cosine``: alpha-bar(k) = f(k)/f(0), f(k) = cos^2(((k/T) + s)/(1 + s) * pi/2), betas clipped at 0.999
    (Nichol & Dhariwal 2021), with the step index shifted so that alpha-bar_0 < 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule = {schedule!r}: must be one of {', '.join(SCHEDULES)}")
    if not (isinstance(num_steps, int | np.integer) and num_steps >= 1):
        raise ValueError(f"num_steps = {num_steps!r}: must be an integer >= 1")
    if schedule == "linear":
        if not (0 < beta_start <= beta_end < 1):
            raise ValueError(
                f"beta_start, beta_end = {beta_start}, {beta_end}: must satisfy 0 < beta_start <= beta_end < 1"
            )
        betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
        return np.cumprod(1.0 - betas)
    k = np.arange(num_steps + 1, dtype=np.float64)
    f = np.cos(((k / num_steps) + cosine_offset) / (1 + cosine_offset) * np.pi / 2) ** 2
    betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    return np.cumprod(1.0 - betas)


def ddpm_time(alpha_bar: ArrayLike) -> NDArray[np.float64]:
    """OU time t = -(1/2) log alpha-bar of DDPM cumulative products (shape of ``alpha_bar``)."""
    a = np.asarray(alpha_bar, dtype=np.float64)
    if np.any((a <= 0) | (a > 1)):
        raise ValueError("alpha_bar: every value must lie in (0, 1]")
    return -0.5 * np.log(a)


def ou_time_to_alpha_bar(t: ArrayLike) -> NDArray[np.float64]:
    """Inverse of :func:`ddpm_time`: alpha-bar = e^{-2t} (shape of ``t``)."""
    return np.exp(-2.0 * np.asarray(t, dtype=np.float64))
