"""``classdiff speciation-map``: per-class speciation times over imbalance x signal, theory beside cloning."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from classdiff.theory.speciation_map import SpeciationMapResult

HELP = ("Speciation under imbalance: per-class t_S (absolute and chance-relative level) over majority share x "
        "signal m^2 d, K = 2 and 3, theory, closed form and cloning simulation with intervals.")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: must be comma-separated numbers, e.g. 0.5,0.9") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--signals", type=_floats, default=[64.0, 256.0, 1024.0],
                        help="m^2 d = |mu_c|^2 values (default 64,256,1024)")
    parser.add_argument("--dim", type=int, default=64, help="dimension d (default 64)")
    parser.add_argument("--simulate", type=_floats, default=[0.5, 0.9, 0.99],
                        help="majority shares rho simulated by cloning (default 0.5,0.9,0.99; K = 3 uses "
                             "max(rho, 2/3)); empty string: theory only")
    parser.add_argument("--classes", type=lambda t: [int(v) for v in t.split(",")], default=[2, 3],
                        help="numbers of classes (2 antipodal, 3 orthogonal; default 2,3)")
    parser.add_argument("--threshold", type=float, default=0.775, help="absolute commitment level phi*")
    parser.add_argument("--trajectories", type=int, default=20000, help="cloning trajectories per point")
    parser.add_argument("--steps", type=int, default=300, help="steps per t_max = 6 (step 6/steps)")
    parser.add_argument("--bootstrap", type=int, default=300, help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, out: Path) -> SpeciationMapResult:
    from classdiff.core.config import ConfigError
    from classdiff.theory.speciation_map import speciation_map

    for name, value, ok, allowed in (
        ("--dim", args.dim, args.dim >= 3, ">= 3"),
        ("--trajectories", args.trajectories, args.trajectories >= 100, ">= 100"),
        ("--steps", args.steps, args.steps >= 10, ">= 10"),
        ("--bootstrap", args.bootstrap, args.bootstrap >= 1, ">= 1"),
        ("--threshold", args.threshold, 0.5 < args.threshold < 1, "in (0.5, 1)"),
        ("--classes", args.classes, set(args.classes) <= {2, 3} and bool(args.classes), "2 and/or 3"),
        ("--simulate", args.simulate, all(0.5 <= r < 1 for r in args.simulate), "shares in [0.5, 1)"),
    ):
        if not ok:
            raise ConfigError(name, value, f"must be {allowed}")
    sims = sorted(set(args.simulate))
    result = speciation_map(
        signals=args.signals, dim=args.dim, simulated_shares=(), n_classes=args.classes, threshold=args.threshold)
    for k in args.classes:  # K = 3 starts at its balanced point 2/3
        shares = sorted({max(r, 2.0 / 3.0) if k == 3 else r for r in sims})
        if shares:
            sim = speciation_map(signals=args.signals, dim=args.dim, theory_shares=[0.9], simulated_shares=shares,
                                 n_classes=[k], threshold=args.threshold, n_trajectories=args.trajectories,
                                 n_steps=args.steps, bootstrap=args.bootstrap, seed=args.seed,
                                 progress=lambda m: print(m, flush=True))
            result.points.extend(sim.points)
    print_map(result)
    plot_speciation_map(result, out / "speciation_map")
    return result


def print_map(result: SpeciationMapResult) -> None:
    """One line per simulated point: the minority's delay, theory | closed form | simulated [interval]."""
    from classdiff.core.results import format_value

    for p in result.points:
        parts = []
        for d in p.minority_delay:
            lo, hi = (format_value(v, ".3f") for v in d.simulated_interval)
            parts.append(f"{d.mode}: theory {format_value(d.theory, '.3f')}, closed form "
                         f"{format_value(d.closed_form, '.3f')}, simulated {format_value(d.simulated, '.3f')} "
                         f"[{lo}, {hi}]")
        print(f"K = {p.n_classes}, weights {[round(w, 3) for w in p.weights]}, m^2 d = {p.signal:g}: minority delay "
              + "; ".join(parts))


