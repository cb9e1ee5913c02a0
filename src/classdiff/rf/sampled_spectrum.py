"""Sampled feature covariances to check the theory of :mod:`classdiff.theory.spectrum` against.

* :func:`sample_ge_covariance` builds the Gaussian-equivalent U of ``docs/theory.md`` §2 exactly from its
  definition, with the per-feature constants evaluated at each feature's actual type
  m_{c,i} = e^{-t} w_i.mu_c/sqrt(d):

      U_GE = (1/n) sum_nu phibar_nu phibar_nu^T + sum_c rho_c (D_{b_c} K D_{b_c} + D_{s2_c}),
      phibar_nu = kappa0_c + e^{-t} sigma_c D_{a_c} W z_nu / sqrt(d) + D_{sqrt v2_c} omega_nu,   nu in class c,

  K = W W^T/d, z_nu, omega_nu standard Gaussian.
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

from classdiff.data.process import signal_scale
from classdiff.rf.features import equivalence_constants

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
    """Gaussian-equivalent U (p, p) for one draw of W, the class labels and the GE noise (seeded)."""
    config, mixture, d, p, n, W, rng = _setup(config, seed, dim)
    model = config.model
    t = model.time
    e_t = float(signal_scale(t))
    counts = mixture.class_counts(n)
    K = W @ W.T / d
    phibar = np.empty((n, p))
    noise = np.zeros((p, p))
    labels = np.repeat(np.arange(mixture.n_classes), counts)
    start = 0
    for c in range(mixture.n_classes):
        nc = int(counts[c])
        var = float(mixture.mean_variances[c])
        ge = equivalence_constants(model.activation, t, var, e_t * W @ mixture.centroids[c] / math.sqrt(d))
        z = rng.standard_normal((nc, d))
        om = rng.standard_normal((nc, p))
        lin = e_t * math.sqrt(var) * (z @ W.T) / math.sqrt(d)
        phibar[start : start + nc] = ge.kappa0 + ge.a * lin + np.sqrt(np.maximum(ge.v2, 0.0)) * om
        noise += (nc / n) * (np.outer(ge.b, ge.b) * K + np.diag(np.maximum(ge.s2, 0.0)))
        start += nc
    return phibar.T @ phibar / n + noise, labels


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
