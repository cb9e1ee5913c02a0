"""Self-consistent (deterministic-equivalent) equations for the resolvent of the feature covariance U.

This module holds the per-feature-type Gaussian-equivalent constants of a K-class mixture and the
vectorised fixed-point map whose solution gives q(z) = (1/p) tr (U - z)^{-1}; ``docs/theory.md`` §3–§4
derives it. Notation (as in ``DESIGN.md`` and ``docs/theory.md``):

* classes c = 1..K with training fractions rho_c, variances sigma_c^2, centroids mu_c = m_c sqrt(d) u_c;
* a feature i has a *type*: its pre-activation means m_{c,i} = e^{-t} w_i.mu_c / sqrt(d), jointly Gaussian over
  c with covariance e^{-2t} (mu_c.mu_k / d); the GE constants a_{c,i}, v2_{c,i}, s2_{c,i}, kappa0_{c,i} are
  functions of the type only (``classdiff.rf.features.equivalence_constants``). Expectations over types are a
  quadrature: nodes xi_j with weights omega_j (tensor Gauss–Hermite by default, or a tensor trapezoid rule, in the
  rank r <= 3 of the centroid Gram matrix, a seeded scrambled Sobol rule beyond);
* A_c = e^{-2t} sigma_c^2, Delta = Delta_t, psi_p = p/d, psi_n = n/d.

Unknowns at each spectral parameter z (Im z > 0): delta_c (K,) and the symmetric K x K matrix
Dm_{kl} = (1/d) tr(D_{a_k} D_{a_l} Qbar). With gamma_c = rho_c/(1 + delta_c),

    G_c      = rho_c Delta + gamma_c A_c                                   (coefficient of D_{a_c} K D_{a_c})
    Lambda_j = sum_c rho_c s2_{c,j} + sum_c gamma_c v2_{c,j}               (diagonal part, per type)
    M        = diag(G) (I + Dm diag(G))^{-1}
    Qbar_j   = 1 / (Lambda_j - z + a_j^T M a_j)                            (diagonal resolvent, per type)
    Dm      <- psi_p E_j[a_j a_j^T Qbar_j]
    delta_c <- (1/psi_n) A_c [Dm (I + diag(G) Dm)^{-1}]_{cc} + (psi_p/psi_n) E_j[v2_{c,j} Qbar_j]   (F)

and q = E_j[Qbar_j]. All functions act on a batch of z values at once (leading axis of length P).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
from numpy.typing import NDArray

from classdiff.data.process import noise_variance, signal_scale
from classdiff.rf.features import equivalence_constants, gauss_hermite

__all__ = ["FeatureTypes", "feature_types", "fixed_point_map", "map_and_jacobian", "residual", "resolvent_parts",
           "unpack"]

Array = NDArray[np.float64]
CArray = NDArray[np.complex128]


@dataclass(frozen=True, eq=False)
class FeatureTypes:
    """GE constants per class and per feature type, and the type quadrature.

    Attributes (K classes, N type nodes):
    ``weights`` rho_c (K,); ``variances`` sigma_c^2 (K,); ``node_weights`` omega_j (N,), summing to 1;
    ``means`` pre-activation means m_{c,j} (K, N); ``a``, ``v2``, ``s2``, ``kappa0`` (K, N);
    ``time`` t, ``psi_p``, ``psi_n``, ``dim`` d (only the outliers depend on d), ``activation``;
    optional ``spike_vectors`` f_{s,j} (S, N) and ``spike_classes`` (S,) int: the per-type entries of the rank-S
    linear part of anisotropic classes (``docs/theory.md`` §8, :mod:`classdiff.theory.covariance_types`), which
    create outliers beside those of the centroids, optionally followed by the degree-2 Hermite vectors of §8.9;
    ``variances`` is then the isotropic floor of each class.
    """

    weights: Array
    variances: Array
    node_weights: Array
    means: Array
    a: Array
    v2: Array
    s2: Array
    kappa0: Array
    time: float
    psi_p: float
    psi_n: float
    dim: int
    activation: str
    spike_vectors: Array | None = None
    spike_classes: NDArray[np.intp] | None = None

    @property
    def n_classes(self) -> int:
        return int(self.weights.size)

    @property
    def n_nodes(self) -> int:
        return int(self.node_weights.size)

    @property
    def delta_t(self) -> float:
        return float(noise_variance(self.time))

    @cached_property
    def signal_variances(self) -> Array:
        """A_c = e^{-2t} sigma_c^2, shape (K,)."""
        return float(signal_scale(self.time)) ** 2 * self.variances

    @cached_property
    def aa(self) -> Array:
        """Products a_{k,j} a_{l,j}, shape (K*K, N) (row k*K + l)."""
        k = self.n_classes
        return (self.a[:, None, :] * self.a[None, :, :]).reshape(k * k, -1)

    @cached_property
    def eye(self) -> Array:
        """Identity (K, K)."""
        return np.eye(self.n_classes)

    @cached_property
    def _jac_consts(self) -> dict[str, Array]:
        """Constants of :func:`map_and_jacobian` (row/column layout of the packed unknowns)."""
        k = self.n_classes
        w = self.node_weights
        iu = _triu(k)
        out = {"iu0": iu[0], "iu1": iu[1], "factor": np.where(iu[0] == iu[1], 1.0, 2.0),
               "waa_pairs": self.psi_p * (self.a[iu[0]] * self.a[iu[1]] * w).T,  # (N, npair)
               "wv2": (self.psi_p / self.psi_n) * (self.v2 * w).T,  # (N, K)
               "v20": self.v2[:, 0].copy(), "rho_delta_t": self.weights * self.delta_t}
        a2 = self.a[:, 0] ** 2
        out.update(a2=a2, s2bar0=float(self.s2_bar[0]), rv2=self.weights * self.v2[:, 0],
                   rAa2=self.weights * self.signal_variances * a2,
                   r1=np.append(self.signal_variances * a2 / self.psi_n, 0.0),
                   r2=np.append(self.psi_p * self.v2[:, 0] / self.psi_n, 1.0))
        out["w_all"] = np.concatenate([out["wv2"], out["waa_pairs"]], axis=1)  # (N, n_unknowns): rows of F
        return out

    @property
    def n_unknowns(self) -> int:
        """K + K(K+1)/2 in general; K + 1 for one feature type, where Dm = psi_p q a a^T exactly (compact form)."""
        k = self.n_classes
        return k + 1 if self.n_nodes == 1 else k + k * (k + 1) // 2

    @cached_property
    def s2_bar(self) -> Array:
        """sum_c rho_c s2_{c,j}, shape (N,)."""
        return self.weights @ self.s2

    @property
    def has_atom(self) -> bool:
        """True when every feature has the same constants (no centroids): U then has an atom at s2_bar."""
        return self.n_nodes == 1

    def atom(self) -> tuple[float, float] | None:
        """(location, mass) of the delta peak of the spectrum, or None.

        With identical feature types, the p - d - n directions orthogonal to the columns of W and to the n
        sample directions are eigenvectors with eigenvalue sum_c rho_c s2_c (``docs/theory.md`` §3.3).
        """
        mass = 1.0 - (1.0 + self.psi_n) / self.psi_p
        if not self.has_atom or mass <= 0:
            return None
        return float(self.s2_bar[0]), float(mass)


TYPE_RULES = ("trapezoid", "gauss-hermite")
_TRAPEZOID_HALF_WIDTH = 6.0  # nodes on [-6, 6] per standard axis; the Gaussian weight at the end is e^-18


def _axis_rule(rule: str, m: int) -> tuple[Array, Array]:
    """One-dimensional rule for E f(z), z ~ N(0, 1): m nodes and unnormalised weights."""
    if rule == "gauss-hermite":
        return gauss_hermite(m)
    z = np.linspace(-_TRAPEZOID_HALF_WIDTH, _TRAPEZOID_HALF_WIDTH, m)
    return z, np.exp(-0.5 * z**2)


def _type_nodes(gram: Array, n_max: int, seed: int, rule: str = "gauss-hermite") -> tuple[Array, Array]:
    """Quadrature for E over m ~ N(0, gram) (K-dim): nodes (K, N) and weights (N,).

    The rank r of ``gram`` sets the dimension; r = 0 gives one node at 0. For r <= 3 the rule is a tensor product
    of a one-dimensional ``rule``: Gauss–Hermite with n_max, n_max/3 and n_max/6 points per axis for r = 1, 2, 3,
    dropping nodes below 1e-6 of the largest weight; the trapezoid rule on [-6, 6] with max(16, n_max^(1/r))
    points per axis, dropping nodes below 1e-8 (the tensor corners). r > 3 uses a scrambled
    Sobol rule of n_max points (seeded).

    The trapezoid rule spaces the nodes evenly in m. That matters for the part of the spectrum below the
    generalization bulk: there every type contributes a narrow piece near its own s2, so the density is the
    image of the type law under m -> s2(m), and a rule that crowds its nodes near m = 0 (Gauss–Hermite, whose
    outer nodes also fall under the weight cut) leaves gaps in that image. ``docs/theory.md`` §4.1 gives the
    measured convergence.
    """
    if rule not in TYPE_RULES:
        raise ValueError(f"theory.type_rule = {rule!r}: allowed values are {', '.join(TYPE_RULES)}")
    k = gram.shape[0]
    evals, evecs = np.linalg.eigh(0.5 * (gram + gram.T))
    keep = evals > 1e-12 * max(1.0, float(np.abs(evals).max(initial=0.0)))
    if not np.any(keep):
        return np.zeros((k, 1)), np.ones(1)
    L = evecs[:, keep] * np.sqrt(evals[keep])  # (K, r)
    r = L.shape[1]
    if r <= 3:
        if rule == "gauss-hermite":
            m = {1: n_max, 2: max(8, n_max // 3), 3: max(6, n_max // 6)}[r]
            cut = 1e-6
        else:
            # at least 16 points per axis (step 0.8 on [-6, 6]): the trapezoid error for a Gaussian weight falls
            # like exp(-2 pi^2 / step^2), below 1e-12 here
            m = max(16, int(np.ceil(n_max ** (1.0 / r))))
            cut = 1e-8
        z, w = _axis_rule(rule, m)
        grids = np.meshgrid(*([z] * r), indexing="ij")
        wgrids = np.meshgrid(*([w] * r), indexing="ij")
        xi = np.stack([g.ravel() for g in grids])  # (r, N)
        wt = np.prod(np.stack([g.ravel() for g in wgrids]), axis=0)
        keepn = wt > cut * wt.max()
        xi, wt = xi[:, keepn], wt[keepn]
    else:
        from scipy.stats import norm, qmc

        u = qmc.Sobol(d=r, scramble=True, seed=seed).random(int(2 ** np.ceil(np.log2(n_max))))
        xi = norm.ppf(u).T
        wt = np.full(xi.shape[1], 1.0 / xi.shape[1])
    return L @ xi, wt / wt.sum()


def feature_types(
    weights, variances, centroids, time: float, psi_p: float, psi_n: float, activation: str = "tanh",
    n_nodes: int = 48, seed: int = 0, rule: str = "gauss-hermite",
) -> FeatureTypes:
    """Build :class:`FeatureTypes` for a mixture.

    Parameters
    ----------
    weights : (K,) training fractions rho_c (sum 1).
    variances : (K,) class variances sigma_c^2.
    centroids : (K, d) class means mu_c (only their Gram matrix mu_c.mu_k/d and d matter).
    time, psi_p, psi_n, activation : model parameters.
    n_nodes : quadrature budget for the type average (per axis about n_nodes^(1/r)).
    rule : one-dimensional rule of the type quadrature, one of :data:`TYPE_RULES` (see :func:`_type_nodes`).
    """
    rho = np.asarray(weights, dtype=np.float64)
    var = np.asarray(variances, dtype=np.float64)
    mu = np.atleast_2d(np.asarray(centroids, dtype=np.float64))
    k, d = mu.shape
    if rho.shape != (k,) or var.shape != (k,):
        raise ValueError(f"weights, variances: shapes {rho.shape}, {var.shape}; expected ({k},) to match centroids")
    if psi_p <= 0 or psi_n <= 0:
        raise ValueError(f"psi_p = {psi_p!r}, psi_n = {psi_n!r}: must be > 0")
    e_t = float(signal_scale(time))
    gram = e_t**2 * (mu @ mu.T) / d
    means, node_w = _type_nodes(gram, n_nodes, seed, rule)
    consts = [equivalence_constants(activation, time, float(var[c]), means[c]) for c in range(k)]
    stack = lambda name: np.stack([np.broadcast_to(getattr(g, name), means[c].shape) for c, g in enumerate(consts)])  # noqa: E731
    return FeatureTypes(
        weights=rho, variances=var, node_weights=node_w, means=means, a=stack("a"),
        v2=np.maximum(stack("v2"), 0.0), s2=np.maximum(stack("s2"), 0.0), kappa0=stack("kappa0"),
        time=float(time), psi_p=float(psi_p), psi_n=float(psi_n), dim=int(d), activation=activation,
    )


# ---------------------------------------------------------------------------------------------------------
# packing of the unknowns x = (delta_1..delta_K, Dm_kl for k <= l)


@cache
def _triu(k: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    return np.triu_indices(k)


def unpack(ft: FeatureTypes, x: CArray) -> tuple[CArray, CArray]:
    """x (P, n_unknowns) -> delta (P, K), Dm (P, K, K) symmetric.

    With one feature type the unknowns are (delta, q) and Dm = psi_p q a a^T (the map (F) keeps Dm rank one).
    """
    k = ft.n_classes
    delta = x[:, :k]
    if ft.n_nodes == 1:
        a = ft.a[:, 0]
        return delta, ft.psi_p * x[:, k, None, None] * np.outer(a, a)[None, :, :]
    iu = _triu(k)
    dm = np.zeros((x.shape[0], k, k), dtype=np.complex128)
    dm[:, iu[0], iu[1]] = x[:, k:]
    dm[:, iu[1], iu[0]] = x[:, k:]
    return delta, dm


def pack(ft: FeatureTypes, delta: CArray, dm: CArray, q: CArray | None = None) -> CArray:
    """Inverse of :func:`unpack`; with one feature type the scalar q (P,) is stored instead of Dm (taken from Dm's
    trace when not given)."""
    if ft.n_nodes == 1:
        if q is None:
            a2 = float((ft.a[:, 0] ** 2).sum())
            q = np.einsum("pkk->p", dm) / (ft.psi_p * a2) if a2 > 0 else np.zeros(dm.shape[0], dtype=np.complex128)
        return np.concatenate([delta, np.asarray(q)[:, None]], axis=1)
    iu = _triu(ft.n_classes)
    return np.concatenate([delta, dm[:, iu[0], iu[1]]], axis=1)


def _inv_small(m: CArray) -> CArray:
    """Inverse of a batch (P, K, K) of small matrices: closed form for K <= 2 (numpy.linalg.inv has a large
    per-call overhead on batches of tiny matrices), numpy.linalg.inv beyond."""
    k = m.shape[-1]
    if k == 1:
        return 1.0 / m
    if k == 2:
        a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
        out = np.empty_like(m)
        idet = 1.0 / (a * d - b * c)
        out[:, 0, 0] = d * idet
        out[:, 0, 1] = -b * idet
        out[:, 1, 0] = -c * idet
        out[:, 1, 1] = a * idet
        return out
    return np.linalg.inv(m)


def resolvent_parts(ft: FeatureTypes, z: CArray, x: CArray) -> dict[str, CArray]:
    """Everything the map (F) builds from the unknowns x (P, n_unknowns) at spectral parameters z (P,).

    Returns ``gamma`` (P, K), ``G`` (P, K), ``Qbar`` (P, N), ``T`` (P, K, K) = Dm (I + diag(G) Dm)^{-1}
    (so that tr(D_{a_k} K D_{a_l} Q) = d T_kl), ``M`` (P, K, K), ``delta``, ``Dm``.
    """
    delta, dm = unpack(ft, x)
    k = ft.n_classes
    gamma = ft.weights / (1.0 + delta)
    G = ft.weights * ft.delta_t + gamma * ft.signal_variances
    lam = ft.s2_bar[None, :] + gamma @ ft.v2  # (P, N)
    if ft.n_nodes == 1:
        # Dm = psi_p q a a^T is rank one: Sherman-Morrison gives M and T in closed form
        a = ft.a[:, 0]
        q = x[:, k]
        ga = G * a  # (P, K)
        s = ga @ a
        den = 1.0 + ft.psi_p * q * s
        M = G[:, :, None] * np.eye(k) - (ft.psi_p * q / den)[:, None, None] * ga[:, :, None] * ga[:, None, :]
        T = dm / den[:, None, None]
        quad = (s / den)[:, None]
    else:
        # M = diag(G) (I + Dm diag(G))^{-1}; (I + diag(G) Dm)^{-1} is the transpose of (I + Dm diag(G))^{-1}
        inv1 = _inv_small(ft.eye + dm * G[:, None, :])
        M = G[:, :, None] * inv1
        quad = M.reshape(M.shape[0], k * k) @ ft.aa
        T = dm @ inv1.transpose(0, 2, 1)
    qbar = 1.0 / (lam - z[:, None] + quad)
    return {"gamma": gamma, "G": G, "M": M, "Qbar": qbar, "T": T, "delta": delta, "Dm": dm}


def fixed_point_map(ft: FeatureTypes, z: CArray, x: CArray) -> tuple[CArray, dict[str, CArray]]:
    """The map (F): new unknowns (P, n_unknowns) and the intermediate quantities of :func:`resolvent_parts`."""
    parts = resolvent_parts(ft, z, x)
    qw = parts["Qbar"] * ft.node_weights  # (P, N)
    k = ft.n_classes
    dm_new = ft.psi_p * (qw @ ft.aa.T).reshape(-1, k, k)
    tdiag = np.einsum("pcc->pc", parts["T"])
    delta_new = (ft.signal_variances * tdiag + ft.psi_p * qw @ ft.v2.T) / ft.psi_n
    return pack(ft, delta_new, dm_new, parts["Qbar"][:, 0] if ft.n_nodes == 1 else None), parts


_CHUNK_ELEMENTS = 1 << 20  # complex entries of the largest temporary of map_and_jacobian (16 MiB)


def map_and_jacobian(ft: FeatureTypes, z: CArray, x: CArray, jacobian: bool = True
                     ) -> tuple[CArray, CArray, CArray | None, CArray | None]:
    """The map (F) at x (P, n_unknowns), q = E_j[Qbar_j] (P,) and, with ``jacobian``, the analytic Jacobian
    dF/dx (P, n_unknowns, n_unknowns) (F is holomorphic in x) and the partial derivative dF/dz at fixed x
    (P, n_unknowns) (z enters through Qbar_j only: dQbar_j/dz = Qbar_j^2); else (F, q, None, None).

    This is the solver's hot path: the same map as :func:`fixed_point_map` without the dictionary of
    intermediate quantities and with closed-form small inverses. Derivatives (``docs/theory.md`` §4.2), with
    gamma'_c = -gamma_c^2/rho_c, G'_c = A_c gamma'_c, L = (I + diag(G) Dm)^{-1}, M = diag(G) L^T (symmetric),
    T = Dm L:

        d(a^T M a) = sum_c (L^T a)_c^2 dG_c - (M a)^T dDm (M a),     dT = L^T dDm L - T dG T,
        dQbar_j = -Qbar_j^2 (dLambda_j + d(a_j^T M a_j)).

    With one feature type (unknowns delta, q; Dm = psi_p q a a^T) everything is scalar: s = sum_c G_c a_c^2,
    den = 1 + psi_p q s, a^T M a = s/den, T_cc = psi_p q a_c^2/den.
    """
    k = ft.n_classes
    c = ft._jac_consts
    rho, A, pp, pn = ft.weights, ft.signal_variances, ft.psi_p, ft.psi_n
    delta = x[:, :k]
    inv1p = 1.0 / (1.0 + delta)
    gamma = rho * inv1p
    G = c["rho_delta_t"] + gamma * A
    if ft.n_nodes == 1:
        # F = u r1 + Qbar r2 with u = psi_p q den, r1 = (A_c a_c^2/psi_n, 0), r2 = (psi_p v2_c/psi_n, 1), so the
        # Jacobian is rank two: r1 (x) grad u + r2 (x) grad Qbar
        q = x[:, k]
        s = G @ c["a2"]
        lam = c["s2bar0"] + gamma @ c["v20"]
        den = 1.0 / (1.0 + pp * q * s)
        qb = 1.0 / (lam - z + s * den)
        u = pp * q * den
        r1, r2 = c["r1"], c["r2"]
        fx = u[:, None] * r1 + qb[:, None] * r2
        if not jacobian:
            return fx, qb, None, None
        w = inv1p * inv1p  # -dgamma_c/ddelta_c / rho_c
        den2 = den * den
        qb2 = qb * qb
        # ds/ddelta_c = -rho_c A_c a_c^2 w_c, dLambda/ddelta_c = -rho_c v2_c w_c; grad Qbar = -Qbar^2 (grad Lambda +
        # den^2 grad s) + e_q Qbar^2 psi_p s^2 den^2; grad u = -u^2 grad s + e_q psi_p den^2
        g_q = np.empty_like(x)
        g_q[:, :k] = qb2[:, None] * w * (c["rv2"] + c["rAa2"] * den2[:, None])
        g_q[:, k] = qb2 * pp * s * s * den2
        g_u = np.empty_like(x)
        g_u[:, :k] = (u * u)[:, None] * c["rAa2"] * w
        g_u[:, k] = pp * den2
        jac = r1[None, :, None] * g_u[:, None, :] + r2[None, :, None] * g_q[:, None, :]
        return fx, qb, jac, qb2[:, None] * r2
    P = x.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // (ft.n_nodes * x.shape[1]))
    if jacobian and P > chunk:  # bound the (P, N, n_unknowns) temporaries of the Jacobian
        outs = [map_and_jacobian(ft, z[i: i + chunk], x[i: i + chunk]) for i in range(0, P, chunk)]
        return tuple(np.concatenate([o[j] for o in outs]) for j in range(4))  # type: ignore[return-value]
    iu0, iu1 = c["iu0"], c["iu1"]
    dm = np.empty((P, k, k), dtype=np.complex128)
    dm[:, iu0, iu1] = x[:, k:]
    dm[:, iu1, iu0] = x[:, k:]
    Linv = _inv_small(ft.eye + G[:, :, None] * dm)  # L = (I + diag(G) Dm)^{-1}
    M = G[:, :, None] * Linv.transpose(0, 2, 1)  # diag(G) L^T
    T = dm @ Linv
    lam = ft.s2_bar[None, :] + gamma @ ft.v2  # (P, N)
    quad = M.reshape(P, k * k) @ ft.aa
    qb = 1.0 / (lam - z[:, None] + quad)  # (P, N)
    w = ft.node_weights
    qw = qb @ w
    tdiag = T[:, np.arange(k), np.arange(k)]
    fx = qb @ c["w_all"]
    fx[:, :k] += (A * tdiag) / pn
    if not jacobian:
        return fx, qw, None, None
    nu = x.shape[1]
    dgam = -gamma * inv1p
    dG = A * dgam  # (P, K)
    a = ft.a  # (K, N)
    # e_j = L^T a_j, b_j = M a_j: (P, K, N)
    e = Linv.transpose(0, 2, 1) @ a
    b = M @ a
    # dQbar_j/dx_u, stored (P, u, j) (contiguous in the nodes j)
    dqbar = np.empty((P, nu, ft.n_nodes), dtype=np.complex128)
    # columns delta_c: dLambda_j = v2_cj gamma'_c, d quad_j = e_cj^2 G'_c
    np.multiply(dG[:, :, None], e * e, out=dqbar[:, :k])
    dqbar[:, :k] += dgam[:, :, None] * ft.v2[None]
    # columns Dm_kl (k <= l, symmetric perturbation): d quad_j = -f_kl b_kj b_lj
    np.multiply(b[:, iu0, :], b[:, iu1, :], out=dqbar[:, k:])
    dqbar[:, k:] *= -c["factor"][None, :, None]
    qb2 = qb * qb
    fz = qb2 @ c["w_all"]
    dqbar *= -qb2[:, None, :]
    jac = np.ascontiguousarray((dqbar @ c["w_all"]).transpose(0, 2, 1))  # (P, row, column)
    # T_cc: d/ddelta_m = -T_cm^2 G'_m; d/dDm_kl = f_kl L_kc L_lc
    jac[:, :k, :k] += (A / pn)[None, :, None] * (-(T * T) * dG[:, None, :])
    jac[:, :k, k:] += (A / pn)[None, :, None] * (c["factor"][None, None, :] * Linv[:, iu0, :].transpose(0, 2, 1)
                                                 * Linv[:, iu1, :].transpose(0, 2, 1))
    return fx, qw, jac, fz


def residual(ft: FeatureTypes, z: CArray, x: CArray) -> CArray:
    """F(x) - x, shape (P, n_unknowns)."""
    return fixed_point_map(ft, z, x)[0] - x
