"""Summaries of a per-class quantity over seeds, with Student t intervals, and orders only where they separate.

Used by every measurement repeated over seeds (U-Net runs, :mod:`classdiff.images.seed_aggregate`; random
features on real or surrogate points, :func:`classdiff.rf.real_data.real_data_dynamics`), so that "interval" and
"not resolved" mean the same thing everywhere.

* times (:func:`summarize_times`): geometric mean over the seeds that reached the event, and the Student t
  interval of the mean log time (at least 2 reached seeds); NOT_REACHED when no seed reached it;
* fractions (:func:`summarize_fractions`): arithmetic mean and t interval of the finite values;
* orders (:func:`order_with_intervals`): :func:`classdiff.core.readoff.interval_order` over the summaries, and
  "not resolved" as soon as a class has no interval (it cannot be placed);
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

__all__ = ["interval_text", "order_text", "order_with_intervals", "summarize_fractions", "summarize_times"]


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
