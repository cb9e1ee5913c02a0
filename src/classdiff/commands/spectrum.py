"""``classdiff spectrum CONFIG``: theory density of the feature covariance U, optionally with a sampled histogram."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from classdiff.core.config import Config
    from classdiff.theory.spectrum import SpectrumResult

HELP = "Spectral density of the feature covariance U for a mixture (theory, optional sampled histogram)."

CLASS_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                 "tab:olive", "tab:cyan", "tab:gray")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="TOML config ([mixture], [model], [theory])")
    parser.add_argument("--sampled", choices=("none", "ge", "tanh"), default="none",
                        help="overlay the eigenvalues of one sampled U: Gaussian-equivalent ('ge') or the actual "
                             "noise-averaged features ('tanh', any activation) (default none)")
    parser.add_argument("--sampled-dim", type=int, default=None,
                        help="d of the sampled matrix (default theory.sampled_dim, else mixture.dim)")


def plot_spectrum(result: dict[str, Any], stem: Path, sampled: Any = None, title: str = "") -> None:
    """Density (log lambda axis), bulks coloured by their class, outliers as ticks, sampled histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure

    lam = np.asarray(result["lambda"], dtype=float)
    dens = np.asarray(result["density"], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    # plot lambda * rho(lambda) against log lambda: equal areas for equal masses on a log axis
    if sampled is not None and len(sampled):
        ev = np.sort(np.asarray(sampled))
        ev = ev[ev > 0]
        bins = np.geomspace(max(ev.min(), lam.min()) * 0.9, ev.max() * 1.1, 80)
        h, e = np.histogram(ev, bins=bins)
        centre = np.sqrt(e[1:] * e[:-1])
        ax.bar(e[:-1], h / ev.size / np.diff(np.log(e)), width=np.diff(e), align="edge", color="0.8",
               edgecolor="0.6", lw=0.3, label=f"sampled U ({result.get('sampled_kind', '')}, p = {ev.size})")
        del centre
    share = np.asarray(result.get("class_share", np.zeros((0, lam.size))), dtype=float)
    for lo, hi in result["edges"]:
        sel = (lam >= lo) & (lam <= hi)
        ax.plot(lam[sel], lam[sel] * dens[sel], color="k", lw=0.8)
    # colour the modes by the class that carries more than 60% of them (train-moment share, docs/theory.md §5.1)
    for c in range(share.shape[0]):
        y = np.where(share[c] > 0.6, lam * dens, np.nan)
        if np.any(np.isfinite(y) & (dens > 0)):
            ax.plot(lam, y, color=CLASS_COLOURS[c % len(CLASS_COLOURS)], lw=2.2, label=f"modes mostly of class {c}")
    for a, m in result.get("atoms", []):
        ax.axvline(a, color="k", ls=":", lw=1, label=f"atom, mass {m:.3f}")
    for o in result.get("outliers", []):
        ax.axvline(o, color="tab:red", ls="--", lw=1)
    if result.get("outliers"):
        ax.plot([], [], color="tab:red", ls="--", label="centroid outliers (theory)")
    ax.set_xscale("log")
    ax.set_xlabel(r"eigenvalue $\lambda$ of $U$")
    ax.set_ylabel(r"$\lambda\,\rho(\lambda)$  (density per unit $\log\lambda$)")
    ax.set_title(title, fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="upper left")
    save_figure(fig, stem)


def run(args: argparse.Namespace, out: Path) -> SpectrumResult:
    from classdiff.core.config import load_config, save_config

    config = load_config(args.config)
    save_config(config, out / "config.toml")
    return spectrum_stage(config, out, sampled=args.sampled, sampled_dim=args.sampled_dim)


def spectrum_stage(config: Config, out: Path, sampled: str = "none", sampled_dim: int | None = None) -> SpectrumResult:
    """The spectrum of ``config`` with its arrays (``spectrum.npz``) and figure written under ``out``."""
    import numpy as np

    from classdiff.core.io import save_npz_atomic
    from classdiff.theory.spectrum import spectrum_from_config

    result = spectrum_from_config(config)
    if sampled != "none":
        from classdiff.rf.sampled_spectrum import sample_ge_covariance, sample_true_covariance

        dim = sampled_dim or config.theory.sampled_dim or config.mixture.dim
        fn = sample_ge_covariance if sampled == "ge" else sample_true_covariance
        U, _ = fn(config, seed=config.theory.seed, dim=dim)
        result.sampled_kind = sampled
        result.sampled_eigenvalues = np.linalg.eigvalsh(U)
    data = result.to_dict()
    save_npz_atomic(out / "spectrum.npz", **{k: np.asarray(v) for k, v in data.items()
                                              if k in ("lambda", "density", "class_share", "sampled_eigenvalues")})
    m, mo = config.mixture, config.model
    title = (f"K = {m.n_classes}, rho = {list(m.weights)}, sigma^2 = {list(m.variances)}, m = {list(m.centroid_norms)} "
             f"({m.geometry}); psi_p = {mo.psi_p}, psi_n = {mo.psi_n}, t = {mo.time}")
    plot_spectrum(data, out / "spectrum", result.sampled_eigenvalues, title)
    return result


def point(config: Config) -> SpectrumResult:
    """One sweep point (:mod:`classdiff.commands.sweep`): ``spectrum_from_config`` of ``config``, nothing written."""
    from classdiff.theory.spectrum import spectrum_from_config

    return spectrum_from_config(config)
