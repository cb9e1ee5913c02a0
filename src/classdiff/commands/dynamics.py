"""``classdiff dynamics CONFIG``: per-class train / test loss and score error of the RF model over training time.

Runs :func:`classdiff.rf.model.dynamics_from_config` (closed-form gradient flow, exact noise average) and
writes ``results.json`` (via the CLI), ``curves.npz`` (tau, per-class curves and standard errors,
eigenvalues of U) and one figure per class, ``dynamics_class<c>.png/.pdf``, with tau_gen,c and tau_mem,c
marked. With ``training.method = "iterative"`` the torch trainer (``training.optimizer``, ``training.noise``)
is also run on the first seed and its logged curves are added under ``"iterative"`` and to the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from classdiff.core.config import Config

HELP = "Per-class train/test loss and score error of the random-features model over training time."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="TOML config ([mixture], [model], [training])")
    parser.add_argument("--seeds", type=int, default=None, help="override training.seeds")


def _iterative(config: Config, result: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from classdiff.data.mixture import GaussianMixture
    from classdiff.rf.model import RandomFeaturesScore
    from classdiff.rf.training import gd_learning_rate, train_random_features

    mc, model, tr = config.mixture, config.model, config.training
    mixture = GaussianMixture.from_config(mc)
    est = RandomFeaturesScore(
        n_features=result["p"], activation=model.activation, time=model.time, seed=model.seed, ridge=model.ridge,
        method=result["method"], series_order=model.series_order, noise_samples=max(model.noise_samples, 1),
        test_samples=tr.test_samples, score_samples=tr.score_samples, n_batches=tr.n_batches)
    data = mixture.sample(result["n"], seed=model.seed)
    est.fit(data, mixture)
    lr = gd_learning_rate(est, min(tr.learning_rate, 0.99)) if tr.optimizer == "gd" else tr.learning_rate
    taus = np.asarray(result["tau"])
    n_log = min(60, taus.size)
    hist = train_random_features(est, data, np.geomspace(taus[0], taus[-1], n_log), optimizer=tr.optimizer,
                                 noise=tr.noise, learning_rate=lr, noise_samples=max(model.noise_samples, 1),
                                 max_steps=tr.max_steps, device=tr.device, seed=model.seed)
    return hist.as_dict()


def _figure(result: dict[str, Any], c: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure
    from classdiff.core.results import is_reached

    cl = result["classes"][c]
    tau = np.asarray(result["tau"])
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    ax.plot(tau, cl["train_loss"], color="C0", label="train loss")
    test, se = np.asarray(cl["test_loss"]), np.asarray(cl["test_loss_se"])
    ax.plot(tau, test, color="C1", label="test loss")
    ax.fill_between(tau, test - 2 * se, test + 2 * se, color="C1", alpha=0.25, lw=0)
    score, sse = np.asarray(cl["score_error"]), np.asarray(cl["score_error_se"])
    ax.plot(tau, score, color="C2", label="score error")
    ax.fill_between(tau, score - 2 * sse, score + 2 * sse, color="C2", alpha=0.25, lw=0)
    it = result.get("iterative")
    if it is not None:
        ax.plot(it["tau"], it["train_loss"][c], "o", ms=3, color="C0", mfc="none", label=f"{it['optimizer']} train")
        ax.plot(it["tau"], it["test_loss"][c], "s", ms=3, color="C1", mfc="none", label=f"{it['optimizer']} test")
    for key, style, name in (("tau_gen", "--", r"$\tau_{gen}$"), ("tau_mem", ":", r"$\tau_{mem}$")):
        if is_reached(cl[key]) and np.isfinite(cl[key]):
            ax.axvline(cl[key], color="k", ls=style, lw=1, label=f"{name} = {cl[key]:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"training time $\tau$")
    ax.set_ylabel("per-class loss / score error")
    ax.set_title(f"class {c}: $\\sigma_c^2$ = {cl['variance']:.3g}, $n_c$ = {cl['n_train']}, "
                 f"d = {result['d']}, p = {result['p']}, t = {result['time']:g}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, out / f"dynamics_class{c}")


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from classdiff.core.config import load_config

    config = load_config(args.config)
    if args.seeds is not None:
        config = config.with_overrides({"training.seeds": args.seeds})
    return dynamics_stage(config, out)


def dynamics_stage(config: Config, out: Path) -> dict[str, Any]:
    """The exact RF dynamics of ``config`` with its curves (``curves.npz``) and figures written under ``out``."""
    import numpy as np

    from classdiff.core.io import save_npz_atomic
    from classdiff.rf.model import dynamics_from_config

    result = dynamics_from_config(config)
    if config.training.method == "iterative":
        result["iterative"] = _iterative(config, result)
    K = len(result["classes"])
    arrays = {"tau": np.asarray(result["tau"]), "eigenvalues": np.asarray(result["eigenvalues"])}
    for key in ("train_loss", "test_loss", "test_loss_se", "score_error", "score_error_se"):
        arrays[key] = np.stack([np.asarray(cl[key]) for cl in result["classes"]])
    save_npz_atomic(out / "curves.npz", **arrays)
    for c in range(K):
        _figure(result, c, out)
    result["figures"] = [f"dynamics_class{c}.png" for c in range(K)]
    return result


def point(config: Config) -> dict[str, Any]:
    """One sweep point (:mod:`classdiff.commands.sweep`): ``dynamics_from_config`` of ``config``, nothing written."""
    from classdiff.rf.model import dynamics_from_config

    return dynamics_from_config(config)
