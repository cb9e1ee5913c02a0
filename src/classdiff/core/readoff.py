"""Operational definitions of the per-class timescales, read off loss curves (``docs/theory.md`` §5).

The *same* functions are applied to measured curves (random-features dynamics, U-Net runs) and to the
curves predicted by the theory, so that "predicted" and "measured" timescales mean the same thing.

Generalization time (parameter ``tolerance``, default 0.05)
    tau_gen,c = the first tau at which class c's test loss has made (1 - tolerance) of its total drop,
    L(0) - L(tau) >= (1 - tolerance) (L(0) - min_tau L(tau)).
    The score error can be used instead of the test loss (same definition).

Memorization time (parameter ``fraction``, default 0.5)
    tau_mem,c = the first tau at which class c's generalization gap G(tau) = L_test(tau) - L_train(tau)
    reaches ``fraction`` of its final value G(tau_final) (tau_final = infinity where the curve includes it).

Both interpolate linearly in log tau between grid points, return ``nan`` when the event never happens on the
grid, and accept curves of shape (T,) or (..., T) (then they return shape (...)); typed results turn that nan
into :data:`classdiff.core.results.NOT_REACHED` with :func:`classdiff.core.results.reached`.

Class order (:func:`class_order`, the one rule every predictor and measurement uses)
    the labels of the classes by when their event happens, earliest first; ties keep label order; classes whose
    event was not reached come after all that were; classes whose time was not computed (nan, None) are left out.
    The keys under which orders are reported are :data:`ORDER_KEYS`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.core.results import NOT_REACHED

__all__ = ["ORDER_KEYS", "class_order", "crossing_time", "generalization_time", "interval_order", "memorization_time",
           "pairwise_agreement"]

#: the result keys of per-class orders, by the per-class time they order (one vocabulary everywhere)
ORDER_KEYS: dict[str, str] = {
    "tau_gen": "generalization_order",
    "tau_mem": "memorization_order",
    "t_speciation": "speciation_order",
}


def class_order(times: Sequence[Any], labels: Sequence[int] | None = None, *,
                backward_time: bool = False) -> list[int]:
    """Labels ordered by when each class's event happens, earliest first (the rule of the module docstring).

    ``times`` holds one value per class: a float (finite or +inf), :data:`~classdiff.core.results.NOT_REACHED`,
    or nan / None (not computed: that class is left out). ``labels`` default to 0..K-1. With ``backward_time``
    the times run backwards (diffusion time of the backward process, e.g. speciation times t_S): the largest
    time happens first, +inf (committed from the start) first of all.
    """
    labels = list(range(len(times))) if labels is None else [int(v) for v in labels]
    if len(labels) != len(times):
        raise ValueError(f"labels: {len(labels)} labels for {len(times)} times")
    happened: list[tuple[float, int, int]] = []
    not_reached: list[int] = []
    for i, (t, lab) in enumerate(zip(times, labels, strict=True)):
        if t is NOT_REACHED:
            not_reached.append(lab)
            continue
        if t is None or np.isnan(float(t)):
            continue
        happened.append((-float(t) if backward_time else float(t), i, lab))
    return [lab for _, _, lab in sorted(happened)] + not_reached


def crossing_time(tau: ArrayLike, curve: ArrayLike, level: ArrayLike) -> NDArray[np.float64]:
    """First tau at which ``curve`` rises to ``level`` (log-linear interpolation), shape ``curve.shape[:-1]``.

    ``tau`` is increasing, positive and finite, shape (T,); ``curve`` has shape (..., T); ``level`` broadcasts
    to ``curve.shape[:-1]``. Returns nan where the curve never reaches the level; tau[0] if it starts there.
    """
    tau = np.asarray(tau, dtype=np.float64)
    y = np.asarray(curve, dtype=np.float64)
    if tau.ndim != 1 or y.shape[-1] != tau.size:
        raise ValueError(f"tau: shape {tau.shape} does not match curve shape {y.shape}")
    if np.any(tau <= 0) or np.any(np.diff(tau) <= 0):
        raise ValueError("tau: must be positive and strictly increasing")
    lev = np.broadcast_to(np.asarray(level, dtype=np.float64), y.shape[:-1])
    flat = y.reshape(-1, tau.size)
    levs = lev.reshape(-1)
    out = np.full(flat.shape[0], np.nan)
    logt = np.log(tau)
    for i, (row, lv) in enumerate(zip(flat, levs)):
        above = np.nonzero(row >= lv)[0]
        if above.size == 0 or not np.isfinite(lv):
            continue
        j = above[0]
        if j == 0:
            out[i] = tau[0]
            continue
        y0, y1 = row[j - 1], row[j]
        frac = 0.0 if y1 == y0 else (lv - y0) / (y1 - y0)
        out[i] = np.exp(logt[j - 1] + frac * (logt[j] - logt[j - 1]))
    return out.reshape(y.shape[:-1])


def generalization_time(
    tau: ArrayLike, test_loss: ArrayLike, tolerance: float = 0.05, initial: ArrayLike | None = None
) -> NDArray[np.float64]:
    """tau_gen: first tau where the test loss has made (1 - tolerance) of its drop to its minimum.

    ``initial`` is L at tau = 0 (defaults to the first point of the curve).
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance = {tolerance!r}: must lie in (0, 1)")
    y = np.asarray(test_loss, dtype=np.float64)
    start = y[..., 0] if initial is None else np.asarray(initial, dtype=np.float64)
    drop = start[..., None] - y
    total = np.nanmax(drop, axis=-1)
    return crossing_time(tau, drop, (1.0 - tolerance) * total)


