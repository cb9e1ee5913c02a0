"""``classdiff dynamics CONFIG``: per-class train / test loss and score error of the RF model over training time.

Runs :func:`classdiff.rf.model.dynamics_from_config` (closed-form gradient flow, exact noise average) and
writes ``results.json`` (via the CLI), ``curves.npz`` (tau, per-class curves and standard errors,
eigenvalues of U) and one figure per class, ``dynamics_class<c>.png/.pdf``, with tau_gen,c and tau_mem,c
marked. With ``training.method = "iterative"`` the torch trainer (``training.optimizer``, ``training.noise``)
is also run on the first seed and its logged curves are added under ``"iterative"`` and to the figures.

With ``--data SOURCE --classes A,B --counts nA,nB`` the model is trained on real labelled points instead of the
config's mixture (:func:`classdiff.rf.real_data.real_data_dynamics`): SOURCE is any image set of
:func:`classdiff.data.image_sets.load_image_set` (``fashion-mnist:train``, an npz, an image folder), optionally
average-pooled (``--pool``); d is the number of pixels, p = psi_p d, n the sum of the counts, and the test loss
is measured on ``--test-per-class`` held-out points per class. There is no exact score for real data, so no
score error is reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from classdiff.core.config import Config

HELP = "Per-class train/test loss and score error of the random-features model over training time."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, nargs="?", default=None,
                        help="TOML config ([mixture], [model], [training]); default: the defaults")
    parser.add_argument("--seeds", type=int, default=None, help="override training.seeds")
    parser.add_argument("--data", default=None,
                        help="train on real labelled points: fashion-mnist:train, an .npz (x, y), an image folder")
    parser.add_argument("--classes", default=None, help="with --data: comma-separated class labels, e.g. 1,8")
    parser.add_argument("--counts", default=None, help="with --data: training points per class, e.g. 160,40")
    parser.add_argument("--test-per-class", type=int, default=500, help="with --data: held-out points per class")
    parser.add_argument("--pool", type=int, default=1, help="with --data: average-pool images by this factor")


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
    if "score_error" in cl:  # absent for real data (no exact score)
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
    where = " (real data)" if result.get("source") == "real data" else ""
    ax.set_title(f"class {cl['label']}{where}: $\\sigma_c^2$ = {cl['variance']:.3g}, $n_c$ = {cl['n_train']}, "
                 f"d = {result['d']}, p = {result['p']}, t = {result['time']:g}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, out / f"dynamics_class{c}")


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from classdiff.core.config import load_config

    config = load_config(args.config)
    if args.seeds is not None:
        config = config.with_overrides({"training.seeds": args.seeds})
    if args.data is None:
        if args.classes is not None or args.counts is not None:
            raise ValueError("--classes and --counts need --data (real labelled points)")
        if args.config is None:
            raise ValueError("config: give a TOML config, or --data with --classes and --counts")
        return dynamics_stage(config, out)
    return real_data_stage(config, args, out)


def _int_list(text: str | None, name: str) -> list[int]:
    if text is None:
        raise ValueError(f"{name}: required with --data (comma-separated integers, e.g. 1,8)")
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} {text!r}: expected comma-separated integers, e.g. 1,8") from None


def real_data_stage(config: Config, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """RF dynamics on real labelled points (``--data``), curves and figures written under ``out``."""
    import numpy as np

    from classdiff.data.image_sets import load_image_set
    from classdiff.rf.model import _check_dynamics_memory
    from classdiff.rf.real_data import format_real_data, real_data_dynamics

    classes, counts = _int_list(args.classes, "--classes"), _int_list(args.counts, "--counts")
    images = load_image_set(args.data, labelled=True).pooled(args.pool)
    d = int(np.prod(images.image_shape))
    _check_dynamics_memory(int(sum(counts)), round(config.model.psi_p * d), d, len(classes),
                           config.training.n_batches)
    result = real_data_dynamics(images.flat(), images.y, classes, counts, config,
                                test_per_class=args.test_per_class,
                                iterative=config.training.method == "iterative")
    result["data"] = images.source
    print(format_real_data(result))
    return _write(result, out)


def dynamics_stage(config: Config, out: Path) -> dict[str, Any]:
    """The exact RF dynamics of ``config`` with its curves (``curves.npz``) and figures written under ``out``."""
    from classdiff.rf.model import dynamics_from_config

    result = dynamics_from_config(config)
    if config.training.method == "iterative":
        result["iterative"] = _iterative(config, result)
    return _write(result, out)


def _write(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """``curves.npz`` and one figure per class for a dynamics result."""
    import numpy as np

    from classdiff.core.io import save_npz_atomic

    K = len(result["classes"])
    arrays = {"tau": np.asarray(result["tau"]), "eigenvalues": np.asarray(result["eigenvalues"])}
    for key in ("train_loss", "test_loss", "test_loss_se", "score_error", "score_error_se"):
        if key in result["classes"][0]:
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
