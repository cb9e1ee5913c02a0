"""Per-class U-Net times over seeds, with confidence intervals, and orders only where the intervals separate.

Input: run folders evaluated by :func:`classdiff.images.evaluation.evaluate_run` (``metrics/evaluation.json``),
one per seed (``images.seed`` draws the training subset, the initialisation and the training noise). Per class
and per seed it reads

* ``tau_gen``: the step at which the test loss at the smallest loss time has fallen (``readoff``, as measured);
* ``tau_mem``: the step at which the loss gap (test - train, offset by the first checkpoint's gap) opens;
* ``tau_fmem``: the first step at which f_mem,c (nearest-neighbour attribution, d1/d2 below the threshold)
  reaches ``fmem_level`` (log-linear interpolation between checkpoints); not reached when it never does;
* the final f_mem,c, loss gap and production ratio (share of the samples the classifier puts in class c over the
  class's share of the training data).

Across seeds (:mod:`classdiff.core.seed_statistics`): times are summarised on the log scale (geometric mean over
the seeds that reached the event, Student t interval of the log times, ``level`` coverage, at least 2 reached
seeds); fractions by their mean and t interval. A class whose event was not reached in every seed carries ``n_reached < n_seeds`` and its interval
covers only the reached seeds (``partial``). Orders come from :func:`classdiff.core.readoff.interval_order`:
"not resolved" unless neighbouring intervals are disjoint. The theory's predicted orders (the first run's
``theory`` section) are scored by :func:`classdiff.core.readoff.pairwise_agreement` on the resolved pairs.
Because the classes of one run share its seed, ``orders_paired`` also orders each pair by the interval of its
seed-by-seed time ratio (:func:`classdiff.core.seed_statistics.paired_order`), which is tighter where the seeds
move both classes together; it is scored the same way (``agreement_paired``, ``agreement_paired_covariance``).

Speciation: a run folder that holds ``cloning/results.json`` (``classdiff cloning RUN --out RUN/cloning``) adds per
class the U-Net's cloning time t_S,c (absolute level; OU time, larger = earlier in the backward process) and the
theory's t_S,c for the run's Gaussian surrogate, summarised over seeds the same way (+inf, committed at the first
branching, counted apart in ``n_inf``), with the order "first to commit first" (descending t) and its agreement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classdiff.core.io import read_json
from classdiff.core.readoff import ORDER_KEYS, crossing_time, pairwise_agreement
from classdiff.core.results import NOT_REACHED, decode, is_reached
from classdiff.core.seed_statistics import (
    interval_text,
    order_text,
    order_with_intervals,
    paired_agreement,
    paired_order,
    paired_order_text,
    summarize_fractions,
    summarize_times,
)

__all__ = ["TIME_KEYS", "aggregate_runs", "format_aggregate", "order_text", "summarize_fractions", "summarize_times"]

#: the per-class times aggregated, with their descriptions
TIME_KEYS = {
    "tau_gen": "step at which the class's test loss has fallen (generalization)",
    "tau_mem": "step at which the class's loss gap opens (memorization in the loss)",
    "tau_fmem": "step at which f_mem,c first reaches the level (memorization in the samples)",
}


def _load(run: Path) -> dict[str, Any]:
    path = Path(run) / "metrics" / "evaluation.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run 'classdiff evaluate {run}' (or train with --evaluate) first")
    return decode(read_json(path))


def _per_seed(ev: dict[str, Any], fmem_level: float) -> list[dict[str, Any]]:
    steps = np.asarray(ev["steps"], dtype=np.float64)
    fmem = np.array([[np.nan if c["f_mem"] is None else c["f_mem"] for c in r["classes"]]
                     for r in ev["memorization"]])  # (checkpoints, K)
    hist = np.asarray(ev["histogram_samples"], dtype=np.float64)
    share = np.asarray(ev["histogram_data"], dtype=np.float64)
    rows = []
    for i, m in enumerate(ev["measured"]["classes"]):
        curve = np.nan_to_num(fmem[:, i])
        t = crossing_time(steps, curve, fmem_level) if steps.size >= 2 else np.array(np.nan)
        rows.append({
            "label": int(m["label"]), "count": int(m["count"]),
            "tau_gen": m.get("tau_gen", math.nan), "tau_mem": m.get("tau_mem", math.nan),
            "tau_fmem": NOT_REACHED if not np.isfinite(t) else float(t),
            "f_mem_final": m.get("f_mem_final"), "f_mem_max": float(np.nanmax(fmem[:, i])) if fmem.size else math.nan,
            "loss_gap_final": m.get("loss_gap_final"),
            "production_ratio_final": float(hist[-1, i] / share[i]) if share[i] > 0 else math.nan,
        })
    return rows


def _production_curve(evals: Sequence[dict[str, Any]], i: int, level: float) -> dict[str, Any] | None:
    """Class i's production ratio (sample share / data share) at every checkpoint, mean and t interval over the
    seeds; None when the runs' checkpoint steps differ."""
    steps = [list(ev["steps"]) for ev in evals]
    if any(st != steps[0] for st in steps):
        return None
    ratios = []
    for ev in evals:
        hist = np.asarray(ev["histogram_samples"], dtype=np.float64)[:, i]
        share = float(np.asarray(ev["histogram_data"], dtype=np.float64)[i])
        ratios.append(hist / share if share > 0 else np.full(hist.shape, np.nan))
    r = np.stack(ratios)  # (seeds, checkpoints)
    rows = [summarize_fractions(list(r[:, j]), level) for j in range(r.shape[1])]
    return {"steps": steps[0], "estimate": [x["estimate"] for x in rows], "interval": [x["interval"] for x in rows]}


