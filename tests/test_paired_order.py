"""Paired (seed-by-seed) orders of classes measured in the same runs (core.seed_statistics.paired_order).

Checks against an independent computation: each pair's interval excludes 1 exactly when scipy's one-sample t
test of the log ratios rejects at 5%, and its bounds equal exp(mean +- t_{0.975} se) computed here; correlated
seeds resolve a pair whose marginal intervals overlap; unreached seeds drop out of that pair only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from classdiff.core.results import NOT_REACHED
from classdiff.core.seed_statistics import (
    order_with_intervals,
    paired_agreement,
    paired_order,
    paired_order_text,
    summarize_times,
)


def _correlated_times(seeds: int, ratio: float, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    common = np.exp(rng.normal(0.0, 0.5, seeds))  # a large seed effect shared by both classes
    own = np.exp(rng.normal(0.0, 0.03, (2, seeds)))
    return [list(100.0 * common * own[0]), list(100.0 * ratio * common * own[1])]


def test_pairs_match_a_t_test_and_resolve_what_marginals_cannot() -> None:
    times = _correlated_times(8, 1.15, seed=1)
    marginal = order_with_intervals([summarize_times(t) for t in times], [8, 1])
    assert not marginal["resolved"]
    paired = paired_order(times, [8, 1])
    assert paired["resolved"] and paired["order"] == [8, 1]
    logs = np.log(np.array(times[0]) / np.array(times[1]))
    half = stats.t.ppf(0.975, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size)
    pair = paired["pairs"][0]
    assert pair["classes"] == [8, 1] and pair["first"] == 8 and pair["n_seeds"] == 8
    np.testing.assert_allclose(pair["interval"], np.exp([logs.mean() - half, logs.mean() + half]), rtol=1e-12)
    np.testing.assert_allclose(pair["ratio"], math.exp(logs.mean()), rtol=1e-12)
    for k in range(20):  # the verdict is the t test's, on random data of either sign
        times = _correlated_times(5, float(np.exp(np.random.default_rng(k).normal(0, 0.03))), seed=100 + k)
        pair = paired_order(times, [0, 1])["pairs"][0]
        logs = np.log(np.array(times[0]) / np.array(times[1]))
        rejects = stats.ttest_1samp(logs, 0.0).pvalue < 0.05
        assert (pair["first"] is not None) == rejects, k
        if rejects:
            assert pair["first"] == (0 if logs.mean() < 0 else 1)


def test_descending_unreached_and_cycles() -> None:
    times = _correlated_times(6, 1.2, seed=2)
    assert paired_order(times, [8, 1], descending=True)["order"] == [1, 8]  # larger first (t_S)
    times[1][0] = NOT_REACHED
    times[0][1] = math.inf
    pair = paired_order(times, [8, 1])["pairs"][0]
    assert pair["n_seeds"] == 4
    lone = paired_order([[1.0, 2.0], [NOT_REACHED, 3.0]], [0, 1])
    assert not lone["resolved"] and lone["pairs"][0]["n_seeds"] == 1 and math.isnan(lone["pairs"][0]["interval"][0])
    # a before b resolved, a vs c not: no order is claimed
    base = np.array([1.0, 1.3, 0.8, 1.1, 0.9, 1.2])
    a = base
    b = base * np.array([1.10, 1.12, 1.11, 1.09, 1.10, 1.11])
    c = a * np.array([1.3, 0.8, 1.25, 0.85, 1.2, 0.9])
    three = paired_order([list(a), list(b), list(c)], [0, 1, 2])
    firsts = {tuple(p["classes"]): p["first"] for p in three["pairs"]}
    assert firsts[(0, 1)] == 0 and firsts[(0, 2)] is None and not three["resolved"]
    text = paired_order_text(three)
    assert text.startswith("not resolved") and "0/1" in text
    with pytest.raises(ValueError, match="labels"):
        paired_order([[1.0], [2.0]], [0])
    with pytest.raises(ValueError, match="one time per seed"):
        paired_order([[1.0, 2.0], [2.0]], [0, 1])


def test_agreement_counts_resolved_pairs_only() -> None:
    times = _correlated_times(8, 1.15, seed=1)
    paired = paired_order(times, [8, 1])
    assert paired_agreement(paired, [8, 1]) == {"pairs": 1, "agree": 1, "fraction": 1.0, "disagreeing": []}
    assert paired_agreement(paired, [1, 8])["disagreeing"] == [[8, 1]]
    tie = paired_order([[1.0, 2.0, 3.0], [1.1, 1.9, 3.05]], [8, 1])
    out = paired_agreement(tie, [8, 1])
    assert out["pairs"] == 0 and math.isnan(out["fraction"])
