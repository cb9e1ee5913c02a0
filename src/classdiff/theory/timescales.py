"""Predicted per-class generalization and memorization times from the theory's loss curves (``docs/theory.md`` §5).

The gradient flow relaxes the eigenmode k of U (eigenvalue lambda_k) with
gamma_k(tau) = (1 - exp(-2 Delta_t lambda_k tau / psi_p)) / lambda_k, and the loss of any group S of points is

    L_S(tau) = 1 + (1/d) tr(gamma(U) X gamma(U) Y_S) - (2/d) tr(V^T gamma(U) V_S).

The linear term is a single-resolvent trace; the quadratic term is a two-resolvent quantity. With
``theory.loss_model = "types"`` (default) it is the deterministic equivalent with the feature types kept
(:class:`classdiff.theory.type_losses.TypeLossModel`, a contour integral; centroid spikes left out). With
``"mean-type"`` the types are first reduced to one effective type per class
(:func:`classdiff.theory.losses.mean_type_approximation`) and :class:`classdiff.theory.losses.LossModel` works on
the product of the bulk grid with itself; that closure cannot show the imbalance reversal (``docs/theory.md`` §6.3).
The per-class curves are read off with the *same* functions as the measured curves
(:mod:`classdiff.core.readoff`): tau_gen,c from the test loss (tolerance), tau_mem,c from the gap test - train
reaching ``fraction`` of its tau = infinity value. A time the curve never reaches is
:data:`~classdiff.core.results.NOT_REACHED`.

Entry points: :func:`class_timescales_for_mixture` (any :class:`~classdiff.data.mixture.GaussianMixture`, e.g.
``GaussianMixture.fit(x, y)`` of real data) and :func:`timescales_from_config` (the ``[mixture]`` of a config,
through the same path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from classdiff.core.readoff import ORDER_KEYS, class_order, generalization_time, memorization_time
from classdiff.core.results import Time, reached
from classdiff.theory.equations import FeatureTypes, resolvent_parts
from classdiff.theory.losses import LossModel, mean_type_approximation
from classdiff.theory.spectrum import FeatureSpectrum, training_mixture, types_for_mixture
from classdiff.theory.type_losses import TypeLossModel

if TYPE_CHECKING:
    from classdiff.core.config import Config, ModelConfig, TheoryConfig, TrainingConfig
    from classdiff.data.mixture import GaussianMixture

#: largest number of unknowns (K + K(K+1)/2 with centroids) for which ``timescales`` solves the full mixture's
#: spectrum for its ``edges`` (K = 14 classes; K = 20 takes about a minute and 7 GB, measured on 2 cores)
FULL_EDGES_MAX_UNKNOWNS = 120
#: most classes for which the loss curves keep the feature types (``theory.loss_model = "types"``)
TYPES_MAX_CLASSES = 4

__all__ = [
    "ClassTimescales",
    "TimescalesResult",
    "class_loss_curves",
    "class_timescales",
    "class_timescales_for_mixture",
    "timescales_from_config",
]

#: what the ``definitions.closure`` entry of the timescales result says, per ``theory.loss_model``
CLOSURES = {
    "types": ("two-resolvent deterministic equivalent of the losses with the feature types kept "
              "(theory.type_losses.TypeLossModel: contour integral, centroid spikes left out), docs/theory.md §5.5"),
    "mean-type": ("two-resolvent deterministic equivalent of the losses (theory.losses.LossModel) on one effective "
                  "feature type (theory.losses.mean_type_approximation: type-averaged moments, centroid spikes left "
                  "out), docs/theory.md §5.2"),
}
CLOSURE = CLOSURES["types"]

Array = NDArray[np.float64]


def spectral_weights(spec: FeatureSpectrum) -> dict[str, Array]:
    """Per bulk-grid point: lambda (L,), quadrature weights (L,), w_VV (L,), w_Vc (L, K), u_train (L, K),
    u_test (L, K) (``docs/theory.md`` §5.1)."""
    ft = spec.types_
    g = spec.grid_
    lam, x = g["lambda"], g["solution"]
    z = lam + 1j * spec.epsilon
    parts = resolvent_parts(ft, z, x)
    q = parts["Qbar"] @ ft.node_weights
    tr = FeatureSpectrum.class_traces(ft, z, x, parts)
    imq = np.maximum(q.imag, 1e-300)
    return {
        "lambda": lam,
        "weights": g["weights"],
        "w_vv": tr["vv"].imag / np.pi,
        "w_vc": tr["vc"].imag / np.pi,
        "u_train": tr["train_trace"].imag / imq[:, None],
        "u_test": tr["test_trace"].imag / imq[:, None],
        "density": q.imag / np.pi,
    }


def class_loss_curves(spec: FeatureSpectrum, tau: ArrayLike) -> dict[str, Array]:
    """Predicted per-class train and test losses, shape (K, T) each, at training times ``tau`` (T,) (inf allowed).

    Uses the two-resolvent deterministic equivalent of :class:`classdiff.theory.losses.LossModel` on the bulk grid
    of ``spec``, which must have been fitted on one feature type (see :func:`mean_type_approximation`).
    """
    g = spec.grid_
    model = LossModel(spec.types_, g["lambda"], g["weights"], g["solution"], spec.epsilon)
    return model.curves(np.asarray(tau, dtype=np.float64))


def class_timescales(
    config_or_spectrum: Config | FeatureSpectrum, tau: ArrayLike | None = None, tolerance: float = 0.05,
    fraction: float = 0.5,
) -> dict[str, Any]:
    """Per-class predicted tau_gen,c and tau_mem,c (``classdiff.core.readoff`` definitions) as arrays.

    ``config_or_spectrum`` is a :class:`classdiff.core.config.Config` (then the loss model is
    ``theory.loss_model`` with its ``[theory]`` settings and ``tau``, ``tolerance``, ``fraction`` default to its
    ``[training]`` settings) or a fitted :class:`FeatureSpectrum` (then the mean-type model on that spectrum's
    grid, whatever the config said). Returns ``tau_gen`` (K,), ``tau_mem`` (K,) (nan where not reached),
    ``final_gap`` (K,), the orders under :data:`~classdiff.core.readoff.ORDER_KEYS` names (class indices,
    earliest first), the curves (K, T) and the spectrum.
    """
    if isinstance(config_or_spectrum, FeatureSpectrum):
        spec = config_or_spectrum
        if spec.types_.n_nodes != 1:
            spec = FeatureSpectrum(n_lambda=min(spec.n_lambda, 400), epsilon=spec.epsilon, tolerance=spec.tolerance,
                                   n_scan=spec.n_scan, outliers=False).fit(mean_type_approximation(spec.types_))
        if tau is None:
            tau = np.geomspace(1e-2, 1e6, 300)
        return _timescales_of_spectrum(spec, np.asarray(tau, dtype=np.float64), tolerance, fraction)
    cfg = config_or_spectrum
    return _timescales_of_types(loss_types(training_mixture(cfg), cfg.model, cfg.theory), cfg.theory,
                                cfg.training, tau)


def loss_types(mixture: GaussianMixture, model: ModelConfig, theory: TheoryConfig) -> FeatureTypes:
    """The feature types the loss curves are computed with: ``theory.loss_type_nodes`` quadrature nodes for the
    types model (192 by default: the times at orthogonal centroids of norm 3 move by up to 30% between 48 and 192
    nodes and not between 192 and 768, ``docs/theory.md`` §5.5), ``theory.type_nodes`` for the mean-type model.

    A rank-3 type law (three independent centroid directions) gets half the budget: the tensor rule then has
    1208 types at 96 against 3544 at 192, and the times of K = 3 orthogonal centroids of norm 2 agree within 0.3%
    between the two (measured), at a third of the cost."""
    nodes = theory.loss_type_nodes if theory.loss_model == "types" else theory.type_nodes
    if theory.loss_model == "types":
        gram = mixture.centroids @ mixture.centroids.T / mixture.dim
        if np.linalg.matrix_rank(gram, tol=1e-9 * max(float(np.abs(gram).max()), 1e-300)) == 3:
            nodes = max(theory.type_nodes, nodes // 2)
    return types_for_mixture(mixture, model, theory, n_nodes=nodes)


def loss_model_used(ft: FeatureTypes, th: TheoryConfig) -> str:
    """The loss model the theory uses for these types: ``theory.loss_model``, except that one feature type (no
    centroids) always uses the one-type model (the two coincide there, ``tests/test_type_losses.py``) and that
    the types model is limited to :data:`TYPES_MAX_CLASSES` classes with centroids (its K^2 x K^2 system per pair
    of contour nodes) and to spectra that stay away from 0 (s2 > 0: not the identity activation); otherwise the
    mean-type model is used and the result's ``definitions.closure`` says so."""
    if th.loss_model == "mean-type" or ft.n_nodes == 1 or ft.n_classes > TYPES_MAX_CLASSES:
        return "mean-type"
    if not TypeLossModel.spectrum_bounds(ft, TypeLossModel().mass_cut)[0] > 0:
        return "mean-type"  # the spectrum reaches 0 (e.g. the identity activation): no contour in Re z > 0
    return "types"


