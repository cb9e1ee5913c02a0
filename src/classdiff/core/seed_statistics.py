"""Summaries of a per-class quantity over seeds, with Student t intervals, and orders only where they separate.

Used by every measurement repeated over seeds (U-Net runs, :mod:`classdiff.images.seed_aggregate`; random
features on real or surrogate points, :func:`classdiff.rf.real_data.real_data_dynamics`), so that "interval" and
"not resolved" mean the same thing everywhere.

* times (:func:`summarize_times`): geometric mean over the seeds that reached the event, and the Student t
  interval of the mean log time (at least 2 reached seeds); NOT_REACHED when no seed reached it;
* fractions (:func:`summarize_fractions`): arithmetic mean and t interval of the finite values;
* orders (:func:`order_with_intervals`): :func:`classdiff.core.readoff.interval_order` over the summaries, and
  "not resolved" as soon as a class has no interval (it cannot be placed);
* paired orders (:func:`paired_order`, :func:`paired_agreement`): where all classes are measured in the same runs,
  the interval of each pair's seed-by-seed time ratio, resolved when it excludes 1;
* text (:func:`interval_text`, :func:`order_text`): the same in words, for the commands' tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from classdiff.core.readoff import interval_order
from classdiff.core.results import NOT_REACHED, format_value, is_reached

__all__ = ["interval_text", "order_text", "order_with_intervals", "paired_agreement", "paired_order", "paired_order_text",
           "summarize_fractions", "summarize_times"]


def summarize_times(values: Sequence[Any], level: float = 0.95) -> dict[str, Any]:
    """Geometric mean and Student t interval (log scale) of the reached values; NOT_REACHED / nan left out.

    ``values`` (S,) one time per seed. Returns ``{"estimate", "interval": [lo, hi], "n_reached", "n_seeds",
    "partial"}``; ``estimate`` is NOT_REACHED when no seed reached the event, the interval nan when fewer than 2
    did.
    """
    reached = [float(v) for v in values if is_reached(v) and v is not None and math.isfinite(float(v))]
    n = len(values)
    out: dict[str, Any] = {"n_reached": len(reached), "n_seeds": n, "partial": 0 < len(reached) < n}
    if not reached:
        return out | {"estimate": NOT_REACHED, "interval": [math.nan, math.nan]}
    logs = np.log(reached)
    out["estimate"] = float(np.exp(logs.mean()))
    if len(reached) < 2:
        out["interval"] = [math.nan, math.nan]
        return out
    half = float(stats.t.ppf(0.5 + level / 2, len(reached) - 1) * logs.std(ddof=1) / math.sqrt(len(reached)))
    out["interval"] = [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))]
    return out


def summarize_fractions(values: Sequence[Any], level: float = 0.95) -> dict[str, Any]:
    """Mean and Student t interval of the finite values (``{"estimate", "interval", "n"}``)."""
    v = np.array([float(x) for x in values if x is not None and math.isfinite(float(x))])
    if v.size == 0:
        return {"estimate": math.nan, "interval": [math.nan, math.nan], "n": 0}
    if v.size < 2:
        return {"estimate": float(v.mean()), "interval": [math.nan, math.nan], "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return {"estimate": float(v.mean()), "interval": [float(v.mean() - half), float(v.mean() + half)], "n": int(v.size)}


def order_with_intervals(summaries: Sequence[dict[str, Any]], labels: Sequence[int], *,
                         descending: bool = False) -> dict[str, Any]:
    """The order of :func:`~classdiff.core.readoff.interval_order` over :func:`summarize_times`-style summaries
    (one per class, in ``labels`` order); "not resolved" with ``without_interval`` listing the classes that have
    no interval (not reached, or reached in fewer than 2 seeds)."""
    vals = [s["estimate"] if is_reached(s["estimate"]) else math.nan for s in summaries]
    order = interval_order(vals, [s["interval"] for s in summaries], labels, descending=descending)
    missing = [int(lab) for lab in labels if int(lab) not in order["sorted"]]
    if missing:
        order = order | {"order": "not resolved", "resolved": False, "without_interval": missing}
    return order


def interval_text(summary: dict[str, Any], spec: str = ".4g") -> str:
    """``estimate [lo, hi]`` of a :func:`summarize_times` / :func:`summarize_fractions` summary ("not reached" and
    "nan" spelled out by :func:`~classdiff.core.results.format_value`)."""
    lo, hi = (format_value(v, spec) for v in summary["interval"])
    return f"{format_value(summary['estimate'], spec)} [{lo}, {hi}]"


def order_text(o: dict[str, Any]) -> str:
    """An :func:`order_with_intervals` / :func:`~classdiff.core.readoff.interval_order` result in words: the
    order, or why it is not resolved."""
    if o["resolved"]:
        return str(o["order"])
    if o.get("without_interval"):
        return f"not resolved (no interval for classes {o['without_interval']}: reached in fewer than 2 seeds)"
    return f"not resolved (point estimates {o['sorted']}, overlapping {o['ties']})"


def paired_order(per_seed: Sequence[Sequence[Any]], labels: Sequence[int], *, level: float = 0.95,
                 descending: bool = False) -> dict[str, Any]:
    """The order of classes measured in the same runs, from the seed-by-seed ratios of their times.

    Where every class is measured in each run (one U-Net trains all classes; one RF seed shares W and the
    subsets), the classes' times are correlated across seeds, and comparing their marginal intervals
    (:func:`order_with_intervals`) throws that away. Here each pair (a, b) gets the geometric mean of the per-seed
    ratio tau_a / tau_b over the seeds where both are reached and finite, with the Student t interval of the mean
    log ratio. The pair is *resolved* when that interval excludes 1: a comes first when it lies below 1 (above 1
    with ``descending``, for times where the larger one comes first, like t_S).

    ``per_seed`` (K, S): one time per class and seed (NOT_REACHED, nan or +inf: left out of that pair). Returns
    ``{"order": [labels] or "not resolved", "resolved", "sorted": [labels] by mean log time (display only),
    "pairs": [{"classes": [a, b], "ratio", "interval", "n_seeds", "first": a, b or None}]}``. The order is
    claimed only when every pair is resolved and the pairs agree with ``sorted`` (no cycle).
    """
    labels = [int(v) for v in labels]
    if len(per_seed) != len(labels):
        raise ValueError(f"paired_order: {len(per_seed)} classes of per-seed times, {len(labels)} labels")
    usable = [[float(v) if is_reached(v) and v is not None and math.isfinite(float(v)) and float(v) > 0 else math.nan
               for v in row] for row in per_seed]
    if len({len(row) for row in usable}) > 1:
        raise ValueError(f"paired_order: every class needs one time per seed (lengths {[len(r) for r in usable]})")
    mean_log = [float(np.nanmean(np.log(row))) if np.any(np.isfinite(row)) else math.nan for row in usable]
    sign = -1.0 if descending else 1.0
    ordered = sorted((lab for lab, m in zip(labels, mean_log, strict=True) if math.isfinite(m)),
                     key=lambda lab: sign * mean_log[labels.index(lab)])
    pairs = []
    for i, a in enumerate(labels):
        for j in range(i + 1, len(labels)):
            b = labels[j]
            logs = np.log(np.asarray(usable[i]) / np.asarray(usable[j]))
            logs = logs[np.isfinite(logs)]
            entry: dict[str, Any] = {"classes": [a, b], "n_seeds": int(logs.size), "first": None}
            if logs.size == 0:
                pairs.append(entry | {"ratio": math.nan, "interval": [math.nan, math.nan]})
                continue
            entry["ratio"] = float(np.exp(logs.mean()))
            if logs.size < 2:
                pairs.append(entry | {"interval": [math.nan, math.nan]})
                continue
            half = float(stats.t.ppf(0.5 + level / 2, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size))
            lo, hi = float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))
            entry["interval"] = [lo, hi]
            if hi < 1.0:
                entry["first"] = b if descending else a
            elif lo > 1.0:
                entry["first"] = a if descending else b
            pairs.append(entry)
    rank = {lab: k for k, lab in enumerate(ordered)}
    resolved = len(ordered) == len(labels) and all(
        p["first"] is not None and rank[p["first"]] == min(rank[c] for c in p["classes"]) for p in pairs)
    return {"order": ordered if resolved else "not resolved", "resolved": resolved, "sorted": ordered,
            "pairs": pairs}


def paired_agreement(measured: dict[str, Any], predicted: Sequence[int]) -> dict[str, Any]:
    """:func:`~classdiff.core.readoff.pairwise_agreement` for a :func:`paired_order`: the pairs it resolves that
    the prediction (labels, first first) also ranks count, and agree when the prediction puts the same class first.
    Returns ``{"pairs", "agree", "fraction" (nan if no pair), "disagreeing": [[first measured, other], ...]}``."""
    rank_pred = {int(lab): i for i, lab in enumerate(predicted)}
    pairs = agree = 0
    disagreeing = []
    for p in measured["pairs"]:
        a, b = p["classes"]
        if p["first"] is None or a not in rank_pred or b not in rank_pred:
            continue
        pairs += 1
        other = b if p["first"] == a else a
        if rank_pred[p["first"]] < rank_pred[other]:
            agree += 1
        else:
            disagreeing.append([p["first"], other])
    return {"pairs": pairs, "agree": agree, "fraction": agree / pairs if pairs else float("nan"),
            "disagreeing": disagreeing}


def paired_order_text(o: dict[str, Any], spec: str = ".3g") -> str:
    """A :func:`paired_order` result in words: the order, or each pair's ratio and interval."""
    parts = []
    for p in o["pairs"]:
        a, b = p["classes"]
        lo, hi = (format_value(v, spec) for v in p["interval"])
        verdict = f"{p['first']} first" if p["first"] is not None else "not resolved"
        parts.append(f"{a}/{b} {format_value(p['ratio'], spec)} [{lo}, {hi}] over {p['n_seeds']} seeds: {verdict}")
    head = str(o["order"]) if o["resolved"] else "not resolved"
    return head + (" (" + "; ".join(parts) + ")" if parts else "")
