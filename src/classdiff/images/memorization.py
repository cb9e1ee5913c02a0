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

__all__ = ["ATTRIBUTIONS", "bootstrap_interval", "fractions_by_class", "memorization_by_class", "nearest_two"]


def _blocks(m: int, chunk: int, progress: bool, desc: str):
    """Start indices of the query blocks, with a progress bar on stderr when ``progress``."""
    starts = range(0, m, chunk)
    if not progress:
        return starts
    import sys

    from tqdm.auto import tqdm

    return tqdm(starts, desc=desc, unit="block", file=sys.stderr, leave=False)


def _candidates_torch(q: NDArray[np.float32], r: NDArray[np.float32], k: int, chunk: int, device: str,
                      progress: bool = False) -> NDArray[np.int64]:
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
    for i in _blocks(q.shape[0], chunk, progress, "nearest neighbours"):
        qt = qt_all[i:i + chunk].to(device)
        m = qt.shape[0]
        d = torch.addmm(r2, qt, rt.T, beta=1.0, alpha=-2.0, out=scores[:m])
        torch.topk(d, k, dim=1, largest=False, out=(values[:m], indices[:m]))
        out[i:i + m] = indices[:m].cpu().numpy()
    return out


def _candidates_faiss(q: NDArray[np.float32], r: NDArray[np.float32], k: int, chunk: int,
                      progress: bool = False) -> NDArray[np.int64]:
    try:
        import faiss
    except ImportError:
        raise ValueError("backend = 'faiss': faiss is not installed (pip install faiss-cpu, or the 'bench' "
                         "extra); use backend 'torch'") from None

    index = faiss.IndexFlatL2(r.shape[1])
    index.add(np.ascontiguousarray(r))
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for i in _blocks(q.shape[0], max(chunk, 1), progress, "nearest neighbours (faiss)"):
        _, idx = index.search(np.ascontiguousarray(q[i:i + chunk]), k)
        out[i:i + len(idx)] = idx
    return out


def nearest_two(
    queries: ArrayLike,
    references: ArrayLike,
    *,
    backend: str = "torch",
    chunk: int = 1024,
    device: str = "cpu",
    candidates: int = 8,
    progress: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """The two nearest references of each query: (d1, d2, i1, i2), each of shape (m,).

    ``queries`` (m, ...) and ``references`` (n, ...) are flattened; distances are exact float64 L2 norms of
    the best ``candidates`` found in float32 (``backend`` "torch" or "faiss"), ``chunk`` queries at a time
    (memory about chunk * n * 4 bytes on top of the data); ``progress`` shows a bar per block. Needs n >= 2.
    """
    q = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
    r = np.asarray(references, dtype=np.float32).reshape(len(references), -1)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} features but references have {r.shape[1]}")
    if r.shape[0] < 2:
        raise ValueError(f"references: need at least 2 images, got {r.shape[0]}")
    k = min(candidates, r.shape[0])
    if backend == "torch":
        cand = _candidates_torch(q, r, k, chunk, device, progress)
    elif backend == "faiss":
        cand = _candidates_faiss(q, r, k, chunk, progress)
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