def memorization_time(
    tau: ArrayLike,
    train_loss: ArrayLike,
    test_loss: ArrayLike,
    fraction: float = 0.5,
    final_gap: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """tau_mem: first tau where the gap L_test - L_train reaches ``fraction`` of its final value.

    ``final_gap`` is the gap at tau = infinity when known (closed form); otherwise the last grid point is used.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction = {fraction!r}: must lie in (0, 1)")
    gap = np.asarray(test_loss, dtype=np.float64) - np.asarray(train_loss, dtype=np.float64)
    final = gap[..., -1] if final_gap is None else np.asarray(final_gap, dtype=np.float64)
    level = np.where(final > 0, fraction * final, np.nan)
    return crossing_time(tau, gap, level)



def interval_order(values: Sequence[Any], intervals: Sequence[Sequence[Any]], labels: Sequence[int] | None = None,
                   *, descending: bool = False) -> dict[str, Any]:
    """Order of classes by a measured quantity with confidence intervals, reported only where they separate.

    ``values`` (K,) point estimates, ``intervals`` (K, 2) their [lo, hi] intervals (nan / None: not measured,
    that class is left out). Classes are sorted by value (``descending``: largest first). The order is
    *resolved* when every pair of neighbours in that sorted list has disjoint intervals; otherwise it is
    "not resolved" and ``ties`` lists the neighbouring pairs whose intervals overlap. Returns
    ``{"order": [labels] or "not resolved", "sorted": [labels], "resolved": bool, "ties": [[a, b], ...],
    "intervals": {label: [lo, hi]}}``; ``sorted`` is the point-estimate order (for display, not a claim).
    """
    labels = list(range(len(values))) if labels is None else [int(v) for v in labels]
    if not len(labels) == len(values) == len(intervals):
        raise ValueError(f"interval_order: {len(labels)} labels, {len(values)} values, {len(intervals)} intervals")
    rows = []
    for lab, v, iv in zip(labels, values, intervals, strict=True):
        if v is None or iv is None or any(b is None for b in iv):
            continue
        lo, hi, val = float(iv[0]), float(iv[1]), float(v)
        if np.isnan(val) or np.isnan(lo) or np.isnan(hi):
            continue
        rows.append((-val if descending else val, lab, lo, hi))
    rows.sort()
    ties = [[a[1], b[1]] for a, b in itertools.pairwise(rows) if _overlap(a[2:], b[2:])]
    ordered = [r[1] for r in rows]
    return {"order": ordered if not ties else "not resolved", "sorted": ordered, "resolved": not ties,
            "ties": ties, "intervals": {r[1]: [r[2], r[3]] for r in rows}}


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return max(a[0], b[0]) <= min(a[1], b[1])


def pairwise_agreement(measured: dict[str, Any], predicted: Sequence[int]) -> dict[str, Any]:
    """Agreement of a measured :func:`interval_order` with a predicted order (labels, first first).

    Rule: a pair of classes present in both counts when its two measured intervals are disjoint (the
    measurement resolves it); it agrees when the prediction puts the two in the same order. Returns
    ``{"pairs": n_resolved, "agree": n_agree, "fraction": agree / pairs (nan if no pair), "disagreeing":
    [[a, b], ...]}``, ``[a, b]`` meaning measured a before b but predicted b before a.
    """
    order = list(measured["sorted"])
    iv = measured["intervals"]
    rank_pred = {int(lab): i for i, lab in enumerate(predicted)}
    pairs = agree = 0
    disagreeing = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            if _overlap(iv[a], iv[b]) or a not in rank_pred or b not in rank_pred:
                continue
            pairs += 1
            if rank_pred[a] < rank_pred[b]:
                agree += 1
            else:
                disagreeing.append([a, b])
    return {"pairs": pairs, "agree": agree, "fraction": agree / pairs if pairs else float("nan"),
            "disagreeing": disagreeing}
