"""``classdiff timescales CONFIG``: predicted per-class tau_gen and tau_mem, orders, curves and phase diagrams."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from classdiff.core.config import Config
    from classdiff.theory.timescales import TimescalesResult

HELP = "Predicted per-class generalization and memorization times, learning order, phase diagrams."

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="TOML config ([mixture], [model], [training], [theory])")
    parser.add_argument("--phase", action="store_true",
                        help="also compute the phase diagrams (K = 2): over (sigma_1^2/sigma_2^2, rho_1/rho_2) with the "
                             "imbalance reversal boundary, and over (psi_p, psi_n); theory.phase_points per axis")
    parser.add_argument("--predictor", choices=("theory", "dynamics"), default="theory",
                        help="what times the phase-diagram points: the random-matrix theory (default) or the exact "
                             "closed-form random-features dynamics at the config's size, averaged over training.seeds "
                             "(the reference at extreme imbalance, where the theory leaves out the centroid spikes, "
                             "docs/theory.md §6.3)")
    parser.add_argument("--overlay", type=int, default=0, metavar="N",
                        help="with --phase: also map the learning / memorization order over (variance ratio x "
                             "imbalance) and (centroid norm x imbalance) by the theory, with the exact dynamics "
                             "overlaid on N x N of its points and the agreement counted (phase_overlay.png)")


def plot_curves(result: TimescalesResult, stem: Path) -> None:
    """Predicted per-class train (solid) and test (dashed) losses with tau_gen (circle) and tau_mem (square)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure
    from classdiff.core.results import is_reached

    tau = np.asarray(result.tau)
    fig, ax = plt.subplots(figsize=(7, 4))
    for c, cl in enumerate(result.classes):
        col = COLOURS[c % len(COLOURS)]
        lab = f"class {cl.label} (rho={cl.weight:.2f}, sigma^2={cl.variance:.2f})"
        ax.plot(tau, cl.train_loss, color=col, lw=1.5, label=lab + " train")
        ax.plot(tau, cl.test_loss, color=col, lw=1.5, ls="--", label="test")
        for t, mark in ((cl.tau_gen, "o"), (cl.tau_mem, "s")):
            if is_reached(t) and np.isfinite(t):
                ax.plot([t], [np.interp(t, tau, cl.test_loss)], mark, color=col, ms=7, mfc="none")
    ax.set_xscale("log")
    ax.set_xlabel(r"training time $\tau$")
    ax.set_ylabel("predicted loss (theory)")
    ax.set_title("per-class losses; circles: tau_gen, squares: tau_mem", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, stem)


