"""Predicted per-class generalization and memorization times from the spectrum of U (``docs/theory.md`` §5).

The gradient flow relaxes the eigenmode k of U (eigenvalue lambda_k, eigenvector v_k) with
gamma_k(tau) = (1 - exp(-2 Delta_t lambda_k tau / psi_p)) / lambda_k, and the loss of any group S of points is

    L_S(tau) = 1 + (1/d) sum_{k,l} gamma_k gamma_l (v_k^T V V^T v_l) (v_l^T U_S v_k) - (2/d) sum_k gamma_k v_k^T V_S V^T v_k.

The last sum is a single-resolvent trace and is exact in the theory. In the first sum we keep the diagonal k = l
and factor the conditional mean at fixed lambda ("mode-diagonal closure", docs/theory.md §5.2):

    L_S(tau) ~= 1 + int dlambda [ gamma(lambda, tau)^2 w_VV(lambda) u_S(lambda) - 2 gamma(lambda, tau) w_VS(lambda) ],

with the spectral densities w_VV = Im (1/d) tr(V^T Q V)/pi and w_VS = Im (1/d) tr(V^T Q V_S)/pi, and the
class moment per mode u_S(lambda) = Im (1/p) tr(U_S Q) / Im q (train moment of class c for its train loss, the
population moment of class c for its test loss). The per-class curves are read off with the *same* functions
as the measured curves (:mod:`classdiff.core.readoff`): tau_gen,c from the test loss (tolerance), tau_mem,c from the
gap test - train reaching ``fraction`` of its tau = infinity value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.core.readoff import generalization_time, memorization_time
from classdiff.theory.equations import resolvent_parts
from classdiff.theory.losses import LossModel, mean_type_approximation
from classdiff.theory.spectrum import FeatureSpectrum

__all__ = ["class_loss_curves", "class_timescales", "timescales_from_config"]

Array = NDArray[np.float64]


def spectral_weights(spec: FeatureSpectrum) -> dict[str, Array]:
    """Per bulk-grid point: lambda (L,), quadrature weights (L,), w_VV (L,), w_Vc (L, K), u_train (L, K),
    u_test (L, K) (``docs/theory.md`` §5.1)."""
    ft = spec.types_
    g = spec.grid_
    lam, x = g["lambda"], g["solution"]
    z = lam + 1j * spec.epsilon
    parts = resolvent_parts(ft, z, x)
    q = parts["Qbar"] @ ft.node_weights
    tr = FeatureSpectrum.class_traces(ft, z, x, parts)
    imq = np.maximum(q.imag, 1e-300)
    return {
        "lambda": lam,
        "weights": g["weights"],
        "w_vv": tr["vv"].imag / np.pi,
        "w_vc": tr["vc"].imag / np.pi,
        "u_train": tr["train_trace"].imag / imq[:, None],
        "u_test": tr["test_trace"].imag / imq[:, None],
        "density": q.imag / np.pi,
    }


def class_loss_curves(spec: FeatureSpectrum, tau: ArrayLike) -> dict[str, Array]:
    """Predicted per-class train and test losses, shape (K, T) each, at training times ``tau`` (T,) (inf allowed).

    Uses the two-resolvent deterministic equivalent of :class:`classdiff.theory.losses.LossModel` on the bulk grid
    of ``spec``, which must have been fitted on one feature type (see :func:`mean_type_approximation`).
    """
    g = spec.grid_
    model = LossModel(spec.types_, g["lambda"], g["weights"], g["solution"], spec.epsilon)
    return model.curves(np.asarray(tau, dtype=np.float64))


def class_timescales(
    config_or_spectrum: Any, tau: ArrayLike | None = None, tolerance: float = 0.05, fraction: float = 0.5,
) -> dict[str, Any]:
    """Per-class predicted tau_gen,c and tau_mem,c (``classdiff.core.readoff`` definitions) and the orders.

    ``config_or_spectrum`` is a :class:`classdiff.core.config.Config` (then the spectrum is fitted with its
    ``[theory]`` settings and ``tau``, ``tolerance``, ``fraction`` default to its ``[training]`` settings) or a
    fitted :class:`FeatureSpectrum`. Returns ``tau_gen`` (K,), ``tau_mem`` (K,), ``final_gap`` (K,),
    ``learning_order`` and ``memorization_order`` (class indices, earliest first), and the curves.
    """
    if isinstance(config_or_spectrum, FeatureSpectrum):
        spec = config_or_spectrum
        if spec.types_.n_nodes != 1:
            spec = FeatureSpectrum(n_lambda=min(spec.n_lambda, 400), epsilon=spec.epsilon, tolerance=spec.tolerance,
                                   n_scan=spec.n_scan, outliers=False).fit(mean_type_approximation(spec.types_))
        if tau is None:
            tau = np.geomspace(1e-2, 1e6, 300)
    else:
        cfg = config_or_spectrum
        th, tr = cfg.theory, cfg.training
        from classdiff.theory.spectrum import types_from_config

        ft = mean_type_approximation(types_from_config(cfg))
        # the loss model works on the product of the bulk grid with itself: keep it moderate, smaller for large K
        n_grid = min(th.n_lambda, 400 if ft.n_classes <= 4 else 200)
        spec = FeatureSpectrum(n_lambda=n_grid, epsilon=th.epsilon, tolerance=th.tolerance,
                               n_scan=min(th.n_scan, 400 if ft.n_classes <= 4 else 200), outliers=False).fit(ft)
        if tau is None:
            tau = np.geomspace(tr.tau_min, tr.tau_max, max(tr.n_times, 200))
        tolerance, fraction = tr.gen_tolerance, tr.mem_fraction
    tau = np.asarray(tau, dtype=np.float64)
    curves = class_loss_curves(spec, np.append(tau, np.inf))
    train, test = curves["train_loss"], curves["test_loss"]
    k = train.shape[0]
    final_gap = test[:, -1] - train[:, -1]
    t_gen = generalization_time(tau, test[:, :-1], tolerance, initial=np.ones(k))
    t_mem = memorization_time(tau, train[:, :-1], test[:, :-1], fraction, final_gap=final_gap)
    return {
        "tau": tau,
        "tau_gen": t_gen,
        "tau_mem": t_mem,
        "final_gap": final_gap,
        "learning_order": _order(t_gen),
        "memorization_order": _order(t_mem),
        "train_loss": train[:, :-1],
        "test_loss": test[:, :-1],
        "train_loss_inf": train[:, -1],
        "test_loss_inf": test[:, -1],
        "spectrum": spec,
    }


def _order(times: Array) -> list[int]:
    vals = np.where(np.isfinite(times), times, np.inf)
    return [int(i) for i in np.argsort(vals, kind="stable")]


def timescales_from_config(config: Any) -> dict[str, Any]:
    """Pure function of a :class:`classdiff.core.config.Config`: the ``timescales`` JSON (DESIGN.md keys plus extras)."""
    res = class_timescales(config)
    mc = config.mixture
    classes = []
    for c in range(len(res["tau_gen"])):
        classes.append({
            "label": c,
            "tau_gen": _num(res["tau_gen"][c]),
            "tau_mem": _num(res["tau_mem"][c]),
            "weight": float(mc.weights[c]),
            "variance": float(mc.variances[c]),
            "centroid_norm": float(mc.centroid_norms[c]),
            "final_gap": float(res["final_gap"][c]),
            "train_loss": res["train_loss"][c],
            "test_loss": res["test_loss"][c],
        })
    spec = res["spectrum"]
    return {
        "classes": classes,
        "tau": res["tau"],
        "learning_order": res["learning_order"],
        "memorization_order": res["memorization_order"],
        "edges": spec.edges_.tolist(),
        "definitions": {
            "tau_gen": f"readoff.generalization_time of the predicted class test loss, tolerance "
                       f"{config.training.gen_tolerance}",
            "tau_mem": f"readoff.memorization_time of the predicted class gap, fraction {config.training.mem_fraction},"
                       " final gap at tau = inf",
            "closure": "mode-diagonal closure of the loss on the eigenmodes of U (docs/theory.md §5.2)",
        },
    }


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None
