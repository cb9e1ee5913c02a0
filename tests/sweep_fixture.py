"""A slow but real sweep point used by tests/test_sweep.py (importable by Dask workers via PYTHONPATH)."""

import os
import time

import numpy as np

from classdiff.core.config import Config
from classdiff.data.mixture import GaussianMixture


def slow_point(config: Config) -> dict:
    """Per-class sample means/variances of the mixture (seeded), after a pause that lets a test kill the sweep."""
    log = os.environ.get("SWEEP_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(config.digest() + "\n")
    time.sleep(float(os.environ.get("SWEEP_DELAY", "0.5")))
    gm = GaussianMixture.from_config(config.mixture)
    n = max(2 * gm.n_classes, round(config.model.psi_n * config.mixture.dim))
    ts = gm.sample(n, seed=config.mixture.seed)
    return {
        "n": n,
        "classes": [
            {"label": c, "count": int(ts.counts[c]), "variance": float(ts.of_class(c).var()),
             "mean_norm": float(np.linalg.norm(ts.of_class(c).mean(0)))}
            for c in range(gm.n_classes)
        ],
    }