#: indices drawn per bootstrap block (memory about 8 bytes each)
BOOTSTRAP_BLOCK = 4_000_000


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
    hit = values * member
    num = np.empty(n_bootstrap)
    den = np.empty(n_bootstrap)
    rows = max(2, (BOOTSTRAP_BLOCK // max(m, 1)) // 2 * 2)  # an even number of resamples per block
    for i in range(0, n_bootstrap, rows):  # in blocks: memory rows * m, the same draws as one (n_bootstrap, m) call
        idx = rng.integers(0, m, size=(min(rows, n_bootstrap - i), m))
        num[i:i + len(idx)] = hit[idx].sum(axis=1)
        den[i:i + len(idx)] = member[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = np.where(den > 0, num / np.maximum(den, 1), np.nan)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan"), float("nan")
    a = (1 - level) / 2
    return float(stats.std()), float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


#: how a generated sample is attributed to a class: result-key suffix and count key of each attribution
ATTRIBUTIONS: dict[str, tuple[str, str]] = {
    "nearest": ("", "n_nearest"),          # the label of its nearest training image
    "classifier": ("_classifier", "n_classifier"),  # a classifier's predicted label
    "conditioning": ("_conditioning", "n_conditioning"),  # the class it was generated for (conditional models)
}


def fractions_by_class(memorized: NDArray[np.float64], attributed: dict[str, NDArray | None], classes: ArrayLike,
                       n_bootstrap: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Per class: count, f_mem, its bootstrap std and 95 % interval, and share, for each attribution given.

    ``memorized`` (m,) in {0, 1}; ``attributed`` maps names of :data:`ATTRIBUTIONS` to labels (m,) or None
    (skipped). Keys per class: ``label`` and, per attribution with suffix s, ``n_<name>``, ``f_mem<s>`` (None
    when no sample is attributed to the class), ``f_mem<s>_std``, ``f_mem<s>_ci`` and ``share<s>``.
    """
    m = memorized.size
    out = []
    for c in np.asarray(classes):
        rec: dict[str, Any] = {"label": int(c)}
        for name, lab in attributed.items():
            if lab is None:
                continue
            key, count_key = ATTRIBUTIONS[name]
            member = np.asarray(lab) == c
            cnt = int(member.sum())
            rec[count_key] = cnt
            rec["f_mem" + key] = float(memorized[member].mean()) if cnt else None
            s, a, b = bootstrap_interval(memorized, member, n_bootstrap, rng) if cnt else (np.nan,) * 3
            rec["f_mem" + key + "_std"] = s
            rec["f_mem" + key + "_ci"] = [a, b]
            rec["share" + key] = float(memorized[member].sum() / m) if m else None
        out.append(rec)
    return out


def memorization_by_class(
    samples: ArrayLike,
    train_images: ArrayLike,
    train_labels: ArrayLike,
    *,
    classes: Sequence[int] | None = None,
    classifier_labels: ArrayLike | None = None,
    sample_labels: ArrayLike | None = None,
    threshold: float = 1.0 / 3.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
    backend: str = "torch",
    device: str = "cpu",
    chunk: int = 1024,
    progress: bool = False,
) -> dict[str, Any]:
    """Overall and per-class memorization fractions of ``samples`` (m, ...) w.r.t. ``train_images`` (n, ...).

    Returns a JSON-able dict::

        {"f_mem": ..., "f_mem_ci": [lo, hi], "f_mem_std": ..., "n_samples": m, "threshold": k,
         "classes": [{"label": c, "n_nearest": ..., "f_mem": ..., "f_mem_ci": [lo, hi], "share": ...,
                      "n_classifier": ..., "f_mem_classifier": ..., "f_mem_classifier_ci": [...]}, ...],
         "ratio": [d1/d2 per sample], "nearest_index": [...], "second_index": [...], "nearest_label": [...]}

    The classifier keys appear when ``classifier_labels`` (m,) are given, ``*_conditioning`` keys when
    ``sample_labels`` (m,) (the classes the samples were generated for) are given (:func:`fractions_by_class`).
    ``f_mem`` of a class without attributed samples is None.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold = {threshold!r}: must lie in (0, 1)")
    train_labels = np.asarray(train_labels)
    d1, d2, i1, i2 = nearest_two(samples, train_images, backend=backend, device=device, chunk=chunk,
                                 progress=progress)
    ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 1.0)  # two identical neighbours: not memorized
    memorized = (ratio < threshold).astype(np.float64)
    nearest_label = train_labels[i1]
    labs = np.unique(train_labels) if classes is None else np.asarray(classes)
    rng = np.random.default_rng(seed)
    std, lo, hi = bootstrap_interval(memorized, None, n_bootstrap, rng)
    attributed = {"nearest": nearest_label,
                  "classifier": None if classifier_labels is None else np.asarray(classifier_labels),
                  "conditioning": None if sample_labels is None else np.asarray(sample_labels)}
    m = memorized.size
    return {
        "f_mem": float(memorized.mean()) if m else None, "f_mem_std": std, "f_mem_ci": [lo, hi],
        "n_samples": int(m), "threshold": float(threshold),
        "classes": fractions_by_class(memorized, attributed, labs, n_bootstrap, rng),
        "ratio": ratio.tolist(), "nearest_index": i1.tolist(), "second_index": i2.tolist(),
        "nearest_label": nearest_label.tolist(),
    }