def _timescales_of_types(ft: FeatureTypes, th: TheoryConfig, tr: TrainingConfig,
                         tau: ArrayLike | None) -> dict[str, Any]:
    if tau is None:
        tau = np.geomspace(tr.tau_min, tr.tau_max, max(tr.n_times, 200))
    used = loss_model_used(ft, th)
    if used == "types":
        model = TypeLossModel(n_contour=th.n_contour).fit(ft)
        curves = model.curves(np.append(np.asarray(tau, dtype=np.float64), np.inf))
        return _timescales_of_curves(np.asarray(tau, dtype=np.float64), curves, tr.gen_tolerance, tr.mem_fraction,
                                     None) | {"loss_model": used, "one_type": ft.n_nodes == 1}
    one_type = ft.n_nodes == 1
    ft = mean_type_approximation(ft)
    # the loss model works on the product of the bulk grid with itself: keep it moderate, smaller for large K
    n_grid = min(th.n_lambda, 400 if ft.n_classes <= 4 else 200)
    spec = FeatureSpectrum(n_lambda=n_grid, epsilon=th.epsilon, tolerance=th.tolerance,
                           n_scan=min(th.n_scan, 400 if ft.n_classes <= 4 else 200), outliers=False).fit(ft)
    return _timescales_of_spectrum(spec, np.asarray(tau, dtype=np.float64), tr.gen_tolerance, tr.mem_fraction) | {
        "loss_model": used, "one_type": one_type}


