"""Activations and the Gaussian-equivalence (GE) constants of random features, per class, by quadrature.

For a feature phi_i(x_t) = sigma(h), the pre-activation of a point of class c at diffusion time t is

    h = m + e^{-t} sigma_c u + sqrt(Delta_t) v,      u, v ~ N(0, 1) independent,

where ``m = e^{-t} w_i . mu_c / sqrt(d)`` is the feature's mean for that class (0 for centred classes),
u carries the data fluctuation and v the diffusion noise. Write f(u) = E_v sigma(h) for the noise-averaged
feature. The GE constants (``docs/theory.md`` §2; Bonnaire et al. 2505.17638 SM eqs. 38–48 for m = 0,
with sigma_x^2 -> sigma_c^2 used as a *variance*, which the precursor's code gets wrong) are

    kappa0 = E[sigma(h)]                                   mean feature (creates the centroid spikes)
    a      = E[sigma'(h)]                                  linear coefficient of e^{-t} w.(x - mu_c)/sqrt d
    b      = E[v sigma(h)] = sqrt(Delta_t) a               linear coefficient of the noise (Stein)
    v2     = Var_u f(u) - e^{-2t} sigma_c^2 a^2             non-linear part of the noise-averaged feature
    s2     = E[sigma(h)^2] - E_u[f(u)^2] - b^2              non-linear part of the noise fluctuation
    norm2  = E[sigma(h)^2]

and mu1 = Gamma a with Gamma^2 = e^{-2t} sigma_c^2 + Delta_t (the precursor's mu_1 when m = 0).
Everything is computed with Gauss–Hermite quadrature (1-D for kappa0, a, norm2, with an order growing with
the pre-activation scale for tanh; nested 1-D rules for E_u f^2) or in closed form (relu), to ~1e-13,
vectorised over arrays of ``mean``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import erf, ndtr, roots_hermitenorm

from classdiff.core.config import ACTIVATIONS
from classdiff.data.process import noise_variance, signal_scale

__all__ = ["ACTIVATIONS", "EquivalenceConstants", "activation", "activation_derivative", "curvature",
           "equivalence_constants", "hermite_coefficient", "hermite_e"]


Array = NDArray[np.float64]


def activation(name: str) -> Callable[[Array], Array]:
    """The activation sigma by name (``tanh`` default, ``relu``, ``erf``, ``identity``)."""
    if name == "tanh":
        return np.tanh
    if name == "relu":
        return lambda x: np.maximum(x, 0.0)
    if name == "erf":
        return erf
    if name == "identity":
        return lambda x: np.asarray(x, dtype=np.float64)
    raise ValueError(f"activation = {name!r}: must be one of {', '.join(ACTIVATIONS)}")


def activation_derivative(name: str) -> Callable[[Array], Array]:
    """sigma' for the activations of :func:`activation`."""
    if name == "tanh":
        return lambda x: 1.0 - np.tanh(x) ** 2
    if name == "relu":
        return lambda x: (np.asarray(x) > 0).astype(np.float64)
    if name == "erf":
        return lambda x: 2.0 / np.sqrt(np.pi) * np.exp(-np.asarray(x) ** 2)
    if name == "identity":
        return lambda x: np.ones_like(np.asarray(x, dtype=np.float64))
    raise ValueError(f"activation = {name!r}: must be one of {', '.join(ACTIVATIONS)}")


@cache
def gauss_hermite(n: int) -> tuple[Array, Array]:
    """Nodes and weights for E_{z~N(0,1)}[g(z)] ~= sum_k w_k g(z_k) (probabilists' rule), shape (n,) each.

    Uses ``scipy.special.roots_hermitenorm``, which stays finite for large n (numpy's ``hermegauss``
    overflows to nan beyond ~ 360 nodes).
    """
    x, w = roots_hermitenorm(int(n))
    return x, w / np.sqrt(2.0 * np.pi)


def quadrature_order(activation_name: str, scale: float) -> int:
    """Gauss–Hermite order for E[sigma(m + scale z)] to ~1e-13 (tanh: its poles at distance pi/(2 scale) from
    the real axis make the needed order grow like scale^2; erf is entire)."""
    if activation_name == "tanh":
        return int(min(3000, max(160, np.ceil(200.0 * scale * scale))))
    return 160


