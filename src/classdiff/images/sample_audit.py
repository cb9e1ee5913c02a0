"""Per-class memorization audit of generated samples from any diffusion model against its training set.

:func:`audit_samples` takes generated images (an :class:`~classdiff.data.image_sets.ImageSet`, labelled with the
classes they were generated for when the model is class-conditional) and the labelled training set, and gives

* memorization (:func:`classdiff.images.memorization.memorization_by_class`): the nearest / second-nearest
  distance ratio of every sample (memorized when d1 / d2 < threshold, 1/3 by default), f_mem overall and per
  class under each attribution available: the nearest training image's label, a classifier trained on the
  training set (:mod:`classdiff.images.classifier`), and the conditioning label; 95 % bootstrap intervals;
* quality per class: the Fréchet distance between classifier features of the samples attributed to a class
  and of that class's training images (:func:`classdiff.images.quality.frechet_by_class`), and the class
  histogram of the samples (classifier labels) against the training weights (over- / under-production);
* the measured memorization order (most memorized class first) from the per-class f_mem and their
  intervals, reported only where the intervals separate (:func:`classdiff.core.readoff.interval_order`);
* the theory's prediction for the same training set (:func:`classdiff.theory.audit.audit`: statistics and
  predicted tau_mem per class, earliest first = memorized first), and the agreement of the two orders by
  :func:`classdiff.core.readoff.pairwise_agreement` (pairs the measurement resolves that the theory orders
  the same way).

The per-sample arrays (ratio, neighbour indices, labels) are returned apart from the JSON-able summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from classdiff.core.config import Config
from classdiff.core.readoff import interval_order, pairwise_agreement
from classdiff.data.image_sets import ImageSet

__all__ = ["SampleAudit", "audit_samples", "primary_attribution"]


@dataclass
class SampleAudit:
    """Result of :func:`audit_samples`: ``summary`` (JSON-able) and ``arrays`` (per-sample, for an npz)."""

    summary: dict[str, Any]
    arrays: dict[str, NDArray] = field(repr=False)


def primary_attribution(summary_classes: list[dict[str, Any]]) -> str:
    """The attribution the measured order uses: conditioning labels if present, else classifier, else nearest."""
    keys = set().union(*(c.keys() for c in summary_classes)) if summary_classes else set()
    for name, key in (("conditioning", "n_conditioning"), ("classifier", "n_classifier")):
        if key in keys:
            return name
    return "nearest"


def _reference_subset(labels: NDArray[np.int64], cap: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Up to ``cap`` indices per class, drawn without replacement, sorted."""
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picks.append(idx if len(idx) <= cap else rng.choice(idx, cap, replace=False))
    return np.sort(np.concatenate(picks))


