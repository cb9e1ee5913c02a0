"""Spectrum of the random-features covariance U for a K-class Gaussian mixture (random-matrix theory).

``FeatureSpectrum(...).fit(config)`` solves the self-consistent equations of ``docs/theory.md`` §3–§4 for
q(z) = (1/p) tr (U - z)^{-1} on the real axis (z = lambda + i eps, eps -> 0) and returns the density
rho(lambda) = Im q / pi, the bulks (edges and masses), the delta peak (no centroids, psi_p > 1 + psi_n), the
outlier eigenvalues created by the class means (centroid spikes) and, per lambda, each class's share of the
eigenmodes. The equations themselves are in :mod:`classdiff.theory.equations`, the solver in
:mod:`classdiff.theory.solver`, sampled matrices for validation in :mod:`classdiff.rf.sampled_spectrum`.

Pipeline of :meth:`FeatureSpectrum.fit`:

1. scan: log-spaced lambda above the hard lower bound min_j s2bar_j (U >= sum_c rho_c D_{s2_c}), solved by
   continuation in eps; a point is in the support when Im q no longer scales with eps (ratio test between the
   last two eps levels);
2. edges: safeguarded square-root extrapolation of rho^2 from the bulk side inside a gap/bulk bracket that each
   solve narrows (one solve per trial point, classified by Im q against eps |dq/dz|); bisection on the two-level
   indicator where that fails;
3. grid: in each bulk [lo, hi], open Chebyshev points lambda = mid - half cos(theta); the density times
   sin(theta) is smooth in theta for square-root edges, so the midpoint rule in theta gives the bulk masses
   to near machine precision; masses + atom = 1 is checked;
4. outliers: real roots, above the top edge and in the gaps, of
   det( diag(1 + delta_c(theta)) + p diag(sqrt rho) E_j[kappa0_j kappa0_j^T Qbar_j(theta)] diag(sqrt rho) ) = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import brentq

from classdiff.theory.equations import FeatureTypes, feature_types, map_and_jacobian, resolvent_parts
from classdiff.theory.solver import newton, relative_residual, solve_on_line

if TYPE_CHECKING:
    from classdiff.core.config import Config, ModelConfig, TheoryConfig
    from classdiff.data.mixture import GaussianMixture

__all__ = ["FeatureSpectrum", "SpectrumResult", "spectrum_from_config", "types_for_mixture", "types_from_config",
           "wasserstein_over_width"]

Array = NDArray[np.float64]
CArray = NDArray[np.complex128]


def wasserstein_over_width(spec: FeatureSpectrum, eigenvalues: NDArray[np.float64],
                           include_outliers: bool = False) -> float:
    """W1 distance between the theory's law and the sampled eigenvalues, divided by the sampled width.

    Default (bulk): the theory's density + atoms against the eigenvalues without their largest
    ``len(spec.outliers_)``, width of what is left. ``include_outliers``: the whole spectrum, the theory's
    outliers carrying 1/p each (p = number of eigenvalues) and its bulks the remaining mass, against all the
    eigenvalues, width of all of them; this compares theories that predict different numbers of outliers.
    Both CDFs are compared on the union of the theory grid, its outliers and the eigenvalues (trapezoid rule for
    the theory density, renormalised over the bulks and atoms)."""
    from scipy.integrate import cumulative_trapezoid

    ev = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    n_out = spec.outliers_.size
    if not include_outliers:
        ev = ev[: ev.size - n_out]
    grid = np.unique(np.concatenate([spec.lambda_, ev, spec.outliers_, [ev.min() - 1e-12, ev.max() + 1e-12]]))
    cdf = cumulative_trapezoid(np.interp(grid, spec.lambda_, spec.density_, left=0, right=0), grid, initial=0.0)
    for loc, mass in spec.atoms_:
        cdf = cdf + mass * (grid >= loc)
    cdf /= cdf[-1]
    if include_outliers:
        cdf = (1.0 - n_out / ev.size) * cdf + np.searchsorted(np.sort(spec.outliers_), grid, side="right") / ev.size
    emp = np.searchsorted(ev, grid, side="right") / ev.size
    return float(np.trapezoid(np.abs(cdf - emp), grid) / (ev.max() - ev.min()))


def _interp_rows(t: Array, t_known: Array, x_known: CArray) -> CArray:
    """Linear interpolation (constant beyond the ends) of the rows of x_known (M, nu) at t (P,)."""
    return np.stack([np.interp(t, t_known, x_known[:, j].real) + 1j * np.interp(t, t_known, x_known[:, j].imag)
                     for j in range(x_known.shape[1])], axis=1)


def types_for_mixture(mixture: GaussianMixture, model: ModelConfig, theory: TheoryConfig,
                      n_nodes: int | None = None) -> FeatureTypes:
    """:class:`FeatureTypes` of the training mixture ``mixture`` at the random-features settings of ``model``.

    ``mixture.weights`` are the training fractions rho_c = n_c/n; its per-class mean variances tr(Sigma_c)/d and
    centroids are used as given; psi_p, psi_n, t and the activation come from ``model``, the type quadrature
    (``type_rule``, ``type_nodes`` unless ``n_nodes``) and its seed from ``theory``.
    """
    nodes = n_nodes if n_nodes is not None else theory.type_nodes
    return feature_types(mixture.weights, mixture.mean_variances, mixture.centroids, model.time, model.psi_p,
                         model.psi_n, model.activation, n_nodes=nodes, seed=theory.seed, rule=theory.type_rule)


def training_mixture(config: Config) -> GaussianMixture:
    """The mixture of the ``[mixture]`` section with the exact class fractions of a training set of
    n = round(psi_n d) points (the centroids of :func:`classdiff.data.mixture.make_centroids`, so "random"
    geometry uses the seeded draw)."""
    from classdiff.data.mixture import GaussianMixture, class_counts, make_centroids

    mc, model = config.mixture, config.model
    mu = make_centroids(mc.dim, mc.centroid_norms, mc.geometry, mc.seed, mc.centroids)
    n = max(round(model.psi_n * mc.dim), len(mc.weights))
    return GaussianMixture(class_counts(n, mc.weights) / n, mu, mc.variances)


def types_from_config(config: Config, n_nodes: int | None = None) -> FeatureTypes:
    """:class:`FeatureTypes` for the ``[mixture]`` and ``[model]`` sections of a config: :func:`types_for_mixture`
    of :func:`training_mixture`."""
    return types_for_mixture(training_mixture(config), config.model, config.theory, n_nodes)


@dataclass
class _Bulk:
    lo: float
    hi: float
    mass: float = float("nan")
    lam: Array = field(default_factory=lambda: np.zeros(0))
    density: Array = field(default_factory=lambda: np.zeros(0))


class FeatureSpectrum:
    """Limiting spectral density of U (``docs/theory.md`` §3–§4), sklearn style.

    Parameters
    ----------
    n_lambda : number of lambda points of the final density grid (shared among the bulks).
    epsilon : imaginary part eps of z = lambda + i eps at which the density is read (absolute).
    tolerance : residual tolerance; every grid point must satisfy |F(x) - x|_inf <= tolerance (1 + |x|_inf).
    n_scan : points of the log-spaced support scan.
    outliers : compute the centroid outliers.
    mass_tolerance : absolute agreement of two successive refinements of a bulk's mass (see ``_bulk_mass``).
    max_mass_refinements : at most this many triplings of a bulk's quadrature points for its mass.

    Fitted attributes
    -----------------
    ``types_`` (:class:`FeatureTypes`), ``lambda_`` (L,), ``density_`` (L,), ``edges_`` (B, 2), ``masses_`` (B,),
    ``atoms_`` list of (location, mass), ``outliers_`` (O,), ``class_share_`` (K, L), ``residual_`` (L,),
    ``total_mass_`` (float), ``q_`` (L,) complex, ``solution_`` (L, n_unknowns) complex.
    """

    def __init__(self, n_lambda: int = 1000, epsilon: float = 1e-9, tolerance: float = 1e-10, n_scan: int = 400,
                 outliers: bool = True, mass_tolerance: float = 1e-8, max_mass_refinements: int = 5) -> None:
        self.n_lambda = n_lambda
        self.mass_tolerance = mass_tolerance
        self.max_mass_refinements = max_mass_refinements
        self.epsilon = epsilon
        self.tolerance = tolerance
        self.n_scan = n_scan
        self.outliers = outliers

    # ----------------------------------------------------------------------------------------------- fit
    def fit(self, config_or_types: Config | FeatureTypes) -> FeatureSpectrum:
        """Solve the equations for a :class:`classdiff.core.config.Config` or a :class:`FeatureTypes`."""
        if self.n_lambda < 10:
            raise ValueError(f"n_lambda = {self.n_lambda!r}: must be >= 10")
        if not self.epsilon > 0:
            raise ValueError(f"epsilon = {self.epsilon!r}: must be > 0")
        ft = config_or_types if isinstance(config_or_types, FeatureTypes) else types_from_config(config_or_types)
        self.types_ = ft
        tol = min(self.tolerance, 1e-10) * 0.01
        self._newton_tol = tol
        lo_bound = float(ft.s2_bar.min())
        hi_bound = self._upper_bound(ft)
        self.lower_bound_, self.upper_bound_ = lo_bound, hi_bound
        # 1) scan
        offs = np.geomspace(1e-7 * hi_bound, hi_bound - lo_bound, self.n_scan)
        lam_scan = lo_bound + offs
        x, res, kept = solve_on_line(ft, lam_scan, self.epsilon, eps_start=hi_bound, tol=tol)
        inside = self._support_indicator(ft, lam_scan, kept)
        self.scan_ = {"lambda": lam_scan, "inside": inside, "solution": x, "residual": res}
        # 2) edges
        bulks = self._find_bulks(ft, lam_scan, inside, kept)
        # 3) grid and masses
        self._fill_bulks(ft, bulks)
        self.atoms_ = [ft.atom()] if ft.atom() is not None else []
        self.edges_ = np.array([[b.lo, b.hi] for b in bulks]).reshape(-1, 2)
        self.masses_ = np.array([b.mass for b in bulks])
        self.total_mass_ = float(self.masses_.sum() + sum(m for _, m in self.atoms_))
        # 4) outliers
        self.outliers_ = self._find_outliers(ft) if self.outliers else np.zeros(0)
        return self

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _upper_bound(ft: FeatureTypes) -> float:
        """A generous upper bound of the bulk: sum of the operator-norm bounds of the terms of U."""
        rp, rn = ft.psi_p, ft.psi_p / ft.psi_n
        a2 = (ft.a**2).max(axis=1)
        gen = ((ft.signal_variances + ft.delta_t) * ft.weights * a2).sum() * (1 + np.sqrt(rp)) ** 2
        gen *= (1 + np.sqrt(1 / ft.psi_n)) ** 2
        mem = (ft.v2.max(axis=1) * (1 + np.sqrt(rn)) ** 2).max()
        return float(1.5 * (gen + mem + ft.s2_bar.max()) + 1e-12)

    def _support_indicator(self, ft: FeatureTypes, lam: Array, kept: list[tuple[float, CArray]]) -> NDArray[np.bool_]:
        """In the support when Im q(lambda + i eps) does not shrink with eps (gap: Im q ~ eps)."""
        (e1, x1), (e2, x2) = kept[-2], kept[-1]
        q1 = resolvent_parts(ft, lam + 1j * e1, x1)["Qbar"] @ ft.node_weights
        q2 = resolvent_parts(ft, lam + 1j * e2, x2)["Qbar"] @ ft.node_weights
        ratio = q2.imag / np.maximum(q1.imag, 1e-300)
        expected_gap = e2 / e1
        return (ratio > np.sqrt(expected_gap)) & (q2.imag > 1e-12)

    def _indicator_at(self, ft: FeatureTypes, lam: Array, x_warm: CArray,
                      x_other: CArray | None = None) -> tuple[NDArray[np.bool_], CArray]:
        """Support indicator at new lambdas, by Newton from warm starts at the two eps levels (then from the other
        bracket end, then a fresh continuation in eps)."""
        tol = self._newton_tol
        e2 = max(self.epsilon, 1e-8 * float(np.max(np.abs(lam))))
        e1 = e2 * 10.0
        z1 = lam + 1j * e1
        xa, ra = newton(ft, z1, x_warm[0], tol=tol)
        z2 = lam + 1j * e2
        xb, rb = newton(ft, z2, x_warm[1], tol=tol)
        bad = (ra > 1e3 * tol) | (rb > 1e3 * tol)
        if bad.any() and x_other is not None:
            xa2, ra2 = newton(ft, z1[bad], x_other[0][bad], tol=tol)
            xb2, rb2 = newton(ft, z2[bad], x_other[1][bad], tol=tol)
            xa[bad], xb[bad], ra[bad], rb[bad] = xa2, xb2, ra2, rb2
            bad = (ra > 1e3 * tol) | (rb > 1e3 * tol)
        if bad.any():  # fall back to a fresh continuation for those points
            _, _, kept = solve_on_line(ft, lam[bad], e2, eps_start=self.upper_bound_, tol=tol)
            xa[bad], xb[bad] = kept[-2][1], kept[-1][1]
        ind = self._support_indicator(ft, lam, [(e1, xa), (e2, xb)])
        return ind, np.stack([xa, xb])

    def _find_bulks(self, ft: FeatureTypes, lam: Array, inside: NDArray[np.bool_],
                    kept: list[tuple[float, CArray]]) -> list[_Bulk]:
        if not inside.any():
            raise RuntimeError("FeatureSpectrum: no support found on the scan; check the parameters")
        change = np.nonzero(np.diff(inside.astype(int)))[0]  # edge between change and change+1
        edges = self._sqrt_edges(ft, lam, inside, change, kept[-1][1])
        failed = np.nonzero(~np.isfinite(edges))[0]
        if failed.size:
            edges[failed] = self._bisect_edges(ft, lam, inside, change[failed], kept)
        self.edge_method_ = np.where(np.isin(np.arange(change.size), failed), "bisection", "sqrt")
        # assemble bulks from the sequence of edges
        bulks: list[_Bulk] = []
        start = float(lam[0]) if inside[0] else None
        for k, i in enumerate(change):
            if not inside[i]:  # gap -> bulk at this edge
                start = float(edges[k])
            else:
                bulks.append(_Bulk(lo=float(start), hi=float(edges[k])))
                start = None
        if start is not None:
            bulks.append(_Bulk(lo=float(start), hi=float(lam[-1])))
        return bulks

    def _sqrt_edges(self, ft: FeatureTypes, lam: Array, inside: NDArray[np.bool_], change: NDArray[np.intp],
                    x_scan: CArray, max_rounds: int = 24, shrink: float = 0.02) -> Array:
        """Edges by safeguarded square-root extrapolation (``docs/theory.md`` §4.3).

        Each edge keeps a bracket [g, b]: g a point known to be in the gap, b one known to be in the bulk (from the
        scan, then from the solves below), each classified by :meth:`_bulk_test` (one solve per point). Near a
        square-root edge e, rho(lambda)^2 is an analytic function of lambda on the bulk side (rho = Im q is odd in
        sqrt(lambda - e) there) vanishing linearly at e, so the root of the quadratic through the three bulk points
        nearest the gap estimates e. A round then tests the two points e -+ h (h = ``shrink`` |b - e|, but at least
        the floor ~ 10 eps below which the test is not reliable); when both land on the expected sides the
        bracket shrinks to 2h around e, otherwise the next round bisects the bracket (the model is not yet in its
        asymptotic regime). Each trial point is solved by Newton from both sides (the sqrt(lambda - e) model fitted to
        the two nearest bulk solutions, and the gap-end solution) and kept only when the two agree (else a fresh
        continuation in eps decides, :meth:`_solve_trials`). Stops when the bracket is below max(1e-9 |e|,
        4 floor); the edge is the model root when it lies in the bracket, else the midpoint. Returns NaN where a
        solve fails (those edges are located by bisection on the two-level indicator, :meth:`_bisect_edges`).
        """
        n = change.size
        out = np.full(n, np.nan)
        if n == 0:
            return out
        tol = self._newton_tol
        npts = lam.size
        left_in = inside[change]
        sigma = np.where(left_in, -1.0, 1.0)  # direction from the edge into the bulk
        b_idx = np.where(left_in, change, change + 1)
        g_idx = np.where(left_in, change + 1, change)
        # up to three bulk-side scan points, nearest first
        idx = b_idx[:, None] + sigma.astype(int)[:, None] * np.arange(3)[None, :]
        valid = (idx >= 0) & (idx < npts)
        idx = np.clip(idx, 0, npts - 1)
        valid &= inside[idx]
        valid = np.cumprod(valid, axis=1).astype(bool)
        _, q_scan, _, _ = map_and_jacobian(ft, lam + 1j * self.epsilon, x_scan, jacobian=False)
        pts_l = np.where(valid, lam[idx], np.nan)  # (n, 3) bulk points nearest the gap first
        pts_y = np.where(valid, q_scan.imag[idx] ** 2, np.nan)
        pts_x = x_scan[idx]  # (n, 3, nu)
        g_l, g_x = lam[g_idx].copy(), x_scan[g_idx].copy()
        floor = 10.0 * self.epsilon + 1e-12 * np.abs(lam[b_idx])
        target = np.maximum(1e-9 * np.abs(lam[b_idx]), 4.0 * floor)
        ok = np.ones(n, dtype=bool)
        done = np.zeros(n, dtype=bool)
        bisect = np.zeros(n, dtype=bool)
        for _ in range(max_rounds):
            done |= np.abs(pts_l[:, 0] - g_l) <= target
            act = np.nonzero(~done & ok)[0]
            if act.size == 0:
                break
            sg, gl, bl = sigma[act], g_l[act], pts_l[act, 0]
            e = self._model_root(pts_l[act], pts_y[act])
            inb = np.isfinite(e) & ((e - gl) * sg > 0) & ((bl - e) * sg > 0)
            use_model = inb & ~bisect[act]
            e = np.where(use_model, e, 0.5 * (gl + bl))
            h = np.maximum(shrink * np.abs(bl - e), floor[act])
            hb = np.minimum(h, 0.5 * np.abs(bl - e))
            hg = np.minimum(h, 0.5 * np.abs(e - gl))
            t_b = np.where(use_model, e + sg * hb, e)  # bisection: one point (the midpoint), tested twice
            t_g = np.where(use_model, e - sg * hg, e)
            trial = np.concatenate([t_b, t_g])
            # starting points: the sqrt model fitted to the two nearest bulk solutions (or the nearest bulk solution),
            # then the other bracket end; a fresh continuation in eps if both fail
            w1 = np.sqrt(np.maximum(sg * (pts_l[act, 0] - e), 0.0))
            w2 = np.sqrt(np.maximum(sg * (pts_l[act, 1] - e), 0.0))
            have2 = use_model & np.isfinite(w2) & (w1 != w2)
            beta = np.where(have2[:, None], (pts_x[act, 0] - pts_x[act, 1]) / np.where(have2, w1 - w2, 1.0)[:, None], 0.0)
            alpha = pts_x[act, 0] - beta * w1[:, None]
            wb = np.sqrt(np.maximum(sg * (t_b - e), 0.0))
            first = np.concatenate([alpha + beta * wb[:, None], g_x[act]])  # expected side first
            second = np.concatenate([g_x[act], pts_x[act, 0]])
            z = trial + 1j * self.epsilon
            x, res, dxdz = self._solve_trials(ft, z, [first, second])
            q, in_bulk = self._bulk_test(ft, z, x, dxdz)
            m = act.size
            conv = (res <= 10 * tol) & np.isfinite(q)
            ok[act[~(conv[:m] & conv[m:])]] = False
            # update the brackets: the gap-side trial first, then the bulk-side one (nearer the bulk)
            expected = np.ones(m, dtype=bool)
            for part, want_bulk in ((slice(m, None), False), (slice(0, m), True)):
                tl, xb, yb, ib = trial[part], x[part], q.imag[part] ** 2, in_bulk[part]
                expected &= ib == want_bulk
                inside_br = ((tl - g_l[act]) * sg > 0) & ((pts_l[act, 0] - tl) * sg > 0)
                to_gap = inside_br & ~ib
                to_bulk = inside_br & ib
                ia = act[to_gap]
                g_l[ia], g_x[ia] = tl[to_gap], xb[to_gap]
                ib_ = act[to_bulk]
                pts_l[ib_, 1:], pts_y[ib_, 1:], pts_x[ib_, 1:] = pts_l[ib_, :2], pts_y[ib_, :2], pts_x[ib_, :2]
                pts_l[ib_, 0], pts_y[ib_, 0], pts_x[ib_, 0] = tl[to_bulk], yb[to_bulk], xb[to_bulk]
            bisect[act] = use_model & ~expected
        ok &= done
        est = self._model_root(pts_l, pts_y)
        inb = np.isfinite(est) & ((est - g_l) * sigma >= 0) & ((pts_l[:, 0] - est) * sigma >= 0)
        est = np.where(inb, est, 0.5 * (g_l + pts_l[:, 0]))
        out[ok] = est[ok]
        return out

    def _solve_trials(self, ft: FeatureTypes, z: CArray, starts: list[CArray]) -> tuple[CArray, Array, CArray]:
        """Solve at z by Newton from each of ``starts``. Near an edge Newton from the wrong side can land on a
        spurious (non-Herglotz) root that still passes the sign checks, so a point is accepted only when the
        starts that converge agree; the others get a fresh continuation in eps (authoritative). Returns the
        solutions, residuals and dx/dz."""
        tol = self._newton_tol
        quick = {"max_iter": 8, "max_halvings": 1}  # a start that does not converge fast is not used
        sols = [newton(ft, z, x0, tol=tol, tangent=True, **quick) for x0 in starts]
        x, res, dxdz = (a.copy() for a in sols[0])
        conv = np.stack([r <= 10 * tol for _, r, _ in sols])  # (S, P)
        first = np.argmax(conv, axis=0)
        for i, (xs, rs, ds) in enumerate(sols):
            sel = first == i
            x[sel], res[sel], dxdz[sel] = xs[sel], rs[sel], ds[sel]
        scale = 1.0 + np.abs(x).max(axis=1)
        agree = conv.any(axis=0)
        for xs, rs, _ in sols:
            agree &= ~(rs <= 10 * tol) | (np.abs(xs - x).max(axis=1) <= 1e-6 * scale)
        bad = np.nonzero(~agree)[0]
        if bad.size:
            xb, _, _ = solve_on_line(ft, z[bad].real, self.epsilon, eps_start=self.upper_bound_, tol=tol)
            x[bad], res[bad], dxdz[bad] = newton(ft, z[bad], xb, tol=tol, tangent=True)
        return x, res, dxdz

    @staticmethod
    def _model_root(pts_l: Array, pts_y: Array) -> Array:
        """Root of rho^2 extrapolated from the bulk points (nearest the gap first, NaN-padded): the quadratic
        through three points, else the line through two."""
        lin = FeatureSpectrum._quadratic_root(pts_l[:, :2], pts_y[:, :2], None, None)
        quad = FeatureSpectrum._quadratic_root(pts_l[:, :2], pts_y[:, :2], pts_l[:, 2], pts_y[:, 2])
        return np.where(np.isfinite(quad), quad, lin)

    def _bulk_test(self, ft: FeatureTypes, z: CArray, x: CArray, dxdz: CArray) -> tuple[CArray, NDArray[np.bool_]]:
        """q at z = lambda + i eps and whether lambda is in the support, from the derivative along the solution
        branch: q(lambda + i eps) = q(lambda + i0) + i eps q'(lambda) + O(eps^2), so in a gap Im q ~ eps |dq/dz|,
        while in a bulk (further than ~eps from an edge) eps |dq/dz| << Im q. The same criterion as the ratio of
        Im q between two eps levels in the scan, without a second solve."""
        _, q, _, _ = map_and_jacobian(ft, z, x, jacobian=False)
        if ft.n_nodes == 1:
            dq = dxdz[:, ft.n_classes]  # q is the last unknown
        else:  # directional (holomorphic) difference along the branch
            t = self.epsilon
            _, q_t, _, _ = map_and_jacobian(ft, z + t, x + t * dxdz, jacobian=False)
            dq = (q_t - q) / t
        return q, self.epsilon * np.abs(dq) < 0.5 * q.imag

    @staticmethod
    def _quadratic_root(l2: Array, y2: Array, l3: Array | None, y3: Array | None) -> Array:
        """Root, nearest the first point, of the line through (l2[:, 0], y2[:, 0]), (l2[:, 1], y2[:, 1]) or, with a
        third point, of the interpolating quadratic (Newton on the quadratic from the linear root)."""
        with np.errstate(all="ignore"):
            l0, l1, y0, y1 = l2[:, 0], l2[:, 1], y2[:, 0], y2[:, 1]
            s01 = (y1 - y0) / (l1 - l0)
            root = l0 - y0 / s01
            if l3 is None:
                return root
            s12 = (y3 - y1) / (l3 - l1)
            c2 = (s12 - s01) / (l3 - l0)
            for _ in range(4):  # p(l) = y0 + s01 (l - l0) + c2 (l - l0)(l - l1)
                pv = y0 + s01 * (root - l0) + c2 * (root - l0) * (root - l1)
                dp = s01 + c2 * (2 * root - l0 - l1)
                root = root - pv / dp
        return root

    def _bisect_edges(self, ft: FeatureTypes, lam: Array, inside: NDArray[np.bool_], change: NDArray[np.intp],
                      kept: list[tuple[float, CArray]]) -> Array:
        """Fallback edge location: bisection on the support indicator between the scan points around each change
        (warm starts from both bracket ends), then square-root extrapolation from the bracket."""
        sols = np.stack([kept[-2][1], kept[-1][1]])  # (2, P, nu)
        # brackets: (gap side, bulk side)
        left = change.copy()
        right = change + 1
        a = lam[left].copy()
        b = lam[right].copy()
        ia = inside[left].copy()
        xa = sols[:, left].copy()
        xb = sols[:, right].copy()
        for _ in range(14):
            width = b - a
            if np.all(width <= 1e-10 * np.maximum(np.abs(b), 1e-3) + 4 * self.epsilon):
                break
            mid = 0.5 * (a + b)
            ind, xm = self._indicator_at(ft, mid, xa, xb)
            same_as_left = ind == ia
            a = np.where(same_as_left, mid, a)
            b = np.where(same_as_left, b, mid)
            xa = np.where(same_as_left[None, :, None], xm, xa)
            xb = np.where(same_as_left[None, :, None], xb, xm)
        return self._extrapolate_edges(ft, a, b, ia, xa, xb)

    def _extrapolate_edges(self, ft: FeatureTypes, a: Array, b: Array, ia: NDArray[np.bool_], xa: CArray,
                           xb: CArray) -> Array:
        """Square-root edge: rho^2 is linear in lambda near an edge, so two bulk-side densities at distances h and 2h
        from the gap-side bracket end locate the edge to O(h^2). Falls back to the bracket midpoint."""
        gap_end = np.where(ia, b, a)  # ia: left end inside the bulk
        bulk_end = np.where(ia, a, b)
        x_bulk = np.where(ia[:, None], xa[1], xb[1])
        h = bulk_end - gap_end
        pts = np.concatenate([bulk_end, bulk_end + h])
        x0 = np.concatenate([x_bulk, x_bulk])
        z = pts + 1j * self.epsilon
        x, res = newton(ft, z, x0, tol=self._newton_tol)
        rho = (resolvent_parts(ft, z, x)["Qbar"] @ ft.node_weights).imag
        r1, r2 = rho[: h.size] ** 2, rho[h.size :] ** 2
        ok = (res[: h.size] < 1e-8) & (res[h.size :] < 1e-8) & (r2 > r1) & (r1 > 0)
        edge = bulk_end - r1 * h / np.where(ok, r2 - r1, 1.0)
        inside = ok & ((edge - gap_end) * (bulk_end - edge) >= 0)
        return np.where(inside, edge, 0.5 * (a + b))

    def _fill_bulks(self, ft: FeatureTypes, bulks: list[_Bulk]) -> None:
        """Chebyshev grid per bulk, density, masses, class shares and residuals on the final grid."""
        nb = len(bulks)
        per = max(8, (self.n_lambda - 2 * nb) // max(nb, 1))
        theta = (np.arange(per) + 0.5) * np.pi / per
        lam_all, th_all, owner = [], [], []
        for k, b in enumerate(bulks):
            mid, half = 0.5 * (b.lo + b.hi), 0.5 * (b.hi - b.lo)
            lam_all.append(mid - half * np.cos(theta))
            th_all.append(theta)
            owner.append(np.full(per, k))
        lam = np.concatenate(lam_all)
        th = np.concatenate(th_all)
        own = np.concatenate(owner)
        x = self._warm_solve(ft, lam)
        z = lam + 1j * self.epsilon
        res, _, parts = relative_residual(ft, z, x)
        q = parts["Qbar"] @ ft.node_weights
        dens = np.maximum(q.imag, 0.0) / np.pi
        for k, b in enumerate(bulks):
            sel = own == k
            b.lam, b.density = lam[sel], dens[sel]
        self._bulk_masses(ft, bulks, per, dens, x, own)
        shares = self.class_traces(ft, z, x, parts)
        # output grid: bulk points plus zero-density points at every edge
        edge_pts = np.array([[b.lo, b.hi] for b in bulks]).ravel()
        order = np.argsort(np.concatenate([lam, edge_pts]), kind="stable")
        self.lambda_ = np.concatenate([lam, edge_pts])[order]
        self.density_ = np.concatenate([dens, np.zeros(edge_pts.size)])[order]
        pad = lambda arr: np.concatenate([arr, np.full(edge_pts.size, np.nan, dtype=arr.dtype)])[order]  # noqa: E731
        self.residual_ = np.concatenate([res, np.zeros(edge_pts.size)])[order]
        self.q_ = pad(q.astype(np.complex128))
        self.solution_ = np.concatenate([x, np.full((edge_pts.size, x.shape[1]), np.nan + 0j)])[order]
        tr = shares["train_trace"]  # (P, K): (1/p) tr(U_c Q)
        num = (ft.weights[None, :] * tr).imag
        tot = num.sum(axis=1, keepdims=True)
        share = np.where(tot > 0, num / np.where(tot > 0, tot, 1.0), np.nan)
        self.class_share_ = np.stack([pad(share[:, c]) for c in range(ft.n_classes)])
        self.bulks_ = bulks
        # quadrature on the bulk grid: int f(lambda) dlambda ~= sum_k weights_k f(lambda_k)
        halves = np.array([0.5 * (b.hi - b.lo) for b in bulks])
        self.grid_ = {"lambda": lam, "weights": halves[own] * np.pi / per * np.sin(th), "solution": x, "owner": own}
        self.theta_ = th
        self.points_per_bulk_ = per

    def _bulk_masses(self, ft: FeatureTypes, bulks: list[_Bulk], per: int, dens: Array, x: CArray,
                     owner: NDArray[np.intp]) -> None:
        """Mass of each bulk: midpoint rule in theta (lambda = mid - half cos theta), refined by tripling the
        number of points (the old points are reused) until two levels agree within ``mass_tolerance`` or
        ``max_mass_refinements`` triplings were made. Square-root edges need no refinement (the integrand
        dens sin(theta) is smooth); bulks made of merged narrow pieces (feature types from centroids) do.
        All bulks are refined together; the new points start from the solutions interpolated in theta (the
        solution is smooth in theta up to square-root edges, where lambda - edge ~ theta^2)."""
        state = []
        for k, b in enumerate(bulks):
            theta = (np.arange(per) + 0.5) * np.pi / per
            values = dens[owner == k] * np.sin(theta)
            b.mass = float(0.5 * (b.hi - b.lo) * np.pi / per * values.sum())
            state.append({"n": per, "values": values, "x": x[owner == k], "theta": theta, "done": False})
        for _ in range(self.max_mass_refinements):
            active = [k for k, st in enumerate(state) if not st["done"]]
            if not active:
                break
            lam_new, x0_new, parts = [], [], []
            for k in active:
                st, b = state[k], bulks[k]
                n = st["n"]
                # the midpoints of a 3n-point midpoint rule are the n old ones and 2n new ones
                j = np.arange(3 * n)
                new_theta = (j + 0.5) * np.pi / (3 * n)
                fresh = (j % 3) != 1
                mid, half = 0.5 * (b.lo + b.hi), 0.5 * (b.hi - b.lo)
                lam_new.append(mid - half * np.cos(new_theta[fresh]))
                x0_new.append(_interp_rows(new_theta[fresh], st["theta"], st["x"]))
                parts.append((new_theta, fresh))
            lam_cat = np.concatenate(lam_new)
            x_cat = self._warm_solve(ft, lam_cat, np.concatenate(x0_new))
            _, q_cat, _, _ = map_and_jacobian(ft, lam_cat + 1j * self.epsilon, x_cat, jacobian=False)
            offset = 0
            for k, (new_theta, fresh) in zip(active, parts):
                st, b = state[k], bulks[k]
                m = int(fresh.sum())
                n = st["n"]
                all_values = np.empty(3 * n)
                all_values[~fresh] = st["values"]
                all_values[fresh] = np.maximum(q_cat[offset: offset + m].imag, 0.0) / np.pi * np.sin(new_theta[fresh])
                all_x = np.empty((3 * n, x_cat.shape[1]), dtype=np.complex128)
                all_x[~fresh] = st["x"]
                all_x[fresh] = x_cat[offset: offset + m]
                offset += m
                new_mass = float(0.5 * (b.hi - b.lo) * np.pi / (3 * n) * all_values.sum())
                st["done"] = abs(new_mass - b.mass) <= self.mass_tolerance
                b.mass = new_mass
                st.update(n=3 * n, values=all_values, x=all_x, theta=new_theta)

    def _warm_solve(self, ft: FeatureTypes, lam: Array, x0: CArray | None = None) -> CArray:
        """Solve at lam + i eps by Newton from ``x0`` or from the scan solution interpolated in lambda
        (continuation in lambda); points that do not converge get a fresh continuation in eps."""
        tol = self._newton_tol
        if x0 is None:
            x0 = _interp_rows(lam, self.scan_["lambda"], self.scan_["solution"])
        z = lam + 1j * self.epsilon
        x, res = newton(ft, z, x0, tol=tol)
        bad = ~(res <= 10 * tol)
        if bad.any():
            xb, _, _ = solve_on_line(ft, lam[bad], self.epsilon, eps_start=self.upper_bound_, tol=tol)
            x[bad] = xb
        return x

    @staticmethod
    def class_traces(ft: FeatureTypes, z: CArray, x: CArray, parts: dict | None = None) -> dict[str, CArray]:
        """Per-class resolvent traces at z (P,) (``docs/theory.md`` §5.1), each (P, K):

        ``train_trace``  (1/p) tr(U_c Q)  with U_c the class-c training moment,
        ``test_trace``   (1/p) tr(Ubar_c Q) with Ubar_c = E_x[E_eta phi phi^T | class c] (centroid spike dropped),
        ``vv``           (1/d) tr(V^T Q V) (P,), ``vc`` (1/d) tr(V^T Q V_c) (P, K).
        """
        if parts is None:
            parts = resolvent_parts(ft, z, x)
        qw = parts["Qbar"] * ft.node_weights
        delta, T = parts["delta"], parts["T"]
        tdiag = np.einsum("pcc->pc", T)
        ratio = ft.psi_n / ft.psi_p
        noise = ft.delta_t * tdiag / ft.psi_p + qw @ ft.s2.T  # (1/p) tr(B_c Q)
        train = ratio * delta / (1.0 + delta) + noise
        test = ratio * delta + noise
        vc = ft.delta_t * np.einsum("l,plc->pc", ft.weights, T)
        vv = vc @ ft.weights
        return {"train_trace": train, "test_trace": test, "vv": vv, "vc": vc}

    # --------------------------------------------------------------------------------------- outliers
    @staticmethod
    def _mean_columns(ft: FeatureTypes) -> tuple[Array, NDArray[np.intp]]:
        """Per-type entries (J, N) of the low-rank directions of U and the class of each: the class-mean
        features kappa0_c (J = K), followed by the spike vectors of anisotropic classes when present."""
        cols, cls = ft.kappa0, np.arange(ft.n_classes)
        if ft.spike_vectors is not None and ft.spike_classes is not None and len(ft.spike_classes):
            cols = np.concatenate([cols, ft.spike_vectors])
            cls = np.concatenate([cls, np.asarray(ft.spike_classes, dtype=np.intp)])
        return cols, cls

    def _spike_matrix(self, ft: FeatureTypes, theta: Array, x: CArray) -> Array:
        """S(theta) = diag(1 + delta_c(j)) + p sqrt(rho_c(j) rho_c(l)) E[f_j f_l Qbar], (P, J, J) real: f_j the
        mean columns of :meth:`_mean_columns` (kappa0_c, then the spike vectors of ``docs/theory.md`` §8)."""
        parts = resolvent_parts(ft, theta + 0j, x)
        p = ft.psi_p * ft.dim
        cols, cls = self._mean_columns(ft)
        qw = (parts["Qbar"] * ft.node_weights).real
        kk = p * np.einsum("kn,ln,pn->pkl", cols, cols, qw)
        sr = np.sqrt(ft.weights[cls])
        s = kk * sr[None, :, None] * sr[None, None, :]
        j = np.arange(cls.size)
        s[:, j, j] += 1.0 + parts["delta"].real[:, cls]
        return s

    def _find_outliers(self, ft: FeatureTypes) -> Array:
        """Outliers above the top edge: theta where an eigenvalue of the symmetric S(theta) crosses 0. S -> I as
        theta -> inf and each outlier passed on the way down turns one more eigenvalue negative, so counting the
        negative eigenvalues on a scan brackets every root, also close pairs that one determinant sign would miss;
        each root is refined by Brent's method on the crossing eigenvalue."""
        p = ft.psi_p * ft.dim
        cols, cls = self._mean_columns(ft)
        spike = p * float((ft.weights[cls] * (cols**2 @ ft.node_weights)).sum())
        if spike <= 0 or not len(self.bulks_):
            return np.zeros(0)
        top = self.bulks_[-1].hi
        # the spikes are O(p): their outliers lie above the top edge of the bulk
        hi = 2.0 * (spike + top) + 1.0
        gap = hi - top
        th = top + gap * np.concatenate([np.geomspace(1e-6, 0.5, 120), 1 - np.geomspace(0.5, 1e-6, 40)[1:]])
        x, res, _ = solve_on_line(ft, th, 1e-13 * max(1.0, hi), eps_start=self.upper_bound_ + hi,
                                  tol=self._newton_tol)
        ok = res < 1e-8
        x = x.copy()
        x.imag = 0.0
        eig = np.linalg.eigvalsh(self._spike_matrix(ft, th, x))  # (P, J) ascending
        negative = (eig < 0).sum(axis=1)
        roots = []
        good = np.nonzero(ok)[0]
        for lo_i, hi_i in pairwise(good.tolist()):  # th increases with the index: fewer negatives above
            for k in range(int(negative[hi_i]), int(negative[lo_i])):
                xw = x[lo_i : lo_i + 1]

                def f(t: float, xw=xw, k=k) -> float:
                    xs, _ = newton(ft, np.array([t + 0j]), xw.copy(), tol=self._newton_tol)
                    return float(np.linalg.eigvalsh(self._spike_matrix(ft, np.array([t]), xs.real + 0j))[0, k])

                try:
                    roots.append(brentq(f, th[lo_i], th[hi_i], xtol=1e-12 * th[hi_i], rtol=1e-12))
                except ValueError:
                    continue
        return np.sort(np.array(roots))

    # -------------------------------------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``classdiff spectrum`` (DESIGN.md keys plus extras)."""
        return self.result().to_dict()

    def result(self) -> SpectrumResult:
        """The fitted spectrum as a typed :class:`SpectrumResult`."""
        self._check_fitted()
        ft = self.types_
        return SpectrumResult(
            lambda_=self.lambda_, density=self.density_, edges=self.edges_.tolist(),
            outliers=self.outliers_.tolist(), masses=self.masses_.tolist(),
            atoms=[(float(a), float(m)) for a, m in self.atoms_], total_mass=self.total_mass_,
            max_residual=float(np.nanmax(self.residual_)), class_share=self.class_share_,
            bulk_class=self.bulk_classes(), p=round(ft.psi_p * ft.dim), n=round(ft.psi_n * ft.dim), d=ft.dim)

    def bulk_classes(self) -> list[int | None]:
        """Per bulk, the class owning more than 2/3 of its modes (mass-weighted share), else None."""
        self._check_fitted()
        out: list[int | None] = []
        for b in self.bulks_:
            sel = (self.lambda_ >= b.lo) & (self.lambda_ <= b.hi) & (self.density_ > 0)
            if not sel.any():
                out.append(None)
                continue
            w = self.density_[sel]
            share = np.nansum(self.class_share_[:, sel] * w, axis=1) / w.sum()
            c = int(np.argmax(share))
            out.append(c if share[c] > 2.0 / 3.0 else None)
        return out

    def stieltjes(self, z: Any) -> CArray:
        """q(z) at arbitrary complex points (Im z != 0 or outside the support), shape of ``z``."""
        from classdiff.theory.solver import solve_points

        self._check_fitted()
        zz = np.atleast_1d(np.asarray(z, dtype=np.complex128))
        flip = zz.imag < 0
        zs = np.where(flip, zz.conj(), zz)
        x, _ = solve_points(self.types_, zs, tol=self._newton_tol)
        q = resolvent_parts(self.types_, zs, x)["Qbar"] @ self.types_.node_weights
        return np.where(flip, q.conj(), q).reshape(np.shape(z))

    def smoothed_density(self, lam: Any, resolution: float) -> Array:
        """Im q(lambda + i resolution)/pi at real points lam (L,): the density convolved with the Cauchy kernel
        of half-width ``resolution`` (so it carries the atoms too). Solved by continuation in the imaginary part
        from far above the spectrum (:func:`classdiff.theory.solver.solve_on_line`). This is the quantity to
        compare between quadratures or with an eigenvalue histogram of that resolution: below the
        generalization bulk the eps -> 0 density of a discretised type law is a comb whose teeth move with the
        node count (``docs/theory.md`` §4.1)."""
        from classdiff.theory.solver import solve_on_line

        self._check_fitted()
        if not resolution > 0:
            raise ValueError(f"resolution = {resolution!r}: must be > 0")
        lam = np.atleast_1d(np.asarray(lam, dtype=np.float64))
        x, _, _ = solve_on_line(self.types_, lam, float(resolution), eps_start=max(self.upper_bound_, 10 * resolution),
                                tol=self._newton_tol)
        q = resolvent_parts(self.types_, lam + 1j * resolution, x)["Qbar"] @ self.types_.node_weights
        return q.imag / np.pi

    def _check_fitted(self) -> None:
        if not hasattr(self, "density_"):
            raise RuntimeError("FeatureSpectrum: call fit() first")