@dataclass(frozen=True)
class EquivalenceConstants:
    """GE constants of one activation at one diffusion time, broadcast over the feature means ``mean``."""

    activation: str
    time: float
    variance: float | Array
    mean: Array
    kappa0: Array
    a: Array
    b: Array
    v2: Array
    s2: Array
    norm2: Array

    @property
    def gamma2(self) -> float | Array:
        """Gamma_t^2 = e^{-2t} sigma_c^2 + Delta_t, the pre-activation variance (an array when ``variance`` is)."""
        g2 = signal_scale(self.time) ** 2 * np.asarray(self.variance) + noise_variance(self.time)
        return float(g2) if np.ndim(g2) == 0 else g2

    @property
    def mu1(self) -> Array:
        """mu_1 = E[sigma(Gamma z) z] = Gamma a (the precursor's eq. 14 constant)."""
        return np.sqrt(self.gamma2) * self.a


def equivalence_constants(
    activation_name: str, time: float, variance: float | ArrayLike, mean: ArrayLike = 0.0, n_nodes: int = 0
) -> EquivalenceConstants:
    """GE constants for ``h = mean + e^{-t} sqrt(variance) u + sqrt(Delta_t) v`` (see module docstring).

    Parameters
    ----------
    activation_name : one of :data:`ACTIVATIONS`.
    time : diffusion time t > 0.
    variance : class variance sigma_c^2 > 0 (a variance, not a standard deviation); a scalar, or an array
        broadcastable with ``mean`` when the pre-activation variance differs between features (anisotropic
        classes, :mod:`classdiff.theory.covariance_types`: there it is w_i^T Sigma_c w_i / d).
    mean : pre-activation mean(s) m, any shape; the constants have the broadcast shape of ``mean`` and ``variance``.
    n_nodes : quadrature order (default: :func:`quadrature_order`; relu is closed form except the outer
        160-node integral over u of the smooth noise-averaged feature).
    """
    if not np.isfinite(time) or time <= 0:
        raise ValueError(f"time = {time!r}: must be finite and > 0")
    var = np.asarray(variance, dtype=np.float64)
    if not np.all(np.isfinite(var)) or not np.all(var > 0):
        shown = variance if var.ndim == 0 else f"array with min {var.min()!r}"
        raise ValueError(f"variance = {shown}: must be finite and > 0")
    sig = activation(activation_name)
    dsig = activation_derivative(activation_name)
    m = np.asarray(mean, dtype=np.float64)
    if var.ndim:
        m, var = np.broadcast_arrays(m, var)
        m = m.copy()
    s_u = signal_scale(time) * np.sqrt(var)
    s_u = float(s_u) if var.ndim == 0 else s_u
    s_v = float(np.sqrt(noise_variance(time)))
    gamma = np.hypot(s_u, s_v)
    stored_variance = float(var) if var.ndim == 0 else var
    if activation_name == "identity":
        zeros = np.zeros_like(m)
        a = np.ones_like(m)
        return EquivalenceConstants(activation_name, float(time), stored_variance, m, m.copy(), a, s_v * a,
                                    zeros, zeros.copy(), m**2 + gamma**2)
    if activation_name == "relu":
        # closed forms for N(m, gamma^2): E relu, E relu', E relu^2; and f(u) = E_v relu(.) in closed form
        ratio = m / gamma
        pdf = np.exp(-0.5 * ratio**2) / np.sqrt(2.0 * np.pi)
        kappa0 = m * ndtr(ratio) + gamma * pdf
        a = ndtr(ratio)
        norm2 = (m**2 + gamma**2) * ndtr(ratio) + m * gamma * pdf

        def smoothed(mu: Array) -> Array:  # E_v relu(mu + s_v v)
            r = mu / s_v
            return mu * ndtr(r) + s_v * np.exp(-0.5 * r * r) / np.sqrt(2.0 * np.pi)
    else:
        n = n_nodes or quadrature_order(activation_name, float(np.max(gamma)))
        z, w = gauss_hermite(n)
        h1 = m[..., None] + np.asarray(gamma)[..., None] * z
        kappa0 = (sig(h1) * w).sum(-1)
        norm2 = (sig(h1) ** 2 * w).sum(-1)
        a = (dsig(h1) * w).sum(-1)
        zi, wi = gauss_hermite(n_nodes or quadrature_order(activation_name, s_v))

        def smoothed(mu: Array) -> Array:  # E_v sigma(mu + s_v v), inner quadrature
            return (sig(mu[..., None] + s_v * zi) * wi).sum(-1)
    # E_u[f(u)^2]: f is smooth (entire for tanh/erf/relu once noise-averaged), outer Gauss–Hermite in u
    # (a loop over the outer nodes keeps the memory at mean.size x inner nodes)
    zo, wo = gauss_hermite(n_nodes or 160)
    ef2 = np.zeros_like(m)
    for zj, wj in zip(zo, wo):
        ef2 = ef2 + wj * smoothed(m + s_u * zj) ** 2
    b = s_v * a
    v2 = ef2 - kappa0**2 - s_u**2 * a**2
    s2 = norm2 - ef2 - b**2
    return EquivalenceConstants(activation_name, float(time), stored_variance, m, kappa0, a, b, v2, s2, norm2)


