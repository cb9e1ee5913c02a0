"""Per-class sample quality and per-class train vs test denoising loss.

* :func:`frechet_distance`: FD between N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; Heusel et al. 2017),
  FD = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}); the matrix square root by symmetric
  eigen-decompositions (no complex round-off as with ``sqrtm(S1 S2)``).
* :func:`frechet_by_class`: per class c, FD between classifier features of samples labelled c and of real
  class-c images.
* :func:`class_histogram`: fraction of samples per classifier label vs the fraction in the data.
* :func:`denoising_loss_by_class`: the image analogue of the random-features train/test curves:
  L_c(k) = E_{x0 in class c} E_eps ||eps_theta(x_k, k) - eps||^2 / d at fixed DDPM steps k (OU times t_k),
  with noise drawn from a generator seeded identically at every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["class_histogram", "denoising_loss_by_class", "frechet_by_class", "frechet_distance"]


def _psd_sqrt(s: NDArray[np.float64]) -> NDArray[np.float64]:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet (2-Wasserstein squared) distance between two Gaussians; means (p,), covariances (p, p)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    r1 = _psd_sqrt(s1)
    cross = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_sqrt = float(np.sqrt(np.clip(cross, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def _moments(f: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_by_class(sample_features: ArrayLike, sample_labels: ArrayLike, real_features: ArrayLike,
                     real_labels: ArrayLike, classes: Sequence[int], min_count: int = 2) -> dict[int, float | None]:
    """Per class c: FD between features (m, p) of samples labelled c and real features (n, p) of class c.

    None where either side has fewer than ``min_count`` images.
    """
    fs, ls = np.asarray(sample_features, np.float64), np.asarray(sample_labels)
    fr, lr = np.asarray(real_features, np.float64), np.asarray(real_labels)
    out: dict[int, float | None] = {}
    for c in classes:
        a, b = fs[ls == c], fr[lr == c]
        if len(a) < min_count or len(b) < min_count:
            out[int(c)] = None
            continue
        out[int(c)] = frechet_distance(*_moments(a), *_moments(b))
    return out


def class_histogram(labels: ArrayLike, classes: Sequence[int]) -> list[float]:
    """Fraction of ``labels`` equal to each of ``classes`` (the rest counted as "other", not returned)."""
    lab = np.asarray(labels)
    n = max(lab.size, 1)
    return [float((lab == c).sum() / n) for c in classes]


def denoising_loss_by_class(model, schedule, images, class_index, ks: Sequence[int], n_classes: int, *,
                            noise_draws: int = 2, seed: int = 0, batch_size: int = 256, device: str = "cpu",
                            conditional: bool = False) -> NDArray[np.float64]:
    """Mean per-pixel epsilon-MSE (n_classes, len(ks)) of ``model`` on ``images`` (n, 1, 28, 28).

    ``class_index`` (n,) in 0..n_classes-1; noise is drawn from a generator seeded by ``seed`` so the same
    images get the same noise at every checkpoint (train and test sets use different seeds upstream).
    """
    import torch

    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    y = torch.as_tensor(np.asarray(class_index, dtype=np.int64))
    sums = np.zeros((n_classes, len(ks)))
    counts = np.bincount(y.numpy(), minlength=n_classes).astype(np.float64) * noise_draws
    g = torch.Generator().manual_seed(int(seed))
    use_bf16 = str(device).startswith("cuda")
    model.eval()
    with torch.no_grad():
        for j, k in enumerate(ks):
            for _ in range(noise_draws):
                eps_all = torch.randn(x.shape, generator=g)
                for i in range(0, len(x), batch_size):
                    x0 = x[i:i + batch_size].to(device)
                    eps = eps_all[i:i + batch_size].to(device)
                    kk = torch.full((len(x0),), int(k), dtype=torch.long, device=device)
                    xk = schedule.add_noise(x0, kk, eps)
                    yb = y[i:i + batch_size].to(device)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                        pred = model(xk, kk, yb if conditional else None)
                    per = ((pred.float() - eps) ** 2).flatten(1).mean(1).double().cpu().numpy()
                    np.add.at(sums[:, j], y[i:i + batch_size].numpy(), per)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def summarize_quality(fd: dict[int, float | None], hist_samples: list[float], hist_data: list[float]
                      ) -> dict[str, Any]:
    return {"frechet": {str(k): v for k, v in fd.items()}, "histogram_samples": hist_samples,
            "histogram_data": hist_data}
