"""Typed, immutable, validated experiment configuration (TOML in, TOML/JSON out).

A config file has the sections ``[mixture]``, ``[model]``, ``[training]``, ``[theory]``, ``[images]`` and
``[sweep]``; every section is optional and every field has a default. Each bad value raises
:class:`ConfigError`, whose message names the field, the value and what is allowed, e.g.::

    mixture.weights = [0.7, 0.2]: must be positive numbers summing to 1 within 1e-09 (sum is 0.9)

Configs are frozen dataclasses: change one with :meth:`Config.with_overrides` (``{"mixture.dim": 100}``),
which validates again. :meth:`Config.digest` is a stable hash used to cache sweep points.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "Config",
    "ConfigError",
    "ImagesConfig",
    "MixtureConfig",
    "ModelConfig",
    "SweepConfig",
    "TheoryConfig",
    "TrainingConfig",
    "load_config",
    "save_config",
    "to_toml",
]

GEOMETRIES = ("orthogonal", "antipodal", "random", "explicit")
ACTIVATIONS = ("tanh", "relu", "erf", "identity")
#: model.feature_moments: exact noise average, or a Gaussian-equivalent closure (classdiff.rf.model.FEATURE_MOMENTS)
FEATURE_MOMENTS = ("exact", "ge", "ge-centred", "ge-mean-type")
#: theory.loss_model: the feature types kept (classdiff.theory.type_losses) or one mean type per class
#: (classdiff.theory.losses, the closure before 2026-12-07)
LOSS_MODELS = ("types", "mean-type")
WEIGHT_TOLERANCE = 1e-9
#: the built-in commands a sweep may run (each module ``classdiff.commands.<name>`` has ``point(config)``)
SWEEP_COMMANDS = ("spectrum", "timescales", "dynamics", "speciation")
SCHEDULERS = ("local", "synchronous", "slurm", "pbs")


class ConfigError(ValueError):
    """A configuration value is invalid. ``field`` is the dotted name, ``value`` the offending value."""

    def __init__(self, field_name: str, value: Any, allowed: str) -> None:
        self.field = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name} = {value!r}: {allowed}")


# --------------------------------------------------------------------------------------------------
# small validators (each raises ConfigError naming the field)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, value, "must be a number")
    if not math.isfinite(value):
        raise ConfigError(name, value, "must be a finite number")
    return float(value)


def _positive(name: str, value: Any) -> float:
    v = _finite(name, value)
    if v <= 0:
        raise ConfigError(name, value, "must be > 0")
    return v


def _nonnegative(name: str, value: Any) -> float:
    v = _finite(name, value)
    if v < 0:
        raise ConfigError(name, value, "must be >= 0")
    return v


def _integer(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        else:
            raise ConfigError(name, value, "must be an integer" + (f" >= {minimum}" if minimum is not None else ""))
    if minimum is not None and value < minimum:
        raise ConfigError(name, value, f"must be an integer >= {minimum}")
    return int(value)


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ConfigError(name, value, "must be one of " + ", ".join(repr(a) for a in allowed))
    return str(value)


def _float_tuple(name: str, value: Any, check=_finite) -> tuple[float, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) == 0:
        raise ConfigError(name, value, "must be a non-empty list of numbers")
    return tuple(check(f"{name}[{i}]", v) for i, v in enumerate(value))


def _int_tuple(name: str, value: Any, minimum: int | None = None) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) == 0:
        raise ConfigError(name, value, "must be a non-empty list of integers")
    return tuple(_integer(f"{name}[{i}]", v, minimum) for i, v in enumerate(value))


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "must be true or false")
    return value


class _Section:
    """Mixin: construction from a mapping that rejects unknown keys, and a plain-dict view."""

    section: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        if not isinstance(data, Mapping):
            raise ConfigError(cls.section, data, "must be a table of key = value pairs")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"{cls.section}.{key}", data[key], "unknown key; allowed keys are " + ", ".join(sorted(known))
                )
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = _plain(v)
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    return v


# --------------------------------------------------------------------------------------------------
# sections


@dataclass(frozen=True)
class MixtureConfig(_Section):
    """Gaussian mixture: K classes with weights rho_c, variances sigma_c^2 and centroids m_c sqrt(d) u_c."""

    section: ClassVar[str] = "mixture"
    dim: int = 300
    weights: tuple[float, ...] = (0.8, 0.2)
    variances: tuple[float, ...] = (0.5, 1.5)
    centroid_norms: tuple[float, ...] = (1.0, 1.0)
    geometry: str = "antipodal"
    centroids: tuple[tuple[float, ...], ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        s = "mixture."
        object.__setattr__(self, "dim", _integer(s + "dim", self.dim, 1))
        # a zero-weight class has no data: its times would be read off a class the model never sees
        w = _float_tuple(s + "weights", self.weights, _positive)
        if abs(sum(w) - 1.0) > WEIGHT_TOLERANCE:
            raise ConfigError(
                s + "weights",
                list(self.weights),
                f"must be positive numbers summing to 1 within {WEIGHT_TOLERANCE:g} (sum is {sum(w):.12g})",
            )
        object.__setattr__(self, "weights", w)
        k = len(w)
        v = _float_tuple(s + "variances", self.variances, _positive)
        m = _float_tuple(s + "centroid_norms", self.centroid_norms, _nonnegative)
        for name, arr in (("variances", v), ("centroid_norms", m)):
            if len(arr) != k:
                raise ConfigError(
                    s + name, list(arr), f"must have one entry per class: K = {k} (from mixture.weights), got {len(arr)}"
                )
        object.__setattr__(self, "variances", v)
        object.__setattr__(self, "centroid_norms", m)
        _choice(s + "geometry", self.geometry, GEOMETRIES)
        if self.geometry == "antipodal" and k != 2:
            raise ConfigError(s + "geometry", self.geometry, f"'antipodal' needs exactly K = 2 classes, got K = {k}")
        if self.geometry == "orthogonal" and k > self.dim:
            raise ConfigError(s + "geometry", self.geometry, f"'orthogonal' needs K <= dim, got K = {k} > {self.dim}")
        if self.geometry == "explicit":
            if self.centroids is None:
                raise ConfigError(s + "centroids", None, "must be given (K lists of dim numbers) when geometry = 'explicit'")
            if isinstance(self.centroids, str) or len(self.centroids) != k:
                raise ConfigError(s + "centroids", self.centroids, f"must be K = {k} lists of dim = {self.dim} numbers")
            rows = []
            for i, row in enumerate(self.centroids):
                r = _float_tuple(f"{s}centroids[{i}]", row)
                if len(r) != self.dim:
                    raise ConfigError(f"{s}centroids[{i}]", "...", f"must have dim = {self.dim} entries, got {len(r)}")
                rows.append(r)
            object.__setattr__(self, "centroids", tuple(rows))
        elif self.centroids is not None:
            raise ConfigError(s + "centroids", "...", "only allowed with geometry = 'explicit'")
        object.__setattr__(self, "seed", _integer(s + "seed", self.seed, 0))

    @property
    def n_classes(self) -> int:
        return len(self.weights)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Random-features score model s_A(x) = A sigma(W x / sqrt d) / sqrt p at one diffusion time t."""

    section: ClassVar[str] = "model"
    psi_p: float = 2.0
    psi_n: float = 1.0
    time: float = 0.1
    activation: str = "tanh"
    ridge: float = 0.0
    noise_samples: int = 0
    seed: int = 0
    series_order: int = 12
    feature_moments: str = "exact"

    def __post_init__(self) -> None:
        s = "model."
        _choice(s + "feature_moments", self.feature_moments, FEATURE_MOMENTS)
        object.__setattr__(self, "series_order", _integer(s + "series_order", self.series_order, 0))
        object.__setattr__(self, "psi_p", _positive(s + "psi_p", self.psi_p))
        object.__setattr__(self, "psi_n", _positive(s + "psi_n", self.psi_n))
        object.__setattr__(self, "time", _positive(s + "time", self.time))
        _choice(s + "activation", self.activation, ACTIVATIONS)
        object.__setattr__(self, "ridge", _nonnegative(s + "ridge", self.ridge))
        object.__setattr__(self, "noise_samples", _integer(s + "noise_samples", self.noise_samples, 0))
        object.__setattr__(self, "seed", _integer(s + "seed", self.seed, 0))


