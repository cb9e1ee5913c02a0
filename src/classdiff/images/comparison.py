"""One table per experiment: the theory's per-class predictions beside every measurement (issue 16 item 5).

Rows are classes; columns are the predictors and the measurements, each a time with its interval where one
exists:

* predicted, isotropic theory (``theory.audit.predict_for_data`` on each seed's training subset, summarised over
  seeds): tau_gen, tau_mem in the RF model's training time tau; t_S (OU time) for the Gaussian surrogate;
* predicted, covariance-aware theory (``theory.audit.predict_with_covariances``: each class's Gaussian surrogate
  with the centroid and full covariance of all its images, ``docs/theory.md`` §8): tau_gen, tau_mem, the same for
  every seed (the surrogate does not depend on the subset); t_S from the same surrogates with spiked covariances
  (``theory.speciation_covariance``, written by ``classdiff cloning``); nothing (nan, with the reason) for
  evaluations or cloning results written before these sections existed;
* measured, random features on the real pixels (``classdiff dynamics --data``; exact gradient flow, in tau):
  geometric mean and interval over its seeds (``training.seeds``), or a point value for one seed (the default)
  or a result without per-seed times;
* measured, U-Net (``classdiff seeds``): tau_gen, tau_mem (loss gap), tau_fmem (f_mem level) in optimizer steps,
  t_S by cloning (``classdiff cloning``) in OU time; geometric means with Student t intervals over seeds.

The units differ between the RF time tau and optimizer steps, so only *orders* are compared across them. Agreement
rule: for each measured quantity with intervals, :func:`~classdiff.core.readoff.pairwise_agreement` -- a pair of
classes counts only when its two intervals are disjoint, and agrees when the prediction orders it the same way.
The sources ``unet_paired`` and ``rf_real_pixels_paired`` order each pair by the interval of its seed-by-seed time
ratio (:func:`~classdiff.core.seed_statistics.paired_order`: the classes of one run share its seed), scored by
:func:`~classdiff.core.seed_statistics.paired_agreement`. An RF result with fewer than 2 seeds is compared rank by
rank and marked ``point``.
"""

from __future__ import annotations

import math
from typing import Any

from classdiff.core.readoff import ORDER_KEYS, class_order, pairwise_agreement
from classdiff.core.results import is_reached, reached
from classdiff.core.seed_statistics import order_with_intervals, paired_agreement, paired_order

__all__ = ["COVARIANCE_AWARE_REASON", "comparison_table", "format_comparison_table", "plot_comparison_table"]

COVARIANCE_AWARE_REASON = ("t_S not computed: the cloning results predate the covariance-aware speciation theory "
                           "(re-run 'classdiff cloning')")

#: measured quantity -> the predicted quantity whose order it is compared with
PREDICTED_FOR = {"tau_gen": "tau_gen", "tau_mem": "tau_mem", "tau_fmem": "tau_mem", "t_speciation": "t_speciation"}


def _point(v: Any) -> dict[str, Any]:
    return {"estimate": reached(v) if v is not None else math.nan, "interval": [math.nan, math.nan]}


def _rank_agreement(measured_order: list[int], predicted: list[int] | None) -> dict[str, Any]:
    """:func:`pairwise_agreement` for a point-valued order: every pair counts (distinct ranks never overlap)."""
    if not predicted:
        return {"pairs": 0, "agree": 0, "fraction": math.nan, "disagreeing": [], "rule": "point"}
    ranks = {lab: [float(i), float(i)] for i, lab in enumerate(measured_order)}
    return pairwise_agreement({"sorted": measured_order, "intervals": ranks}, predicted) | {"rule": "point"}


