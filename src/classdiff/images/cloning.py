"""Per-class speciation of a trained U-Net by cloning (issue 16 item 4; ``docs/speciation.md`` §7).

The cloning experiment of Biroli et al. on a network: run N backward trajectories of a *stochastic* sampler from
fixed noise, store each state x_{k_b} at the branching steps k_b, and from every stored state start one clone that
finishes with fresh noise. Both ends (the original's and the clone's) are labelled by the Fashion-MNIST classifier
restricted to the run's classes (argmax of its logits over those K columns), and the per-class agreement

    phi_c(t_b) = P(clone ends in c | original ends in c)          (symmetrised, :func:`~classdiff.data.backward.agreement_by_class`)

at the OU time t_b = -(1/2) log alpha-bar_{k_b} is the network's commitment curve, which the theory gives for the
class's Gaussian surrogate (:func:`classdiff.theory.speciation.commitment_curves`). The chance level of class c is
the share q_c of the originals that end in c (the network's own class balance, which need not equal rho_c), and the
speciation time is read off at the absolute or the chance-relative level exactly as for the theory
(:func:`~classdiff.theory.speciation.read_speciation_times`), with bootstrap intervals over trajectories.

Sampler: DDIM with eta = 1 on an evenly spaced sub-sequence of the DDPM steps (Song et al. 2021, eq. 12 with
sigma_k^2 = (1 - ab_{k'}) / (1 - ab_k) (1 - ab_k / ab_{k'})), which is the DDPM posterior step when the sequence is
all T steps; a deterministic sampler (eta = 0) would give every clone its original's end, phi = 1.

Cost: N (S + sum_b (S - j_b)) network evaluations for S sampler steps and branching indices j_b.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from classdiff.images.sampling import ddim_steps
from classdiff.images.schedule import DDPMSchedule

__all__ = ["branch_indices", "class_labeller", "stochastic_step", "unet_cloning"]


def branch_indices(sampler_steps: int, n_branch: int) -> NDArray[np.int64]:
    """Indices j (n_branch,) into the sampler's step sequence (0 = the noisiest step) at which clones start, evenly
    spread over 1 .. S - 2 (the first state is pure noise; a clone of the last state has no step left)."""
    if sampler_steps < 3:
        raise ValueError(f"sampler_steps = {sampler_steps}: cloning needs at least 3 sampler steps")
    if n_branch < 1:
        raise ValueError(f"n_branch = {n_branch}: must be at least 1")
    return np.unique(np.round(np.linspace(1, sampler_steps - 2, n_branch)).astype(np.int64))


def stochastic_step(x, eps, a: float, a_next: float | None, noise, clip: bool = True):
    """One DDIM eta = 1 step from x_k (B, C, H, W) with predicted noise ``eps`` (same shape), alpha-bar ``a`` at k and
    ``a_next`` at the next step k' (None: the last step, which returns x0_hat); ``noise`` (same shape) standard
    normal draws."""
    x0 = (x - (1.0 - a) ** 0.5 * eps) / a ** 0.5
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    if a_next is None:
        return x0
    var = (1.0 - a_next) / (1.0 - a) * (1.0 - a / a_next)
    return a_next ** 0.5 * x0 + max(1.0 - a_next - var, 0.0) ** 0.5 * eps + var ** 0.5 * noise


def class_labeller(classifier, classes: tuple[int, ...], device: str = "cpu", batch_size: int = 512):
    """labeller(images (n, 1, 28, 28)) -> class indices (n,) in 0..K-1: the classifier's argmax over the logits of
    the run's ``classes`` only (a cloning end is always assigned to one of the trained classes)."""
    import torch

    cols = torch.as_tensor(list(classes), dtype=torch.long)

    def label(images) -> NDArray[np.int64]:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                logits = classifier.head(classifier.features(x[i:i + batch_size].to(device))).cpu()
                out.append(logits[:, cols].argmax(1).numpy())
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)

    return label


def _run(model, schedule: DDPMSchedule, x, steps: NDArray[np.int64], start: int, gen, labels, device: str,
         keep: set[int] | None = None, clip: bool = True) -> tuple[Any, dict[int, Any]]:
    """Sampler steps start .. S-1 from x (at step index ``start``); returns the end and the states at ``keep``."""
    import torch

    ab = schedule.alpha_bar
    kept: dict[int, Any] = {}
    for j in range(start, len(steps)):
        if keep is not None and j in keep:
            kept[j] = x.cpu().clone()
        kk = torch.full((x.shape[0],), int(steps[j]), dtype=torch.long, device=device)
        eps = model(x, kk, labels).float()
        a = float(ab[int(steps[j])])
        a_next = float(ab[int(steps[j + 1])]) if j + 1 < len(steps) else None
        z = torch.randn(x.shape, generator=gen).to(device)
        x = stochastic_step(x, eps, a, a_next, z, clip)
    return x.cpu(), kept


def unet_cloning(model, schedule: DDPMSchedule, labeller, *, n_trajectories: int = 200, sampler_steps: int = 20,
                 n_branch: int = 8, seed: int = 0, batch_size: int = 200, device: str = "cpu", labels=None,
                 clip: bool = True, shape: tuple[int, ...] = (1, 28, 28), progress: bool = False) -> dict[str, Any]:
    """Clone the U-Net's backward trajectories at ``n_branch`` sampler steps and label both ends.

    ``model(x, k, y)`` predicts the noise; ``labeller(images) -> (n,)`` class indices; ``labels`` (N,) long are
    the class labels of a class-conditional model (None otherwise); ``clip`` clips x0_hat to [-1, 1] (images);
    ``shape`` is one sample's shape. Returns {"branch_times" (B,) OU times,
    "branch_steps" (B,) DDPM steps, "original" (N,), "clones" (B, N) end labels, "samples" (N, *shape) the
    originals' ends}; seeded: the same seed gives the same ends.
    """
    import torch

    steps = ddim_steps(schedule.num_steps, sampler_steps)
    js = branch_indices(len(steps), n_branch)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    model.eval()
    originals, ends_clone, finals = [], {int(j): [] for j in js}, []
    batches = range(0, n_trajectories, batch_size)
    if progress:
        import sys

        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="cloning", unit="batch", file=sys.stderr, leave=False)
    with torch.no_grad():
        for i in batches:
            n = min(batch_size, n_trajectories - i)
            yb = None if labels is None else labels[i:i + n].to(device)
            x = torch.randn((n, *shape), generator=gen).to(device)
            end, kept = _run(model, schedule, x, steps, 0, gen, yb, device, keep={int(j) for j in js}, clip=clip)
            finals.append(end)
            originals.append(labeller(end.numpy()))
            for j in js:
                clone_end, _ = _run(model, schedule, kept[int(j)].to(device), steps, int(j), gen, yb, device,
                                    clip=clip)
                ends_clone[int(j)].append(labeller(clone_end.numpy()))
    return {
        "branch_steps": steps[js].astype(np.int64),
        "branch_times": schedule.ou_time[steps[js]].astype(np.float64),
        "original": np.concatenate(originals),
        "clones": np.stack([np.concatenate(ends_clone[int(j)]) for j in js]),
        "samples": torch.cat(finals).numpy(),
    }
