"""Convergence of the feature-type quadrature below the generalization bulk (``docs/theory.md`` §4.1).

With centroids every feature type carries its own noise level s2, so the part of the spectrum of U below the
generalization bulk is the image of the type law under m -> s2(m). A quadrature of N nodes turns it into N narrow
pieces; their eps -> 0 density is a comb whose teeth move with N, so convergence is measured on two quantities
that do converge:

* ``l1``: the L1 distance of the densities smoothed by a Cauchy kernel of half-width ``resolution`` times the
  region's upper end (:meth:`FeatureSpectrum.smoothed_density`), divided by the region's mass; it bounds the
  Kolmogorov–Smirnov distance of the smoothed cumulative measures. This is the converged quantity.
* ``ks_fit``: the Kolmogorov–Smirnov distance of the cumulative measures of the eps -> 0 densities that
  :meth:`FeatureSpectrum.fit` reports over the region (0, lower edge of the generalization bulk), divided by
  the region's mass. It also counts the teeth that the fit's scan misses, so it stalls at the percent level.

Both are taken against a reference quadrature with more nodes.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from classdiff.theory.equations import FeatureTypes
from classdiff.theory.spectrum import FeatureSpectrum

__all__ = ["QuadratureError", "lower_region", "quadrature_convergence"]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class QuadratureError:
    """Distance of one quadrature from the reference over the region below the generalization bulk."""

    n_nodes: int  # requested budget
    n_types: int  # nodes kept after the weight cut
    l1: float  # smoothed-density L1 / region mass
    ks_fit: float  # sup |CDF - CDF_ref| / region mass, of the fitted eps -> 0 densities
    seconds: float  # fit + smoothed density

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lower_region(spec: FeatureSpectrum) -> float:
    """Upper end of the region below the generalization bulk: the lower edge of the top bulk (the largest
    eigenvalues belong to the generalization bulk). Raises when the spectrum has a single bulk."""
    edges = np.asarray(spec.edges_)
    if edges.shape[0] < 2:
        raise ValueError("lower_region: the spectrum has one bulk; there is no region below the generalization bulk")
    return float(edges[-1, 0])


def quadrature_convergence(
    make_types: Callable[[int], FeatureTypes], nodes: Sequence[int], reference_nodes: int,
    resolution: float = 0.01, n_points: int = 800, spectrum: Callable[[], FeatureSpectrum] | None = None,
    region_top: float | None = None,
) -> tuple[list[QuadratureError], dict[str, float]]:
    """Errors of the type quadrature with budgets ``nodes`` against ``reference_nodes``.

    Parameters
    ----------
    make_types : n -> :class:`FeatureTypes` with a budget of n nodes (same mixture, same rule).
    nodes : budgets to test; reference_nodes : budget of the reference (larger).
    resolution : Cauchy half-width of the smoothed density, as a fraction of the region's upper end.
    n_points : evaluation points (uniform, midpoints) in the region.
    spectrum : factory of the (unfitted) :class:`FeatureSpectrum` used for each fit.
    region_top : upper end of the region; default: :func:`lower_region` of the fit with the first budget of
        ``nodes`` (with many nodes the comb can touch the generalization bulk, so the finer fits do not give
        a stable edge).

    Returns the list of :class:`QuadratureError` and a dict with the region's upper end ``hi``, its mass
    ``mass`` (reference, smoothed) and the half-width ``eps``.
    """
    if not 0 < resolution < 1:
        raise ValueError(f"resolution = {resolution!r}: must lie in (0, 1) (a fraction of the region)")
    new_spectrum = spectrum or (lambda: FeatureSpectrum(n_lambda=400, n_scan=300, outliers=False))

    def measure(n: int, hi: float | None) -> tuple[FeatureSpectrum, float, Array, Array, float]:
        t0 = _time.perf_counter()
        spec = new_spectrum().fit(make_types(n))
        top = lower_region(spec) if hi is None else hi
        lam = (np.arange(n_points) + 0.5) * (top / n_points)
        smooth = spec.smoothed_density(lam, resolution * top)
        cdf_grid = np.linspace(0.0, top, 4 * n_points + 1)
        dens = np.interp(cdf_grid, spec.lambda_, spec.density_, left=0.0, right=0.0)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(cdf_grid))])
        cdf = cdf + sum((m for a, m in spec.atoms_ if a < top), 0.0)
        return spec, top, smooth, cdf, _time.perf_counter() - t0

    if not nodes:
        raise ValueError("quadrature_convergence: nodes is empty")
    first = measure(int(nodes[0]), region_top)
    hi = first[1]
    ref_spec, _, ref_smooth, ref_cdf, _ = measure(int(reference_nodes), hi)
    dl = hi / n_points
    mass = float(ref_smooth.sum() * dl)
    cdf_mass = float(ref_cdf[-1])
    if not (mass > 0 and cdf_mass > 0):
        raise ValueError("quadrature_convergence: the region below the generalization bulk carries no mass")
    out = []
    for k, n in enumerate(nodes):
        spec, _, smooth, cdf, secs = first if k == 0 else measure(int(n), hi)
        out.append(QuadratureError(
            n_nodes=int(n), n_types=spec.types_.n_nodes, l1=float(np.abs(smooth - ref_smooth).sum() * dl / mass),
            ks_fit=float(np.abs(cdf - ref_cdf).max() / cdf_mass), seconds=secs))
    return out, {"hi": hi, "mass": mass, "eps": resolution * hi, "reference_types": ref_spec.types_.n_nodes}