def _plot_phase(diag: dict[str, Any], stem: Path, predictor: str = "theory") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    vi = diag["variance_imbalance"]
    x, y = np.log2(vi["weight_ratios"]), np.log2(vi["variance_ratios"])
    for ax, key, title in ((axes[0], "tau_gen", "generalization"), (axes[1], "tau_mem", "memorization")):
        ratio = np.log10(vi[key][..., 0] / vi[key][..., 1])
        lim = max(np.nanmax(np.abs(ratio)), 1e-3)
        im = ax.pcolormesh(x, y, ratio, cmap="coolwarm", vmin=-lim, vmax=lim, shading="nearest")
        ax.contour(x, y, ratio, levels=[0.0], colors="k", linewidths=1.2)
        fig.colorbar(im, ax=ax, label=r"$\log_{10}(\tau_0/\tau_1)$  (<0: class 0 first)")
        ax.set_xlabel(r"$\log_2(\rho_0/\rho_1)$")
        ax.set_ylabel(r"$\log_2(\sigma_0^2/\sigma_1^2)$")
        ax.set_title(f"{title} ({predictor}): which class first (black: equal times)", fontsize=9)
    cap = diag["capacity"]
    ratio = np.log10(cap["tau_gen"][..., 0] / cap["tau_gen"][..., 1])
    lim = max(np.nanmax(np.abs(ratio)), 1e-3)
    im = axes[2].pcolormesh(np.log2(cap["psi_n"]), np.log2(cap["psi_p"]), ratio, cmap="coolwarm", vmin=-lim, vmax=lim,
                            shading="nearest")
    fig.colorbar(im, ax=axes[2], label=r"$\log_{10}(\tau_{gen,0}/\tau_{gen,1})$")
    axes[2].set_xlabel(r"$\log_2\psi_n$")
    axes[2].set_ylabel(r"$\log_2\psi_p$")
    axes[2].set_title("generalization order over (psi_p, psi_n)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, stem)


def run(args: argparse.Namespace, out: Path) -> TimescalesResult | dict[str, Any]:
    from classdiff.core.config import load_config, save_config

    config = load_config(args.config)
    save_config(config, out / "config.toml")
    result = timescales_stage(config, out)
    if not args.phase:
        if args.overlay:
            from classdiff.core.config import ConfigError

            raise ConfigError("--overlay", args.overlay, "needs --phase")
        return result
    out_dict = {**result.to_dict(), "phase": phase_stage(config, result, out, args.predictor)}
    if args.overlay:
        if args.overlay < 2:
            from classdiff.core.config import ConfigError

            raise ConfigError("--overlay", args.overlay, "must be >= 2 (points per axis) or 0 (none)")
        out_dict["phase_overlay"] = overlay_stage(config, result, out, args.overlay)
    return out_dict


def overlay_stage(config: Config, result: TimescalesResult, out: Path, n_points: int) -> dict[str, Any]:
    """Order maps by the theory on theory.phase_points per axis, the exact dynamics on ``n_points`` of them per
    axis, their agreement (``theory.phase.order_agreement``, ties within 10% of the dynamics not scored), and the
    figure ``phase_overlay`` under ``out``."""
    import numpy as np

    from classdiff.theory.phase import centroid_imbalance_diagram, order_agreement, variance_imbalance_diagram

    k = config.theory.phase_points
    tau = np.asarray(result.tau)
    m0 = max(config.mixture.centroid_norms)
    axes = {
        "variance_imbalance": (variance_imbalance_diagram, np.geomspace(0.25, 4.0, k)),
        "centroid_imbalance": (centroid_imbalance_diagram, np.linspace(0.0, max(3.0, 1.5 * m0), k)),
    }
    weights = np.geomspace(1 / 49, 49, k)
    pick = np.unique(np.round(np.linspace(0, k - 1, n_points)).astype(int))
    overlay: dict[str, Any] = {}
    for name, (diagram, values) in axes.items():
        theory = diagram(config, values, weights, tau=tau, predictor="theory")
        wr = theory["weight_ratios"]
        # the sampled weight ratios always include balance (the diagrams add it otherwise)
        balance = int(np.argmin(np.abs(np.log(wr))))
        wpick = np.unique(np.append(np.round(np.linspace(0, wr.size - 1, n_points)).astype(int), balance))
        dyn = diagram(config, values[pick], wr[wpick], tau=tau, predictor="dynamics")
        entry: dict[str, Any] = {"axis_values": values, "weight_ratios": wr, "theory": theory, "dynamics": dyn,
                                 "rows": pick, "columns": wpick}
        for key in ("tau_gen", "tau_mem"):
            ag = order_agreement(theory[key][np.ix_(pick, wpick)], dyn[key])
            entry[f"agreement_{key}"] = ag
            print(f"{name} {key}: theory and dynamics agree on {ag['agree']} of {ag['agree'] + ag['disagree']} "
                  f"scored points ({ag['ties']} ties within 10%, {ag['unscored']} unscored)")
        overlay[name] = entry
    _plot_overlay(overlay, out / "phase_overlay")
    return overlay


def _plot_overlay(overlay: dict[str, Any], stem: Path) -> None:
    """Theory: log10(tau_0/tau_1) colour map with its zero contour; dynamics: markers at the sampled points, filled
    blue (class 0 first) or red (class 1 first), a grey ring for a tie (within 10%), a black cross on a point
    where the theory's order differs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure

    fig, axs = plt.subplots(2, 2, figsize=(11, 8.2))
    labels = {"variance_imbalance": r"$\log_2(\sigma_0^2/\sigma_1^2)$", "centroid_imbalance": "centroid norm m"}
    for i, (name, entry) in enumerate(overlay.items()):
        th, dyn = entry["theory"], entry["dynamics"]
        x = np.log2(entry["weight_ratios"])
        vals = np.asarray(entry["axis_values"])
        y = np.log2(vals) if name == "variance_imbalance" else vals
        for j, (key, title) in enumerate((("tau_gen", "learning (tau_gen)"), ("tau_mem", "memorization (tau_mem)"))):
            ax = axs[i, j]
            ratio = np.log10(th[key][..., 0] / th[key][..., 1])
            lim = max(float(np.nanmax(np.abs(ratio))) if np.isfinite(ratio).any() else 1e-3, 1e-3)
            im = ax.pcolormesh(x, y, ratio, cmap="coolwarm", vmin=-lim, vmax=lim, shading="nearest")
            if np.nanmin(ratio) < 0 < np.nanmax(ratio):
                ax.contour(x, y, ratio, levels=[0.0], colors="k", linewidths=1.2)
            fig.colorbar(im, ax=ax, label=r"theory $\log_{10}(\tau_0/\tau_1)$ (<0: class 0 first)")
            ag = entry[f"agreement_{key}"]
            dr = np.log10(dyn[key][..., 0] / dyn[key][..., 1])
            for a, r in enumerate(entry["rows"]):
                for b, c in enumerate(entry["columns"]):
                    v = dr[a, b]
                    if not np.isfinite(v):
                        ax.plot(x[c], y[r], "x", color="0.3", ms=6)
                        continue
                    col = "tab:blue" if v < 0 else "tab:red"
                    ax.plot(x[c], y[r], "o", color=col, mec="k", ms=7)
                    if ag["is_tie"][a, b]:
                        ax.plot(x[c], y[r], "o", mfc="none", mec="0.6", ms=12, mew=1.5)
                    elif not ag["agrees"][a, b]:
                        ax.plot(x[c], y[r], "+", color="k", ms=12, mew=1.8)
            ax.set_xlabel(r"$\log_2(\rho_0/\rho_1)$")
            ax.set_ylabel(labels[name])
            ax.set_title(f"{title}: theory map, dynamics dots; agree {ag['agree']}/{ag['agree'] + ag['disagree']}"
                         f" (+: differs, ring: tie)", fontsize=8.5)
    fig.tight_layout()
    save_figure(fig, stem)


def timescales_stage(config: Config, out: Path) -> TimescalesResult:
    """The predicted timescales of ``config`` with their curves (``curves.npz``) and figure written under ``out``."""
    import numpy as np

    from classdiff.core.io import save_npz_atomic
    from classdiff.theory.timescales import timescales_from_config

    result = timescales_from_config(config)
    save_npz_atomic(out / "curves.npz", tau=np.asarray(result.tau),
                    train_loss=np.array([c.train_loss for c in result.classes]),
                    test_loss=np.array([c.test_loss for c in result.classes]))
    plot_curves(result, out / "timescales")
    return result


def phase_stage(config: Config, result: TimescalesResult, out: Path, predictor: str) -> dict[str, Any]:
    """The two K = 2 phase diagrams (``phase.npz`` and figure under ``out``) on the tau grid of ``result``."""
    import numpy as np

    from classdiff.core.io import save_npz_atomic
    from classdiff.theory.phase import capacity_diagram, variance_imbalance_diagram

    k = config.theory.phase_points
    tau = np.asarray(result.tau)
    vi = variance_imbalance_diagram(config, np.geomspace(0.25, 4.0, k), np.geomspace(1 / 49, 49, k), tau=tau,
                                    predictor=predictor)
    cap = capacity_diagram(config, np.geomspace(1.0, 4.0, k), np.geomspace(0.5, 4.0, k), tau=tau,
                           predictor=predictor)
    phase = {"variance_imbalance": vi, "capacity": cap}
    _plot_phase(phase, out / "phase", predictor)
    save_npz_atomic(out / "phase.npz", **{f"vi_{k_}": np.asarray(v) for k_, v in vi.items()},
                    **{f"cap_{k_}": np.asarray(v) for k_, v in cap.items()})
    return phase


def point(config: Config) -> TimescalesResult:
    """One sweep point (:mod:`classdiff.commands.sweep`): ``timescales_from_config`` of ``config``, nothing written."""
    from classdiff.theory.timescales import timescales_from_config

    return timescales_from_config(config)