def audit_samples(
    samples: ImageSet,
    train: ImageSet,
    *,
    threshold: float = 1.0 / 3.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
    backend: str = "torch",
    device: str = "cpu",
    chunk: int = 1024,
    classifier: bool = True,
    classifier_epochs: int = 2,
    reference_per_class: int = 2000,
    theory: Config | bool | None = None,
    progress: bool = False,
) -> SampleAudit:
    """Memorization, quality and predicted-vs-measured order of ``samples`` (m, C, H, W) against ``train``.

    ``train`` must be labelled; ``samples`` labels, when present, are the conditioning classes. ``theory``:
    a base :class:`~classdiff.core.config.Config` for the random-features settings (psi_p, t, activation),
    None for the default config, False to skip the prediction. ``reference_per_class`` caps the training
    images per class whose classifier features enter the Fréchet distances (drawn with ``seed``).
    """
    from classdiff.images.memorization import memorization_by_class

    if train.y is None:
        raise ValueError(f"{train.source}: the training set needs labels (one sub-folder per class, or 'y')")
    if samples.image_shape != train.image_shape:
        raise ValueError(f"{samples.source}: samples have shape {samples.image_shape} (C, H, W) but the training "
                         f"images {train.source} have {train.image_shape}")
    if train.n < 2:
        raise ValueError(f"{train.source}: need at least 2 training images, got {train.n}")
    classes = train.classes
    timings: dict[str, float] = {}
    start = time.perf_counter()
    clf_labels = None
    quality: dict[str, Any] = {"available": False, "reason": "classifier disabled"}
    if classifier:
        from classdiff.images.classifier import classifier_features, get_classifier
        from classdiff.images.quality import class_histogram, frechet_by_class

        model = get_classifier(train.x, train.y, epochs=classifier_epochs, seed=seed, device=device,
                               progress=progress)
        s_feats, clf_labels = classifier_features(model, samples.x, device=device)
        ref = _reference_subset(train.y, reference_per_class, np.random.default_rng(seed))
        r_feats, r_pred = classifier_features(model, train.x[ref], device=device)
        fd = frechet_by_class(s_feats, clf_labels, r_feats, train.y[ref], classes)
        weights = [float(np.mean(train.y == c)) for c in classes]
        hist = class_histogram(clf_labels, classes)
        quality = {
            "available": True,
            "classifier_train_accuracy": float(np.mean(r_pred == train.y[ref])),
            "reference_per_class": int(reference_per_class),
            "classes": [{"label": int(c), "frechet": fd[int(c)], "sample_fraction": h, "data_weight": w,
                         "production_ratio": h / w if w > 0 else float("nan")}
                        for c, h, w in zip(classes, hist, weights, strict=True)],
        }
    timings["classifier_and_quality_s"] = time.perf_counter() - start
    start = time.perf_counter()
    mem = memorization_by_class(samples.flat(), train.flat(), train.y, classes=classes,
                                classifier_labels=clf_labels, sample_labels=samples.y, threshold=threshold,
                                n_bootstrap=n_bootstrap, seed=seed, backend=backend, device=device, chunk=chunk,
                                progress=progress)
    timings["memorization_s"] = time.perf_counter() - start  # nearest neighbours and bootstrap intervals
    arrays: dict[str, NDArray] = {
        "ratio": np.asarray(mem.pop("ratio")), "nearest_index": np.asarray(mem.pop("nearest_index")),
        "second_index": np.asarray(mem.pop("second_index")), "nearest_label": np.asarray(mem.pop("nearest_label")),
    }
    if clf_labels is not None:
        arrays["classifier_label"] = clf_labels
    if samples.y is not None:
        arrays["conditioning_label"] = samples.y
    attribution = primary_attribution(mem["classes"])
    suffix = {"nearest": "", "classifier": "_classifier", "conditioning": "_conditioning"}[attribution]
    measured = interval_order([c.get("f_mem" + suffix) for c in mem["classes"]],
                              [c.get("f_mem" + suffix + "_ci") for c in mem["classes"]],
                              [c["label"] for c in mem["classes"]], descending=True)
    measured["attribution"] = attribution
    measured["rule"] = ("classes sorted by f_mem (most memorized first); the order is reported only when the 95% "
                        "bootstrap intervals of neighbouring classes are disjoint, else 'not resolved'")
    summary: dict[str, Any] = {
        "samples": samples.source, "train": train.source, "n_samples": samples.n, "n_train": train.n,
        "image_shape": list(samples.image_shape), "backend": backend,
        "memorization": mem, "quality": quality, "measured_memorization_order": measured,
    }
    if theory is not False:
        start = time.perf_counter()
        summary["theory"] = _theory(train, None if theory is None or theory is True else theory)
        timings["theory_s"] = time.perf_counter() - start
        if summary["theory"]["available"]:
            predicted = summary["theory"]["memorization_order"]
            summary["agreement"] = {
                "rule": "over the pairs of classes whose measured f_mem intervals are disjoint, the fraction the "
                        "theory orders the same way (predicted tau_mem earlier = memorized more)",
                **pairwise_agreement(measured, predicted),
            }
    summary["timings"] = timings
    return SampleAudit(summary=summary, arrays=arrays)


def _theory(train: ImageSet, base: Config | None) -> dict[str, Any]:
    """The :func:`classdiff.theory.audit.audit` of the training set, or the reason it failed."""
    from classdiff.theory.audit import audit

    try:
        result = audit(train.flat(), train.y, base)
    except Exception as exc:  # the theory may fail on some statistics: report it, keep the measurement
        return {"available": False, "reason": f"theory prediction failed: {type(exc).__name__}: {exc}"}
    return {"available": True, **result.to_dict()}
