"""The rank-S linear spike part of anisotropic classes in the resolvent of U (``docs/theory.md`` §8.7).

A class with covariance Sigma_c = sigma_perp,c^2 I + sum_k s_{c,k} v_{c,k} v_{c,k}^T has, besides the bulk term of
equations (F), the linear part sum_k f_{c,k} f_{c,k}^T of its per-sample feature covariance, with spike vectors
f_{c,k} (p,) whose entries depend on the feature type only (:mod:`classdiff.theory.covariance_types`). In the
sample-level resolvent R = (sum_c gamma_c C_c + B - z)^{-1} this is the block L D L^T, with L = [f_j] (p, S) and
D = diag(gamma_{c(j)}). A leave-one-out over the whole block (Woodbury) gives, with the block's bilinear forms
concentrating on their diagonal (the bulk columns of W are independent of the types):

    Omega_L = p E_type[r f f^T]                          (S, S),
    Pi_L = (I + Omega_L D)^{-1},   M_L = D Pi_L          (L^T R = Pi_L L^T R^(L)),
    r_tau = 1 / (Lambda_tau - z + f_tau^T M f_tau + f_L,tau^T M_L f_L,tau)       (self-energy of the block),
    delta_c = [A_c T_cc + psi_p E_type[r v2_c]] / psi_n + (1/n) sum_{j in c} (Omega_L (I + D Omega_L)^{-1})_jj.

The block's terms are O(S/p) in the normalized traces, so the limiting density is that of (F). They are kept
because S/p is not small for real classes (S = 32 spikes against p = 392 features at d = 196), and the loss
curves feel them: without the block the covariance-aware tau_mem was 1.4-4.3x too late (§8.6).

The equations are solved by a damped fixed-point iteration that starts from the solution of (F)
(:func:`classdiff.theory.solver.solve_points`); the contour of :class:`~classdiff.theory.type_losses.TypeLossModel`
stays away from the spectrum, where the iteration contracts.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from classdiff.theory.equations import FeatureTypes, unpack

__all__ = ["solve_spike_block", "spike_upper_bound"]

CArray = NDArray[np.complex128]


def spike_upper_bound(ft: FeatureTypes) -> float:
    """An upper bound of ||L D L^T|| <= sum_j |f_j|^2 = p sum_j E_type[f_j^2] (gamma_c <= rho_c <= 1)."""
    if ft.spike_vectors is None:
        return 0.0
    p = ft.psi_p * ft.dim
    return float(p * np.sum(ft.node_weights * (ft.spike_vectors**2).sum(axis=0)))


def _parts(ft: FeatureTypes, z: CArray, delta: CArray, dm: CArray, om_l: CArray) -> dict[str, CArray]:
    k = ft.n_classes
    fl = ft.spike_vectors
    assert fl is not None and ft.spike_classes is not None
    gamma = ft.weights / (1.0 + delta)
    G = ft.weights * ft.delta_t + gamma * ft.signal_variances
    lam = ft.s2_bar[None, :] + gamma @ ft.v2
    inv1 = np.linalg.inv(np.eye(k)[None] + dm * G[:, None, :])  # (I + Dm diag(G))^{-1}
    M = G[:, :, None] * inv1
    quad = M.reshape(M.shape[0], k * k) @ ft.aa
    D = gamma[:, ft.spike_classes]  # (P, S)
    s = fl.shape[0]
    pi_l = np.linalg.inv(np.eye(s)[None] + om_l * D[:, None, :])  # (I + Omega_L D)^{-1}
    m_l = D[:, :, None] * pi_l  # D (I + Omega_L D)^{-1}, symmetric
    sigma = (np.matmul(m_l, fl) * fl[None]).sum(axis=1)  # f^T M_L f, (P, T)
    r = 1.0 / (lam - z[:, None] + quad + sigma)
    return {"gamma": gamma, "G": G, "M": M, "Qbar": r, "T": dm @ np.swapaxes(inv1, 1, 2), "D_L": D,
            "Pi_L": pi_l, "M_L": m_l}


def solve_spike_block(ft: FeatureTypes, z: CArray, x0: CArray, tol: float = 1e-10, max_iter: int = 1000,
                      damping: float = 0.5) -> dict[str, CArray | float | int]:
    """Solve (F) with the spike block (module docstring) at the points z (P,), from the (F) solution x0.

    Returns the keys of :func:`classdiff.theory.equations.resolvent_parts` (``Qbar``, ``Dm``, ``G``, ``M``, ``T``,
    ``delta``) and ``Omega_L``, ``Pi_L``, ``M_L`` (P, S, S), ``residual`` (the largest relative change of the last
    step) and ``iterations``. Raises ValueError when ``ft`` has no spike vectors.
    """
    if ft.spike_vectors is None or ft.spike_classes is None or ft.spike_vectors.shape[0] == 0:
        raise ValueError("ft.spike_vectors: none; the spike block needs the spike vectors of "
                         "covariance_feature_types")
    fl, w = ft.spike_vectors, ft.node_weights
    s = fl.shape[0]
    p, n = ft.psi_p * ft.dim, ft.psi_n * ft.dim
    flfl = (fl[:, None, :] * fl[None, :, :]).reshape(s * s, -1)  # (S^2, T)
    member = np.stack([ft.spike_classes == c for c in range(ft.n_classes)], axis=1).astype(np.float64)  # (S, K)
    delta, dm = (v.copy() for v in unpack(ft, x0))
    parts = _parts(ft, z, delta, dm, np.zeros((z.size, s, s), dtype=np.complex128))
    om_l = p * ((parts["Qbar"] * w) @ flfl.T).reshape(-1, s, s)
    change = np.inf
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        parts = _parts(ft, z, delta, dm, om_l)
        rw = parts["Qbar"] * w
        dm_new = ft.psi_p * (rw @ ft.aa.T).reshape(dm.shape)
        om_new = p * (rw @ flfl.T).reshape(om_l.shape)
        t_l = om_l @ np.linalg.inv(np.eye(s)[None] + parts["D_L"][:, :, None] * om_l)  # Omega_L (I + D Omega_L)^{-1}
        spike_delta = np.einsum("pjj->pj", t_l) @ member / n
        delta_new = (ft.signal_variances * np.einsum("pcc->pc", parts["T"]) + ft.psi_p * rw @ ft.v2.T) / ft.psi_n \
            + spike_delta
        change = max(float(np.max(np.abs(delta_new - delta) / (1.0 + np.abs(delta)))),
                     float(np.max(np.abs(dm_new - dm)) / max(float(np.max(np.abs(dm))), 1e-300)),
                     float(np.max(np.abs(om_new - om_l)) / max(float(np.max(np.abs(om_l))), 1e-300)))
        delta = (1.0 - damping) * delta + damping * delta_new
        dm = (1.0 - damping) * dm + damping * dm_new
        om_l = (1.0 - damping) * om_l + damping * om_new
        if change < tol:
            break
    parts = _parts(ft, z, delta, dm, om_l)
    return parts | {"delta": delta, "Dm": dm, "Omega_L": om_l, "residual": change, "iterations": iterations}