def _timescales_of_spectrum(spec: FeatureSpectrum, tau: Array, tolerance: float, fraction: float) -> dict[str, Any]:
    return _timescales_of_curves(tau, class_loss_curves(spec, np.append(tau, np.inf)), tolerance, fraction, spec)


def _timescales_of_curves(tau: Array, curves: dict[str, Array], tolerance: float, fraction: float,
                          spec: FeatureSpectrum | None) -> dict[str, Any]:
    """Read-off of curves (K, T + 1) whose last column is tau = inf; ``spec`` the one-type spectrum or None."""
    train, test = curves["train_loss"], curves["test_loss"]
    k = train.shape[0]
    final_gap = test[:, -1] - train[:, -1]
    t_gen = generalization_time(tau, test[:, :-1], tolerance, initial=np.ones(k))
    t_mem = memorization_time(tau, train[:, :-1], test[:, :-1], fraction, final_gap=final_gap)
    return {
        "tau": tau,
        "tau_gen": t_gen,
        "tau_mem": t_mem,
        "final_gap": final_gap,
        ORDER_KEYS["tau_gen"]: class_order([reached(v) for v in t_gen]),
        ORDER_KEYS["tau_mem"]: class_order([reached(v) for v in t_mem]),
        "train_loss": train[:, :-1],
        "test_loss": test[:, :-1],
        "train_loss_inf": train[:, -1],
        "test_loss_inf": test[:, -1],
        "spectrum": spec,
    }


@dataclass
class ClassTimescales:
    """One class's predicted times (:data:`~classdiff.core.results.Time`: NOT_REACHED when the curve never
    gets there), its mixture statistics and its predicted curves (T,)."""

    label: int
    tau_gen: Time
    tau_mem: Time
    weight: float
    variance: float
    centroid_norm: float
    final_gap: float
    train_loss: Array = field(repr=False)
    test_loss: Array = field(repr=False)


@dataclass
class TimescalesResult:
    """The ``timescales`` result: per-class times, the orders (labels, earliest first), the training-time grid
    ``tau`` (T,), the bulk ``edges`` of the mixture's spectrum (the same as the ``spectrum`` result of the same
    config), the ``loss_model_edges`` of the one-type spectrum the loss curves are computed on, and the
    definitions used."""

    classes: list[ClassTimescales]
    tau: Array = field(repr=False)
    generalization_order: list[int]
    memorization_order: list[int]
    edges: list[list[float]] | float
    loss_model_edges: list[list[float]]
    definitions: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """DESIGN.md keys: ``classes`` [{label, tau_gen, tau_mem, ...}], the orders by ORDER_KEYS, ``tau``, ..."""
        return {
            "classes": [vars(c).copy() for c in self.classes],
            "tau": self.tau,
            ORDER_KEYS["tau_gen"]: self.generalization_order,
            ORDER_KEYS["tau_mem"]: self.memorization_order,
            "edges": self.edges,
            "loss_model_edges": self.loss_model_edges,
            "definitions": self.definitions,
        }


