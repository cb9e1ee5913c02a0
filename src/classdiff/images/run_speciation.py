"""Speciation of a trained U-Net run beside the theory for its classes' Gaussian surrogate (issue 16 item 4).

:func:`speciation_of_run` loads a ``classdiff train`` run folder, clones its backward trajectories
(:func:`classdiff.images.cloning.unet_cloning`), and reads per class the measured commitment curve phi_c(t) and the
speciation times (absolute level phi*, and chance-relative level q_c + (2 phi* - 1)(1 - q_c) with q_c the share of
the network's samples in class c) with percentile-bootstrap intervals over trajectories. Beside it, the theory
(:func:`classdiff.theory.speciation.speciation_times`) for the isotropic Gaussian mixture fitted to the training
subset (``GaussianMixture.fit``: rho_c = n_c / n, centroids, tr(Sigma_c)/d), at its own chance levels rho_c.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from classdiff.core.readoff import class_order
from classdiff.core.results import reached

__all__ = ["speciation_of_run"]


def _times_with_intervals(phi, original, clones, branch_times, levels, n_boot: int, seed: int) -> tuple[list, list]:
    """Per-class t_S read off ``phi`` (B, K) at ``levels`` (K,), and their percentile-bootstrap intervals."""
    from classdiff.theory.speciation import (
        bootstrap_speciation_times,
        percentile_interval,
        read_speciation_times,
    )

    point = [reached(v) for v in read_speciation_times(branch_times, phi, levels)]
    draws = bootstrap_speciation_times(original, clones, branch_times, levels, n_boot, seed)
    return point, [percentile_interval(draws[:, c]) for c in range(len(levels))]


def speciation_of_run(run_dir: str | Path, *, n_trajectories: int = 200, sampler_steps: int = 20,
                      n_branch: int = 8, threshold: float = 0.775, n_boot: int = 500, seed: int = 0,
                      data_root: str | Path | None = None, device: str | None = None, step: int | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Cloning speciation of the newest checkpoint (or the newest at most ``step``) of ``run_dir``.

    Returns a JSON-ready dict: ``classes`` [{label, count, weight, sample_share, t_speciation_unet(_relative),
    their ``_interval`` s, t_speciation_theory(_relative), t_speciation_closed_form}], the orders
    (``speciation_order_unet`` / ``_theory``, first to commit first in backward time), ``curves`` {branch_times,
    phi (B, K), lo, hi, theory_times, theory_phi} and the settings. Times are OU times (``DESIGN.md``).
    """
    import torch

    from classdiff.core.config import load_config
    from classdiff.data.backward import agreement_by_class, bootstrap_agreement
    from classdiff.data.fashion_mnist import to_model_space
    from classdiff.data.mixture import GaussianMixture
    from classdiff.images.classifier import get_classifier
    from classdiff.images.cloning import class_labeller, unet_cloning
    from classdiff.images.ddpm import build_model, load_latest_checkpoint, load_training_data, resolve_device
    from classdiff.images.schedule import DDPMSchedule
    from classdiff.theory.speciation import commitment_levels, speciation_times

    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise FileNotFoundError(f"{run}: not a U-Net run folder (no config.toml); run 'classdiff train' first")
    config = load_config(run / "config.toml")
    cfg = config.images
    dev = resolve_device(device or cfg.device)
    found = load_latest_checkpoint(run, "cpu", max_step=step)
    if found is None:
        raise FileNotFoundError(f"{run}: no usable checkpoint" + ("" if step is None else f" at step <= {step}"))
    ckpt_step, state = found
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    loaded = load_training_data(cfg, data_root)
    data = loaded["data"]
    classes = tuple(int(c) for c in cfg.classes)
    k = len(classes)
    clf = get_classifier(to_model_space(data.train_images), data.train_labels.astype(np.int64),
                         epochs=cfg.classifier_epochs, seed=0, device=dev, progress=progress)
    schedule = DDPMSchedule(cfg.schedule, cfg.num_diffusion_steps)
    counts = np.asarray(loaded["counts"], dtype=np.float64)
    cond = None
    if cfg.class_conditional:
        rng = np.random.default_rng(seed + 17)
        cond = torch.from_numpy(rng.choice(k, size=n_trajectories, p=counts / counts.sum()))
    sim = unet_cloning(model, schedule, class_labeller(clf, classes, dev), n_trajectories=n_trajectories,
                       sampler_steps=sampler_steps, n_branch=n_branch, seed=seed, device=dev, labels=cond,
                       progress=progress)
    orig, clones, bt = sim["original"], sim["clones"], sim["branch_times"]
    share = np.bincount(orig, minlength=k) / max(len(orig), 1)
    phi, ends = agreement_by_class(orig, clones, k)
    lo, hi = bootstrap_agreement(orig, clones, k, n_boot=max(n_boot, 1), seed=seed)
    lev_abs = commitment_levels(share, threshold, "absolute")
    lev_rel = commitment_levels(share, threshold, "relative")
    t_abs, i_abs = _times_with_intervals(phi, orig, clones, bt, lev_abs, max(n_boot, 1), seed)
    t_rel, i_rel = _times_with_intervals(phi, orig, clones, bt, lev_rel, max(n_boot, 1), seed)

    x_train = to_model_space(data.train_images[loaded["indices"]]).reshape(len(loaded["indices"]), -1)
    mixture = GaussianMixture.fit(x_train.astype(np.float64), loaded["labels"], labels=classes)
    grid = np.linspace(0.01, float(schedule.ou_time[-1]), 300)
    th_abs = speciation_times(mixture, threshold, "absolute", times=grid)
    th_rel = speciation_times(mixture, threshold, "relative", times=grid)
    # covariance-aware surrogate: centroid and full covariance of all the class's images, spiked (docs/speciation.md §6c)
    cov_grid = np.linspace(0.01, float(schedule.ou_time[-1]), 120)
    try:
        from classdiff.theory.audit import speciation_with_covariances

        all_x = to_model_space(data.train_images).reshape(len(data.train_images), -1).astype(np.float64)
        # a fixed Monte Carlo seed: the surrogate is the same for every run of this pair (standard error of
        # phi <= 0.005 with 10,000 draws; t_S scatters by about 0.03 between Monte Carlo seeds)
        cov_sp = speciation_with_covariances(all_x, data.train_labels, classes, loaded["counts"], cov_grid,
                                             threshold, seed=0)
        cov_reason = None
    except Exception as exc:  # report, do not lose the measurement
        cov_sp, cov_reason = None, f"covariance-aware speciation failed: {type(exc).__name__}: {exc}"
    classes_out = []
    for c in range(k):
        classes_out.append({
            "label": classes[c],
            "count": int(loaded["counts"][c]),
            "weight": float(mixture.weights[c]),
            "sample_share": float(share[c]),
            "n_ends": ends[:, c].astype(int).tolist(),
            "t_speciation_unet": t_abs[c],
            "t_speciation_unet_interval": i_abs[c],
            "t_speciation_unet_relative": t_rel[c],
            "t_speciation_unet_relative_interval": i_rel[c],
            "t_speciation_theory": reached(th_abs.t_theory[c]),
            "t_speciation_theory_relative": reached(th_rel.t_theory[c]),
            "t_speciation_closed_form": reached(th_abs.t_closed_form[c]),
            "surrogate_variance": float(mixture.mean_variances[c]),
            "t_speciation_theory_covariance": cov_sp["t_speciation"][c] if cov_sp else math.nan,
            "t_speciation_theory_covariance_relative": (cov_sp["t_speciation_relative"][c] if cov_sp
                                                        else math.nan),
        })
    return {
        "run": str(run),
        "checkpoint_step": int(ckpt_step),
        "classes": classes_out,
        "speciation_order_unet": class_order(t_abs, labels=classes, backward_time=True),
        "speciation_order_theory": class_order([reached(v) for v in th_abs.t_theory], labels=classes, backward_time=True),
        "speciation_order_unet_relative": class_order(t_rel, labels=classes, backward_time=True),
        "speciation_order_theory_covariance": (class_order(cov_sp["t_speciation"], labels=classes, backward_time=True)
                                               if cov_sp else None),
        "covariance_speciation": ({"available": True, "rank": cov_sp["rank"],
                                   "surrogate": "N(mu_c, Sigma_c) of all training images of the class, Sigma_c "
                                                "spiked (top eigenpairs + isotropic floor)"}
                                  if cov_sp else {"available": False, "reason": cov_reason}),
        "speciation_order_theory_relative": class_order([reached(v) for v in th_rel.t_theory], labels=classes, backward_time=True),
        "threshold": float(threshold),
        "n_trajectories": int(n_trajectories),
        "sampler_steps": int(sampler_steps),
        "branch_steps": sim["branch_steps"].tolist(),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "t_half_log_lambda": th_abs.t_balanced,
        "curves": {
            "branch_times": bt.tolist(), "phi": phi.tolist(), "lo": lo.tolist(), "hi": hi.tolist(),
            "theory_times": grid.tolist(), "theory_phi": th_abs.phi.tolist(),
            "theory_covariance_times": cov_grid.tolist() if cov_sp else [],
            "theory_covariance_phi": cov_sp["phi"].tolist() if cov_sp else [],
        },
    }
