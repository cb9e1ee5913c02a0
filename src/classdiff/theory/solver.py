"""Batched Newton solver with continuation for the equations of :mod:`classdiff.theory.equations`.

Strategy (``docs/theory.md`` §4.4):

1. at large imaginary part the map (F) is a contraction: start from the |z| -> infinity asymptotics
   (Qbar ~ -1/z) and iterate it;
2. continuation in the imaginary part: eps_k = eps_0 * ratio^k down to the target eps, every lambda of the grid
   at once, each level started from the tangent predictor x + (dx/dz) dz, Newton with the analytic Jacobian
   (:func:`classdiff.theory.equations.map_and_jacobian`) and step halving when the residual does not decrease
   or the step leaves the physical branch (Im q >= 0, Im delta_c >= 0 for Im z > 0);
3. points that fail a level are re-solved with 2, 4, then 8 sub-steps in eps, then by continuation in lambda:
   warm starts from the nearest converged neighbour, with damped Newton;
4. a residual check |F(x) - x|_inf <= tol (1 + |x|_inf) on every returned point.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from classdiff.theory.equations import FeatureTypes, fixed_point_map, map_and_jacobian, pack

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
    return _physical_q(ft, z, x, parts["Qbar"] @ ft.node_weights)


def _physical_q(ft: FeatureTypes, z: CArray, x: CArray, q: CArray, xnorm: Array | None = None) -> NDArray[np.bool_]:
    k = ft.n_classes
    tol = 1e-10 * (1.0 + (np.abs(x).max(axis=1) if xnorm is None else xnorm))
    ok = q.imag >= -tol * (1.0 + np.abs(q))
    ok &= (x[:, :k].imag >= -tol[:, None]).all(axis=1)
    return ok | (z.imag <= 0)


def _rel(fx: CArray, x: CArray) -> Array:
    return np.abs(fx - x).max(axis=1) / (1.0 + np.abs(x).max(axis=1))


def _solve_batch(a: CArray, b: CArray) -> CArray:
    """Solve a (P, n, n) y = b (P, n): closed form (Cramer) for n <= 3 on large batches (numpy.linalg.solve has a
    large per-point overhead on 3 x 3 systems), LU otherwise; least squares where singular; non-finite -> 0."""
    n = a.shape[-1]
    with np.errstate(all="ignore"):
        if n <= 3 and a.shape[0] >= 32:
            y = _cramer(a, b)
            bad = np.nonzero(~np.isfinite(y).all(axis=1))[0]
            if bad.size:
                y[bad] = np.stack([np.linalg.lstsq(a[i], b[i], rcond=None)[0] for i in bad])
        else:
            try:
                y = np.linalg.solve(a, b[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                y = np.stack([np.linalg.lstsq(ai, bi, rcond=None)[0] for ai, bi in zip(a, b)])
    return np.where(np.isfinite(y), y, 0.0)


def _cramer(a: CArray, b: CArray) -> CArray:
    """Cramer's rule for batches of 1 x 1, 2 x 2 or 3 x 3 systems."""
    n = a.shape[-1]
    if n == 1:
        return b / a[:, :, 0]
    if n == 2:
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        return np.stack([a[:, 1, 1] * b[:, 0] - a[:, 0, 1] * b[:, 1],
                         a[:, 0, 0] * b[:, 1] - a[:, 1, 0] * b[:, 0]], axis=1) / det[:, None]
    a00, a01, a02 = a[:, 0, 0], a[:, 0, 1], a[:, 0, 2]
    a10, a11, a12 = a[:, 1, 0], a[:, 1, 1], a[:, 1, 2]
    a20, a21, a22 = a[:, 2, 0], a[:, 2, 1], a[:, 2, 2]
    c00, c01, c02 = a11 * a22 - a12 * a21, a12 * a20 - a10 * a22, a10 * a21 - a11 * a20
    c10, c11, c12 = a02 * a21 - a01 * a22, a00 * a22 - a02 * a20, a01 * a20 - a00 * a21
    c20, c21, c22 = a01 * a12 - a02 * a11, a02 * a10 - a00 * a12, a00 * a11 - a01 * a10
    idet = 1.0 / (a00 * c00 + a01 * c01 + a02 * c02)
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    y = np.empty_like(b)
    y[:, 0] = (c00 * b0 + c10 * b1 + c20 * b2) * idet
    y[:, 1] = (c01 * b0 + c11 * b1 + c21 * b2) * idet
    y[:, 2] = (c02 * b0 + c12 * b1 + c22 * b2) * idet
    return y