def hermite_coefficient(activation_name: str, time: float, variance: ArrayLike, mean: ArrayLike = 0.0,
                        order: int = 2, n_nodes: int = 0) -> Array:
    """c_n = E[sigma^(n)(h)] for ``h = mean + e^{-t} sqrt(variance) u + sqrt(Delta_t) v`` (shapes as
    :func:`equivalence_constants`), n = ``order`` >= 1: the coefficient of the degree-n Hermite term of the
    noise-averaged feature in its clean pre-activation, (c_n / n!) s^n He_n(u'/s) with u' = h - mean -
    sqrt(Delta_t) v and s^2 = E u'^2 (``docs/theory.md`` §8.9). c_1 is the GE constant ``a``.

    By Stein's identity, E[sigma^(n)(h)] = E[sigma'(h) He_{n-1}(z)] / gamma^{n-1} with h = m + gamma z and
    gamma^2 = e^{-2t} variance + Delta_t, evaluated with the Gauss–Hermite rule of :func:`quadrature_order` plus
    ``order`` nodes (tanh, erf); closed form for relu (Phi(m/gamma) for n = 1, else
    (-1)^n He_{n-2}(m/gamma) phi(m/gamma) / gamma^{n-1}) and identity (1 for n = 1, else 0).
    """
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
        raise ValueError(f"order = {order!r}: must be an integer >= 1")
    if not np.isfinite(time) or time <= 0:
        raise ValueError(f"time = {time!r}: must be finite and > 0")
    var = np.asarray(variance, dtype=np.float64)
    if not np.all(np.isfinite(var)) or not np.all(var > 0):
        raise ValueError(f"variance: must be finite and > 0 (min {float(np.min(var))!r})")
    m, var = np.broadcast_arrays(np.asarray(mean, dtype=np.float64), var)
    gamma = np.sqrt(signal_scale(time) ** 2 * var + noise_variance(time))
    if activation_name == "identity":
        return np.ones_like(m) if order == 1 else np.zeros_like(m)
    if activation_name == "relu":
        x = m / gamma
        if order == 1:
            return ndtr(x)
        density = np.exp(-0.5 * x**2) / np.sqrt(2.0 * np.pi)
        return (-1.0) ** order * hermite_e(order - 2, x) * density / gamma ** (order - 1)
    dsig = activation_derivative(activation_name)
    z, w = gauss_hermite(n_nodes or quadrature_order(activation_name, float(np.max(gamma))) + order)
    return (dsig(m[..., None] + gamma[..., None] * z) * (w * hermite_e(order - 1, z))).sum(-1) / gamma ** (order - 1)


def curvature(activation_name: str, time: float, variance: ArrayLike, mean: ArrayLike = 0.0,
              n_nodes: int = 0) -> Array:
    """c2 = E[sigma''(h)]: :func:`hermite_coefficient` of order 2, the degree-2 term's coefficient
    (c2/2)(u'^2 - E u'^2) of ``docs/theory.md`` §8.9."""
    return hermite_coefficient(activation_name, time, variance, mean, order=2, n_nodes=n_nodes)


def hermite_e(n: int, x: ArrayLike, variance: ArrayLike = 1.0) -> Array:
    """The probabilists' Hermite polynomial of variance v, s^n He_n(x / s) with s^2 = ``variance`` (He_n itself
    for v = 1), by the three-term recurrence P_0 = 1, P_1 = x, P_{k+1} = x P_k - k v P_{k-1}; broadcast over x
    and v. Written without dividing by s, so v = 0 gives x^n."""
    x = np.asarray(x, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    previous, current = np.ones_like(x), x
    if n == 0:
        return previous
    for k in range(1, n):
        previous, current = current, x * current - k * v * previous
    return current
