"""Batched Newton solver with continuation for the equations of :mod:`classdiff.spectrum_equations`.

Strategy (``docs/theory.md`` §4.4):

1. at large imaginary part the map (F) is a contraction: start from the |z| -> infinity asymptotics
   (Qbar ~ -1/z) and iterate it;
2. continuation in the imaginary part: eps_k = eps_0 * ratio^k down to the target eps, every lambda of the grid
   at once, Newton with a finite-difference (holomorphic) Jacobian and step halving when the residual does
   not decrease or the step leaves the physical branch (Im q >= 0, Im delta_c >= 0 for Im z > 0);
3. points that still fail are repaired by continuation in lambda: warm starts from the nearest converged
   neighbour, sweeping outwards, with damped Newton;
4. a residual check |F(x) - x|_inf <= tol (1 + |x|_inf) on every returned point.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from classdiff.spectrum_equations import FeatureTypes, fixed_point_map, pack

__all__ = ["initial_guess", "newton", "relative_residual", "solve_on_line", "solve_points"]

CArray = NDArray[np.complex128]
Array = NDArray[np.float64]


def initial_guess(ft: FeatureTypes, z: CArray) -> CArray:
    """Large-|z| asymptotics Qbar ~ -1/z: delta_c ~ -(psi_p/psi_n) E[A_c a_c^2 + v2_c]/z, Dm ~ -psi_p E[a a^T]/z."""
    w = ft.node_weights
    ea2 = (ft.a**2) @ w
    delta = -(ft.psi_p / ft.psi_n) * (ft.signal_variances * ea2 + ft.v2 @ w)[None, :] / z[:, None]
    dm = -ft.psi_p * np.einsum("kn,ln,n->kl", ft.a, ft.a, w)[None, :, :] / z[:, None, None]
    q0 = -1.0 / z if ft.n_nodes == 1 else None
    return pack(ft, delta.astype(np.complex128), dm.astype(np.complex128), q0)


def relative_residual(ft: FeatureTypes, z: CArray, x: CArray) -> tuple[Array, CArray, dict]:
    """|F(x) - x|_inf / (1 + |x|_inf) per point, F(x), and the intermediate quantities."""
    fx, parts = fixed_point_map(ft, z, x)
    res = np.abs(fx - x).max(axis=1) / (1.0 + np.abs(x).max(axis=1))
    return res, fx, parts


def _physical(ft: FeatureTypes, z: CArray, x: CArray, parts: dict) -> NDArray[np.bool_]:
    """Physical branch: for Im z > 0, Im q >= 0 and Im delta_c >= 0 (small negative round-off allowed)."""
    q = parts["Qbar"] @ ft.node_weights
    k = ft.n_classes
    tol = 1e-10 * (1.0 + np.abs(x).max(axis=1))
    ok = q.imag >= -tol * (1.0 + np.abs(q))
    ok &= np.all(x[:, :k].imag >= -tol[:, None], axis=1)
    return ok | (z.imag <= 0)


def newton(
    ft: FeatureTypes, z: CArray, x0: CArray, tol: float = 1e-12, max_iter: int = 30, fd_step: float = 1e-7,
) -> tuple[CArray, Array]:
    """Damped Newton on R(x) = F(x) - x for a batch of points z (P,), x0 (P, n_unknowns).

    The Jacobian is by holomorphic forward differences (R is analytic in x, so a real step gives the complex
    derivative). A step is halved (up to 12 times) until the residual decreases and the point stays on the
    physical branch. Returns the solutions and their relative residuals (P,).
    """
    x = np.array(x0, dtype=np.complex128, copy=True)
    nu = x.shape[1]
    res, fx, _ = relative_residual(ft, z, x)
    active = res > tol
    for _ in range(max_iter):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        za, xa, ra = z[idx], x[idx], fx[idx] - x[idx]
        jac = np.empty((idx.size, nu, nu), dtype=np.complex128)
        for j in range(nu):
            h = fd_step * (1.0 + np.abs(xa[:, j]))
            xp = xa.copy()
            xp[:, j] += h
            fp, _ = fixed_point_map(ft, za, xp)
            jac[:, :, j] = ((fp - xp) - ra) / h[:, None]
        try:
            step = np.linalg.solve(jac, -ra[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(jac.reshape(-1, nu), -ra.reshape(-1), rcond=None)[0].reshape(ra.shape)
        step = np.where(np.isfinite(step), step, 0.0)
        t = np.ones(idx.size)
        best_x, best_res = xa.copy(), res[idx].copy()
        pending = np.ones(idx.size, dtype=bool)
        for _half in range(13):
            sub = np.nonzero(pending)[0]
            cand = xa[sub] + t[sub, None] * step[sub]
            r_c, _, p_c = relative_residual(ft, za[sub], cand)
            good = np.isfinite(r_c) & (r_c < best_res[sub]) & _physical(ft, za[sub], cand, p_c)
            best_x[sub[good]], best_res[sub[good]] = cand[good], r_c[good]
            pending[sub[good]] = False
            if not pending.any():
                break
            t[pending] *= 0.5
        moved = best_res < res[idx]
        x[idx] = best_x
        res[idx] = best_res
        # points that could not improve are stuck: stop iterating them
        still = moved & (best_res > tol)
        active[:] = False
        active[idx[still]] = True
        if active.any():
            res_a, fx_a, _ = relative_residual(ft, z[active], x[active])
            fx[active] = fx_a
            res[active] = res_a
    return x, res


def _iterate(ft: FeatureTypes, z: CArray, x: CArray, n_iter: int, damping: float = 0.5) -> CArray:
    """Damped plain fixed-point iterations x <- (1 - damping) x + damping F(x) (contractive at large Im z)."""
    for _ in range(n_iter):
        fx, _ = fixed_point_map(ft, z, x)
        x = (1.0 - damping) * x + damping * fx
    return x


def solve_on_line(
    ft: FeatureTypes, lam: Array, eps: float, eps_start: float, ratio: float = 0.1, tol: float = 1e-12,
    keep_levels: int = 2,
) -> tuple[CArray, Array, list[tuple[float, CArray]]]:
    """Solve at z = lam + i eps for all lam (P,) by continuation in the imaginary part from ``eps_start``.

    Returns the solutions x (P, n_unknowns), their relative residuals (P,), and the solutions at the last
    ``keep_levels`` levels of eps as a list of (eps_level, x) (used to tell bulk from gap).
    """
    lam = np.asarray(lam, dtype=np.float64)
    n_levels = max(1, int(np.ceil(np.log(eps_start / eps) / np.log(1.0 / ratio))))
    levels = eps_start * ratio ** np.arange(n_levels + 1)
    levels[-1] = eps
    z = lam + 1j * levels[0]
    x = _iterate(ft, z, initial_guess(ft, z), 60)
    x, res = newton(ft, z, x, tol=tol)
    kept: list[tuple[float, CArray]] = []
    for k, e in enumerate(levels[1:], start=1):
        z = lam + 1j * e
        x_prev = x
        x, res = newton(ft, z, x, tol=tol)
        bad = ~(res <= tol * 10)
        if bad.any():
            x[bad], res[bad] = _repair(ft, z, x_prev, x, res, bad, tol, ratio if k < len(levels) - 1 else e / levels[k - 1])
        if k >= len(levels) - keep_levels:
            kept.append((float(e), x.copy()))
    return x, res, kept


def _repair(ft: FeatureTypes, z: CArray, x_prev: CArray, x: CArray, res: Array, bad: NDArray[np.bool_],
            tol: float, ratio: float) -> tuple[CArray, Array]:
    """Re-solve failed points: finer continuation in eps from the previous level, then warm starts in lambda."""
    idx = np.nonzero(bad)[0]
    zb = z[idx]
    # 1) sub-steps in eps between the previous level and this one
    e_new = zb.imag
    xb = x_prev[idx].copy()
    e_old = e_new / ratio
    for s in np.linspace(0.0, 1.0, 9)[1:]:
        zz = zb.real + 1j * (e_old ** (1 - s) * e_new**s)
        xb, rb = newton(ft, zz, xb, tol=tol)
    ok = rb <= tol * 10
    out_x, out_r = xb, rb
    if ok.all():
        return out_x, out_r
    # 2) continuation in lambda: warm start from the nearest good neighbour, sweeping left and right
    good = ~bad
    good_idx = np.nonzero(good)[0]
    for j_local in np.nonzero(~ok)[0]:
        j = idx[j_local]
        if good_idx.size == 0:
            break
        nb = good_idx[np.argmin(np.abs(good_idx - j))]
        xs = x[nb : nb + 1].copy()
        lam_path = np.linspace(z[nb].real, z[j].real, 6)[1:]
        for lam_k in lam_path:
            xs, rs = newton(ft, np.array([lam_k + 1j * z[j].imag]), xs, tol=tol)
        if rs[0] < out_r[j_local]:
            out_x[j_local], out_r[j_local] = xs[0], rs[0]
    return out_x, out_r


def solve_points(ft: FeatureTypes, z: CArray, x0: CArray | None = None, tol: float = 1e-12) -> tuple[CArray, Array]:
    """Solve at arbitrary complex points z (P,) (e.g. a contour): Newton from ``x0`` or from iterations of the
    asymptotic guess."""
    z = np.asarray(z, dtype=np.complex128)
    if x0 is None:
        x0 = _iterate(ft, z, initial_guess(ft, z), 200)
    return newton(ft, z, x0, tol=tol)