def comparison_table(aggregate: dict[str, Any], rf: dict[str, Any] | None = None) -> dict[str, Any]:
    """The table of one experiment from a :func:`~classdiff.images.seed_aggregate.aggregate_runs` result and,
    optionally, a ``classdiff dynamics --data`` result ``rf`` on the same classes.

    Returns ``{"classes": [{label, n_c, predicted: {isotropic: {...}, covariance_aware: {...}}, measured:
    {rf_real_pixels: {...} | None, unet: {...}}}], "orders": {source: {quantity: order}}, "agreement":
    {source: {quantity: agreement}}, "rule", "units"}``.
    """
    labels = [int(c["label"]) for c in aggregate["classes"]]
    rf_by_label = {}
    if rf is not None:
        rf_labels = rf.get("labels") or [int(c.get("label", i)) for i, c in enumerate(rf["classes"])]
        rf_by_label = {int(lab): c for lab, c in zip(rf_labels, rf["classes"], strict=True)}
    rows = []
    for c in aggregate["classes"]:
        lab = int(c["label"])
        iso = {"tau_gen": c["theory"]["tau_gen"], "tau_mem": c["theory"]["tau_mem"],
               "t_speciation": c.get("t_speciation_theory", _point(None))}
        cov_times = c.get("theory_covariance")
        cov = {key: _point(None) for key in ("tau_gen", "tau_mem", "t_speciation")}
        if cov_times is not None:
            cov.update(tau_gen=cov_times["tau_gen"], tau_mem=cov_times["tau_mem"])
            if "t_speciation_theory_covariance" in c:
                cov["t_speciation"] = c["t_speciation_theory_covariance"]
            else:
                cov["reason"] = COVARIANCE_AWARE_REASON
        else:
            cov["reason"] = aggregate.get("covariance_reason") or "not computed"
        rfc = rf_by_label.get(lab)
        with_seeds = rfc is not None and len(rfc.get("tau_mem_seeds", [])) >= 2
        rf_row = None if rfc is None else {key: rfc[f"{key}_summary"] if with_seeds and f"{key}_summary" in rfc
                                           else _point(rfc.get(key)) for key in ("tau_gen", "tau_mem")}
        unet = {key: c[key] for key in ("tau_gen", "tau_mem", "tau_fmem")}
        unet["t_speciation"] = c.get("t_speciation", _point(None))
        rows.append({"label": lab, "n_c": c["counts"], "predicted": {"isotropic": iso, "covariance_aware": cov},
                     "measured": {"rf_real_pixels": rf_row, "unet": unet}})
    predicted = aggregate.get("theory") or {}
    orders: dict[str, dict[str, Any]] = {"isotropic": {k: predicted.get(k) for k in ("tau_gen", "tau_mem",
                                                                                      "t_speciation")}}
    agreement: dict[str, dict[str, Any]] = {}
    orders["unet"] = dict(aggregate["orders"])
    agreement["unet"] = dict(aggregate.get("agreement", {}))
    predicted_cov = aggregate.get("theory_covariance")
    agreement_cov: dict[str, dict[str, Any]] = {}
    if predicted_cov:
        orders["covariance_aware"] = {k: predicted_cov.get(k) for k in ("tau_gen", "tau_mem", "t_speciation")}
        agreement_cov["unet"] = dict(aggregate.get("agreement_covariance", {}))
    if aggregate.get("orders_paired"):
        orders["unet_paired"] = dict(aggregate["orders_paired"])
        agreement["unet_paired"] = dict(aggregate.get("agreement_paired", {}))
        if predicted_cov:
            agreement_cov["unet_paired"] = dict(aggregate.get("agreement_paired_covariance", {}))
    if rf is not None and all(lab in rf_by_label and len(rf_by_label[lab].get("tau_mem_seeds", [])) >= 2
                              for lab in labels):
        # RF over seeds (classdiff dynamics --data with its summaries): interval orders, and paired by seed
        rf_classes = [rf_by_label[lab] for lab in labels]
        rf_orders = {key: order_with_intervals([c[f"{key}_summary"] for c in rf_classes], labels)
                     for key in ("tau_gen", "tau_mem")}
        rf_paired = {key: paired_order([c[f"{key}_seeds"] for c in rf_classes], labels)
                     for key in ("tau_gen", "tau_mem")}
        orders["rf_real_pixels"], orders["rf_real_pixels_paired"] = rf_orders, rf_paired
        for target, pred in ((agreement, predicted), (agreement_cov, predicted_cov or {})):
            if pred:
                target["rf_real_pixels"] = {k: pairwise_agreement(o, pred[k]) for k, o in rf_orders.items()
                                            if pred.get(k) is not None}
                target["rf_real_pixels_paired"] = {k: paired_agreement(o, pred[k]) for k, o in rf_paired.items()
                                                   if pred.get(k) is not None}
    elif rf is not None:  # one seed, or no per-seed times: point values, rank by rank
        rf_orders = {}
        for key in ("tau_gen", "tau_mem"):
            vals = [rf_by_label[lab].get(key) if lab in rf_by_label else None for lab in labels]
            rf_orders[key] = class_order([math.nan if v is None else reached(v) for v in vals], labels)
        orders["rf_real_pixels"] = rf_orders
        agreement["rf_real_pixels"] = {k: _rank_agreement(v, predicted.get(k)) for k, v in rf_orders.items()}
        if predicted_cov:
            agreement_cov["rf_real_pixels"] = {k: _rank_agreement(v, predicted_cov.get(k))
                                               for k, v in rf_orders.items()}
    return {"classes": rows, "orders": orders, "agreement": agreement, "agreement_covariance": agreement_cov,
            "covariance_reason": aggregate.get("covariance_reason"),
            "rule": "pairs with disjoint 95% intervals over seeds (U-Net; RF on real pixels when it has seeds) agree "
                    "when the prediction orders them the same way; '_paired' sources: pairs whose 95% interval of "
                    "the seed-by-seed time ratio excludes 1; RF with fewer than 2 seeds: rank by rank ('point')",
            "units": {"theory tau, RF tau": "RF training time tau = k eta / d^2", "U-Net tau": "optimizer steps",
                      "t_speciation": "OU time (larger = earlier in the backward process)"},
            "order_keys": {k: ORDER_KEYS.get(k, k) for k in ("tau_gen", "tau_mem", "t_speciation")}}


