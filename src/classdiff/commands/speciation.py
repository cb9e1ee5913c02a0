"""``classdiff speciation CONFIG``: per-class speciation times, theory next to the cloning simulation."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from classdiff.core.config import Config
    from classdiff.theory.speciation import SpeciationResult

HELP = "Per-class speciation times in the backward diffusion: theory and cloning simulation."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="TOML config ([mixture] the data, [theory] the simulation sizes)")
    parser.add_argument("--trajectories", type=int, default=None, help="override theory.n_trajectories")
    parser.add_argument("--steps", type=int, default=None, help="override theory.n_steps")
    parser.add_argument("--seed", type=int, default=None, help="override theory.seed")
    parser.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                        help="array back end of the cloning simulation (default numpy)")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda when present), cpu, cuda")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="simulation precision (float32 only with --backend torch)")


def run(args: argparse.Namespace, out: Path) -> SpeciationResult:
    from classdiff.core.config import load_config

    config = load_config(args.config)
    overrides = {
        key: value
        for key, value in (
            ("theory.n_trajectories", args.trajectories),
            ("theory.n_steps", args.steps),
            ("theory.seed", args.seed),
        )
        if value is not None
    }
    if overrides:
        config = config.with_overrides(overrides)
    return speciation_stage(config, out, backend=args.backend, device=args.device, dtype=args.dtype)


def speciation_stage(config: Config, out: Path, backend: str = "numpy", device: str = "auto",
                     dtype: str = "float64") -> SpeciationResult:
    """The speciation times of ``config`` with their curves (``speciation.npz``) and figure written under ``out``."""
    import numpy as np

    from classdiff.core.io import save_npz_atomic
    from classdiff.core.results import format_value
    from classdiff.theory.speciation import speciation_from_config

    result = speciation_from_config(config, backend=backend, device=device, dtype=dtype)
    save_npz_atomic(out / "speciation.npz", **{k: np.asarray(v, dtype=np.float64) for k, v in result.curves.items()})
    plot_speciation(result, out / "speciation")
    for c in result.classes:
        print(
            f"class {c.label} (rho = {c.weight:.3g}): t_S theory {format_value(c.t_speciation_theory, '.3f')}, "
            f"simulated {format_value(c.t_speciation_simulated, '.3f')}, "
            f"closed form {format_value(c.t_speciation_closed_form, '.3f')}"
        )
    if any(isinstance(v, float) and math.isinf(v) for c in result.classes
           for v in (c.t_speciation_theory, c.t_speciation_simulated, c.t_speciation_closed_form)):
        print("inf = committed from the start: the class's curve is above its level at the largest time (a prior "
              "weight >= the level does this); not reached = never reaches it; nan = not computed")
    return result


def plot_speciation(result: SpeciationResult, stem: Path) -> None:
    """phi_c(t) per class: simulation (points, bootstrap 95% band), exact theory (line), t_S,c marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure
    from classdiff.core.results import is_reached

    curves = result.curves
    tt = np.asarray(curves["theory_times"])
    th = np.asarray(curves["theory_phi"])
    tb = np.asarray(curves["branch_times"])
    ph, lo, hi = (np.asarray(curves[k]) for k in ("phi", "phi_lo", "phi_hi"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, cls in enumerate(result.classes):
        col = colors[c % len(colors)]
        ax.plot(tt, th[:, c], color=col, lw=1.5, label=f"class {cls.label} (ρ = {cls.weight:.3g}) theory")
        ax.fill_between(tb, lo[:, c], hi[:, c], color=col, alpha=0.2, lw=0)
        ax.plot(tb, ph[:, c], "o", color=col, ms=3.5, label=f"class {cls.label} cloning (95% CI)")
        for v, style in ((cls.t_speciation_theory, "-"), (cls.t_speciation_simulated, ":")):
            if is_reached(v) and np.isfinite(v):
                ax.axvline(v, color=col, ls=style, lw=1)
    ax.axhline(result.threshold, color="0.4", ls="--", lw=0.8, label=f"threshold φ* = {result.threshold:g}")
    tb_bal = result.t_half_log_lambda
    ax.axvline(tb_bal, color="k", ls="-.", lw=0.8, label="½ log Λ")
    ax.set_xlim(max(0.0, tb.min() - 0.3), tb.max() + 0.3)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("branching time t (backward process runs right to left)")
    ax.set_ylabel("φ_c(t) = P(clone ends in c | original ends in c)")
    ax.set_title("Per-class commitment; vertical lines: t_S,c (solid theory, dotted simulation)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, stem)


def point(config: Config) -> SpeciationResult:
    """One sweep point (:mod:`classdiff.commands.sweep`): ``speciation_from_config`` of ``config``, nothing written."""
    from classdiff.theory.speciation import speciation_from_config

    return speciation_from_config(config)
