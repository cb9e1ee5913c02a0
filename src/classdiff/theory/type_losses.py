"""Per-class loss curves with the feature types kept: the two-resolvent closure over W (``docs/theory.md`` §5.5).

The loss model of :mod:`classdiff.theory.losses` closes the feature types into one mean type per class, which
removes the imbalance reversal (§6.3). Here the types are kept. Every matrix of the sample-level deterministic
equivalent (§5.2) has the form M = S_E + D_m with S_E = (F E F^T) o K = sum_j Y_j E Y_j^T, Y_j = D_{w_j} F / sqrt d,
F (p, K) the per-feature slopes a_{c,i}, E a K x K matrix and D_m diagonal with a value per feature type:

    C_c = (A_c e_c e_c^T, v2_c),  B_c = (Delta e_c e_c^T, s2_c),  Ubar_c = C_c + B_c,  X = V V^T = (Delta rho rho^T, 0).

The sample-level resolvent is R(z) = (S_A + D_Lambda - z)^{-1} with A = diag(G) (equations (F), §3.2). The second
leave-one-out, over the columns w_j of W, gives for two points z1, z2 (Pi_k = (I + Omega_k A_k)^{-1},
B_k = A_k Pi_k, Omega = Dm, r_tau = Qbar_tau of (F)):

* the middle matrix reduces to a diagonal: E[R1 S_E R2] = E[R1 D_{mE} R2], mE_tau = f_tau^T Pi_1^T E Pi_2 f_tau;
* diag E[R1 D_m R2] = t_tau = r1 r2 (m_tau + f_tau^T B1 Psi B2 f_tau), Psi = psi_p E_type[t f f^T] (a K^2 linear
  system per pair);
* (1/p) tr(D_y R1 M R2) = E_type[y t] and (1/p) tr(S_E R1 M R2) = (1/psi_p) tr(E Pi_1 (Psi + Omega_1 E_M Omega_2) Pi_2^T).

The sample-level Theta equations (§5.2) are then solved per pair, and the time-domain losses follow from the
contour integral gamma(U) = -(1/2 pi i) oint gamma(z) R(z) dz, on a contour around the spectrum in the right
half-plane: gamma(z) = (1 - e^{-2 Delta z tau/psi_p})/z is entire and bounded there, and the spectrum lies above
min_tau sum_c rho_c s2_c > 0 (U >= D_{s2}), so the contour never meets it. The contour is an ellipse in log z; the
trapezoid rule on it converges geometrically in the number of nodes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.theory.equations import FeatureTypes, resolvent_parts
from classdiff.theory.solver import solve_points
from classdiff.theory.spike_block import solve_spike_block, spike_upper_bound

__all__ = ["TypeLossModel"]

Array = NDArray[np.float64]
CArray = NDArray[np.complex128]


class TypeLossModel:
    """Per-class train and test losses of the random-features gradient flow with the feature types kept.

    Parameters
    ----------
    n_contour : N, nodes of the trapezoid rule on the contour (the pairs cost N^2).
    height : half-height of the contour ellipse in log z (its largest |arg z|, radians).
    margin : distance in log z between the ends of the contour and the spectrum's bounds.
    mass_cut : the contour may leave out at most this fraction of the spectrum below it (see
        :meth:`spectrum_bounds`); 0 keeps the rigorous bound min_tau s2bar_tau.
    chunk : most pairs per vectorised block (fewer when there are many types, to bound memory).
    spikes : keep the rank-S linear spike part of anisotropic classes (``ft.spike_vectors``) in the resolvent
        and in the class covariances (:mod:`classdiff.theory.spike_block`, ``docs/theory.md`` §8.7); False
        leaves it out, as before 2026-12-07. No effect on types without spike vectors.

    Attributes after :meth:`fit`: ``z_`` (N,) contour nodes, ``dz_`` (N,) trapezoid weights (dz),
    ``bounds_`` (lower, upper) bounds of the spectrum, ``residual_`` the largest relative residual of (F) on
    the contour (with the spike block: the last relative change of its fixed-point iteration), ``F_test_``,
    ``F_train_`` (N, N, K) the two-resolvent traces, ``lin_`` (N, K) the linear traces, ``spikes_used_`` whether
    the spike block was solved.
    """

    def __init__(self, n_contour: int = 128, height: float = 0.6, margin: float = 0.4, mass_cut: float = 1e-6,
                 chunk: int = 4096, spikes: bool = True) -> None:
        self.n_contour = n_contour
        self.spikes = spikes
        self.mass_cut = mass_cut
        self.height = height
        self.margin = margin
        self.chunk = chunk

    # ------------------------------------------------------------------------------------------- geometry
    @staticmethod
    def spectrum_bounds(ft: FeatureTypes, mass_cut: float = 0.0) -> tuple[float, float]:
        """A lower and an upper bound of the limiting spectrum of U (bulk only, no centroid spikes).

        Lower: U >= D_{s2bar} (every other part is positive semi-definite), so by Weyl's monotonicity the fraction
        of eigenvalues below lambda is at most the type weight of {s2bar_tau < lambda}. The bound is the s2bar at
        which that weight first exceeds ``mass_cut`` (with 0: min_tau s2bar_tau, below the whole spectrum).
        Saturated feature types (large centroids) have s2bar ~ 0 and tiny weight; the cut keeps the contour
        away from 0 at the price of at most ``mass_cut`` of the spectrum.
        Upper: ||(1/n) G G^T|| <= (1 + 1/sqrt psi_n)^2 ||C|| and ||D_b K D_b|| <= (1 + sqrt psi_p)^2 max b^2 by the
        Marchenko–Pastur edges, with ||C_c|| <= (1 + sqrt psi_p)^2 A_c max a_c^2 + max v2_c; doubled for safety.
        """
        s2bar = ft.weights @ ft.s2
        order = np.argsort(s2bar)
        below = np.cumsum(ft.node_weights[order])
        lo = float(s2bar[order][np.searchsorted(below, mass_cut, side="right")]) if mass_cut > 0 else float(s2bar.min())
        mp = (1.0 + math.sqrt(ft.psi_p)) ** 2
        a2 = (ft.a**2).max(axis=1)
        c_norm = mp * ft.signal_variances * a2 + ft.v2.max(axis=1)
        hi = (1.0 + 1.0 / math.sqrt(ft.psi_n)) ** 2 * float(c_norm.max()) + mp * ft.delta_t * float(a2.max()) \
            + float(ft.s2.max())
        return lo, 2.0 * hi

    def _contour(self, lo: float, hi: float) -> tuple[CArray, CArray]:
        n = int(self.n_contour)
        u_lo, u_hi = math.log(lo) - self.margin, math.log(hi) + self.margin
        c, h = 0.5 * (u_lo + u_hi), 0.5 * (u_hi - u_lo)
        theta = 2.0 * np.pi * (np.arange(n) + 0.5) / n  # no node on the real axis
        u = c + h * np.cos(theta) + 1j * self.height * np.sin(theta)
        z = np.exp(u)
        dz = z * (-h * np.sin(theta) + 1j * self.height * np.cos(theta)) * (2.0 * np.pi / n)  # counter-clockwise
        return z, dz

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, ft: FeatureTypes) -> TypeLossModel:
        """Solve (F) on the contour and build the two-resolvent traces of every pair of nodes."""
        if int(self.n_contour) < 8:
            raise ValueError(f"n_contour = {self.n_contour!r}: must be an integer >= 8")
        if not (0 < self.height < math.pi / 2):
            raise ValueError(f"height = {self.height!r}: must lie in (0, pi/2) (the contour stays in Re z > 0)")
        lo, hi = self.spectrum_bounds(ft, float(self.mass_cut))
        spikes = bool(self.spikes) and ft.spike_vectors is not None and ft.spike_vectors.shape[0] > 0
        if spikes:
            hi += 2.0 * spike_upper_bound(ft)  # the spike block is positive semi-definite
        if not lo > 0:
            raise ValueError("TypeLossModel: needs sum_c rho_c s2_c > 0 for every feature type (the spectrum must "
                             "stay away from 0, e.g. not the identity activation)")
        self.bounds_ = (lo, hi)
        z, dz = self._contour(lo, hi)
        x, res = solve_points(ft, z)
        self.spikes_used_ = spikes
        if spikes:
            parts = solve_spike_block(ft, z, x)
            self.residual_ = float(parts["residual"])
        else:
            self.residual_ = float(np.max(res))
            parts = resolvent_parts(ft, z, x)
        self.z_, self.dz_, self.ft_ = z, dz, ft
        k = ft.n_classes
        f = ft.a.T  # (T, K): slopes per type
        w = ft.node_weights
        r = parts["Qbar"]  # (N, T)
        om = parts["Dm"]  # (N, K, K)
        Adiag = parts["G"]  # (N, K)
        pi = np.linalg.inv(np.eye(k)[None] + om * Adiag[:, None, :])  # (I + Omega A)^{-1}, (N, K, K)
        B = parts["M"]  # A (I + Omega A)^{-1}
        delta = parts["delta"]
        T = parts["T"]  # Omega (I + A Omega)^{-1}: (1/d) tr(S_E R) = tr(E T)
        # linear traces (1/d) tr(V_c V^T R) with V_c V^T = S_{Delta e_c rho^T}
        self.lin_ = ft.delta_t * np.einsum("k,nkc->nc", ft.weights, T)
        # matrices (E, m): E (K, K), m (T,)
        eye = np.eye(k)
        A_c, dlt, rho = ft.signal_variances, ft.delta_t, ft.weights
        mats = {}
        for c in range(k):
            ec = np.outer(eye[c], eye[c])
            mats[("C", c)] = (A_c[c] * ec, ft.v2[c])
            mats[("B", c)] = (dlt * ec, ft.s2[c])
        mats["X"] = (dlt * np.outer(rho, rho), np.zeros(ft.n_nodes))
        spike = _SpikeTerms(ft, parts) if spikes else None
        n = z.size
        ii, jj = (g.ravel() for g in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))
        F_test = np.empty((n * n, k), dtype=np.complex128)
        F_train = np.empty((n * n, k), dtype=np.complex128)
        psi_p, psi_n = ft.psi_p, ft.psi_n
        n_spikes = ft.spike_vectors.shape[0] if spikes and ft.spike_vectors is not None else 0
        chunk = max(64, min(int(self.chunk), 2**22 // (ft.n_nodes * (k * k + 2 * n_spikes) + k**4 + n_spikes**2)))
        for s in range(0, n * n, chunk):
            i, j = ii[s:s + chunk], jj[s:s + chunk]
            pair = _Pair(f, w, psi_p, r[i], r[j], om[i], om[j], pi[i], pi[j], B[i], B[j])
            mids = ["X"] + [("C", c) for c in range(k)]
            if spike is None:
                sol = {key: pair.middle(*mats[key]) for key in mids}
            else:
                sp = spike.pairs(i, j)
                # the spike part of C_c (in the middle) adds its diagonal f^T Pi_L1^T E_c Pi_L2 f (rule 1)
                sol = {key: pair.middle(mats[key][0], mats[key][1] + (0.0 if key == "X" else sp.middle(key[1])))
                       for key in mids}
            # outer traces T(Y; M), (P, K outer classes, K + 1 middles: X, C_0..C_{K-1}); Ubar_c = C_c + B_c, and
            # T is linear in Y, so T(Ubar_c; .) = T(C_c; .) + T(B_c; .)
            t_c = np.stack([np.stack([pair.outer(*mats[("C", a)], sol[key])
                                      + (0.0 if spike is None else sp.outer(a, sol[key]["t"], None if key == "X"
                                                                             else key[1]))
                                      for key in mids], axis=-1) for a in range(k)], axis=1)
            t_b = np.stack([np.stack([pair.outer(*mats[("B", a)], sol[key]) for key in mids], axis=-1)
                            for a in range(k)], axis=1)
            P_x, P_c = t_c[:, :, 0] * (psi_p / psi_n), t_c[:, :, 1:] * (psi_p / psi_n)  # (P, a), (P, a, c)
            den = (1.0 + delta[i]) * (1.0 + delta[j])  # (P, K)
            coef = rho / den
            lhs = np.eye(k)[None] - P_c * coef[:, None, :]
            theta = np.linalg.solve(lhs, P_x[:, :, None])[:, :, 0]  # (P, K)
            wt = rho * theta / den  # rho_k Theta_k / den_k
            # psi_p [T(Y_c; X) + sum_q rho_q Theta_q T(Y_c; C_q) / den_q] for Y_c = Ubar_c (test) and B_c (train)
            mix_b = t_b[:, :, 0] + np.einsum("pcq,pq->pc", t_b[:, :, 1:], wt)
            mix_c = t_c[:, :, 0] + np.einsum("pcq,pq->pc", t_c[:, :, 1:], wt)
            F_test[s:s + chunk] = psi_p * (mix_c + mix_b)
            F_train[s:s + chunk] = psi_p * mix_b + psi_n * theta / den
        self.F_test_ = F_test.reshape(n, n, k)
        self.F_train_ = F_train.reshape(n, n, k)
        return self

    # ------------------------------------------------------------------------------------------- curves
    def curves(self, tau: ArrayLike) -> dict[str, Any]:
        """Per-class ``train_loss`` and ``test_loss`` (K, T) at the times ``tau`` (T,) (np.inf allowed), and
        ``imag`` the largest imaginary part left by the contour sums (a check)."""
        ft = self.ft_
        tau = np.atleast_1d(np.asarray(tau, dtype=np.float64))
        rate = 2.0 * ft.delta_t / ft.psi_p
        finite = np.isfinite(tau)
        expo = np.zeros((self.z_.size, tau.size), dtype=np.complex128)
        expo[:, finite] = np.exp(-rate * np.outer(self.z_, tau[finite]))
        gam = (1.0 - expo) / self.z_[:, None]  # (N, T)
        wg = self.dz_[:, None] * gam  # dz gamma
        out: dict[str, Any] = {"tau": tau}
        imag = 0.0
        lin = np.einsum("nt,nc->ct", wg, self.lin_) * (-1.0 / (2j * np.pi))  # (1/d) tr(V^T gamma V_c)
        for name, F in (("test_loss", self.F_test_), ("train_loss", self.F_train_)):
            quad = np.einsum("it,ijc,jt->ct", wg, F, wg) * (-1.0 / (4.0 * np.pi**2))
            val = 1.0 + quad - 2.0 * lin
            imag = max(imag, float(np.max(np.abs(val.imag))))
            out[name] = val.real
        out["imag"] = imag
        return out


class _SpikeTerms:
    """The spike block's part of the two-resolvent traces (``docs/theory.md`` §8.7).

    With L = [f_j] (p, S) and E_c = diag(1[class(j) = c]) the spike part of C_c is L E_c L^T. Rule 1 gives its
    diagonal f^T Pi_L1^T E_c Pi_L2 f in the middle; rule 3 gives, for C_a outside,
    (1/p) tr(L E_a L^T R1 M R2) = (1/p) tr(E_a Pi_L1 (Psi_L + Omega_L1 E_M Omega_L2) Pi_L2^T),
    Psi_L = p E_type[t f f^T]. The feedback of Psi_L on t (rule 2's term f^T M_L1 Psi_L M_L2 f) is left out:
    solved exactly on a planted case with S = 7 it moved no time by more than 0.7% (docs/theory.md §8.7).
    """

    def __init__(self, ft: FeatureTypes, parts: dict[str, Any]) -> None:
        assert ft.spike_vectors is not None and ft.spike_classes is not None
        self.fl, self.w, self.p = ft.spike_vectors, ft.node_weights, ft.psi_p * ft.dim
        self.masks = [ft.spike_classes == c for c in range(ft.n_classes)]
        self.member = [m.astype(np.float64) for m in self.masks]
        self.pi_l, self.om_l = parts["Pi_L"], parts["Omega_L"]
        self.pf = np.matmul(self.pi_l, self.fl)  # Pi_L f, (N, S, T)
        self.po = np.matmul(self.pi_l, self.om_l)  # Pi_L Omega_L, (N, S, S)

    def pairs(self, i: NDArray[np.intp], j: NDArray[np.intp]) -> _SpikePair:
        return _SpikePair(self, i, j)


class _SpikePair:
    def __init__(self, terms: _SpikeTerms, i: NDArray[np.intp], j: NDArray[np.intp]) -> None:
        self.terms = terms
        # f^T Pi_L1^T E_c Pi_L2 f per class c and type, (K, P, T)
        self.mid = np.stack([(terms.pf[i][:, m] * terms.pf[j][:, m]).sum(axis=1) for m in terms.masks])
        self.oo = terms.po[i] * terms.po[j]  # (Pi_L1 Omega_L1)_sk (Pi_L2 Omega_L2)_sk, (P, S, S)

    def middle(self, c: int) -> CArray:
        """f^T Pi_L1^T E_c Pi_L2 f per type, (P, T)."""
        return self.mid[c]

    def outer(self, a: int, t: CArray, c: int | None) -> CArray:
        """(1/p) tr(L E_a L^T R1 M R2) for the middle M (its diagonal t, its spike class c or None), (P,)."""
        tm = self.terms
        val = (self.mid[a] * t) @ tm.w  # (1/p) tr(E_a Pi_L1 Psi_L Pi_L2^T), Psi_L = p E[t f f^T]
        if c is not None:
            val = val + np.einsum("s,psk,k->p", tm.member[a], self.oo, tm.member[c]) / tm.p
        return val


class _Pair:
    """W-level two-resolvent quantities for a block of pairs (z1, z2) (module docstring)."""

    def __init__(self, f: Array, w: Array, psi_p: float, r1: CArray, r2: CArray, om1: CArray, om2: CArray,
                 pi1: CArray, pi2: CArray, b1: CArray, b2: CArray) -> None:
        self.f, self.w, self.psi_p = f, w, psi_p
        self.rr = r1 * r2  # (P, T)
        self.om1, self.om2, self.pi1, self.pi2 = om1, om2, pi1, pi2
        g1 = np.matmul(f[None], np.swapaxes(b1, 1, 2))  # B1 f, (P, T, K) (B symmetric)
        g2 = np.matmul(f[None], np.swapaxes(b2, 1, 2))
        k = f.shape[1]
        wr = psi_p * w * self.rr  # (P, T)
        self.ff = (f[:, :, None] * f[:, None, :]).reshape(f.shape[0], k * k)  # f_a f_b, (T, K^2)
        # L[(a,b),(c,d)] = psi_p E[r1 r2 f_a f_b (B1 f)_c (B2 f)_d], one batched product over the types
        gg = (g1[:, :, :, None] * g2[:, :, None, :]).reshape(g1.shape[0], g1.shape[1], k * k)  # (P, T, K^2)
        L = np.matmul(np.swapaxes(wr[:, :, None] * self.ff[None], 1, 2), gg)
        self.lhs = np.eye(k * k)[None] - L
        self.g1, self.g2, self.wr, self.k = g1, g2, wr, k

    def middle(self, E: Array, m: Array | CArray) -> dict[str, CArray]:
        """Solve Psi for the middle matrix (E, m), m (T,) or per pair (P, T): returns ``psi`` (P, K, K), ``t`` (P, T) and ``E``."""
        k = self.k
        # m~_tau = m_tau + f^T Pi1^T E Pi2 f, with Pi = (I + Omega A)^{-1}: R1 Y E Y^T R2 = R1' Y Pi1^T E Pi2 Y^T R2'
        mid = np.matmul(np.swapaxes(self.pi1, 1, 2), np.matmul(E, self.pi2))  # Pi1^T E Pi2
        mt = np.atleast_2d(m) + mid.reshape(-1, k * k) @ self.ff.T  # m + f^T mid f, (P, T); m (T,) or (P, T)
        psi0 = (self.wr * mt) @ self.ff  # psi_p E[r1 r2 m~ f f^T], (P, K^2)
        psi = np.linalg.solve(self.lhs, psi0[:, :, None])[:, :, 0].reshape(-1, k, k)
        t = self.rr * (mt + (np.matmul(self.g1, psi) * self.g2).sum(-1))
        return {"psi": psi, "t": t, "E": E}

    def outer(self, E_y: Array, y: Array, sol: dict[str, CArray]) -> CArray:
        """(1/p) tr(Y R1 M R2) for Y = (E_y, y) and the middle matrix M already solved in ``sol``; shape (P,)."""
        diag = (self.w * y)[None, :] * sol["t"]
        inner = sol["psi"] + np.einsum("pab,bc,pcd->pad", self.om1, sol["E"], self.om2)
        # Y^T R1 = Pi1 Y^T R1',  R2 Y = R2' Y Pi2^T
        sand = np.einsum("ab,pbc,pcd,ped->pae", E_y, self.pi1, inner, self.pi2)
        return diag.sum(1) + np.einsum("paa->p", sand) / self.psi_p
