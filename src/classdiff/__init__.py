"""classdiff: per-class learning, generalization and memorization in diffusion models.

The theory modules (numpy/scipy only) are imported lazily so that ``import classdiff`` is fast; the
torch-based modules (U-Net, iterative random-features trainer) are imported only when used.

Public API (mirrors the CLI): ``GaussianMixture``, ``RandomFeaturesScore``, ``FeatureSpectrum``,
``class_timescales``, ``class_timescales_for_mixture``, ``predict_for_data``, ``predict_for_mixture``,
``speciation_times``, ``train_unet``, ``memorization_by_class``, ``load_config``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "classdiff.core.config",
    "ConfigError": "classdiff.core.config",
    "load_config": "classdiff.core.config",
    "save_config": "classdiff.core.config",
    "GaussianMixture": "classdiff.data.mixture",
    "empirical_score": "classdiff.data.mixture",
    "equivalence_constants": "classdiff.rf.features",
    "RandomFeaturesScore": "classdiff.rf.model",
    "FeatureSpectrum": "classdiff.theory.spectrum",
    "class_timescales": "classdiff.theory.timescales",
    "class_timescales_for_mixture": "classdiff.theory.timescales",
    "predict_for_data": "classdiff.theory.audit",
    "predict_for_mixture": "classdiff.theory.audit",
    "speciation_times": "classdiff.theory.speciation",
    "train_unet": "classdiff.images.ddpm",
    "memorization_by_class": "classdiff.images.memorization",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'classdiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
