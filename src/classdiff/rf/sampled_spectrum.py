"""Sampled feature covariances to check the theory of :mod:`classdiff.theory.spectrum` against.

* :func:`sample_ge_covariance` is the Gaussian-equivalent U of ``docs/theory.md`` §2,
  :func:`classdiff.rf.gaussian_equivalence.gaussian_equivalent_covariance`, with the per-feature constants at
  each feature's actual type m_{c,i} = e^{-t} w_i.mu_c/sqrt(d) and Gaussian points of the classes,
  x_nu - mu_c = sigma_c z_nu, z_nu standard Gaussian:

      U_GE = (1/n) sum_nu phibar_nu phibar_nu^T + sum_c rho_c (D_{b_c} K D_{b_c} + D_{s2_c}),
      phibar_nu = kappa0_c + e^{-t} sigma_c D_{a_c} W z_nu / sqrt(d) + D_{sqrt v2_c} omega_nu,   nu in class c,

  K = W W^T/d, omega_nu standard Gaussian.
* :func:`sample_true_covariance` is the noise-averaged U of the tanh (or other) random features on an actual
  training set, computed exactly in the noise by the Mehler series of
  :func:`classdiff.rf.model.noise_averaged_moments` (an independent implementation).

Both return (U (p, p), labels of the n training points) for the sizes p = round(psi_p d), n = round(psi_n d).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from classdiff.rf.gaussian_equivalence import gaussian_equivalent_covariance

__all__ = ["sample_ge_covariance", "sample_true_covariance"]

Array = NDArray[np.float64]


def _setup(config: Any, seed: int, dim: int | None):
    from classdiff.data.mixture import GaussianMixture

    mc, model = config.mixture, config.model
    if dim is not None and dim != mc.dim:
        config = config.with_overrides({"mixture.dim": int(dim)} | (
            {"mixture.geometry": "random"} if mc.geometry == "explicit" else {}))
        mc = config.mixture
    mixture = GaussianMixture.from_config(mc)
    d = mc.dim
    p, n = round(model.psi_p * d), max(round(model.psi_n * d), mixture.n_classes)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5BEC]))
    W = rng.standard_normal((p, d))
    return config, mixture, d, p, n, W, rng


def sample_ge_covariance(config: Any, seed: int = 0, dim: int | None = None) -> tuple[Array, NDArray[np.int64]]:
    """Gaussian-equivalent U (p, p) for one draw of W, the class labels and the GE noise (seeded): U_GE of
    :func:`classdiff.rf.gaussian_equivalence.gaussian_equivalent_covariance` with Gaussian offsets
    delta_nu = sigma_c z_nu; labels (n,) sorted by class, n_c from ``mixture.class_counts(n)``."""
    config, mixture, d, p, n, W, rng = _setup(config, seed, dim)
    model = config.model
    counts = mixture.class_counts(n)
    labels = np.repeat(np.arange(mixture.n_classes), counts)
    deviations = np.empty((n, d))
    omega = np.empty((n, p))
    start = 0
    for c in range(mixture.n_classes):  # z then omega, class by class
        rows = slice(start, start + int(counts[c]))
        deviations[rows] = math.sqrt(float(mixture.mean_variances[c])) * rng.standard_normal((int(counts[c]), d))
        omega[rows] = rng.standard_normal((int(counts[c]), p))
        start = rows.stop
    U = gaussian_equivalent_covariance(W, model.activation, model.time, mixture.centroids, mixture.mean_variances,
                                       labels, deviations, omega)
    return U, labels


def sample_true_covariance(config: Any, seed: int = 0, dim: int | None = None,
                           series_order: int = 8) -> tuple[Array, NDArray[np.int64]]:
    """Exact noise-averaged U (p, p) of the actual random features on a sampled training set (seeded)."""
    from classdiff.rf.model import noise_averaged_moments

    config, mixture, _, _, n, W, _ = _setup(config, seed, dim)
    model = config.model
    data = mixture.sample(n, seed=seed)
    moments = noise_averaged_moments(data.x, data.labels, mixture.n_classes, W, model.activation, model.time,
                                     method="series", series_order=series_order)
    U = sum(m.U * (m.count / n) for m in moments)
    return U, data.labels
