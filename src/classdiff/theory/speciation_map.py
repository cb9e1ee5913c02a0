"""Speciation under imbalance, mapped: does the minority speciate later, and by which definition?

``docs/speciation.md`` §6b. Over the majority share rho (0.5 to 0.99) and the signal m^2 d (|mu_c|^2 of every
class), for two antipodal classes (weights rho, 1 - rho) and for three orthogonal classes (two majorities
rho/2, rho/2 and one minority 1 - rho), :func:`speciation_map` gives per class

* the theory (exact commitment curve phi_c(t), ``speciation_times``) at the absolute level phi* and at the
  chance-relative level rho_c + (2 phi* - 1)(1 - rho_c), on a dense rho grid;
* the leading-order closed form (absolute level; for the relative level and K = 2 the delay is exactly 0);
* at chosen points, the cloning simulation (``speciation_from_config``) with 95% bootstrap intervals on every
  time and on the minority's delay t_S(majority) - t_S(minority).

The answer it documents: with K = 2 the chance-relative times of the two classes are identical at every
imbalance and signal (the identity rho_1 (1 - phi_1) = rho_2 (1 - phi_2)), so the minority is "delayed" only
on the absolute scale; with K = 3 the minority's relative time separates from the majorities'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from classdiff.core.config import Config
from classdiff.core.results import Time, decode
from classdiff.data.mixture import GaussianMixture, make_centroids
from classdiff.theory.speciation import (
    MinorityDelay,
    SpeciationResult,
    commitment_levels,
    read_speciation_times,
    speciation_from_config,
    speciation_times,
    time_difference,
)

__all__ = ["GEOMETRY_OF_K", "SpeciationMapPoint", "SpeciationMapResult", "as_float", "map_weights", "speciation_map"]

#: the centroid geometry used for each number of classes
GEOMETRY_OF_K = {2: "antipodal", 3: "orthogonal"}


def map_weights(n_classes: int, majority_share: float) -> list[float]:
    """The weights of the map for a majority share rho: K = 2 -> [rho, 1 - rho]; K = 3 -> [rho/2, rho/2, 1 - rho]
    (two equal majorities and one minority)."""
    rho = float(majority_share)
    if not 0 < rho < 1:
        raise ValueError(f"majority_share = {majority_share!r}: must lie in (0, 1)")
    if n_classes == 2:
        return [rho, 1.0 - rho]
    if n_classes == 3:
        return [0.5 * rho, 0.5 * rho, 1.0 - rho]
    raise ValueError(f"n_classes = {n_classes!r}: must be 2 or 3")


@dataclass
class SpeciationMapPoint:
    """One simulated point of the map: its weights, signal m^2 d and dimension, per-class times (theory, closed
    form, simulated with interval; absolute and relative level) and the minority's delay in both modes."""

    n_classes: int
    majority_share: float
    signal: float
    dim: int
    weights: list[float]
    t_theory: list[Time]
    t_closed_form: list[Time]
    t_simulated: list[Time]
    t_simulated_interval: list[list[Time]]
    t_relative_theory: list[Time]
    t_relative_simulated: list[Time]
    t_relative_simulated_interval: list[list[Time]]
    minority_delay: list[MinorityDelay]
    n_trajectories: int
    n_minority_ends: int


