"""The random-features model trained on real labelled points (image pixels, any ``audit``-style data), per class.

:func:`real_subset` picks an imbalanced training subset (``counts[c]`` points of class ``classes[c]``) and a
disjoint held-out test subset (``test_per_class`` points per class) from labelled data, seeded.
:func:`real_data_dynamics` fits :class:`~classdiff.rf.model.RandomFeaturesScore` on the training points
(d = number of pixels, p = round(psi_p d), n = sum of counts) with the held-out points as test moments and
returns the per-class closed-form curves and read-off times in the layout of
:func:`~classdiff.rf.model.dynamics_from_config` (no score error: real data have no exact score; that key is
absent rather than nan). Optionally the torch trainer (GD or Adam) runs on the same points and logs the same
per-class quadratics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.core.readoff import ORDER_KEYS, class_order
from classdiff.core.results import format_value, reached
from classdiff.core.seed_statistics import (
    interval_text,
    order_text,
    order_with_intervals,
    paired_order,
    paired_order_text,
    summarize_times,
)
from classdiff.data.mixture import TrainingSet
from classdiff.rf.model import RandomFeaturesScore, _seed_mean

__all__ = ["format_real_data", "real_data_dynamics", "real_subset"]


def real_subset(x: ArrayLike, y: ArrayLike, classes: Sequence[int], counts: Sequence[int], test_per_class: int,
                seed: int = 0) -> tuple[TrainingSet, TrainingSet]:
    """(train, test) TrainingSets with labels 0..K-1 (position in ``classes``), float64 points (n, d).

    ``x`` (N, ...) is flattened; the points of each class are permuted with ``seed``; the first ``counts[c]``
    train, the next ``test_per_class`` test (disjoint). Errors name the class that has too few points.
    """
    xa = np.asarray(x)
    xa = xa.reshape(len(xa), -1)
    ya = np.asarray(y)
    if len(classes) != len(counts) or not classes:
        raise ValueError(f"classes {list(classes)} and counts {list(counts)}: need one count per class, >= 1 class")
    if len(set(int(c) for c in classes)) != len(classes):
        raise ValueError(f"classes {list(classes)}: a class appears twice")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EA1]))
    tr_x, tr_y, te_x, te_y = [], [], [], []
    for k, (c, n_c) in enumerate(zip(classes, counts, strict=True)):
        idx = np.flatnonzero(ya == int(c))
        if int(n_c) < 1:
            raise ValueError(f"counts: class {c} has count {n_c}; every count must be >= 1")
        if len(idx) < int(n_c) + int(test_per_class):
            raise ValueError(f"class {c}: {len(idx)} points, fewer than {n_c} train + {test_per_class} test")
        idx = rng.permutation(idx)
        tr_x.append(xa[idx[: int(n_c)]])
        te_x.append(xa[idx[int(n_c): int(n_c) + int(test_per_class)]])
        tr_y.append(np.full(int(n_c), k, np.int64))
        te_y.append(np.full(int(test_per_class), k, np.int64))
    k_classes = len(classes)

    def make(xs: list, ys: list) -> TrainingSet:
        labels = np.concatenate(ys)
        return TrainingSet(x=np.concatenate(xs).astype(np.float64), labels=labels,
                           counts=np.bincount(labels, minlength=k_classes).astype(np.int64))

    return make(tr_x, tr_y), make(te_x, te_y)


def real_data_dynamics(x: ArrayLike, y: ArrayLike, classes: Sequence[int], counts: Sequence[int], config: Any, *,
                       test_per_class: int = 500, tau: Sequence[float] | None = None,
                       iterative: bool = False) -> dict[str, Any]:
    """Closed-form per-class RF dynamics on real points, over ``config.training.seeds`` seeds.

    ``config`` supplies [model] (psi_p, time, activation, ridge, series_order, noise_samples, seed) and
    [training] (tau grid, read-off tolerances, n_batches, seeds; optimizer, learning_rate, max_steps for
    ``iterative``). Seed s draws the subsets and W with model.seed + s. Returns the ``dynamics`` layout with
    ``labels`` (the data's class labels), ``source`` "real data" and, when ``iterative``, the trainer's curves
    of the first seed under ``"iterative"``. Per class it adds, over the seeds, ``tau_gen_summary`` and
    ``tau_mem_summary`` (geometric mean and 95% interval, :func:`~classdiff.core.seed_statistics.summarize_times`)
    and ``tau_gen_pooled`` / ``tau_mem_pooled`` (read off the seed-averaged curves, which is what a deterministic
    equivalent of the expected curves predicts); ``orders_with_intervals`` orders the classes only where the
    intervals separate, and ``orders_paired`` where each pair's interval of the seed-by-seed ratio excludes 1
    (:func:`~classdiff.core.seed_statistics.paired_order`: the classes of one seed share its W and subsets).
    """
    model, tr = config.model, config.training
    taus = np.geomspace(tr.tau_min, tr.tau_max, tr.n_times) if tau is None else np.asarray(tau, dtype=np.float64)
    method = "series" if model.noise_samples == 0 else "mc"
    runs = []
    first: tuple[RandomFeaturesScore, TrainingSet] | None = None
    for s in range(tr.seeds):
        seed = model.seed + s
        train, test = real_subset(x, y, classes, counts, test_per_class, seed=seed)
        d = train.x.shape[1]
        p = round(model.psi_p * d)
        est = RandomFeaturesScore(
            n_features=p, activation=model.activation, time=model.time, seed=seed, ridge=model.ridge,
            method=method, series_order=model.series_order, noise_samples=max(model.noise_samples, 1),
            n_batches=tr.n_batches)
        est.fit(train, test_data=test)
        curves = est.predict_curves(np.append(taus, np.inf))
        ts = est.timescales(taus, tr.gen_tolerance, tr.mem_fraction, curves=curves)
        runs.append((est, curves, ts))
        if first is None:
            first = (est, train)
    est, curves, _ = runs[0]
    gen = np.array([r[2]["tau_gen"] for r in runs])
    mem = np.array([r[2]["tau_mem"] for r in runs])
    # the read-off of the seed-averaged curves: what a deterministic equivalent of the expected curves predicts
    mean_curves = {key: np.mean([r[1][key] for r in runs], axis=0) for key in ("train_loss", "test_loss")}
    pooled = est.timescales(taus, tr.gen_tolerance, tr.mem_fraction, curves=mean_curves)
    out_classes = []
    for c, lab in enumerate(classes):
        gen_seeds, mem_seeds = [reached(v) for v in gen[:, c]], [reached(v) for v in mem[:, c]]
        out_classes.append({
            "label": int(lab), "n_train": int(est.class_counts_[c]), "n_test": int(est.test_samples_per_class_[c]),
            "variance": float(np.mean(np.var(first[1].x[first[1].labels == c], axis=0, ddof=1))),
            "weight": float(est.class_counts_[c] / est.n_),
            "train_loss": curves["train_loss"][c, :-1], "test_loss": curves["test_loss"][c, :-1],
            "test_loss_se": curves["test_loss_se"][c, :-1],
            "train_loss_inf": float(curves["train_loss"][c, -1]), "test_loss_inf": float(curves["test_loss"][c, -1]),
            "tau_gen": _seed_mean(gen[:, c]), "tau_mem": _seed_mean(mem[:, c]),
            "tau_gen_std": float(np.nanstd(gen[:, c], ddof=1)) if np.sum(np.isfinite(gen[:, c])) > 1 else None,
            "tau_mem_std": float(np.nanstd(mem[:, c], ddof=1)) if np.sum(np.isfinite(mem[:, c])) > 1 else None,
            "tau_gen_seeds": gen_seeds, "tau_mem_seeds": mem_seeds,
            "tau_gen_reached_seeds": int(np.sum(np.isfinite(gen[:, c]))),
            "tau_mem_reached_seeds": int(np.sum(np.isfinite(mem[:, c]))),
            "tau_gen_summary": summarize_times(gen_seeds), "tau_mem_summary": summarize_times(mem_seeds),
            "tau_gen_pooled": reached(pooled["tau_gen"][c]), "tau_mem_pooled": reached(pooled["tau_mem"][c]),
        })
    labels = [int(v) for v in classes]
    result: dict[str, Any] = {
        "source": "real data", "tau": taus, "classes": out_classes, "labels": labels,
        ORDER_KEYS["tau_gen"]: class_order([cl["tau_gen"] for cl in out_classes], labels),
        ORDER_KEYS["tau_mem"]: class_order([cl["tau_mem"] for cl in out_classes], labels),
        "orders_with_intervals": {key: order_with_intervals([cl[f"{key}_summary"] for cl in out_classes], labels)
                                  for key in ("tau_gen", "tau_mem")},
        "orders_paired": {key: paired_order([cl[f"{key}_seeds"] for cl in out_classes], labels)
                          for key in ("tau_gen", "tau_mem")},
        "n": int(est.n_), "p": int(est.n_features), "d": int(est.dim_), "time": model.time, "delta": est.delta_,
        "seeds": tr.seeds, "method": method, "series_error_bound": est.series_error_bound_,
        "definitions": {
            "tau": "gradient-flow time, tau = k eta / d^2 for GD with step eta on L",
            "tau_gen": f"readoff.generalization_time of the class test loss, tolerance {tr.gen_tolerance}",
            "tau_mem": f"readoff.memorization_time of the class gap, fraction {tr.mem_fraction}, final gap at tau=inf",
            "test_loss": "noise-averaged loss on held-out real points of the class (test_per_class of them)",
            "test_loss_se": "batch-means standard error over the held-out points",
            "score_error": "not computed: real data have no exact score",
            "seeds": "curves of the first seed; tau_gen/tau_mem: mean over the seeds that reached the event",
            "tau_gen_summary": "over seeds: geometric mean and 95% Student t interval of the log times "
                               "(core.seed_statistics.summarize_times)",
            "tau_mem_summary": "as tau_gen_summary, for tau_mem",
            "tau_gen_pooled": "tau_gen read off the seed-averaged test loss (the expected curve)",
            "tau_mem_pooled": "tau_mem read off the seed-averaged train and test losses (the expected curves)",
            "orders_with_intervals": "core.seed_statistics.order_with_intervals of the summaries: an order only "
                                     "where neighbouring intervals are disjoint, else 'not resolved'",
            "orders_paired": "core.seed_statistics.paired_order of the per-seed times (each seed shares W and the "
                             "subsets across classes): each pair's 95% t interval of the seed-by-seed ratio, an "
                             "order only where every pair's interval excludes 1",
        },
        "eigenvalues": est.eigenvalues_,
    }
    if iterative and first is not None:
        result["iterative"] = _train(first[0], first[1], taus, config)
    return result


def format_real_data(result: dict[str, Any]) -> str:
    """Text table of a :func:`real_data_dynamics` result: per class n_c, tau_gen and tau_mem as geometric mean
    [95% interval] (reached / seeds) and the read-off of the seed-averaged curves; then the orders with intervals."""
    lines = [f"RF dynamics on real points: n = {result['n']}, p = {result['p']}, d = {result['d']}, t = "
             f"{format_value(result['time'])}, {result['seeds']} seeds; intervals: 95% Student t on log times"]
    for c in result["classes"]:
        lines.append(f"class {c['label']} (n_c = {c['n_train']}, {c['n_test']} test points):")
        for key in ("tau_gen", "tau_mem"):
            s = c[f"{key}_summary"]
            lines.append(f"  {key:<8} {interval_text(s)}  ({s['n_reached']}/{s['n_seeds']} seeds reached); "
                         f"seed-averaged curves {format_value(c[f'{key}_pooled'])}")
    for key, o in result["orders_with_intervals"].items():
        lines.append(f"order by {key}: {order_text(o)}")
    for key, o in result.get("orders_paired", {}).items():
        lines.append(f"paired order by {key} (seed-by-seed ratios): {paired_order_text(o)}")
    return "\n".join(lines)


def _train(est: RandomFeaturesScore, train: TrainingSet, taus: NDArray[np.float64], config: Any) -> dict[str, Any]:
    from classdiff.rf.training import gd_learning_rate, train_random_features

    tr, model = config.training, config.model
    lr = gd_learning_rate(est, min(tr.learning_rate, 0.99)) if tr.optimizer == "gd" else tr.learning_rate
    n_log = min(60, taus.size)
    d = est.dim_
    top = min(float(taus[-1]), tr.max_steps * lr / d**2)  # the trainer runs at most training.max_steps steps
    if top <= taus[0]:
        raise ValueError(f"training.max_steps = {tr.max_steps}: too few steps to reach tau_min = {taus[0]:g} with "
                         f"learning rate {lr:g}; raise training.max_steps or training.tau_min")
    hist = train_random_features(est, train, np.geomspace(taus[0], top, n_log), optimizer=tr.optimizer,
                                 noise=tr.noise, learning_rate=lr, noise_samples=max(model.noise_samples, 1),
                                 max_steps=tr.max_steps, device=tr.device, seed=model.seed)
    out = hist.as_dict()
    out.pop("score_error", None)
    return out