def newton(ft: FeatureTypes, z: CArray, x0: CArray, tol: float = 1e-12, max_iter: int = 30,
           tangent: bool = False, max_halvings: int = 12) -> tuple[CArray, Array] | tuple[CArray, Array, CArray]:
    """Damped Newton on R(x) = F(x) - x for a batch of points z (P,), x0 (P, n_unknowns).

    The Jacobian is analytic (:func:`classdiff.theory.equations.map_and_jacobian`, evaluated together with F, so
    one map evaluation per iteration when the full step is taken). A step is halved (up to ``max_halvings``
    times) until the residual decreases and the point stays on the physical branch; a point whose step cannot
    be made to decrease the residual stops. Returns the solutions and their relative residuals (P,) and, with
    ``tangent``, the derivative dx/dz = (I - dF/dx)^{-1} dF/dz at the solutions (P, n_unknowns) (the
    continuation predictor).
    """
    x = np.array(x0, dtype=np.complex128, copy=True)
    nu = x.shape[1]
    eye = np.eye(nu)
    with np.errstate(all="ignore"):
        fx, _, jac, fz = map_and_jacobian(ft, z, x)
        res = _rel(fx, x)
    idx = np.nonzero(~(res <= tol))[0]
    # the active points are kept compact: xa, fa, ja, ra for z[idx]
    xa, fa, ja, ra, za = x[idx], fx[idx], jac[idx], res[idx], z[idx]
    for _ in range(max_iter):
        if idx.size == 0:
            break
        step = _solve_batch(ja - eye, xa - fa)
        with np.errstate(all="ignore"):
            cand = xa + step
            f_c, q_c, j_c, fz_c = map_and_jacobian(ft, za, cand)
            xn = np.abs(cand).max(axis=1)
            r_c = np.abs(f_c - cand).max(axis=1) / (1.0 + xn)
            good = (r_c < ra) & _physical_q(ft, za, cand, q_c, xn)  # NaN compares False
        if not good.all():  # step halving for the others
            pend = np.nonzero(~good)[0]
            t = 1.0
            for _half in range(max_halvings):
                t *= 0.5
                c2 = xa[pend] + t * step[pend]
                with np.errstate(all="ignore"):
                    f2, q2, j2, fz2 = map_and_jacobian(ft, za[pend], c2)
                    xn2 = np.abs(c2).max(axis=1)
                    r2 = np.abs(f2 - c2).max(axis=1) / (1.0 + xn2)
                    g2 = (r2 < ra[pend]) & _physical_q(ft, za[pend], c2, q2, xn2)
                gi = pend[g2]
                cand[gi], f_c[gi], j_c[gi], fz_c[gi], r_c[gi] = c2[g2], f2[g2], j2[g2], fz2[g2], r2[g2]
                good[gi] = True
                pend = pend[~g2]
                if pend.size == 0:
                    break
        # accepted points move; the others are stuck and stop
        gi = idx[good]
        x[gi], fx[gi], jac[gi], fz[gi], res[gi] = cand[good], f_c[good], j_c[good], fz_c[good], r_c[good]
        keep = good & (r_c > tol)
        idx = idx[keep]
        xa, fa, ja, ra, za = cand[keep], f_c[keep], j_c[keep], r_c[keep], za[keep]
    if not tangent:
        return x, res
    return x, res, _solve_batch(eye - jac, fz)


def _iterate(ft: FeatureTypes, z: CArray, x: CArray, n_iter: int, damping: float = 0.5) -> CArray:
    """Damped plain fixed-point iterations x <- (1 - damping) x + damping F(x) (contractive at large Im z)."""
    for _ in range(n_iter):
        fx, _, _, _ = map_and_jacobian(ft, z, x, jacobian=False)
        x = (1.0 - damping) * x + damping * fx
    return x


