"""Per-class train and test loss curves of the random-features gradient flow from the resolvent of U.

``docs/theory.md`` §5. For identical feature types (no centroids; with centroids the mean-type approximation
of :func:`mean_type_approximation` is used) every deterministic matrix is a function of K = W W^T/d:

    C_c = ca_c K + cb_c       (class-c covariance of the noise-averaged features: ca_c = A_c a_c^2, cb_c = v2_c)
    B_c = Delta a_c^2 K + s2_c, Ubar_c = C_c + B_c (population moment of class c), X = V V^T = bbar^2 K,
    Qbar(z) = h(K),  h(k) = 1/(alpha(z) k + beta(z) - z),  zeta(z) = (z - beta)/alpha,

and the traces reduce to integrals over the Marchenko–Pastur law mu_K(psi_p) done in closed form with its Stieltjes
transform m_K (partial fractions). The loss of a group of points S is

    L_S(tau) = 1 + (1/d) tr(gamma(U) X gamma(U) Y_S) - (2/d) tr(V^T gamma(U) V_S),   gamma(lambda) = (1 - e^{-2 Delta lambda tau/psi_p})/lambda,

and the quadratic term is a two-resolvent quantity, from the deterministic equivalent (leave-one-out)

    E[Q1 X Q2] = Qbar1 X Qbar2 + sum_c rho_c Theta_c Qbar1 C_c Qbar2 / ((1 + delta_c1)(1 + delta_c2)),
    Theta_k = (1/n) tr(C_k Qbar1 X Qbar2) + sum_c rho_c (1/n) tr(C_k Qbar1 C_c Qbar2) Theta_c / ((1 + delta_c1)(1 + delta_c2)),

and, for the class-c training points, (1/n_c) sum_{nu in c} g_nu^T Q1 X Q2 g_nu = n Theta_c / ((1 + delta_c1)(1 + delta_c2)).
The double spectral integral int int gamma(l1) gamma(l2) mu_Y(dl1, dl2) is split into its diagonal part
int gamma^2 d mu_{XY} (single resolvent) and int int gamma(l1) (gamma(l2) - gamma(l1)) mu_Y, whose integrand is
bounded, on the product of the Chebyshev bulk grids, with mu_Y = Re[F(z1, conj z2) - F(z1, z2)] / (2 pi^2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from classdiff.theory.equations import FeatureTypes, resolvent_parts

__all__ = ["LossModel", "marchenko_pastur_stieltjes", "mean_type_approximation"]

Array = NDArray[np.float64]
CArray = NDArray[np.complex128]


def marchenko_pastur_stieltjes(zeta: CArray, ratio: float) -> tuple[CArray, CArray]:
    """m(zeta) = (1/p) tr (K - zeta)^{-1} for K = W W^T/d, p/d = ratio (atom 1 - 1/ratio at 0 when ratio > 1),
    and its derivative m'(zeta). Branch: m ~ -1/zeta at infinity, cut on the support."""
    c = ratio
    lo, hi = (1 - np.sqrt(c)) ** 2, (1 + np.sqrt(c)) ** 2
    sq = np.sqrt(zeta - lo) * np.sqrt(zeta - hi)
    m = (1 - c - zeta + sq) / (2 * c * zeta)
    # derivative from c zeta m^2 - (1 - c - zeta) m + 1 = 0
    dm = -(c * m**2 + m) / (2 * c * zeta * m - (1 - c - zeta))
    return m, dm


def mean_type_approximation(ft: FeatureTypes) -> FeatureTypes:
    """One effective feature type: a_c -> E[a_c], v2_c -> E[v2_c] + A_c Var(a_c), s2_c -> E[s2_c] + Delta Var(a_c)
    (D_a K D_a ~ E[a]^2 K + Var(a) I), kappa0 -> 0 (the centroid spikes relax on O(1/d) times and are left out)."""
    if ft.n_nodes == 1:
        return ft
    w = ft.node_weights
    ea = ft.a @ w
    var_a = (ft.a**2) @ w - ea**2
    col = lambda v: np.asarray(v, dtype=np.float64)[:, None]  # noqa: E731
    return FeatureTypes(
        weights=ft.weights, variances=ft.variances, node_weights=np.ones(1), means=np.zeros((ft.n_classes, 1)),
        a=col(ea), v2=col(ft.v2 @ w + ft.signal_variances * var_a), s2=col(ft.s2 @ w + ft.delta_t * var_a),
        kappa0=np.zeros((ft.n_classes, 1)), time=ft.time, psi_p=ft.psi_p, psi_n=ft.psi_n, dim=ft.dim,
        activation=ft.activation,
    )