@dataclass
class SpeciationMapResult:
    """The map: the theory on the dense grid ``theory`` (one entry per (K, signal): ``majority_share`` (R,),
    ``t_absolute`` / ``t_relative`` / ``t_closed_form`` (R, K), ``delay_absolute`` / ``delay_relative`` (R,))
    and the simulated ``points``; ``threshold`` phi*."""

    threshold: float
    dim: int
    signals: list[float]
    theory: list[dict[str, Any]]
    points: list[SpeciationMapPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "dim": self.dim, "signals": self.signals, "theory": self.theory,
                "points": [vars(p).copy() for p in self.points]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeciationMapResult:
        """Inverse of ``encode(result.to_dict())`` (e.g. a saved ``results.json``), special values decoded."""
        d = decode(data)
        points = []
        for p in d["points"]:
            p = dict(p)
            p["minority_delay"] = [MinorityDelay(**m) for m in p["minority_delay"]]
            points.append(SpeciationMapPoint(**p))
        return cls(threshold=d["threshold"], dim=d["dim"], signals=d["signals"], theory=d["theory"], points=points)


def _mixture(n_classes: int, rho: float, signal: float, dim: int) -> GaussianMixture:
    norm = float(np.sqrt(signal / dim))
    mu = make_centroids(dim, [norm] * n_classes, GEOMETRY_OF_K[n_classes])
    return GaussianMixture(map_weights(n_classes, rho), mu, np.ones(n_classes))


def _theory_row(n_classes: int, signal: float, dim: int, shares: Sequence[float], threshold: float) -> dict[str, Any]:
    t_abs, t_rel, t_cf = [], [], []
    # one time grid per signal, step 0.025 over [1/2 log(1 + m^2 d) - 2.5, + 3] (the default grid of
    # speciation_times has 400 points; this one is as fine where the times lie and costs half); for K = 3 the
    # curves are Monte Carlo over the 3-D centroid span with 20,000 draws (standard error <= 0.0035)
    t_ref = 0.5 * float(np.log1p(signal))
    grid = np.arange(max(0.01, t_ref - 2.5), t_ref + 3.0, 0.025)
    for rho in shares:
        st = speciation_times(_mixture(n_classes, rho, signal, dim), threshold, "absolute", times=grid,
                              n_samples=20000)
        t_abs.append(st.t_theory)
        t_cf.append(st.t_closed_form)
        t_rel.append(read_speciation_times(st.times, st.phi, commitment_levels(st.chance, threshold, "relative")))
    t_abs, t_rel, t_cf = (np.array(v) for v in (t_abs, t_rel, t_cf))
    minor = n_classes - 1  # the last class is the minority (or, at rho = 0.5 / 2/3, equal to the others)
    return {
        "n_classes": n_classes, "signal": float(signal), "majority_share": [float(r) for r in shares],
        "t_absolute": t_abs.tolist(), "t_relative": t_rel.tolist(), "t_closed_form": t_cf.tolist(),
        "delay_absolute": [time_difference(a[0], a[minor]) for a in t_abs],
        "delay_relative": [time_difference(a[0], a[minor]) for a in t_rel],
    }


def speciation_map(
    signals: Sequence[float] = (64.0, 256.0, 1024.0),
    dim: int = 64,
    theory_shares: Sequence[float] | None = None,
    simulated_shares: Sequence[float] = (),
    n_classes: Sequence[int] = (2, 3),
    threshold: float = 0.775,
    n_trajectories: int = 20000,
    n_steps: int = 300,
    n_branch_times: int = 16,
    bootstrap: int = 300,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> SpeciationMapResult:
    """Theory (dense grid ``theory_shares``, default 0.5 to 0.99) and cloning simulation (``simulated_shares``,
    every signal and K) of the per-class speciation times over majority share x signal m^2 d.

    ``signals``: |mu_c|^2 (= m^2 d, the same for every class); ``dim``: d. Simulation settings as in
    :class:`classdiff.core.config.TheoryConfig` (step t_max / n_steps with t_max = 6). The K = 3 grid starts
    at rho = 2/3 (the balanced three-class point) where ``theory_shares`` is not given.
    """
    if any(not s > 0 for s in signals):
        raise ValueError(f"signals = {list(signals)!r}: must be > 0")
    out = SpeciationMapResult(threshold=float(threshold), dim=int(dim), signals=[float(s) for s in signals], theory=[])
    for k in n_classes:
        if theory_shares is None:
            lo = 0.5 if k == 2 else 2.0 / 3.0
            shares: Sequence[float] = np.concatenate([np.linspace(lo, 0.95, 19), [0.97, 0.98, 0.99]]).tolist()
        else:
            shares = theory_shares
        for s in signals:
            out.theory.append(_theory_row(k, s, dim, shares, threshold))
    for k in n_classes:
        for s in signals:
            for rho in simulated_shares:
                if progress is not None:
                    progress(f"simulating K = {k}, rho = {rho:g}, m^2 d = {s:g}")
                cfg = Config().with_overrides({
                    "mixture.dim": dim, "mixture.weights": map_weights(k, rho), "mixture.variances": [1.0] * k,
                    "mixture.centroid_norms": [float(np.sqrt(s / dim))] * k, "mixture.geometry": GEOMETRY_OF_K[k],
                    "theory.n_trajectories": n_trajectories, "theory.n_steps": n_steps, "theory.t_max": 6.0,
                    "theory.n_branch_times": n_branch_times, "theory.commitment_threshold": threshold,
                    "theory.bootstrap": bootstrap, "theory.seed": seed,
                })
                out.points.append(_point(k, rho, s, dim, speciation_from_config(cfg)))
    return out


def _point(k: int, rho: float, signal: float, dim: int, res: SpeciationResult) -> SpeciationMapPoint:
    cl = res.classes
    return SpeciationMapPoint(
        n_classes=k, majority_share=float(rho), signal=float(signal), dim=dim, weights=[c.weight for c in cl],
        t_theory=[c.t_speciation_theory for c in cl], t_closed_form=[c.t_speciation_closed_form for c in cl],
        t_simulated=[c.t_speciation_simulated for c in cl],
        t_simulated_interval=[c.t_speciation_simulated_interval for c in cl],
        t_relative_theory=[c.t_speciation_relative_theory for c in cl],
        t_relative_simulated=[c.t_speciation_relative_simulated for c in cl],
        t_relative_simulated_interval=[c.t_speciation_relative_simulated_interval for c in cl],
        minority_delay=res.minority_delay, n_trajectories=res.n_trajectories,
        n_minority_ends=int(np.asarray(cl[-1].n_ends).min()),
    )


def as_float(v: Time) -> float:
    """A time as a float for plotting: NOT_REACHED -> nan."""
    return float("nan") if not isinstance(v, float | int) else float(v)

