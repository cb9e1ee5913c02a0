"""The one JSON encoding of results keeps +inf, nan, "not reached" and None apart; the one class-order rule."""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass

import numpy as np
import pytest

from classdiff.core.io import read_json, write_json_atomic
from classdiff.core.readoff import ORDER_KEYS, class_order, memorization_time
from classdiff.core.results import NOT_REACHED, decode, encode, format_value, is_reached, reached, time_or_nan


@dataclass
class _Row:
    label: int
    tau: float | object


def test_encoding_keeps_the_four_cases_apart_and_round_trips(tmp_path):
    value = {"t": [1.5, math.inf, math.nan, NOT_REACHED, None, -math.inf], "arr": np.array([np.inf, 2.0]),
             "rows": [_Row(0, NOT_REACHED), _Row(1, 0.25)], "n": np.int64(3), "flag": True}
    enc = encode(value)
    assert enc["t"] == [1.5, "inf", "nan", "not reached", None, "-inf"]
    assert enc["arr"] == ["inf", 2.0]
    assert enc["rows"] == [{"label": 0, "tau": "not reached"}, {"label": 1, "tau": 0.25}]
    assert enc["n"] == 3 and type(enc["n"]) is int and enc["flag"] is True
    text = json.dumps(enc, allow_nan=False)  # strictly valid JSON
    dec = decode(json.loads(text))
    assert dec["t"][0] == 1.5 and dec["t"][1] == math.inf and math.isnan(dec["t"][2])
    assert dec["t"][3] is NOT_REACHED and dec["t"][4] is None and dec["t"][5] == -math.inf
    path = write_json_atomic(tmp_path / "r.json", value)
    assert read_json(path)["rows"][0]["tau"] is NOT_REACHED


def test_not_reached_is_a_pickling_singleton_and_formats_distinctly():
    assert pickle.loads(pickle.dumps(NOT_REACHED)) is NOT_REACHED
    assert [format_value(v) for v in (math.inf, math.nan, NOT_REACHED, None, 0.123456, 7)] == \
        ["inf", "nan", "not reached", "-", "0.1235", "7"]
    assert reached(float("nan")) is NOT_REACHED and reached(2.0) == 2.0 and reached(math.inf) == math.inf
    assert is_reached(math.inf) and not is_reached(NOT_REACHED) and not is_reached(math.nan) and not is_reached(None)
    assert math.isnan(time_or_nan(NOT_REACHED)) and time_or_nan(3) == 3.0


def test_memorization_time_not_reached_on_the_grid_becomes_not_reached():
    tau = np.geomspace(0.1, 10, 20)
    gap = np.where(tau > 5, 1.0, 0.0)
    train = np.zeros_like(tau)
    assert reached(memorization_time(tau, train, gap)) == pytest.approx(tau[tau > 5][0], rel=0.2)
    flat = np.zeros_like(tau)
    assert reached(memorization_time(tau, train, flat)) is NOT_REACHED


def test_class_order_rule():
    times = [2.0, NOT_REACHED, 1.0, math.nan, math.inf, None, 1.0]
    assert class_order(times) == [2, 6, 0, 4, 1]  # ties by position, not reached last, not computed left out
    assert class_order(times, backward_time=True) == [4, 0, 2, 6, 1]
    assert class_order([3.0, 1.0], labels=[7, 9]) == [9, 7]
    with pytest.raises(ValueError, match="labels"):
        class_order([1.0], labels=[0, 1])
    assert set(ORDER_KEYS.values()) == {"generalization_order", "memorization_order", "speciation_order"}
