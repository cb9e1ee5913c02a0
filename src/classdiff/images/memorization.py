"""Exact nearest neighbours in the training set and the per-class memorization fraction f_mem,c.

Criterion (Carlini et al. 2023; Gu et al. 2023; Bonnaire et al. 2505.17638 SM): for a generated sample x let
d1 <= d2 be its two smallest L2 distances to the training images (flattened pixels in [-1, 1]); x is
*memorized* when d1 / d2 < k, k = 1/3 by default.

Per class: each sample is attributed to a class either by its nearest training image (``"nearest"``) or by a
classifier's label (``"classifier"``, when labels are given). For class c,

    f_mem,c = #{memorized samples attributed to c} / #{samples attributed to c}

and ``share_c`` = #{memorized samples attributed to c} / #{samples}. 95 % confidence intervals by bootstrap
over the samples (``n_bootstrap`` resamples with replacement, percentile intervals).

Nearest neighbours: chunked matrix products ||q||^2 + ||r||^2 - 2 q.r (float32, on CPU or GPU) select a few
candidates per query, whose distances are then recomputed exactly in float64 and sorted; ``backend="faiss"``
uses faiss-cpu's exact ``IndexFlatL2`` for the candidates instead (only when installed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["bootstrap_interval", "memorization_by_class", "nearest_two"]


def _candidates_torch(q: NDArray[np.float32], r: NDArray[np.float32], k: int, chunk: int, device: str
                      ) -> NDArray[np.int64]:
    """Indices (m, k) of the k smallest float32 distances of each query (rows of ``q``) to the rows of ``r``.

    Per chunk of queries, one ``addmm`` gives ||r||^2 - 2 q.r (the ranking of ||q - r||^2 without the per-row
    constant ||q||^2) into a (chunk, n) buffer allocated once, then ``topk`` writes straight into the result:
    no chunk-sized temporaries (on CPU, fresh allocations of this size are page-faulted in on every chunk).
    """
    import torch

    rt = torch.from_numpy(r).to(device)
    r2 = (rt * rt).sum(1)
    qt_all = torch.from_numpy(q)
    chunk = max(1, min(chunk, q.shape[0]))
    scores = torch.empty(chunk, rt.shape[0], device=device)
    values = torch.empty(chunk, k, device=device)
    indices = torch.empty(chunk, k, dtype=torch.int64, device=device)
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for i in range(0, q.shape[0], chunk):
        qt = qt_all[i:i + chunk].to(device)
        m = qt.shape[0]
        d = torch.addmm(r2, qt, rt.T, beta=1.0, alpha=-2.0, out=scores[:m])
        torch.topk(d, k, dim=1, largest=False, out=(values[:m], indices[:m]))
        out[i:i + m] = indices[:m].cpu().numpy()
    return out


def _candidates_faiss(q: NDArray[np.float32], r: NDArray[np.float32], k: int) -> NDArray[np.int64]:
    import faiss

    index = faiss.IndexFlatL2(r.shape[1])
    index.add(np.ascontiguousarray(r))
    _, idx = index.search(np.ascontiguousarray(q), k)
    return idx.astype(np.int64)


def nearest_two(
    queries: ArrayLike,
    references: ArrayLike,
    *,
    backend: str = "torch",
    chunk: int = 1024,
    device: str = "cpu",
    candidates: int = 8,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """The two nearest references of each query: (d1, d2, i1, i2), each of shape (m,).

    ``queries`` (m, ...) and ``references`` (n, ...) are flattened; distances are exact float64 L2 norms of
    the best ``candidates`` found in float32 (``backend`` "torch" or "faiss"). Needs n >= 2.
    """
    q = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
    r = np.asarray(references, dtype=np.float32).reshape(len(references), -1)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} features but references have {r.shape[1]}")
    if r.shape[0] < 2:
        raise ValueError(f"references: need at least 2 images, got {r.shape[0]}")
    k = min(candidates, r.shape[0])
    if backend == "torch":
        cand = _candidates_torch(q, r, k, chunk, device)
    elif backend == "faiss":
        cand = _candidates_faiss(q, r, k)
    else:
        raise ValueError(f"backend = {backend!r}: must be 'torch' or 'faiss'")
    q64 = q.astype(np.float64)
    dist = np.empty(cand.shape, dtype=np.float64)
    for j in range(k):
        diff = q64 - r[cand[:, j]].astype(np.float64)
        dist[:, j] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    order = np.lexsort((cand, dist), axis=1)  # by distance, ties by index
    rows = np.arange(len(q))[:, None]
    dist, cand = dist[rows, order], cand[rows, order]
    return dist[:, 0], dist[:, 1], cand[:, 0], cand[:, 1]


def bootstrap_interval(
    values: NDArray[np.float64], groups: NDArray[np.bool_] | None, n_bootstrap: int, rng: np.random.Generator,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(std, lo, hi) of mean(values[groups]) over bootstrap resamples of the samples (nan if undefined).

    ``values`` (m,) in {0, 1}; ``groups`` (m,) boolean membership (None: all samples).
    """
    m = values.size
    if n_bootstrap <= 0 or m == 0:
        return float("nan"), float("nan"), float("nan")
    member = np.ones(m, dtype=bool) if groups is None else groups
    idx = rng.integers(0, m, size=(n_bootstrap, m))
    num = (values[idx] * member[idx]).sum(axis=1)
    den = member[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = np.where(den > 0, num / np.maximum(den, 1), np.nan)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan"), float("nan")
    a = (1 - level) / 2
    return float(stats.std()), float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def memorization_by_class(
    samples: ArrayLike,
    train_images: ArrayLike,
    train_labels: ArrayLike,
    *,
    classes: Sequence[int] | None = None,
    classifier_labels: ArrayLike | None = None,
    threshold: float = 1.0 / 3.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
    backend: str = "torch",
    device: str = "cpu",
) -> dict[str, Any]:
    """Overall and per-class memorization fractions of ``samples`` (m, ...) w.r.t. ``train_images`` (n, ...).

    Returns a JSON-able dict::

        {"f_mem": ..., "f_mem_ci": [lo, hi], "f_mem_std": ..., "n_samples": m, "threshold": k,
         "classes": [{"label": c, "n_nearest": ..., "f_mem": ..., "f_mem_ci": [lo, hi], "share": ...,
                      "n_classifier": ..., "f_mem_classifier": ..., "f_mem_classifier_ci": [...]}, ...],
         "ratio": [d1/d2 per sample], "nearest_index": [...], "nearest_label": [...]}

    ``f_mem`` of a class without attributed samples is None.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold = {threshold!r}: must lie in (0, 1)")
    train_labels = np.asarray(train_labels)
    d1, d2, i1, _ = nearest_two(samples, train_images, backend=backend, device=device)
    ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 1.0)  # two identical neighbours: not memorized
    memorized = (ratio < threshold).astype(np.float64)
    nearest_label = train_labels[i1]
    labs = np.unique(train_labels) if classes is None else np.asarray(classes)
    rng = np.random.default_rng(seed)
    std, lo, hi = bootstrap_interval(memorized, None, n_bootstrap, rng)
    clf = None if classifier_labels is None else np.asarray(classifier_labels)
    per_class = []
    m = memorized.size
    for c in labs:
        rec: dict[str, Any] = {"label": int(c)}
        for key, lab in (("", nearest_label), ("_classifier", clf)):
            if lab is None:
                continue
            member = lab == c
            cnt = int(member.sum())
            rec["n_nearest" if key == "" else "n_classifier"] = cnt
            rec["f_mem" + key] = float(memorized[member].mean()) if cnt else None
            s, a, b = bootstrap_interval(memorized, member, n_bootstrap, rng) if cnt else (np.nan,) * 3
            rec["f_mem" + key + "_std"] = s
            rec["f_mem" + key + "_ci"] = [a, b]
            rec["share" + key] = float(memorized[member].sum() / m) if m else None
        per_class.append(rec)
    return {
        "f_mem": float(memorized.mean()) if m else None, "f_mem_std": std, "f_mem_ci": [lo, hi],
        "n_samples": int(m), "threshold": float(threshold), "classes": per_class,
        "ratio": ratio.tolist(), "nearest_index": i1.tolist(), "nearest_label": nearest_label.tolist(),
    }