@dataclass(frozen=True)
class TrainingConfig(_Section):
    """Training of the random-features model (closed form or iterative) and the timescale read-off."""

    section: ClassVar[str] = "training"
    method: str = "closed_form"
    optimizer: str = "gd"
    learning_rate: float = 0.1
    tau_min: float = 1e-2
    tau_max: float = 1e5
    n_times: int = 200
    test_samples: int = 4000
    score_samples: int = 4000
    gen_tolerance: float = 0.05
    mem_fraction: float = 0.5
    seeds: int = 1
    device: str = "auto"
    n_batches: int = 8
    noise: str = "moments"
    max_steps: int = 1_000_000

    def __post_init__(self) -> None:
        s = "training."
        object.__setattr__(self, "n_batches", _integer(s + "n_batches", self.n_batches, 2))
        _choice(s + "noise", self.noise, ("moments", "fixed", "fresh"))
        object.__setattr__(self, "max_steps", _integer(s + "max_steps", self.max_steps, 1))
        _choice(s + "method", self.method, ("closed_form", "iterative"))
        _choice(s + "optimizer", self.optimizer, ("gd", "adam"))
        object.__setattr__(self, "learning_rate", _positive(s + "learning_rate", self.learning_rate))
        object.__setattr__(self, "tau_min", _positive(s + "tau_min", self.tau_min))
        object.__setattr__(self, "tau_max", _positive(s + "tau_max", self.tau_max))
        if self.tau_max <= self.tau_min:
            raise ConfigError(s + "tau_max", self.tau_max, f"must be > training.tau_min = {self.tau_min}")
        object.__setattr__(self, "n_times", _integer(s + "n_times", self.n_times, 2))
        object.__setattr__(self, "test_samples", _integer(s + "test_samples", self.test_samples, 1))
        object.__setattr__(self, "score_samples", _integer(s + "score_samples", self.score_samples, 1))
        g = _positive(s + "gen_tolerance", self.gen_tolerance)
        object.__setattr__(self, "gen_tolerance", g)
        f = _positive(s + "mem_fraction", self.mem_fraction)
        if f >= 1:
            raise ConfigError(s + "mem_fraction", f, "must lie in (0, 1)")
        object.__setattr__(self, "mem_fraction", f)
        object.__setattr__(self, "seeds", _integer(s + "seeds", self.seeds, 1))
        _choice(s + "device", self.device, ("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class TheoryConfig(_Section):
    """Numerical settings of the random-matrix theory and of the speciation analysis."""

    section: ClassVar[str] = "theory"
    n_lambda: int = 1000
    lambda_min: float | None = None
    lambda_max: float | None = None
    epsilon: float = 1e-9
    tolerance: float = 1e-10
    sampled_dim: int = 0
    n_trajectories: int = 2000
    n_steps: int = 500
    t_max: float = 6.0
    n_branch_times: int = 30
    commitment_threshold: float = 0.775
    bootstrap: int = 500
    seed: int = 0
    type_nodes: int = 48
    type_rule: str = "gauss-hermite"
    loss_model: str = "types"
    loss_type_nodes: int = 192
    n_contour: int = 128
    n_scan: int = 400
    phase_points: int = 7

    def __post_init__(self) -> None:
        s = "theory."
        object.__setattr__(self, "type_nodes", _integer(s + "type_nodes", self.type_nodes, 4))
        _choice(s + "type_rule", self.type_rule, ("trapezoid", "gauss-hermite"))
        _choice(s + "loss_model", self.loss_model, LOSS_MODELS)
        object.__setattr__(self, "n_contour", _integer(s + "n_contour", self.n_contour, 8))
        object.__setattr__(self, "loss_type_nodes", _integer(s + "loss_type_nodes", self.loss_type_nodes, 4))
        object.__setattr__(self, "n_scan", _integer(s + "n_scan", self.n_scan, 50))
        object.__setattr__(self, "phase_points", _integer(s + "phase_points", self.phase_points, 2))
        object.__setattr__(self, "n_lambda", _integer(s + "n_lambda", self.n_lambda, 10))
        for name in ("lambda_min", "lambda_max"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _finite(s + name, v))
        if self.lambda_min is not None and self.lambda_max is not None and self.lambda_max <= self.lambda_min:
            raise ConfigError(s + "lambda_max", self.lambda_max, f"must be > theory.lambda_min = {self.lambda_min}")
        object.__setattr__(self, "epsilon", _positive(s + "epsilon", self.epsilon))
        object.__setattr__(self, "tolerance", _positive(s + "tolerance", self.tolerance))
        object.__setattr__(self, "sampled_dim", _integer(s + "sampled_dim", self.sampled_dim, 0))
        object.__setattr__(self, "n_trajectories", _integer(s + "n_trajectories", self.n_trajectories, 1))
        object.__setattr__(self, "n_steps", _integer(s + "n_steps", self.n_steps, 2))
        object.__setattr__(self, "t_max", _positive(s + "t_max", self.t_max))
        object.__setattr__(self, "n_branch_times", _integer(s + "n_branch_times", self.n_branch_times, 2))
        c = _positive(s + "commitment_threshold", self.commitment_threshold)
        if c >= 1:
            raise ConfigError(s + "commitment_threshold", c, "must lie in (0, 1)")
        object.__setattr__(self, "commitment_threshold", c)
        object.__setattr__(self, "bootstrap", _integer(s + "bootstrap", self.bootstrap, 0))
        object.__setattr__(self, "seed", _integer(s + "seed", self.seed, 0))


@dataclass(frozen=True)
class ImagesConfig(_Section):
    """U-Net diffusion on an imbalanced Fashion-MNIST subset (see :mod:`classdiff.images`).

    Subset: ``classes`` with ``counts`` images each, or ``weights`` x ``n_train`` (largest remainders).
    Model: ``width``, ``channel_mults``, ``attention`` (per level), ``dropout``, ``num_res_blocks``,
    ``class_conditional``. DDPM: ``schedule``, ``num_diffusion_steps``; training: ``optimizer``, ``learning_rate``,
    ``batch_size``, ``steps``, ``n_checkpoints`` (log-spaced), ``ema`` (0 = off). Evaluation: ``n_samples`` DDIM
    samples with ``sampler_steps`` steps; memorized when d1/d2 < ``memorization_threshold``; ``n_bootstrap``
    resamples for the intervals; per-class denoising loss at the OU times ``loss_times`` on up to ``loss_images``
    images per class with ``loss_noise_draws`` noise draws; ``eval_batch_size``; ``classifier_epochs`` for the
    cached Fashion-MNIST classifier.
    """

    section: ClassVar[str] = "images"
    classes: tuple[int, ...] = (0, 1)
    counts: tuple[int, ...] | None = None
    weights: tuple[float, ...] | None = None
    n_train: int = 1000
    width: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4)
    attention: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.1
    class_conditional: bool = False
    schedule: str = "linear"
    num_diffusion_steps: int = 1000
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    batch_size: int = 128
    steps: int = 10000
    n_checkpoints: int = 12
    ema: float = 0.0
    n_samples: int = 1000
    sampler_steps: int = 100
    loss_times: tuple[float, ...] = (0.01, 0.1, 0.5)
    device: str = "auto"
    seed: int = 0
    num_res_blocks: int = 2
    memorization_threshold: float = 1.0 / 3.0
    n_bootstrap: int = 1000
    loss_images: int = 500
    loss_noise_draws: int = 2
    eval_batch_size: int = 256
    classifier_epochs: int = 2

    def __post_init__(self) -> None:
        s = "images."
        object.__setattr__(self, "num_res_blocks", _integer(s + "num_res_blocks", self.num_res_blocks, 1))
        thr = _positive(s + "memorization_threshold", self.memorization_threshold)
        if thr >= 1:
            raise ConfigError(s + "memorization_threshold", thr, "must lie in (0, 1) (memorized when d1/d2 < it)")
        object.__setattr__(self, "memorization_threshold", thr)
        object.__setattr__(self, "n_bootstrap", _integer(s + "n_bootstrap", self.n_bootstrap, 0))
        object.__setattr__(self, "loss_images", _integer(s + "loss_images", self.loss_images, 1))
        object.__setattr__(self, "loss_noise_draws", _integer(s + "loss_noise_draws", self.loss_noise_draws, 1))
        object.__setattr__(self, "eval_batch_size", _integer(s + "eval_batch_size", self.eval_batch_size, 1))
        object.__setattr__(self, "classifier_epochs", _integer(s + "classifier_epochs", self.classifier_epochs, 1))
        cls = _int_tuple(s + "classes", self.classes, 0)
        for i, c in enumerate(cls):
            if c > 9:
                raise ConfigError(f"{s}classes[{i}]", c, "must be a Fashion-MNIST label in 0..9")
        if len(set(cls)) != len(cls):
            raise ConfigError(s + "classes", list(cls), "must not repeat a class")
        object.__setattr__(self, "classes", cls)
        if self.counts is not None and self.weights is not None:
            raise ConfigError(s + "counts", list(self.counts), "give either images.counts or images.weights, not both")
        if self.counts is not None:
            cnt = _int_tuple(s + "counts", self.counts, 1)
            if len(cnt) != len(cls):
                raise ConfigError(s + "counts", list(cnt), f"must have one entry per class ({len(cls)})")
            object.__setattr__(self, "counts", cnt)
        if self.weights is not None:
            w = _float_tuple(s + "weights", self.weights, _positive)  # every class needs images
            if len(w) != len(cls):
                raise ConfigError(s + "weights", list(w), f"must have one entry per class ({len(cls)})")
            if abs(sum(w) - 1) > WEIGHT_TOLERANCE:
                raise ConfigError(s + "weights", list(w), f"must sum to 1 within {WEIGHT_TOLERANCE:g}")
            object.__setattr__(self, "weights", w)
        object.__setattr__(self, "n_train", _integer(s + "n_train", self.n_train, len(cls)))
        object.__setattr__(self, "width", _integer(s + "width", self.width, 8))
        if self.width % 8:
            raise ConfigError(s + "width", self.width, "must be a multiple of 8 (GroupNorm with 8 groups)")
        mults = _int_tuple(s + "channel_mults", self.channel_mults, 1)
        if len(mults) > 3:
            raise ConfigError(s + "channel_mults", list(mults), "at most 3 levels fit 28x28 images (28 -> 14 -> 7)")
        object.__setattr__(self, "channel_mults", mults)
        att = tuple(_bool(f"{s}attention[{i}]", a) for i, a in enumerate(self.attention))
        if len(att) != len(mults):
            raise ConfigError(s + "attention", list(att), f"must have one flag per level ({len(mults)})")
        object.__setattr__(self, "attention", att)
        d = _nonnegative(s + "dropout", self.dropout)
        if d >= 1:
            raise ConfigError(s + "dropout", d, "must lie in [0, 1)")
        object.__setattr__(self, "dropout", d)
        _bool(s + "class_conditional", self.class_conditional)
        _choice(s + "schedule", self.schedule, ("linear", "cosine"))
        object.__setattr__(self, "num_diffusion_steps", _integer(s + "num_diffusion_steps", self.num_diffusion_steps, 2))
        _choice(s + "optimizer", self.optimizer, ("adam", "sgd"))
        object.__setattr__(self, "learning_rate", _positive(s + "learning_rate", self.learning_rate))
        object.__setattr__(self, "batch_size", _integer(s + "batch_size", self.batch_size, 1))
        object.__setattr__(self, "steps", _integer(s + "steps", self.steps, 1))
        object.__setattr__(self, "n_checkpoints", _integer(s + "n_checkpoints", self.n_checkpoints, 1))
        e = _nonnegative(s + "ema", self.ema)
        if e >= 1:
            raise ConfigError(s + "ema", e, "must lie in [0, 1) (0 disables EMA)")
        object.__setattr__(self, "ema", e)
        object.__setattr__(self, "n_samples", _integer(s + "n_samples", self.n_samples, 1))
        object.__setattr__(self, "sampler_steps", _integer(s + "sampler_steps", self.sampler_steps, 1))
        if self.sampler_steps > self.num_diffusion_steps:
            raise ConfigError(s + "sampler_steps", self.sampler_steps,
                              f"must be <= images.num_diffusion_steps = {self.num_diffusion_steps}")
        object.__setattr__(self, "loss_times", _float_tuple(s + "loss_times", self.loss_times, _positive))
        _choice(s + "device", self.device, ("auto", "cpu", "cuda"))
        object.__setattr__(self, "seed", _integer(s + "seed", self.seed, 0))


@dataclass(frozen=True)
class SweepConfig(_Section):
    """A grid over config fields (``"section.field" = [values...]``), run through Dask."""

    section: ClassVar[str] = "sweep"
    command: str = "timescales"
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    scheduler: str = "local"
    n_workers: int = 2

    def __post_init__(self) -> None:
        s = "sweep."
        if not isinstance(self.command, str) or self.command not in SWEEP_COMMANDS:
            raise ConfigError(s + "command", self.command, "must be one of " + ", ".join(SWEEP_COMMANDS))
        if not isinstance(self.scheduler, str) or (
            self.scheduler not in SCHEDULERS and not self.scheduler.startswith(("tcp://", "tls://", "inproc://"))
        ):
            raise ConfigError(s + "scheduler", self.scheduler, "must be one of " + ", ".join(SCHEDULERS)
                              + " or a scheduler address such as 'tcp://host:8786'")
        if not isinstance(self.grid, Mapping):
            raise ConfigError(s + "grid", self.grid, "must be a table of 'section.field' = [values, ...]")
        grid = {}
        for key, values in self.grid.items():
            parts = str(key).split(".")
            if len(parts) != 2 or parts[0] not in SECTIONS or parts[0] == "sweep":
                raise ConfigError(f"{s}grid.{key}", values, "key must be 'section.field' with section one of "
                                  + ", ".join(x for x in SECTIONS if x != "sweep"))
            known = {f.name for f in fields(SECTIONS[parts[0]])}
            if parts[1] not in known:
                raise ConfigError(f"{s}grid.{key}", values, f"unknown field; {parts[0]} has " + ", ".join(sorted(known)))
            if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
                raise ConfigError(f"{s}grid.{key}", values, "must be a non-empty list of values")
            grid[str(key)] = tuple(values)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "n_workers", _integer(s + "n_workers", self.n_workers, 1))


