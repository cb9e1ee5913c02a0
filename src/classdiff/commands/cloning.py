"""``classdiff cloning RUN``: per-class speciation of a trained U-Net by cloning, beside the theory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = ("Clone a trained U-Net's backward trajectories (stochastic DDIM), label both ends with the classifier, and "
        "read per-class speciation times with intervals beside the theory's t_S,c for the classes' Gaussian "
        "surrogate.")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run folder written by 'classdiff train'")
    parser.add_argument("--trajectories", type=int, default=200, help="backward trajectories (default 200)")
    parser.add_argument("--sampler-steps", type=int, default=20, help="stochastic DDIM steps (default 20)")
    parser.add_argument("--branches", type=int, default=8, help="branching steps (default 8)")
    parser.add_argument("--threshold", type=float, default=0.775, help="commitment level phi* (default 0.775)")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=None, help="use the newest checkpoint at most this step")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST idx files")
    parser.add_argument("--device", default=None, help="device (default: the run's images.device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from classdiff.core.config import ConfigError
    from classdiff.images.run_speciation import speciation_of_run

    for name, value, low in (("--trajectories", args.trajectories, 2), ("--sampler-steps", args.sampler_steps, 3),
                             ("--branches", args.branches, 1), ("--bootstrap", args.bootstrap, 1)):
        if value < low:
            raise ConfigError(name, value, f"must be an integer >= {low}")
    if not 0.5 < args.threshold < 1:
        raise ConfigError("--threshold", args.threshold, "must lie in (0.5, 1)")
    result = speciation_of_run(args.run, n_trajectories=args.trajectories, sampler_steps=args.sampler_steps,
                               n_branch=args.branches, threshold=args.threshold, n_boot=args.bootstrap,
                               seed=args.seed, data_root=args.data_dir, device=args.device, step=args.step,
                               progress=not args.no_progress)
    print(format_cloning(result))
    plot_cloning(result, out / "cloning")
    return result


def format_cloning(result: dict[str, Any]) -> str:
    """The per-class table: U-Net (cloning) and theory t_S,c, absolute and chance-relative, with intervals."""
    from classdiff.core.results import format_value as f

    def iv(pair: list[Any]) -> str:
        return f"[{f(pair[0], '.3f')}, {f(pair[1], '.3f')}]"

    def cov(c: dict[str, Any], suffix: str) -> str:  # results written before the covariance-aware theory: "-"
        key = "t_speciation_theory_covariance" + suffix
        return f(c[key], ".3f") if key in c else "-"

    lines = [f"U-Net cloning at checkpoint step {result['checkpoint_step']}: {result['n_trajectories']} "
             f"trajectories, {result['sampler_steps']} stochastic DDIM steps, level phi* = {result['threshold']}",
             f"{'class':>6} {'n_c':>5} {'share':>6} | {'t_S U-Net':>10} {'interval':>18} {'theory':>8} {'closed':>8}"
             f" {'cov-aware':>9} | {'rel U-Net':>10} {'interval':>18} {'theory':>8} {'cov-aware':>9}"]
    for c in result["classes"]:
        lines.append(
            f"{c['label']:>6} {c['count']:>5} {c['sample_share']:>6.3f} | {f(c['t_speciation_unet'], '.3f'):>10} "
            f"{iv(c['t_speciation_unet_interval']):>18} {f(c['t_speciation_theory'], '.3f'):>8} "
            f"{f(c['t_speciation_closed_form'], '.3f'):>8} {cov(c, ''):>9} | "
            f"{f(c['t_speciation_unet_relative'], '.3f'):>10} {iv(c['t_speciation_unet_relative_interval']):>18} "
            f"{f(c['t_speciation_theory_relative'], '.3f'):>8} {cov(c, '_relative'):>9}")
    lines.append(f"order (first to commit first): U-Net {result['speciation_order_unet']}, theory "
                 f"{result['speciation_order_theory']}; relative: U-Net {result['speciation_order_unet_relative']}, "
                 f"theory {result['speciation_order_theory_relative']}")
    if result.get("speciation_order_theory_covariance") is not None:
        lines.append(f"covariance-aware theory (spiked full covariances of all the class's images): order "
                     f"{result['speciation_order_theory_covariance']}")
    elif result.get("covariance_speciation", {}).get("reason"):
        lines.append(str(result["covariance_speciation"]["reason"]))
    lines.append("inf = committed at the first branching step (theory: at the largest time of its grid); "
                 "not reached = never reached the level; nan = not computed")
    return "\n".join(lines)


def plot_cloning(result: dict[str, Any], stem: Path) -> None:
    """phi_c(t) of the U-Net (points with bootstrap bars) and of the theory's surrogate (lines), per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure

    cur = result["curves"]
    bt, phi = np.asarray(cur["branch_times"]), np.asarray(cur["phi"])
    lo, hi = np.asarray(cur["lo"]), np.asarray(cur["hi"])
    tt, tphi = np.asarray(cur["theory_times"]), np.asarray(cur["theory_phi"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for c, cls in enumerate(result["classes"]):
        color = f"C{c}"
        ax.plot(tt, tphi[:, c], "-", color=color, lw=1.2,
                label=f"class {cls['label']} theory (Gaussian surrogate, rho = {cls['weight']:.2f})")
        if cur.get("theory_covariance_phi"):
            ax.plot(cur["theory_covariance_times"], np.asarray(cur["theory_covariance_phi"])[:, c], "--", color=color,
                    lw=1.0, label=f"class {cls['label']} covariance-aware theory")
        ok = np.isfinite(phi[:, c])
        ax.errorbar(bt[ok], phi[ok, c], yerr=[phi[ok, c] - lo[ok, c], hi[ok, c] - phi[ok, c]], fmt="o", ms=4,
                    color=color, capsize=3, label=f"class {cls['label']} U-Net cloning (share {cls['sample_share']:.2f})")
    ax.axhline(result["threshold"], color="0.5", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("OU time t of the branching (backward process runs right to left)")
    ax.set_ylabel("phi_c(t) = P(clone ends in c | original ends in c)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"U-Net speciation by cloning, step {result['checkpoint_step']}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, stem)
