"""The DDPM noise schedule of the U-Net experiments and its map to the OU time of the theory.

A schedule with cumulative products alpha-bar_k, k = 0..T-1 (:func:`classdiff.data.process.ddpm_alpha_bar`),
is the OU process of :mod:`classdiff.data.process` observed at the times t_k = -(1/2) log alpha-bar_k
(:func:`classdiff.data.process.ddpm_time`). There e^{-t_k} = sqrt(alpha-bar_k) and Delta_{t_k} = 1 - alpha-bar_k,
so the forward step of Ho et al. (2020, eq. 4),

    x_k = sqrt(alpha-bar_k) x_0 + sqrt(1 - alpha-bar_k) eps,

is the forward step x_t = e^{-t} x_0 + sqrt(Delta_t) eta at t = t_k; :meth:`DDPMSchedule.add_noise` takes its
two coefficients from :func:`~classdiff.data.process.signal_scale` and
:func:`~classdiff.data.process.noise_variance`, the formula's one home.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from classdiff.data.process import ddpm_alpha_bar, ddpm_time, noise_variance, signal_scale

if TYPE_CHECKING:
    import torch

__all__ = ["DDPMSchedule"]


class DDPMSchedule:
    """alpha-bar_k (T,) float64, its OU times t_k (T,) and the forward-step coefficients e^{-t_k} (T,) and
    sqrt(Delta_{t_k}) (T,); ``add_noise`` draws nothing, it combines x_0 and a given noise (torch)."""

    def __init__(self, schedule: str = "linear", num_steps: int = 1000) -> None:
        self.schedule = schedule
        self.num_steps = num_steps
        self.alpha_bar = ddpm_alpha_bar(schedule, num_steps)  # (T,) float64
        self.ou_time = ddpm_time(self.alpha_bar)  # (T,)
        self.signal = signal_scale(self.ou_time)  # (T,) e^{-t_k} = sqrt(alpha-bar_k)
        self.noise_std = np.sqrt(noise_variance(self.ou_time))  # (T,) sqrt(Delta_{t_k}) = sqrt(1 - alpha-bar_k)

    def step_for_time(self, t: float) -> int:
        """The DDPM step k whose OU time t_k is closest to ``t``."""
        return int(np.argmin(np.abs(self.ou_time - t)))

    def add_noise(self, x0: torch.Tensor, k: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_k = e^{-t_k} x_0 + sqrt(Delta_{t_k}) eps for images ``x0`` (B, C, H, W), steps ``k`` (B,) long and
        noise ``eps`` (B, C, H, W); float32 coefficients on the device of ``x0``."""
        import torch

        a = torch.as_tensor(self.signal, dtype=torch.float32, device=x0.device)[k]
        s = torch.as_tensor(self.noise_std, dtype=torch.float32, device=x0.device)[k]
        return a[:, None, None, None] * x0 + s[:, None, None, None] * eps