def _cell(s: dict[str, Any] | None, spec: str) -> str:
    from classdiff.core.results import format_value

    if s is None:
        return "-"
    est = s["estimate"]
    lo, hi = s["interval"]
    # no interval, or the same value in every seed (the covariance-aware theory uses all images of each class)
    same = all(isinstance(v, float) and math.isfinite(v) for v in (est, lo, hi)) and (
        abs(hi - lo) <= 1e-9 * max(abs(est), 1e-300))  # a geometric mean of equal values may differ in the last bit
    if (isinstance(lo, float) and math.isnan(lo)) or same:
        return format_value(est, spec)
    return f"{format_value(est, spec)} [{format_value(lo, spec)}, {format_value(hi, spec)}]"


def format_comparison_table(table: dict[str, Any]) -> str:
    """The table as text: one block of rows per class, then orders and agreement."""
    from classdiff.core.seed_statistics import order_text, paired_order_text

    lines = ["predicted vs measured per class (theory tau and RF tau in RF time; U-Net tau in steps; t_S in OU time)"]
    head = f"{'class':>6} {'quantity':<13} {'isotropic theory':>22} {'cov-aware':>10} {'RF pixels':>10} {'U-Net':>26}"
    lines.append(head)
    lines.append("-" * len(head))
    for r in table["classes"]:
        iso, cov = r["predicted"]["isotropic"], r["predicted"]["covariance_aware"]
        rf, un = r["measured"]["rf_real_pixels"], r["measured"]["unet"]
        for key, spec in (("tau_gen", ".4g"), ("tau_mem", ".4g"), ("tau_fmem", ".4g"), ("t_speciation", ".3f")):
            pred_key = PREDICTED_FOR[key]
            iso_cell = _cell(iso.get(pred_key), spec) + (" (as tau_mem)" if key == "tau_fmem" else "")
            rf_cell = _cell(rf.get(key), spec) if rf is not None and key in rf else "-"
            lines.append(f"{r['label']:>6} {key:<13} {iso_cell:>22} {_cell(cov.get(pred_key), spec):>10} "
                         f"{rf_cell:>10} {_cell(un.get(key), spec):>26}")
    reason = table.get("covariance_reason")
    if reason:
        lines.append(f"covariance-aware theory: {reason}")
    else:
        ts_reasons = {r["predicted"]["covariance_aware"].get("reason") for r in table["classes"]} - {None}
        lines.append("covariance-aware theory: " + ("; ".join(sorted(ts_reasons)) if ts_reasons else
                                                    "tau_gen, tau_mem (docs/theory.md §8) and t_S (spiked "
                                                    "covariances, docs/speciation.md §6c) of all images per class"))
    for source, orders in table["orders"].items():
        for key, o in orders.items():
            if isinstance(o, dict):
                text = paired_order_text(o) if "pairs" in o else order_text(o)
            else:
                text = str(o) if o is not None else "-"
            ag = table["agreement"].get(source, {}).get(key)
            tail = "" if ag is None else f"; agrees with the isotropic theory on {ag['agree']} of {ag['pairs']} pairs"
            ag_cov = table.get("agreement_covariance", {}).get(source, {}).get(key)
            if ag_cov is not None:
                tail += f", with the covariance-aware theory on {ag_cov['agree']} of {ag_cov['pairs']}"
            lines.append(f"order {source:<15} {key:<13} {text}{tail}")
    lines.append(f"rule: {table['rule']}")
    return "\n".join(lines)