def solve_on_line(
    ft: FeatureTypes, lam: Array, eps: float, eps_start: float, ratio: float = 0.1, tol: float = 1e-12,
    keep_levels: int = 2,
) -> tuple[CArray, Array, list[tuple[float, CArray]]]:
    """Solve at z = lam + i eps for all lam (P,) by continuation in the imaginary part from ``eps_start``.

    Each level starts from the tangent predictor x + (dx/dz) (z_new - z_old); points that do not converge in a few
    Newton iterations are re-solved by :func:`_repair`. Returns the solutions x (P, n_unknowns), their relative
    residuals (P,), and the solutions at the last ``keep_levels`` levels of eps as a list of (eps_level, x) (used
    to tell bulk from gap).
    """
    lam = np.asarray(lam, dtype=np.float64)
    n_levels = max(1, int(np.ceil(np.log(eps_start / eps) / np.log(1.0 / ratio))))
    levels = eps_start * ratio ** np.arange(n_levels + 1)
    levels[-1] = eps
    z = lam + 1j * levels[0]
    x = _iterate(ft, z, initial_guess(ft, z), 10)
    x, res, dx = newton(ft, z, x, tol=tol, tangent=True)
    kept: list[tuple[float, CArray]] = []
    for k, e in enumerate(levels[1:], start=1):
        z = lam + 1j * e
        x_prev, dx_prev = x, dx
        x0 = _predict(ft, z, x_prev, dx_prev, 1j * (e - levels[k - 1]))
        x, res, dx = newton(ft, z, x0, tol=tol, max_iter=_CONTINUATION_ITER, tangent=True,
                            max_halvings=_CONTINUATION_HALVINGS)
        bad = ~(res <= tol * 10)
        if bad.any():
            xb, rb, db = _repair(ft, z, x_prev, dx_prev, x, res, bad, tol, levels[k - 1])
            x[bad], res[bad], dx[bad] = xb, rb, db
        if k >= len(levels) - keep_levels:
            kept.append((float(e), x.copy()))
    return x, res, kept


# a continuation step that Newton does not close quickly is cheaper to redo in sub-steps (_repair) than to damp
_CONTINUATION_ITER = 6
_CONTINUATION_HALVINGS = 3


def _predict(ft: FeatureTypes, z: CArray, x: CArray, dx: CArray, dz: complex | CArray) -> CArray:
    """Tangent predictor x + dx dz, kept only where it lowers the residual at z and stays physical."""
    xp = x + dx * (np.asarray(dz)[..., None] if np.ndim(dz) else dz)
    both = np.concatenate([x, xp])
    zz = np.concatenate([z, z])
    with np.errstate(all="ignore"):
        fb, qb, _, _ = map_and_jacobian(ft, zz, both, jacobian=False)
        r = np.abs(fb - both).max(axis=1) / (1.0 + np.abs(both).max(axis=1))
        use = np.isfinite(r[x.shape[0]:]) & (r[x.shape[0]:] < r[: x.shape[0]])
        use &= _physical_q(ft, z, xp, qb[x.shape[0]:])
    return np.where(use[:, None], xp, x)


def _repair(ft: FeatureTypes, z: CArray, x_prev: CArray, dx_prev: CArray, x: CArray, res: Array,
            bad: NDArray[np.bool_], tol: float, e_old: float) -> tuple[CArray, Array, CArray]:
    """Re-solve failed points: finer continuation in eps (2, then 4, then 8 geometric sub-steps, tangent
    predictor) from the previous level ``e_old``, then warm starts in lambda from the nearest converged
    neighbour."""
    idx = np.nonzero(bad)[0]
    zb = z[idx]
    # 1) sub-steps in eps between the previous level and this one, finer for the points that still fail
    e_new = zb.imag
    xb, rb, db = x[idx].copy(), res[idx].copy(), dx_prev[idx].copy()
    todo = np.arange(idx.size)
    for n_sub in (2, 4, 8):
        xs, ds = x_prev[idx[todo]].copy(), dx_prev[idx[todo]].copy()
        z_old = zb[todo].real + 1j * e_old
        for s in np.linspace(0.0, 1.0, n_sub + 1)[1:]:
            zz = zb[todo].real + 1j * (e_old ** (1 - s) * e_new[todo] ** s)
            x0 = _predict(ft, zz, xs, ds, zz - z_old)
            xs, rs, ds = newton(ft, zz, x0, tol=tol, tangent=True)
            z_old = zz
        better = rs < rb[todo]
        xb[todo[better]], rb[todo[better]], db[todo[better]] = xs[better], rs[better], ds[better]
        todo = todo[~(rs <= tol * 10)]
        if todo.size == 0:
            break
    ok = rb <= tol * 10
    out_x, out_r, out_d = xb, rb, db
    if ok.all():
        return out_x, out_r, out_d
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
            xs, rs, ds = newton(ft, np.array([lam_k + 1j * z[j].imag]), xs, tol=tol, tangent=True)
        if rs[0] < out_r[j_local]:
            out_x[j_local], out_r[j_local], out_d[j_local] = xs[0], rs[0], ds[0]
    return out_x, out_r, out_d


def solve_points(ft: FeatureTypes, z: CArray, x0: CArray | None = None, tol: float = 1e-12) -> tuple[CArray, Array]:
    """Solve at arbitrary complex points z (P,) (e.g. a contour): Newton from ``x0`` or from iterations of the
    asymptotic guess."""
    z = np.asarray(z, dtype=np.complex128)
    if x0 is None:
        x0 = _iterate(ft, z, initial_guess(ft, z), 200)
    return newton(ft, z, x0, tol=tol)