class _Point:
    """Per-point scalars of the one-type equations at z (P,): delta (P, K), alpha, beta, zeta, m, m'."""

    def __init__(self, ft: FeatureTypes, z: CArray, x: CArray) -> None:
        parts = resolvent_parts(ft, z, x)
        a = ft.a[:, 0]
        self.delta = parts["delta"]
        self.alpha = parts["G"] @ (a**2)
        self.beta = ft.s2_bar[0] + parts["gamma"] @ ft.v2[:, 0]
        self.z = z
        self.zeta = (z - self.beta) / self.alpha
        self.m, self.dm = marchenko_pastur_stieltjes(self.zeta, ft.psi_p)

    def conj(self) -> _Point:
        out = object.__new__(_Point)
        for k, v in self.__dict__.items():
            setattr(out, k, np.conj(v))
        return out


def _int1(p: _Point, poly: tuple) -> CArray:
    """int poly(k) h(k) dmu_K, h = 1/(alpha k + beta - z); poly = (p0, p1, p2) arrays broadcastable to (P,)."""
    p0, p1, p2 = poly
    z = p.zeta
    val = p0 + p1 * z + p2 * z**2
    return (p2 + (p1 + p2 * z) + val * p.m) / p.alpha


def _int2(p1: _Point, p2: _Point, poly: tuple, i: NDArray, j: NDArray) -> CArray:
    """int poly(k) h1(k) h2(k) dmu_K for pairs (i, j): h1 at points p1[i], h2 at p2[j]; shape (len(i),)."""
    c0, c1, c2 = (np.asarray(c) for c in poly)
    z1, z2 = p1.zeta[i], p2.zeta[j]
    m1, m2 = p1.m[i], p2.m[j]
    r1 = c1 + c2 * (z1 + z2)
    r0 = c0 - c2 * z1 * z2
    diff = z1 - z2
    close = np.abs(diff) < 1e-9 * (1 + np.abs(z1))
    safe = np.where(close, 1.0, diff)
    pf = ((r1 * z1 + r0) * m1 - (r1 * z2 + r0) * m2) / safe
    der = r1 * m1 + (r1 * z1 + r0) * p1.dm[i]
    val = c2 + np.where(close, der, pf)
    return val / (p1.alpha[i] * p2.alpha[j])


