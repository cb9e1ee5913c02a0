"""Evaluate every checkpoint of a U-Net run folder per class, and put the theory's prediction beside it.

For each checkpoint (same DDIM starting noise at every checkpoint):

* samples (``n_samples``, DDIM ``sampler_steps``, eta = 0) and a grid figure;
* memorization (:func:`~classdiff.images.memorization.memorization_by_class`): f_mem and f_mem,c with
  bootstrap 95 % intervals, classes by nearest training image and by the classifier;
* per-class train vs test denoising loss at the DDPM steps closest to the OU times ``loss_times``;
* classifier-feature Fréchet distance per class, and the class histogram of samples vs the training subset.

Then the measured per-class times, read off with :mod:`classdiff.core.readoff` over optimizer steps:
tau_gen,c (test loss at the first loss time), tau_mem,c (its train/test gap) and tau_fmem,c (first step at which
f_mem,c reaches half its final value), beside the theory's prediction for the Gaussian mixture fitted to the training subset
(:func:`classdiff.theory.audit.predict_for_data`: ``GaussianMixture.fit``, isotropic classes). The gap is measured from its value at the first
checkpoint (the train and test image sets differ, so an untrained network already shows a small gap); a class whose
gap grows by less than ``MIN_RELATIVE_GAP`` of its final test loss has not memorized within the run: its tau_mem,c
is reported as :data:`~classdiff.core.results.NOT_REACHED` (not read off a curve that is noise around a
constant), as is any time the run did not reach. Class orders follow :func:`classdiff.core.readoff.class_order`
(earliest first, not reached last) under the keys of :data:`~classdiff.core.readoff.ORDER_KEYS`
(``generalization_order`` for tau_gen, ``memorization_order`` for tau_mem); the order by tau_fmem, which has no
key there, is ``fmem_order``.

Writes ``metrics/evaluation.json``, ``metrics/memorization.csv``, ``metrics/loss.csv``, ``metrics/quality.csv``,
``samples.npz`` (last checkpoint) and figures under ``figures/``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from classdiff.core.config import Config, load_config
from classdiff.core.io import read_json, save_figure, save_npz_atomic, write_csv_atomic, write_json_atomic
from classdiff.core.readoff import (
    ORDER_KEYS,
    class_order,
    crossing_time,
    generalization_time,
    memorization_time,
)
from classdiff.core.results import NOT_REACHED, format_value, reached, time_or_nan
from classdiff.data.labelled import class_statistics
from classdiff.theory.audit import predict_for_data

__all__ = ["FMEM_ORDER_KEY", "MIN_RELATIVE_GAP", "covariance_theory_prediction", "evaluate_run", "format_comparison",
           "theory_prediction"]

MIN_RELATIVE_GAP = 0.02
"""Smallest final train/test gap, as a fraction of the final test loss, read as memorization."""

FMEM_ORDER_KEY = "fmem_order"
"""The key of the class order by tau_fmem (f_mem,c reaching half its final value); :data:`ORDER_KEYS` has none."""


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _sample_grid(samples: np.ndarray, stem: Path, title: str, n: int = 64) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(n, len(samples))
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    grid = np.ones((rows * 29 + 1, cols * 29 + 1))
    for i in range(k):
        r, c = divmod(i, cols)
        grid[1 + r * 29: 1 + r * 29 + 28, 1 + c * 29: 1 + c * 29 + 28] = (samples[i, 0] + 1) / 2
    fig, ax = plt.subplots(figsize=(cols * 0.45 + 0.5, rows * 0.45 + 0.7))
    ax.imshow(np.clip(grid, 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    save_figure(fig, stem)


def _first_per_class(labels: np.ndarray, classes: tuple[int, ...], cap: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[:cap] for c in classes]).astype(np.int64)


def theory_prediction(x: np.ndarray, y: np.ndarray, classes: tuple[int, ...], config: Config) -> dict[str, Any]:
    """The ``theory`` section of the evaluation: :func:`~classdiff.theory.audit.predict_for_data` for images ``x``
    (n, ...) with labels ``y`` (n,), classes in the order ``classes``, at the random-features settings of
    ``config`` (psi_n = n/d).

    ``available`` True with the prediction's ``to_dict()`` (``classes`` [{label, tau_gen, tau_mem}], the orders
    under :data:`ORDER_KEYS` names, psi_p, psi_n, time); or ``available`` False with a ``reason`` when the theory
    fails for these statistics, so that the measurement side still runs.
    """
    try:
        prediction = predict_for_data(x, y, config, labels=classes)
    except Exception as exc:  # the theory may not converge for some statistics; report, do not crash
        return {"available": False, "reason": f"theory prediction failed: {type(exc).__name__}: {exc}"}
    return {"available": True, **prediction.to_dict()}


def covariance_theory_prediction(x: np.ndarray, y: np.ndarray, classes: tuple[int, ...], counts: Any,
                                 config: Config) -> dict[str, Any]:
    """The ``theory_covariance`` section: :func:`~classdiff.theory.audit.predict_with_covariances` for training
    sets of ``counts`` points of ``classes`` whose Gaussian surrogates have the centroid and full covariance of
    *all* the images ``x`` (n, ...) of each class (labels ``y``), at the settings of ``config``; ``available``
    False with a ``reason`` when it fails (as :func:`theory_prediction`)."""
    from classdiff.theory.audit import predict_with_covariances

    try:
        prediction = predict_with_covariances(x, y, classes, counts, config)
    except Exception as exc:  # report, do not crash the measurement side
        return {"available": False, "reason": f"covariance-aware prediction failed: {type(exc).__name__}: {exc}"}
    return {"available": True, **prediction.to_dict(),
            "surrogate": "N(mu_c, Sigma_c) of all training images of the class (docs/theory.md §8)"}


def evaluate_run(run_dir: str | Path, *, data_root: str | Path | None = None, device: str | None = None,
                 progress: bool = True, use_ema: bool = False) -> dict[str, Any]:
    """Evaluate all checkpoints of ``run_dir`` (written by :func:`~classdiff.images.ddpm.train_unet`).

    ``use_ema`` evaluates the EMA weights (runs trained with ``images.ema > 0``) instead of the raw weights.
    """
    import torch

    from classdiff.data.fashion_mnist import to_model_space
    from classdiff.images.classifier import classifier_features, get_classifier
    from classdiff.images.ddpm import (
        build_model,
        class_index,
        list_checkpoints,
        load_checkpoint,
        load_training_data,
        resolve_device,
    )
    from classdiff.images.memorization import memorization_by_class
    from classdiff.images.quality import class_histogram, denoising_loss_by_class, frechet_by_class
    from classdiff.images.sampling import ddim_sample, fixed_noise
    from classdiff.images.schedule import DDPMSchedule

    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise FileNotFoundError(f"{run}: not a U-Net run folder (no config.toml); run 'classdiff train' first")
    config = load_config(run / "config.toml")
    cfg = config.images
    ckpts = list_checkpoints(run)
    if not ckpts:
        raise FileNotFoundError(f"{run}: no checkpoints under {run / 'checkpoints'}")
    dev = resolve_device(device or cfg.device)
    stored = read_json(run / "indices.json")
    if data_root is None and stored.get("data_root") and Path(stored["data_root"]).is_dir():
        data_root = stored["data_root"]
    loaded = load_training_data(cfg, data_root)
    if loaded["indices"].tolist() != stored["indices"]:
        raise ValueError(f"{run}/indices.json: the stored training subset differs from the one rebuilt from the "
                         "config and data (different data files?)")
    data = loaded["data"]
    classes = tuple(cfg.classes)
    k_cls = len(classes)
    x_train = to_model_space(data.train_images[loaded["indices"]])
    y_train = loaded["labels"]
    ci_train = class_index(y_train, classes)
    test_sel = np.flatnonzero(np.isin(data.test_labels, classes))
    x_test_all, y_test_all = to_model_space(data.test_images[test_sel]), data.test_labels[test_sel].astype(np.int64)

    # statistics and theory
    stats = class_statistics(x_train, y_train, labels=classes)
    theory = theory_prediction(x_train, y_train, classes, config)
    population = np.flatnonzero(np.isin(data.train_labels, classes))
    _log("covariance-aware theory (full class covariances) ...", progress)
    theory_cov = covariance_theory_prediction(to_model_space(data.train_images[population]),
                                              data.train_labels[population].astype(np.int64), classes,
                                              loaded["counts"], config)

    # classifier on the full real training set (all ten classes), cached
    _log("classifier: loading or training (cached) ...", progress)
    clf = get_classifier(to_model_space(data.train_images), data.train_labels.astype(np.int64),
                         epochs=cfg.classifier_epochs, seed=0, device=dev, progress=progress)
    real_feats, real_pred = classifier_features(clf, x_test_all, device=dev)
    classifier_accuracy = float((real_pred == y_test_all).mean()) if len(y_test_all) else None

    # fixed evaluation sets
    schedule = DDPMSchedule(cfg.schedule, cfg.num_diffusion_steps)
    ks = [schedule.step_for_time(t) for t in cfg.loss_times]
    t_used = [float(schedule.ou_time[k]) for k in ks]
    tr_sel = _first_per_class(y_train, classes, cfg.loss_images)
    te_sel = _first_per_class(y_test_all, classes, cfg.loss_images)
    noise = fixed_noise(cfg.n_samples, seed=cfg.seed + 1_000_003)
    rng = np.random.default_rng(cfg.seed + 7)
    counts = np.asarray(loaded["counts"], dtype=np.float64)
    cond_labels = torch.from_numpy(rng.choice(k_cls, size=cfg.n_samples, p=counts / counts.sum())) \
        if cfg.class_conditional else None

    fig_dir = run / "figures"
    steps, mem_records, loss_train, loss_test, fd_rows, hist_rows = [], [], [], [], [], []
    samples = None
    for step, path in ckpts:
        _log(f"evaluate: checkpoint step {step}", progress)
        state = load_checkpoint(path, "cpu")
        model = build_model(cfg)
        if use_ema and state.get("ema") is None:
            raise ValueError(f"{path}: no EMA weights (the run was trained with images.ema = 0)")
        model.load_state_dict(state["ema"] if use_ema else state["model"])
        model.to(dev).eval()
        samples = ddim_sample(model, schedule, noise, sampler_steps=cfg.sampler_steps, labels=cond_labels,
                              batch_size=cfg.eval_batch_size, device=dev, progress=progress).numpy()
        _sample_grid(samples, fig_dir / f"samples_step_{step:08d}", f"DDIM samples, step {step}")
        s_feats, s_pred = classifier_features(clf, samples, device=dev)
        mem = memorization_by_class(samples, x_train, y_train, classes=classes, classifier_labels=s_pred,
                                    threshold=cfg.memorization_threshold, n_bootstrap=cfg.n_bootstrap,
                                    seed=cfg.seed, device=dev)
        for key in ("ratio", "nearest_index", "nearest_label"):
            mem.pop(key)
        mem_records.append(mem)
        loss_train.append(denoising_loss_by_class(model, schedule, x_train[tr_sel], ci_train[tr_sel], ks, k_cls,
                                                  noise_draws=cfg.loss_noise_draws, seed=cfg.seed + 11,
                                                  batch_size=cfg.eval_batch_size, device=dev,
                                                  conditional=cfg.class_conditional))
        loss_test.append(denoising_loss_by_class(model, schedule, x_test_all[te_sel],
                                                 class_index(y_test_all[te_sel], classes), ks, k_cls,
                                                 noise_draws=cfg.loss_noise_draws, seed=cfg.seed + 13,
                                                 batch_size=cfg.eval_batch_size, device=dev,
                                                 conditional=cfg.class_conditional))
        fd_rows.append(frechet_by_class(s_feats, s_pred, real_feats, y_test_all, classes))
        hist_rows.append(class_histogram(s_pred, classes))
        steps.append(step)

    steps_a = np.asarray(steps, dtype=np.float64)
    ltr, lte = np.stack(loss_train), np.stack(loss_test)  # (n_ckpt, K, n_times)
    fmem = np.array([[np.nan if c["f_mem"] is None else c["f_mem"] for c in r["classes"]] for r in mem_records])
    measured = []
    for i, c in enumerate(classes):
        rec: dict[str, Any] = {"label": int(c), "count": int(loaded["counts"][i])}
        if len(steps) >= 2:
            rec["tau_gen"] = reached(generalization_time(steps_a, lte[:, i, 0]))
            # the train and test image sets differ, so even the untrained network shows a gap: measure the
            # growth of the gap from the first checkpoint (train loss shifted by that offset)
            offset = lte[0, i, 0] - ltr[0, i, 0]
            growth = lte[-1, i, 0] - ltr[-1, i, 0] - offset
            rec["tau_mem"] = reached(memorization_time(steps_a, ltr[:, i, 0] + offset, lte[:, i, 0])) \
                if growth > MIN_RELATIVE_GAP * lte[-1, i, 0] else NOT_REACHED
            final = fmem[-1, i]
            if not np.isfinite(final):  # f_mem,c not computed at the last checkpoint (no sample of the class)
                rec["tau_fmem"] = math.nan
            elif final > 0:
                rec["tau_fmem"] = reached(crossing_time(steps_a, np.nan_to_num(fmem[:, i]), 0.5 * final))
            else:
                rec["tau_fmem"] = NOT_REACHED
        rec["f_mem_final"] = None if not np.isfinite(fmem[-1, i]) else float(fmem[-1, i])
        rec["loss_gap_final"] = float(lte[-1, i, 0] - ltr[-1, i, 0])
        measured.append(rec)

    def order(key: str) -> list[int]:
        """Labels by the per-class time ``key``, earliest first, not reached last (:func:`class_order`)."""
        return class_order([r.get(key) for r in measured], [r["label"] for r in measured])

    result: dict[str, Any] = {
        "run_dir": str(run), "device": dev, "weights": "ema" if use_ema else "raw", "classes": list(classes), "counts": list(loaded["counts"]),
        "steps": steps, "loss_times": t_used, "loss_steps": ks,
        "statistics": stats.to_dict(), "classifier_test_accuracy": classifier_accuracy,
        "memorization": mem_records,
        "loss_train": ltr.tolist(), "loss_test": lte.tolist(),
        "frechet": [{str(k): v for k, v in r.items()} for r in fd_rows],
        "histogram_samples": hist_rows, "histogram_data": (counts / counts.sum()).tolist(),
        "measured": {"classes": measured, ORDER_KEYS["tau_gen"]: order("tau_gen"),
                     ORDER_KEYS["tau_mem"]: order("tau_mem"), FMEM_ORDER_KEY: order("tau_fmem")},
        "theory": theory,
        "theory_covariance": theory_cov,
    }
    (run / "metrics").mkdir(exist_ok=True)
    write_json_atomic(run / "metrics" / "evaluation.json", result)
    _write_csvs(run, classes, steps, mem_records, ltr, lte, t_used, fd_rows, hist_rows)
    if samples is not None:
        save_npz_atomic(run / "samples.npz", samples=samples.astype(np.float32), step=np.array(steps[-1]))
    _figures(run, classes, steps_a, mem_records, ltr, lte, t_used, measured, theory)
    text = format_comparison(result)
    _log(text, progress)
    result["comparison_text"] = text
    return result


def _write_csvs(run: Path, classes, steps, mem_records, ltr, lte, t_used, fd_rows, hist_rows) -> None:
    memorization = []
    for s, r in zip(steps, mem_records):
        memorization.append([s, "all", r["n_samples"], r["f_mem"], *r["f_mem_ci"], "", ""])
        memorization += [[s, c["label"], c["n_nearest"], c["f_mem"], *c["f_mem_ci"], c.get("n_classifier"),
                          c.get("f_mem_classifier")] for c in r["classes"]]
    write_csv_atomic(run / "metrics" / "memorization.csv",
                     ["step", "class", "n_nearest", "f_mem", "ci_lo", "ci_hi", "n_classifier", "f_mem_classifier"],
                     memorization)
    write_csv_atomic(run / "metrics" / "loss.csv", ["step", "class", "t", "train_loss", "test_loss", "gap"],
                     ([s, c, t, ltr[a, i, j], lte[a, i, j], lte[a, i, j] - ltr[a, i, j]]
                      for a, s in enumerate(steps) for i, c in enumerate(classes) for j, t in enumerate(t_used)))
    write_csv_atomic(run / "metrics" / "quality.csv", ["step", "class", "frechet", "sample_fraction"],
                     ([s, c, fd[int(c)], h[i]] for s, fd, h in zip(steps, fd_rows, hist_rows)
                      for i, c in enumerate(classes)))


def _figures(run: Path, classes, steps, mem_records, ltr, lte, t_used, measured, theory) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from classdiff.data.fashion_mnist import CLASS_NAMES

    fig_dir = run / "figures"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    name = [f"{c} {CLASS_NAMES[c]}" for c in classes]

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i in range(len(classes)):
        f = np.array([np.nan if r["classes"][i]["f_mem"] is None else r["classes"][i]["f_mem"] for r in mem_records])
        lo = np.array([r["classes"][i]["f_mem_ci"][0] for r in mem_records], dtype=float)
        hi = np.array([r["classes"][i]["f_mem_ci"][1] for r in mem_records], dtype=float)
        ax.plot(steps, f, "o-", color=colors[i % len(colors)], label=name[i])
        ax.fill_between(steps, lo, hi, color=colors[i % len(colors)], alpha=0.2)
    ax.plot(steps, [r["f_mem"] for r in mem_records], "k--", label="all")
    ax.set_xscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(r"$f_{\mathrm{mem},c}$ (nearest training image)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    save_figure(fig, fig_dir / "fmem_vs_step")

    n_t = len(t_used)
    fig, axes = plt.subplots(1, n_t, figsize=(4.2 * n_t, 3.6), squeeze=False, layout="constrained")
    for j, t in enumerate(t_used):
        ax = axes[0, j]
        for i in range(len(classes)):
            ax.plot(steps, lte[:, i, j] - ltr[:, i, j], "o-", color=colors[i % len(colors)], label=name[i])
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"test - train loss, t = {t:.3g}", fontsize=9)
    axes[0, 0].set_ylabel("per-class denoising loss gap")
    axes[0, 0].legend(fontsize=8)
    save_figure(fig, fig_dir / "loss_gap_vs_step")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    x = np.arange(len(classes))
    _times_panel(axes[1], x, measured, name)
    axes[1].set_title("measured (U-Net, optimizer steps)", fontsize=9)
    fig.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    if theory.get("available"):
        _times_panel(axes[0], x, theory["classes"], name)
    else:
        import textwrap

        axes[0].text(0.5, 0.5, "theory not available:\n" + textwrap.fill(theory.get("reason", ""), 45),
                     ha="center", va="center", fontsize=8, transform=axes[0].transAxes)
        axes[0].set_xticks(x, name, fontsize=8)
    axes[0].set_title("predicted (random-features theory, tau units)", fontsize=9)
    save_figure(fig, fig_dir / "theory_vs_measured")


def _times_panel(ax, x: np.ndarray, records: list[dict[str, Any]], names: list[str]) -> None:
    """tau_gen (circles) and tau_mem (squares) per class on a log axis, each value written beside its marker; a time
    the run did not reach is written as "not reached" at its slot (markers, not bars: a bar's length on a log axis
    depends on where the axis happens to start)."""
    for off, key, lab, marker in ((-0.12, "tau_gen", r"$\tau_{gen}$", "o"), (0.12, "tau_mem", r"$\tau_{mem}$", "s")):
        vals = np.array([time_or_nan(r.get(key)) for r in records])
        ax.plot(x + off, vals, marker, ms=7, ls="none", label=lab)
        for xi, v in zip(x, vals, strict=True):
            if np.isfinite(v):
                ax.annotate(f"{v:.3g}", (xi + off, v), textcoords="offset points", xytext=(0, 7), ha="center",
                            fontsize=7)
            else:  # the event did not happen within the run: say so instead of an empty slot
                ax.text(xi + off, 0.04, "not reached", rotation=90, ha="center", va="bottom", fontsize=7,
                        transform=ax.get_xaxis_transform())
    ax.set_xlim(-0.6, len(x) - 0.4)
    if np.isfinite([time_or_nan(r.get(k)) for r in records for k in ("tau_gen", "tau_mem")]).any():
        ax.set_yscale("log")
        ax.margins(y=0.2)
    ax.set_xticks(x, names, fontsize=8)


def format_comparison(result: dict[str, Any]) -> str:
    """A plain-text table: per class count, variance, centroid norm, predicted and measured times
    (:func:`classdiff.core.results.format_value`: "not reached", "nan" for not computed, "-" for absent)."""
    st = result["statistics"]
    th = result["theory"]
    th_by = {c["label"]: c for c in th.get("classes", [])} if th.get("available") else {}
    lines = ["class  count  var/d   m_c    |  theory tau_gen     tau_mem |"
             " measured tau_gen     tau_mem    tau_fmem       f_mem",
             "-" * 113]

    def fmt(v: Any) -> str:
        return f"{format_value(v, '.3g'):>11}"

    for i, rec in enumerate(result["measured"]["classes"]):
        c = rec["label"]
        t = th_by.get(c, {})
        lines.append(f"{c:5d}  {st['counts'][i]:5d}  {st['variances'][i]:.3f}  {st['centroid_norms'][i]:.3f}  |"
                     f"     {fmt(t.get('tau_gen'))} {fmt(t.get('tau_mem'))} |     {fmt(rec.get('tau_gen'))}"
                     f" {fmt(rec.get('tau_mem'))} {fmt(rec.get('tau_fmem'))} {fmt(rec.get('f_mem_final'))}")
    gen_key, mem_key = ORDER_KEYS["tau_gen"], ORDER_KEYS["tau_mem"]
    if th.get("available"):
        lines.append(f"theory   generalization order {th.get(gen_key)}, memorization order {th.get(mem_key)}")
    else:
        lines.append(f"theory   {th.get('reason')}")
    cov = result.get("theory_covariance")
    if cov is None:
        lines.append("covariance-aware theory: not computed (evaluation written before it existed)")
    elif cov.get("available"):
        times = ", ".join(f"class {c['label']} tau_gen {format_value(c['tau_gen'], '.3g')} tau_mem "
                          f"{format_value(c['tau_mem'], '.3g')}" for c in cov["classes"])
        lines.append(f"covariance-aware theory: {times}; generalization order {cov.get(gen_key)}, memorization "
                     f"order {cov.get(mem_key)}")
    else:
        lines.append(f"covariance-aware theory: {cov.get('reason')}")
    m = result["measured"]
    lines.append(f"measured generalization order {m[gen_key]}, memorization order (loss gap) "
                 f"{m[mem_key]}, (f_mem) {m[FMEM_ORDER_KEY]}")
    return "\n".join(lines)
