"""Phase diagrams of the predicted per-class timescales (``docs/theory.md`` §6), for K = 2 classes.

* :func:`variance_imbalance_diagram`: tau_gen,c and tau_mem,c over (sigma_1^2/sigma_2^2, rho_1/rho_2), which class is
  learned / memorized first, and the *reversal boundary*: for each variance ratio, the weight ratio at which the
  order differs from the order at balance (linear interpolation of log(tau_1/tau_2) in log(rho_1/rho_2); nan when
  the order never flips on the grid).
* :func:`capacity_diagram`: the same over (psi_p, psi_n) at fixed mixture.
* :func:`centroid_vs_variance`: relative change of the times when the centroid norm moves (fixed variances) against
  the change when the variance ratio moves (claim 1 of the paper: variance first, centroid geometry second).

Every grid point is a config derived with ``Config.with_overrides`` and timed by one of two predictors:

* ``predictor="theory"`` (default): :func:`classdiff.theory.timescales.class_timescales`, the deterministic-equivalent
  (random-matrix) prediction;
* ``predictor="dynamics"``: the exact closed-form gradient flow of the random-features model at the config's finite
  size (d, p = psi_p d, n = psi_n d), :func:`classdiff.rf.model.dynamics_from_config`, times averaged over
  ``training.seeds`` seeds. It needs no asymptotic closure, and it is the predictor under which the imbalance
  reversal of the paper's claim 3 appears (``docs/theory.md`` §6.1): with class-specific (e.g. orthogonal)
  centroids, the minority class is memorized later and, inside a window of variance ratios that widens with the
  centroid norm, learned later too. The theory predictor reproduces this with its default loss model
  (``theory.loss_model = "types"``, ``docs/theory.md`` §5.5) but not the return of the order at extreme imbalance
  (centroid spikes left out); with ``"mean-type"`` it misses the effect entirely (§6.3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from classdiff.core.results import time_or_nan
from classdiff.theory.timescales import class_timescales

if TYPE_CHECKING:
    from classdiff.core.config import Config

__all__ = ["PREDICTORS", "capacity_diagram", "centroid_imbalance_diagram", "centroid_vs_variance", "order_agreement",
           "reversal_boundary", "variance_imbalance_diagram"]

Array = NDArray[np.float64]


PREDICTORS = ("theory", "dynamics")


def _times(config: Config, tau: Array, predictor: str = "theory") -> tuple[Array, Array]:
    """(tau_gen (K,), tau_mem (K,)) of one config under ``predictor`` (nan where the event never happens)."""
    if predictor == "theory":
        res = class_timescales(config, tau=tau)
        return res["tau_gen"], res["tau_mem"]
    if predictor == "dynamics":
        from classdiff.rf.model import dynamics_from_config

        classes = dynamics_from_config(config, tau=tau)["classes"]
        gen = np.array([time_or_nan(c["tau_gen"]) for c in classes])
        mem = np.array([time_or_nan(c["tau_mem"]) for c in classes])
        return gen, mem
    raise ValueError(f"predictor = {predictor!r}: allowed values are {', '.join(PREDICTORS)}")


def _check_two_classes(config: Config) -> None:
    if config.mixture.n_classes != 2:
        raise ValueError(f"mixture.weights: phase diagrams need K = 2 classes, got K = {config.mixture.n_classes}")


def reversal_boundary(log_weight_ratio: Array, log_time_ratio: Array) -> Array:
    """Per row of ``log_time_ratio`` (V, R) = log(tau_1/tau_2) over ``log_weight_ratio`` (R,) (which must contain 0,
    balance): the log weight ratio where the sign first differs from the sign at balance, moving away from balance
    on either side (the side closer to balance wins); nan when it never flips. Shape (V,)."""
    x = np.asarray(log_weight_ratio, dtype=np.float64)
    y = np.asarray(log_time_ratio, dtype=np.float64)
    i0 = int(np.argmin(np.abs(x)))
    out = np.full(y.shape[0], np.nan)
    for v, row in enumerate(y):
        s0 = np.sign(row[i0])
        best = np.nan
        for step in (1, -1):
            j = i0
            while 0 <= j + step < x.size:
                k = j + step
                if np.isfinite(row[k]) and np.sign(row[k]) != s0 and s0 != 0:
                    frac = row[j] / (row[j] - row[k])
                    cand = x[j] + frac * (x[k] - x[j])
                    if not np.isfinite(best) or abs(cand) < abs(best):
                        best = cand
                    break
                j = k
        out[v] = best
    return out


def _order_diagram(config: Config, axis_name: str, axis: Array, weight_ratios: Sequence[float],
                   overrides: Callable[[float], dict[str, Any]], tau: Array | None, predictor: str) -> dict[str, Any]:
    """Times over ``axis`` (A,) x rho_1/rho_2 (R,); ``overrides(a)`` gives the config changes of axis value a.
    The ratio 1 (balance) is added to the weight axis when missing: the reversal is read against it."""
    _check_two_classes(config)
    tau = np.geomspace(1e-2, 1e6, 240) if tau is None else tau
    wr = np.asarray(weight_ratios, dtype=np.float64)
    if not np.any(np.isclose(wr, 1.0)):
        wr = np.sort(np.append(wr, 1.0))
    gen = np.full((axis.size, wr.size, 2), np.nan)
    mem = np.full_like(gen, np.nan)
    for i, a in enumerate(axis):
        for j, w in enumerate(wr):
            rho1 = w / (1.0 + w)
            cfg = config.with_overrides(overrides(float(a)) | {"mixture.weights": [rho1, 1.0 - rho1]})
            gen[i, j], mem[i, j] = _times(cfg, tau, predictor)
    lw = np.log(wr)
    return {
        "predictor": predictor, axis_name: axis, "weight_ratios": wr, "tau_gen": gen, "tau_mem": mem,
        "learned_first": np.argmin(gen, axis=2), "memorized_first": np.argmin(mem, axis=2),
        "reversal_gen": np.exp(reversal_boundary(lw, np.log(gen[..., 0] / gen[..., 1]))),
        "reversal_mem": np.exp(reversal_boundary(lw, np.log(mem[..., 0] / mem[..., 1]))),
    }


def variance_imbalance_diagram(config: Config, variance_ratios: Sequence[float], weight_ratios: Sequence[float],
                               tau: Array | None = None, predictor: str = "theory") -> dict[str, Any]:
    """Times over sigma_1^2/sigma_2^2 (V,) x rho_1/rho_2 (R,) at fixed sigma_1^2 sigma_2^2 (geometric mean kept).

    Returns ``tau_gen``, ``tau_mem`` (V, R, 2), ``learned_first``, ``memorized_first`` (V, R) (class index),
    ``reversal_gen``, ``reversal_mem`` (V,) (rho_1/rho_2 where the order flips w.r.t. balance, nan if never).
    """
    v0 = float(np.sqrt(np.prod(config.mixture.variances)))
    return _order_diagram(config, "variance_ratios", np.asarray(variance_ratios, dtype=np.float64), weight_ratios,
                          lambda r: {"mixture.variances": [v0 * np.sqrt(r), v0 / np.sqrt(r)]}, tau, predictor)


def centroid_imbalance_diagram(config: Config, centroid_norms: Sequence[float], weight_ratios: Sequence[float],
                               tau: Array | None = None, predictor: str = "theory") -> dict[str, Any]:
    """Times over the centroid norm m of both classes (M,) x rho_1/rho_2 (R,) at the config's variances and geometry.

    Returns ``tau_gen``, ``tau_mem`` (M, R, 2), ``learned_first``, ``memorized_first`` (M, R) (class index),
    ``reversal_gen``, ``reversal_mem`` (M,) (rho_1/rho_2 where the order flips w.r.t. balance, nan if never).
    """
    return _order_diagram(config, "centroid_norms", np.asarray(centroid_norms, dtype=np.float64), weight_ratios,
                          lambda m: {"mixture.centroid_norms": [m, m]}, tau, predictor)


def order_agreement(theory: Array, measured: Array, tie: float = 0.1) -> dict[str, Any]:
    """Compare which of two classes comes first, point by point.

    ``theory``, ``measured``: times (..., 2) on the same points. A measured point is a *tie* when its two times
    differ by less than ``tie`` relative (|log(t_0/t_1)| < log(1 + tie)); ties are not scored. Returns ``agree``,
    ``disagree``, ``ties``, ``unscored`` (a time missing or not finite) counts and the boolean arrays ``agrees``,
    ``is_tie`` (...) for plotting.
    """
    th = np.asarray(theory, dtype=np.float64)
    me = np.asarray(measured, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lt = np.log(th[..., 0] / th[..., 1])
        lm = np.log(me[..., 0] / me[..., 1])
    finite = np.isfinite(lt) & np.isfinite(lm)
    is_tie = finite & (np.abs(lm) < np.log1p(tie))
    scored = finite & ~is_tie
    agrees = scored & (np.sign(lt) == np.sign(lm))
    return {"agree": int(agrees.sum()), "disagree": int((scored & ~agrees).sum()), "ties": int(is_tie.sum()),
            "unscored": int((~finite).sum()), "agrees": agrees, "is_tie": is_tie, "tie": tie}


def capacity_diagram(config: Config, psi_p: Sequence[float], psi_n: Sequence[float],
                     tau: Array | None = None, predictor: str = "theory") -> dict[str, Any]:
    """Times over psi_p (P,) x psi_n (N,) for the mixture of ``config``: ``tau_gen``, ``tau_mem`` (P, N, 2),
    ``learned_first``, ``memorized_first`` (P, N)."""
    _check_two_classes(config)
    tau = np.geomspace(1e-2, 1e6, 240) if tau is None else tau
    pp, pn = np.asarray(psi_p, dtype=np.float64), np.asarray(psi_n, dtype=np.float64)
    gen = np.full((pp.size, pn.size, 2), np.nan)
    mem = np.full_like(gen, np.nan)
    for i, a in enumerate(pp):
        for j, b in enumerate(pn):
            gen[i, j], mem[i, j] = _times(config.with_overrides({"model.psi_p": float(a), "model.psi_n": float(b)}),
                                          tau, predictor)
    return {"psi_p": pp, "psi_n": pn, "tau_gen": gen, "tau_mem": mem,
            "learned_first": np.argmin(gen, axis=2), "memorized_first": np.argmin(mem, axis=2)}


def centroid_vs_variance(config: Config, centroid_norms: Sequence[float], variance_ratios: Sequence[float],
                         tau: Array | None = None, predictor: str = "theory") -> dict[str, Any]:
    """Spread of log tau over centroid norms (both classes, fixed variances) vs over variance ratios (zero centroids).

    Returns per class the max |log tau - log tau_ref| for each sweep: ``centroid_spread_gen`` etc. (2,).
    """
    _check_two_classes(config)
    tau = np.geomspace(1e-2, 1e6, 240) if tau is None else tau
    v0 = float(np.sqrt(np.prod(config.mixture.variances)))
    cen = [_times(config.with_overrides({"mixture.centroid_norms": [float(m), float(m)]}), tau, predictor)
           for m in centroid_norms]
    var = [_times(config.with_overrides({"mixture.variances": [v0 * np.sqrt(r), v0 / np.sqrt(r)],
                                         "mixture.centroid_norms": [0.0, 0.0]}), tau, predictor)
           for r in variance_ratios]

    def spread(rows: list, k: int) -> Array:
        arr = np.log(np.array([r[k] for r in rows]))
        return arr.max(axis=0) - arr.min(axis=0)

    return {"centroid_norms": list(centroid_norms), "variance_ratios": list(variance_ratios),
            "centroid_tau_gen": np.array([c[0] for c in cen]), "centroid_tau_mem": np.array([c[1] for c in cen]),
            "variance_tau_gen": np.array([v[0] for v in var]), "variance_tau_mem": np.array([v[1] for v in var]),
            "centroid_spread_gen": spread(cen, 0), "centroid_spread_mem": spread(cen, 1),
            "variance_spread_gen": spread(var, 0), "variance_spread_mem": spread(var, 1)}