def plot_comparison_table(table: dict[str, Any], stem) -> None:
    """Per quantity, each class's predicted (isotropic, covariance-aware) and measured (RF, U-Net) value with its interval, each source
    normalised by its own geometric mean over the classes (units differ; the figure compares orders and ratios)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure

    keys = ["tau_gen", "tau_mem", "tau_fmem", "t_speciation"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.6), squeeze=False)
    sources = [("isotropic theory", lambda r, k: r["predicted"]["isotropic"].get(PREDICTED_FOR[k])),
               ("covariance-aware theory", lambda r, k: r["predicted"]["covariance_aware"].get(PREDICTED_FOR[k])),
               ("RF real pixels", lambda r, k: (r["measured"]["rf_real_pixels"] or {}).get(k)),
               ("U-Net", lambda r, k: r["measured"]["unet"].get(k))]
    for ax, key in zip(axes[0], keys, strict=True):
        for si, (name, get) in enumerate(sources):
            vals = []
            for r in table["classes"]:
                s = get(r, key)
                ok = s is not None and is_reached(s["estimate"]) and np.isfinite(float(s["estimate"]))
                vals.append((float(s["estimate"]), s["interval"]) if ok else None)
            finite = [v[0] for v in vals if v is not None and v[0] > 0]
            if not finite:
                continue
            norm = float(np.exp(np.mean(np.log(finite))))
            for ci, v in enumerate(vals):
                if v is None:
                    continue
                x = ci + (si - 1.5) * 0.18
                lo, hi = v[1]
                yerr = None
                if np.isfinite(lo) and np.isfinite(hi):
                    yerr = [[(v[0] - lo) / norm], [(hi - v[0]) / norm]]
                ax.errorbar([x], [v[0] / norm], yerr=yerr, fmt="oDs^"[si], color=f"C{si}", capsize=3, ms=5,
                            label=name)
        ax.set_yscale("log")
        ax.set_xticks(range(len(table["classes"])))
        ax.set_xticklabels([f"class {r['label']}" for r in table["classes"]])
        ax.set_title(key + (" (theory: tau_mem)" if key == "tau_fmem" else ""), fontsize=9)
        ax.set_ylabel("value / geometric mean over classes")
    # one legend for the figure, below the panels, so that no marker hides behind it
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8,
                   frameon=False)
    fig.suptitle("predicted vs measured per class (each source normalised; bars: 95% intervals over seeds)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, stem)