SECTIONS: dict[str, type] = {
    "mixture": MixtureConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "theory": TheoryConfig,
    "images": ImagesConfig,
    "sweep": SweepConfig,
}


@dataclass(frozen=True)
class Config:
    """A whole experiment: one object per section (defaults where the file is silent)."""

    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    theory: TheoryConfig = field(default_factory=TheoryConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        if not isinstance(data, Mapping):
            raise ConfigError("<config>", data, "must be a table of sections")
        for key in data:
            if key not in SECTIONS:
                raise ConfigError(key, "...", "unknown section; allowed sections are " + ", ".join(SECTIONS))
        return cls(**{name: SECTIONS[name].from_dict(data[name]) for name in data})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A new, validated config with dotted fields replaced, e.g. ``{"mixture.weights": [0.9, 0.1]}``."""
        data = self.to_dict()
        for key, value in overrides.items():
            parts = key.split(".")
            if len(parts) != 2 or parts[0] not in SECTIONS:
                raise ConfigError(key, value, "override keys must be 'section.field'")
            data[parts[0]][parts[1]] = value
        return Config.from_dict(data)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the config (stable across runs and machines)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML config; ``None`` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), "...", f"is not valid TOML ({exc})") from exc
    return Config.from_dict(data)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(config: Config) -> str:
    """TOML text of a config; ``load_config`` of it gives back an equal config."""
    lines: list[str] = []
    for name, section in config.to_dict().items():
        tables = {k: v for k, v in section.items() if isinstance(v, Mapping)}
        lines.append(f"[{name}]")
        for k, v in section.items():
            if k not in tables:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, table in tables.items():
            lines.append(f"[{name}.{k}]")
            for kk, vv in table.items():
                lines.append(f"{json.dumps(kk)} = {_toml_value(vv)}")
        lines.append("")
    return "\n".join(lines)


def save_config(config: Config, path: str | Path) -> Path:
    """Write ``config`` as TOML, atomically."""
    from classdiff.core.io import write_text_atomic

    return write_text_atomic(Path(path), to_toml(config))