@dataclass
class SpectrumResult:
    """The spectrum of U: density on the bulk grid ``lambda_`` (L,), ``density`` (L,), bulk ``edges``
    [[lo, hi], ...] and ``masses``, ``atoms`` [(lambda, mass)], centroid ``outliers``, per-class share of the
    modes ``class_share`` (K, L) and the owning class of each bulk (None: shared); optionally the eigenvalues
    of one sampled U (``sampled_kind`` "ge" or "tanh")."""

    lambda_: NDArray[np.float64]
    density: NDArray[np.float64]
    edges: list[list[float]]
    outliers: list[float]
    masses: list[float]
    atoms: list[tuple[float, float]]
    total_mass: float
    max_residual: float
    class_share: NDArray[np.float64]
    bulk_class: list[int | None]
    p: int
    n: int
    d: int
    sampled_kind: str | None = None
    sampled_eigenvalues: NDArray[np.float64] | None = None

    def to_dict(self) -> dict[str, Any]:
        """DESIGN.md keys ``lambda``, ``density``, ``edges``, ``outliers`` plus the other fields."""
        out: dict[str, Any] = {"lambda": self.lambda_}
        for name in ("density", "edges", "outliers", "masses"):
            out[name] = getattr(self, name)
        out["atoms"] = [list(a) for a in self.atoms]
        for name in ("total_mass", "max_residual", "class_share", "bulk_class", "p", "n", "d"):
            out[name] = getattr(self, name)
        if self.sampled_kind is not None:
            out["sampled_kind"] = self.sampled_kind
            out["sampled_eigenvalues"] = self.sampled_eigenvalues
        return out


def spectrum_from_config(config: Config) -> SpectrumResult:
    """Pure function of a :class:`classdiff.core.config.Config`: the ``spectrum`` result (DESIGN.md keys)."""
    th = config.theory
    spec = FeatureSpectrum(n_lambda=th.n_lambda, epsilon=th.epsilon, tolerance=th.tolerance, n_scan=th.n_scan).fit(config)
    return spec.result()