def class_timescales_for_mixture(mixture: GaussianMixture, model: ModelConfig, theory: TheoryConfig,
                                 training: TrainingConfig | None = None,
                                 labels: ArrayLike | None = None,
                                 types: FeatureTypes | None = None) -> TimescalesResult:
    """Predicted per-class timescales of the training mixture ``mixture`` (weights = training fractions n_c/n).

    ``model`` gives psi_p, psi_n, t and the activation, ``theory`` the solver settings, ``training`` (default
    :class:`~classdiff.core.config.TrainingConfig`) the tau grid and the read-off parameters. ``labels`` name
    the classes (default ``mixture.labels_`` for a fitted mixture, else 0..K-1); the orders are in those labels.
    ``types`` replaces the isotropic feature types of ``mixture`` (e.g. the covariance-aware types of
    :func:`classdiff.theory.covariance_types.covariance_feature_types` for the same classes); ``mixture`` then
    only supplies the reported class statistics.
    """
    from classdiff.core.config import TrainingConfig

    tr = training if training is not None else TrainingConfig()
    if labels is None:
        labels = getattr(mixture, "labels_", np.arange(mixture.n_classes))
    labs = [int(v) for v in np.asarray(labels).reshape(-1)]
    ft = types if types is not None else types_for_mixture(mixture, model, theory)
    res = _timescales_of_types(types if types is not None else loss_types(mixture, model, theory), theory, tr, None)
    # the edges of the full feature types, found as the spectrum command finds them (same scan; the edges do not
    # depend on n_lambda, so the density grid is kept minimal): the loss model's one effective type has its own,
    # different edges, reported apart. The full solve has K + K(K+1)/2 unknowns and costs O(n_unknowns^3) per
    # scan point, so beyond FULL_EDGES_MAX_UNKNOWNS (K > 14 classes with centroids) it is not computed (nan).
    if ft.n_unknowns <= FULL_EDGES_MAX_UNKNOWNS:
        edges: list[list[float]] | float = FeatureSpectrum(
            n_lambda=10, epsilon=theory.epsilon, tolerance=theory.tolerance, n_scan=theory.n_scan,
            outliers=False).fit(ft).edges_.tolist()
        edges_note = "bulk edges of the spectrum of U for the mixture's feature types (as in `spectrum`)"
    else:
        edges = float("nan")
        edges_note = (f"not computed: the full spectrum of these {ft.n_classes} classes has {ft.n_unknowns} "
                      f"unknowns (limit {FULL_EDGES_MAX_UNKNOWNS}); `classdiff spectrum` solves it at O(n^3) "
                      "per point")
    gen = [reached(v) for v in res["tau_gen"]]
    mem = [reached(v) for v in res["tau_mem"]]
    variances, norms = mixture.mean_variances, mixture.centroid_norms
    classes = [
        ClassTimescales(label=labs[c], tau_gen=gen[c], tau_mem=mem[c], weight=float(mixture.weights[c]),
                        variance=float(variances[c]), centroid_norm=float(norms[c]),
                        final_gap=float(res["final_gap"][c]), train_loss=res["train_loss"][c],
                        test_loss=res["test_loss"][c])
        for c in range(mixture.n_classes)
    ]
    return TimescalesResult(
        classes=classes,
        tau=res["tau"],
        generalization_order=class_order(gen, labs),
        memorization_order=class_order(mem, labs),
        edges=edges,
        loss_model_edges=res["spectrum"].edges_.tolist() if res["spectrum"] is not None else edges,
        definitions={
            "tau_gen": f"readoff.generalization_time of the predicted class test loss, tolerance {tr.gen_tolerance}",
            "tau_mem": f"readoff.memorization_time of the predicted class gap, fraction {tr.mem_fraction},"
                       " final gap at tau = inf",
            "closure": CLOSURES[res["loss_model"]] + (
                "" if res["loss_model"] == theory.loss_model or res["one_type"] else
                f" (theory.loss_model = 'types' is limited to {TYPES_MAX_CLASSES} classes with centroids and to "
                "spectra away from 0)"),
            "edges": edges_note,
            "loss_model_edges": ("bulk edges of the one-effective-type spectrum the loss curves use"
                                 if res["spectrum"] is not None else
                                 "the same as edges: the loss curves use the mixture's feature types"),
        },
    )


def timescales_from_config(config: Config) -> TimescalesResult:
    """Pure function of a :class:`classdiff.core.config.Config`: :func:`class_timescales_for_mixture` of the
    training mixture of its ``[mixture]`` section (the ``timescales`` result)."""
    result = class_timescales_for_mixture(training_mixture(config), config.model, config.theory, config.training)
    mc = config.mixture
    for c, cl in enumerate(result.classes):  # report the configured statistics, not the n_c/n fractions
        cl.weight, cl.variance, cl.centroid_norm = (float(mc.weights[c]), float(mc.variances[c]),
                                                    float(mc.centroid_norms[c]))
    return result
