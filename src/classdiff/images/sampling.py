"""Deterministic DDIM sampling (Song, Meng & Ermon 2021, eq. 12 with eta = 0) from noise fixed across checkpoints.

With a sub-sequence k_S > ... > k_1 of DDPM steps (evenly spaced in [0, T-1]) and the predicted noise
eps_theta(x, k):

    x0_hat = (x_k - sqrt(1 - alpha-bar_k) eps_theta) / sqrt(alpha-bar_k)          (optionally clipped to [-1, 1])
    x_{k'} = sqrt(alpha-bar_{k'}) x0_hat + sqrt(1 - alpha-bar_{k'}) eps_theta      (k' the next, smaller step)

and the last step returns x0_hat. The starting noise x_T is drawn from a generator seeded by ``seed`` alone, so
the same seed gives the same noise at every checkpoint (samples are comparable along training).
"""

from __future__ import annotations

import numpy as np

from classdiff.images.schedule import DDPMSchedule

__all__ = ["ddim_sample", "ddim_steps", "fixed_noise"]


def ddim_steps(num_diffusion_steps: int, sampler_steps: int) -> np.ndarray:
    """Decreasing DDPM steps (sampler_steps,) evenly spaced from T-1 down to 0."""
    return np.unique(np.round(np.linspace(0, num_diffusion_steps - 1, sampler_steps)).astype(int))[::-1].copy()


def fixed_noise(n: int, seed: int, shape: tuple[int, ...] = (1, 28, 28)):
    """Starting noise (n, *shape) float32 from a CPU generator seeded by ``seed`` (same on every call)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((n, *shape), generator=g)


def ddim_sample(model, schedule: DDPMSchedule, noise, *, sampler_steps: int = 100, labels=None,
                batch_size: int = 256, clip: bool = True, device: str = "cpu", progress: bool = False):
    """DDIM (eta = 0) samples (n, 1, 28, 28) float32 on CPU from ``noise`` (n, 1, 28, 28).

    ``labels`` (n,) long are the class indices passed to a class-conditional model (ignored otherwise).
    """
    import torch

    steps = ddim_steps(schedule.num_steps, sampler_steps)
    ab = torch.as_tensor(schedule.alpha_bar, dtype=torch.float32)
    out = []
    model.eval()
    use_bf16 = str(device).startswith("cuda")
    rng = range(0, noise.shape[0], batch_size)
    if progress:
        import sys

        from tqdm.auto import tqdm

        rng = tqdm(rng, desc="ddim", unit="batch", file=sys.stderr, leave=False)
    with torch.no_grad():
        for i in rng:
            x = noise[i:i + batch_size].to(device)
            yb = None if labels is None else labels[i:i + batch_size].to(device)
            for j, k in enumerate(steps):
                kk = torch.full((x.shape[0],), int(k), dtype=torch.long, device=device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                    eps = model(x, kk, yb).float()
                a = ab[int(k)]
                x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
                if clip:
                    x0 = x0.clamp(-1.0, 1.0)
                if j + 1 < len(steps):
                    a_next = ab[int(steps[j + 1])]
                    x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
                else:
                    x = x0
            out.append(x.float().cpu())
    return torch.cat(out)
