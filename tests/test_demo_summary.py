"""The demo's summary table reads the keys the stages really write."""

from __future__ import annotations

from classdiff.commands.demo import format_table, summary_rows


def test_summary_rows_rank_rf_and_unet_classes() -> None:
    results = {
        "2-timescales": {"classes": [{"label": 0, "tau_gen": 5.0, "tau_mem": 400.0},
                                     {"label": 1, "tau_gen": 2.0, "tau_mem": 900.0}]},
        "3-dynamics": {"classes": [{"label": 0, "tau_gen": 6.0, "tau_mem": 380.0},
                                   {"label": 1, "tau_gen": 1.5, "tau_mem": None}]},
        "5-unet": {"evaluation": {
            "measured": {"classes": [{"label": 3, "f_mem_final": 0.25}, {"label": 7, "f_mem_final": 0.0}],
                         "learning_order": [7, 3], "memorization_order": [3, 7]},
            "theory": {"available": True, "learning_order": [3, 7], "memorization_order": [7, 3]},
        }},
    }
    rows = summary_rows(results)
    rf = [r for r in rows if r["experiment"] == "random features"]
    unet = [r for r in rows if r["experiment"] == "U-Net Fashion-MNIST"]
    assert [r["predicted order"] for r in rf] == [2, 1]
    assert [r["measured order"] for r in rf] == [2, 1]
    assert [r["predicted memorization order"] for r in rf] == [1, 2]
    assert [r["measured memorization order"] for r in rf] == [1, None]
    assert [r["class"] for r in unet] == [3, 7]
    assert [r["predicted order"] for r in unet] == [1, 2]
    assert [r["measured order"] for r in unet] == [2, 1]
    assert [r["measured memorization order"] for r in unet] == [1, 2]
    assert [r["f_mem"] for r in unet] == [0.25, 0.0]
    table = format_table(rows)
    assert "U-Net Fashion-MNIST" in table and "0.25" in table


def test_summary_rows_without_theory_leaves_prediction_empty() -> None:
    results = {"5-unet": {"evaluation": {
        "measured": {"classes": [{"label": 0, "f_mem_final": None}], "learning_order": [0], "memorization_order": [0]},
        "theory": {"available": False, "reason": "psi out of range"}}}}
    (row,) = summary_rows(results)
    assert row["predicted order"] is None and row["measured order"] == 1 and row["f_mem"] is None