class LossModel:
    """Per-class loss curves from the one-type resolvent (module docstring), on the bulk grid of a spectrum.

    Parameters
    ----------
    ft : one-type :class:`FeatureTypes` (see :func:`mean_type_approximation`).
    lam : (L,) grid points, weights : (L,) quadrature weights (int f dlambda ~= sum weights f), x : (L, n_unknowns)
    solutions at lam + i eps.
    """

    def __init__(self, ft: FeatureTypes, lam: Array, weights: Array, x: CArray, eps: float) -> None:
        if ft.n_nodes != 1:
            raise ValueError("LossModel: needs one feature type (use mean_type_approximation)")
        self.ft, self.lam, self.weights = ft, lam, weights
        self.pt = _Point(ft, lam + 1j * eps, x)
        k = ft.n_classes
        a = ft.a[:, 0]
        self.ca = ft.signal_variances * a**2
        self.cb = ft.v2[:, 0]
        self.bc = np.sqrt(ft.delta_t) * a  # b_c
        self.bbar = float(ft.weights @ self.bc)
        self.x_poly = (0.0, 0.0, 0.0)
        self.k = k
        self._build()

    # ------------------------------------------------------------------------------------------- traces
    def _build(self) -> None:
        ft, pt, k = self.ft, self.pt, self.k
        L = self.lam.size
        b2 = self.bbar**2
        a2 = ft.a[:, 0] ** 2
        ratio = ft.psi_p / ft.psi_n
        # polynomials in k (coefficients of 1, k, k^2)
        X = (0.0, b2, 0.0)
        Yt = [(self.cb[c] + ft.s2[c, 0], self.ca[c] + ft.delta_t * a2[c], 0.0) for c in range(k)]  # Ubar_c
        Yb = [(ft.s2[c, 0], ft.delta_t * a2[c], 0.0) for c in range(k)]  # B_c
        mul = lambda p, q: (p[0] * q[0], p[0] * q[1] + p[1] * q[0], p[1] * q[1])  # degree <= 2  # noqa: E731
        C = [(self.cb[c], self.ca[c], 0.0) for c in range(k)]
        # diagonal parts: densities of (1/d) sum_k delta(lambda - lambda_k) (X Y)_kk
        one = 1.0 / (1.0 + pt.delta)  # (L, K)
        diag_test = np.stack([ft.psi_p * _int1(pt, mul(X, Yt[c])) for c in range(k)], axis=1)
        diag_train = np.stack([ft.psi_p * (_int1(pt, mul(X, Yb[c])) + _int1(pt, mul(C[c], X)) * one[:, c])
                               for c in range(k)], axis=1)
        self.g_test = diag_test.imag / np.pi
        self.g_train = diag_train.imag / np.pi
        # linear terms: (1/d) tr(V^T Q V_c) = bbar b_c psi_p int k h dmu
        lin = ft.psi_p * self.bbar * np.outer(_int1(pt, (0.0, 1.0, 0.0)), self.bc)
        self.g_lin = lin.imag / np.pi
        # two-resolvent measures on the product grid, for (z_i, z_j) and (z_i, conj z_j). Every polynomial below
        # has degree <= 1 in each factor, so each integral is a combination of the three basis integrals
        # I_r = int k^r h1 h2 dmu_K, and the class-class matrix of the Theta equation has rank 2:
        # R_ac = e_a^T G e_c rho_c ratio / den_c with e_c = (cb_c, ca_c), G = [[I0, I1], [I1, I2]].
        # Woodbury then solves it in O(K) per grid point instead of O(K^3).
        ii, jj = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
        ii, jj = ii.ravel(), jj.ravel()
        E = np.stack([self.cb, self.ca], axis=1)  # (K, 2): C_c = cb_c + ca_c k
        Fb = np.stack([ft.s2[:, 0], ft.delta_t * a2], axis=1)  # B_c = s2_c + Delta a_c^2 k
        Ft = E + Fb  # Ubar_c = C_c + B_c
        F = {}
        for sign, p2 in (("pp", pt), ("pm", pt.conj())):
            basis = [_int2(pt, p2, poly, ii, jj) for poly in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))]
            G = np.stack([np.stack(basis[:2], -1), np.stack(basis[1:], -1)], -2)  # (P2, 2, 2)
            i_lin = np.stack(basis[1:], -1)  # (P2, 2): int (. + . k) k h1 h2, for products with X = b2 k
            den = (1.0 + pt.delta[ii]) * (1.0 + p2.delta[jj])  # (P2, K)
            S = ratio * b2 * (i_lin @ E.T)  # (P2, K): ratio int C_c X h1 h2
            dcoef = ft.weights * ratio / den  # (P2, K)
            ede = np.einsum("pc,ca,cb->pab", dcoef, E, E)  # E^T D E
            rhs = np.einsum("pab,pb->pa", G, (dcoef * S) @ E)  # G E^T D S
            small = np.eye(2)[None] - np.einsum("pab,pbc->pac", G, ede)
            theta = S + np.linalg.solve(small, rhs[:, :, None])[:, :, 0] @ E.T  # (P2, K)
            coef = ft.weights * theta / den  # rho_c Theta_c / ((1 + d1)(1 + d2))
            g_coef = np.einsum("pab,pb->pa", G, coef @ E)  # G E^T coef, (P2, 2)
            test = ft.psi_p * (b2 * (i_lin @ Ft.T) + g_coef @ Ft.T)
            train = ft.psi_p * (b2 * (i_lin @ Fb.T) + g_coef @ Fb.T) + ft.psi_n * theta / den
            F[sign] = (test.reshape(L, L, k), train.reshape(L, L, k))
        mu_test = (F["pm"][0] - F["pp"][0]).real / (2 * np.pi**2)
        mu_train = (F["pm"][1] - F["pp"][1]).real / (2 * np.pi**2)
        idx = np.arange(L)
        mu_test[idx, idx] = 0.0
        mu_train[idx, idx] = 0.0
        self.mu_test, self.mu_train = mu_test, mu_train

    # ------------------------------------------------------------------------------------------- curves
    def curves(self, tau: Array) -> dict[str, Array]:
        """Per-class train and test losses (K, T) at times tau (T,) (np.inf allowed)."""
        ft = self.ft
        tau = np.asarray(tau, dtype=np.float64)
        rate = 2.0 * ft.delta_t * self.lam / ft.psi_p
        finite = np.where(np.isinf(tau), 0.0, tau)
        decay = np.where(np.isinf(tau)[None, :], 0.0, np.exp(-np.outer(rate, finite)))
        gam = (1.0 - decay) / self.lam[:, None]  # (L, T)
        w = self.weights
        wg = w[:, None] * gam
        out: dict[str, Any] = {"tau": tau}
        for name, g_diag, mu in (("test_loss", self.g_test, self.mu_test), ("train_loss", self.g_train, self.mu_train)):
            rows = []
            for c in range(self.k):
                M = mu[:, :, c]
                quad_diag = (w[:, None] * g_diag[:, c : c + 1] * gam**2).sum(0)
                cross = np.einsum("it,ij,jt->t", wg, M, wg) - ((wg * gam) * (M @ w)[:, None]).sum(0)
                lin = 2.0 * (w[:, None] * self.g_lin[:, c : c + 1] * gam).sum(0)
                rows.append(1.0 + quad_diag + cross - lin)
            out[name] = np.array(rows)
        return out

    def full_train_check(self) -> Array:
        """sum_c rho_c F_train,c(z_i, z_j) diagonal-part identity helper: returns sum_c rho_c g_train (L,), which must
        equal (1/d) sum_k delta(lambda - lambda_k) (X U)_kk = lambda * w_VV(lambda)."""
        return self.g_train @ self.ft.weights

    def vv_density(self) -> Array:
        """w_VV(lambda) = Im (1/d) tr(V^T Q V) / pi."""
        pt, ft = self.pt, self.ft
        return (ft.psi_p * _int1(pt, (0.0, self.bbar**2, 0.0))).imag / np.pi
