"""The theory side of the U-Net evaluation: ``theory_prediction`` is ``audit.predict_for_data`` (or a reason when
the theory fails) and the comparison table reads the orders under the ``ORDER_KEYS`` names."""

from __future__ import annotations

import numpy as np
import pytest

from classdiff.core.config import Config
from classdiff.core.readoff import ORDER_KEYS
from classdiff.core.results import NOT_REACHED
from classdiff.images import evaluation
from classdiff.theory.audit import predict_for_data


def _images():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0.2, 0.4, (50, 1, 6, 6)), rng.normal(-0.2, 0.9, (30, 1, 6, 6))])
    return x, np.array([7] * 50 + [0] * 30)


def test_theory_prediction_is_the_audit_prediction():
    x, y = _images()
    config = Config()
    res = evaluation.theory_prediction(x, y, (7, 0), config)
    pred = predict_for_data(x, y, config, labels=(7, 0))
    assert res == {"available": True, **pred.to_dict()}
    assert [c["label"] for c in res["classes"]] == [7, 0]  # the classes in the order asked for
    assert sorted(res[ORDER_KEYS["tau_gen"]]) == [0, 7] and sorted(res[ORDER_KEYS["tau_mem"]]) == [0, 7]
    assert {k for k in res if k.endswith("_order")} == {ORDER_KEYS["tau_gen"], ORDER_KEYS["tau_mem"]}
    assert res["psi_n"] == pytest.approx(80 / 36)


def test_theory_failure_is_reported_not_raised(monkeypatch):
    def fail(*args, **kwargs):
        raise FloatingPointError("no root in the scan")

    monkeypatch.setattr(evaluation, "predict_for_data", fail)
    x, y = _images()
    res = evaluation.theory_prediction(x, y, (0, 7), Config())
    assert res == {"available": False, "reason": "theory prediction failed: FloatingPointError: no root in the scan"}


def _result(theory):
    return {"statistics": {"counts": [50, 30], "variances": [0.16, 0.81], "centroid_norms": [0.2, 0.2]},
            "theory": theory,
            "measured": {"classes": [{"label": 7, "tau_gen": 40.0, "tau_mem": NOT_REACHED, "tau_fmem": float("nan"),
                                      "f_mem_final": None},
                                     {"label": 0, "tau_gen": 20.0, "tau_mem": 300.0, "tau_fmem": 250.0,
                                      "f_mem_final": 0.5}],
                         ORDER_KEYS["tau_gen"]: [0, 7], ORDER_KEYS["tau_mem"]: [0, 7],
                         evaluation.FMEM_ORDER_KEY: [0, 7]}}


def test_comparison_table_reads_the_order_keys():
    theory = {"available": True, "classes": [{"label": 7, "tau_gen": 12.5, "tau_mem": 60.0},
                                             {"label": 0, "tau_gen": 8.25, "tau_mem": 70.0}],
              ORDER_KEYS["tau_gen"]: [0, 7], ORDER_KEYS["tau_mem"]: [7, 0]}
    lines = evaluation.format_comparison(_result(theory)).splitlines()
    assert lines[2].split() == ["7", "50", "0.160", "0.200", "|", "12.5", "60", "|", "40", "not", "reached", "nan",
                                "-"]
    assert lines[3].split() == ["0", "30", "0.810", "0.200", "|", "8.25", "70", "|", "20", "300", "250", "0.5"]
    assert lines[4] == "theory   generalization order [0, 7], memorization order [7, 0]"
    assert lines[5] == "covariance-aware theory: not computed (evaluation written before it existed)"
    assert lines[6] == "measured generalization order [0, 7], memorization order (loss gap) [0, 7], (f_mem) [0, 7]"


def test_comparison_table_shows_the_covariance_aware_theory():
    theory = {"available": False, "reason": "theory prediction failed: X"}
    result = _result(theory)
    result["theory_covariance"] = {"available": True,
                                   "classes": [{"label": 7, "tau_gen": 15.0, "tau_mem": float("inf")},
                                               {"label": 0, "tau_gen": 9.0, "tau_mem": 80.0}],
                                   ORDER_KEYS["tau_gen"]: [0, 7], ORDER_KEYS["tau_mem"]: [0]}
    lines = evaluation.format_comparison(result).splitlines()
    assert lines[5] == ("covariance-aware theory: class 7 tau_gen 15 tau_mem inf, class 0 tau_gen 9 tau_mem 80; "
                        "generalization order [0, 7], memorization order [0]")
    result["theory_covariance"] = {"available": False, "reason": "covariance-aware theory failed: Y"}
    assert evaluation.format_comparison(result).splitlines()[5] == "covariance-aware theory: covariance-aware theory failed: Y"


def test_comparison_table_without_theory_gives_the_reason():
    text = evaluation.format_comparison(_result({"available": False, "reason": "theory prediction failed: X"}))
    lines = text.splitlines()
    assert lines[2].split()[4:7] == ["|", "-", "-"]
    assert lines[4] == "theory   theory prediction failed: X"