def _load_cloning(run: Path) -> dict[str, Any] | None:
    path = run / "cloning" / "results.json"
    return decode(read_json(path)) if path.is_file() else None


def _theory_class(ev: dict[str, Any], label: int, section: str = "theory") -> dict[str, Any]:
    """The theory's per-class entry of one evaluation ({} when the theory was not available); ``section``
    "theory" (isotropic) or "theory_covariance"."""
    th = ev.get(section) or {}
    if not th.get("available"):
        return {}
    return next((c for c in th.get("classes", []) if int(c["label"]) == label), {})


def aggregate_runs(runs: Sequence[str | Path], fmem_level: float = 0.1, level: float = 0.95) -> dict[str, Any]:
    """Aggregate the evaluations of ``runs`` (one per seed) per class; see the module docstring.

    Returns ``{"runs", "seeds", "classes": [{label, count, per_seed: [...], tau_gen/tau_mem/tau_fmem: summary,
    f_mem_final/loss_gap_final/production_ratio_final: summary}], "orders": {key: interval_order},
    "theory": {order key: labels} or None, "agreement": {key: pairwise_agreement}, "fmem_level", "level"}``.
    """
    if len(runs) < 1:
        raise ValueError("runs: give at least one evaluated run folder")
    if not 0 < fmem_level < 1:
        raise ValueError(f"fmem_level = {fmem_level!r}: must lie in (0, 1)")
    evals = [_load(Path(r)) for r in runs]
    classes = [list(ev["classes"]) for ev in evals]
    if any(c != classes[0] for c in classes):
        raise ValueError(f"runs: the runs train different classes ({classes}); aggregate runs of one config")
    per_seed = [_per_seed(ev, fmem_level) for ev in evals]
    cloning = [_load_cloning(Path(r)) for r in runs]
    seeds = []
    for r in runs:
        try:
            from classdiff.core.config import load_config

            seeds.append(int(load_config(Path(r) / "config.toml").images.seed))
        except (OSError, ValueError):
            seeds.append(None)
    out_classes = []
    for i, label in enumerate(classes[0]):
        rows = [ps[i] for ps in per_seed]
        entry: dict[str, Any] = {"label": int(label), "counts": [r["count"] for r in rows], "per_seed": rows}
        for key in TIME_KEYS:
            entry[key] = summarize_times([r[key] for r in rows], level)
        for key in ("f_mem_final", "f_mem_max", "loss_gap_final", "production_ratio_final"):
            entry[key] = summarize_fractions([r[key] for r in rows], level)
        theory_rows = [_theory_class(ev, int(label)) for ev in evals]
        entry["theory"] = {key: summarize_times([t.get(key, math.nan) for t in theory_rows], level)
                           for key in ("tau_gen", "tau_mem")}
        cov_rows = [_theory_class(ev, int(label), "theory_covariance") for ev in evals]
        if any(cov_rows):
            entry["theory_covariance"] = {key: summarize_times([t.get(key, math.nan) for t in cov_rows], level)
                                          for key in ("tau_gen", "tau_mem")}
        clone_rows = [next((c for c in cl["classes"] if int(c["label"]) == int(label)), None)
                      for cl in cloning if cl is not None]
        if clone_rows:
            for key, src in (("t_speciation", "t_speciation_unet"), ("t_speciation_theory", "t_speciation_theory"),
                             ("t_speciation_theory_covariance", "t_speciation_theory_covariance")):
                if any(c is not None and src not in c for c in clone_rows):
                    continue  # cloning results written before the covariance-aware speciation theory
                vals = [decode(c[src]) for c in clone_rows if c is not None]
                entry[key] = summarize_times(vals, level) | {
                    "n_inf": sum(1 for v in vals if is_reached(v) and math.isinf(float(v)))}
                if key == "t_speciation" and len(vals) == len(runs):
                    entry["t_speciation_per_seed"] = vals
            entry["sample_share_cloning"] = summarize_fractions([c["sample_share"] for c in clone_rows
                                                                 if c is not None], level)
        entry["production_ratio_by_step"] = _production_curve(evals, i, level)
        out_classes.append(entry)
    labels = [c["label"] for c in out_classes]
    orders = {}
    for key in TIME_KEYS:
        # a class without an interval (reached in < 2 seeds) cannot be placed: no order is claimed
        orders[key] = order_with_intervals([c[key] for c in out_classes], labels)
    theory = evals[0].get("theory") or {}
    predicted = None
    agreement = {}
    if theory.get("available"):
        predicted = {"tau_gen": theory.get(ORDER_KEYS["tau_gen"]), "tau_mem": theory.get(ORDER_KEYS["tau_mem"])}
        for key, pred_key in (("tau_gen", "tau_gen"), ("tau_mem", "tau_mem"), ("tau_fmem", "tau_mem")):
            if predicted[pred_key] is not None:
                agreement[key] = pairwise_agreement(orders[key], predicted[pred_key])
    cov = evals[0].get("theory_covariance")
    predicted_cov, agreement_cov = None, {}
    if cov is None:
        cov_reason = "not computed: the evaluations predate the covariance-aware theory (re-run 'classdiff evaluate')"
    elif not cov.get("available"):
        cov_reason = str(cov.get("reason"))
    else:
        cov_reason = None
        predicted_cov = {"tau_gen": cov.get(ORDER_KEYS["tau_gen"]), "tau_mem": cov.get(ORDER_KEYS["tau_mem"])}
        for key, pred_key in (("tau_gen", "tau_gen"), ("tau_mem", "tau_mem"), ("tau_fmem", "tau_mem")):
            if predicted_cov[pred_key] is not None:
                agreement_cov[key] = pairwise_agreement(orders[key], predicted_cov[pred_key])
    # the classes of one run share its seed: each pair's seed-by-seed ratio (core.seed_statistics.paired_order)
    paired = {key: paired_order([[r[key] for r in c["per_seed"]] for c in out_classes], labels, level=level)
              for key in TIME_KEYS}
    if all("t_speciation_per_seed" in c for c in out_classes):  # +inf (committed at once) drops out of its pair
        paired["t_speciation"] = paired_order([c["t_speciation_per_seed"] for c in out_classes], labels,
                                              level=level, descending=True)
    if all("t_speciation" in c for c in out_classes):
        orders["t_speciation"] = order = order_with_intervals([c["t_speciation"] for c in out_classes], labels,
                                                              descending=True)
        first = next(cl for cl in cloning if cl is not None)
        predicted = (predicted or {}) | {"t_speciation": first.get("speciation_order_theory")}
        if predicted["t_speciation"] is not None:
            agreement["t_speciation"] = pairwise_agreement(order, predicted["t_speciation"])
        cov_order = first.get("speciation_order_theory_covariance")
        if predicted_cov is not None and cov_order is not None:
            predicted_cov = predicted_cov | {"t_speciation": cov_order}
            agreement_cov["t_speciation"] = pairwise_agreement(order, cov_order)
    agreement_paired, agreement_paired_cov = {}, {}
    for key, o in paired.items():
        pred_key = {"tau_fmem": "tau_mem"}.get(key, key)  # f_mem is scored against the predicted tau_mem order
        if predicted and predicted.get(pred_key) is not None:
            agreement_paired[key] = paired_agreement(o, predicted[pred_key])
        if predicted_cov and predicted_cov.get(pred_key) is not None:
            agreement_paired_cov[key] = paired_agreement(o, predicted_cov[pred_key])
    return {"runs": [str(r) for r in runs], "seeds": seeds, "classes": out_classes, "orders": orders,
            "orders_paired": paired, "theory": predicted, "agreement": agreement,
            "agreement_paired": agreement_paired, "theory_covariance": predicted_cov,
            "agreement_covariance": agreement_cov, "agreement_paired_covariance": agreement_paired_cov,
            "covariance_reason": cov_reason, "fmem_level": fmem_level, "level": level,
            "definitions": TIME_KEYS | {"intervals": f"Student t, {level:.0%}, log scale for times, over seeds",
                                        "orders_paired": "per pair of classes, the Student t interval of the "
                                                         "seed-by-seed ratio of their times (the classes of one run "
                                                         "share its seed); resolved where it excludes 1"}}