def plot_speciation_map(result: SpeciationMapResult, stem: Path) -> None:
    """Rows K = 2, 3; columns absolute level, chance-relative level: t_S per class against the majority share
    (theory lines, one colour per signal; majority solid, minority dashed; closed form dotted; cloning points
    with 95% bootstrap intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure
    from classdiff.theory.speciation_map import as_float

    ks = sorted({row["n_classes"] for row in result.theory})
    fig, axes = plt.subplots(len(ks), 3, figsize=(15.5, 3.9 * len(ks)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, k in enumerate(ks):
        minor = k - 1
        for j, mode in enumerate(("absolute", "relative")):
            ax = axes[i, j]
            for si, s in enumerate(result.signals):
                col = colors[si % len(colors)]
                row = next(r for r in result.theory if r["n_classes"] == k and r["signal"] == s)
                x = np.asarray(row["majority_share"])
                t = np.asarray(row["t_absolute" if mode == "absolute" else "t_relative"], dtype=float)
                t = np.where(np.isfinite(t), t, np.nan)
                ax.plot(x, t[:, 0], "-", color=col, lw=1.4, label=f"m²d = {s:g}: majority")
                ax.plot(x, t[:, minor], "--", color=col, lw=1.4, label=f"m²d = {s:g}: minority")
                if mode == "absolute":
                    cf = np.asarray(row["t_closed_form"], dtype=float)
                    cf = np.where(np.isfinite(cf), cf, np.nan)
                    ax.plot(x, cf[:, minor], ":", color=col, lw=1.0)
                for p in result.points:
                    if p.n_classes != k or p.signal != s:
                        continue
                    times = p.t_simulated if mode == "absolute" else p.t_relative_simulated
                    inter = p.t_simulated_interval if mode == "absolute" else p.t_relative_simulated_interval
                    for c, marker in ((0, "o"), (minor, "s")):
                        v = as_float(times[c])
                        lo, hi = (as_float(b) for b in inter[c])
                        if np.isfinite(v):
                            ax.errorbar([p.majority_share], [v], yerr=[[v - lo], [hi - v]], fmt=marker, color=col,
                                        ms=4, capsize=2, mfc="white" if c == minor else col)
            if mode == "absolute":
                thr = result.threshold if k == 2 else 2 * result.threshold
                if thr < 1:
                    ax.axvspan(thr, 1.0, color="0.9", zorder=0)
                    ax.text(thr + 0.005, 0.5, " majority committed\n at start (t_S = +inf)", fontsize=7,
                            va="center", transform=ax.get_xaxis_transform())
            elif k == 2:
                ax.text(0.03, 0.04, "majority and minority coincide at every ρ\n(ρ₁(1-φ₁) = ρ₂(1-φ₂))", fontsize=7,
                        transform=ax.transAxes)
            share = "ρ (weights ρ, 1-ρ)" if k == 2 else "ρ (weights ρ/2, ρ/2, 1-ρ)"
            ax.set_xlabel(f"majority share {share}")
            ax.set_ylabel("t_S,c (backward time; larger = earlier)")
            level = f"absolute level φ* = {result.threshold:g}" if mode == "absolute" else \
                f"relative level ρ_c + {2 * result.threshold - 1:g}(1-ρ_c)"
            ax.set_title(f"K = {k}, {level}", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=6.5, ncol=2, loc="upper left")
        _plot_delays(axes[i, 2], result, k, colors)
    fig.suptitle(f"Speciation per class under imbalance, d = {result.dim}: theory (lines; dotted: closed form), "
                 "cloning (markers, 95% bootstrap)", fontsize=9.5)
    fig.tight_layout()
    save_figure(fig, stem)


def _plot_delays(ax, result: SpeciationMapResult, k: int, colors: list[str]) -> None:
    """The minority's delay t_S(majority) - t_S(minority) against the majority share: theory per signal (absolute
    solid, relative dashed; the lines of different signals coincide when sigma^2 = 1), cloning with 95% bootstrap
    intervals (finite delays only; +inf where the majority is committed at start)."""
    import numpy as np

    from classdiff.theory.speciation_map import as_float

    for si, s in enumerate(result.signals):
        col = colors[si % len(colors)]
        row = next(r for r in result.theory if r["n_classes"] == k and r["signal"] == s)
        x = np.asarray(row["majority_share"])
        for key, style, name in (("delay_absolute", "-", "absolute"), ("delay_relative", "--", "relative")):
            y = np.asarray(row[key], dtype=float)
            ax.plot(x, np.where(np.isfinite(y), y, np.nan), style, color=col, lw=1.3,
                    label=f"m²d = {s:g}, {name}")
        for p in result.points:
            if p.n_classes != k or p.signal != s:
                continue
            for d, marker in zip(p.minority_delay, ("o", "s"), strict=True):
                v = as_float(d.simulated)
                lo, hi = (as_float(b) for b in d.simulated_interval)
                if np.isfinite(v):
                    ax.errorbar([p.majority_share + 0.002 * si], [v], yerr=[[v - lo], [hi - v]], fmt=marker,
                                color=col, ms=4, capsize=2, mfc="white" if d.mode == "relative" else col)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel("majority share ρ")
    ax.set_ylabel("minority delay t_S(majority) - t_S(minority)")
    extra = " (absolute: +inf beyond ρ = φ*)" if k == 2 else ""
    ax.set_title(f"K = {k}: minority delay, solid absolute, dashed relative{extra};\nthe signals' lines coincide "
                 "(sigma^2 = 1: the signal only shifts t_S)", fontsize=8.5)
    ax.legend(fontsize=6.5, loc="upper left")