def format_aggregate(result: dict[str, Any]) -> str:
    """Text table: per class, each time's estimate [interval] (reached/seeds), final f_mem and production ratio;
    then the orders and the theory's agreement."""
    lines = [f"{len(result['runs'])} runs (seeds {result['seeds']}); intervals {result['definitions']['intervals']}"]
    for c in result["classes"]:
        lines.append(f"class {c['label']} (n_c = {c['counts']}):")
        for key in TIME_KEYS:
            s = c[key]
            lines.append(f"  {key:<9} {interval_text(s, '.4g')}  ({s['n_reached']}/{s['n_seeds']} seeds reached)")
        if "t_speciation" in c:
            s = c["t_speciation"]
            lines.append(f"  t_S U-Net {interval_text(s, '.3f')}  ({s['n_reached']} finite, {s['n_inf']} inf of "
                         f"{s['n_seeds']}); theory (surrogate) {interval_text(c['t_speciation_theory'], '.3f')}")
        lines.append(f"  f_mem final {interval_text(c['f_mem_final'], '.3f')}, max "
                     f"{interval_text(c['f_mem_max'], '.3f')}; production ratio "
                     f"{interval_text(c['production_ratio_final'], '.2f')}; loss gap final "
                     f"{interval_text(c['loss_gap_final'], '.3f')}")
    for key, o in result["orders"].items():
        lines.append(f"measured order by {key}: {order_text(o)}")
    for key, o in result.get("orders_paired", {}).items():
        lines.append(f"paired order by {key}: {paired_order_text(o)}")
    if result["theory"]:
        th = result["theory"]
        lines.append(f"theory's predicted order: generalization {th.get('tau_gen', '-')}, memorization "
                     f"{th.get('tau_mem', '-')}, speciation {th.get('t_speciation', '-')}")
        for key, ag in result["agreement"].items():
            lines.append(f"  agreement with {key}: {ag['agree']} of {ag['pairs']} resolved pairs")
        for key, ag in result.get("agreement_paired", {}).items():
            lines.append(f"  agreement with the paired order by {key}: {ag['agree']} of {ag['pairs']} resolved pairs")
    return "\n".join(lines)
