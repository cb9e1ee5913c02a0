"""The demo calls the library stage by stage, writes each stage's results.json, and builds its summary from the
returned stage results (the slow U-Net stage replaced by a stand-in that returns the evaluation layout)."""

from __future__ import annotations

import argparse

import pytest

from classdiff.commands import demo
from classdiff.core.config import save_config
from classdiff.core.io import read_json
from classdiff.core.readoff import ORDER_KEYS, class_order
from classdiff.core.results import encode
from classdiff.theory.timescales import TimescalesResult

TINY = {
    "mixture": {"dim": 24, "weights": [0.7, 0.3], "variances": [0.5, 1.5], "centroid_norms": [1.0, 1.0],
                "geometry": "antipodal"},
    "model": {"psi_p": 2.0, "psi_n": 1.0, "time": 0.1},
    "training": {"n_times": 40, "test_samples": 200, "score_samples": 200, "seeds": 1},
    "theory": {"n_lambda": 100, "n_scan": 120, "n_trajectories": 200, "n_steps": 40, "n_branch_times": 4,
               "bootstrap": 10},
}


def _fake_unet(config, out):
    """Stand-in for train_unet + evaluate_run: the evaluation layout, labels of the [images] classes."""
    a, b = config.images.classes
    return {"training": {"steps": [1], "loss": [0.5]},
            "evaluation": {"measured": {"classes": [{"label": a, "f_mem_final": 0.25}, {"label": b, "f_mem_final": 0.0}],
                                        ORDER_KEYS["tau_gen"]: [b, a], ORDER_KEYS["tau_mem"]: [a, b]},
                           "theory": {"available": True, ORDER_KEYS["tau_gen"]: [a, b],
                                      ORDER_KEYS["tau_mem"]: [b, a]}}}


def _fake_cloning(config, out):
    """Stand-in for the cloning stage: the layout of speciation_of_run, one class committed at the first step."""
    a, b = config.images.classes
    return {"classes": [
        {"label": a, "t_speciation_unet": 2.3, "t_speciation_unet_interval": [1.9, 2.8], "t_speciation_theory": 3.3,
         "t_speciation_theory_covariance": 3.2},
        {"label": b, "t_speciation_unet": float("inf"), "t_speciation_unet_interval": [1.7, float("inf")],
         "t_speciation_theory": 2.0, "t_speciation_theory_covariance": float("nan")}]}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from classdiff.core.config import Config

    tmp = tmp_path_factory.mktemp("demo")
    cfg = Config.from_dict(TINY)
    path = save_config(cfg, tmp / "tiny.toml")
    mp = pytest.MonkeyPatch()
    mp.setattr(demo, "unet_stage", _fake_unet)
    mp.setattr(demo, "cloning_stage", _fake_cloning)
    try:
        result = demo.run(argparse.Namespace(config=path, skip=[]), tmp / "out")
    finally:
        mp.undo()
    return result, tmp / "out"


def test_every_stage_ran_and_wrote_its_results(demo_run):
    result, out = demo_run
    assert [s.stage for s in result.stages] == [f for f, _ in demo.STAGES]
    assert all(s.ok for s in result.stages), [s.error for s in result.stages]
    for folder, _ in demo.STAGES:
        on_disk = read_json(out / folder / "results.json")
        assert on_disk == read_json_roundtrip(result.results[folder])
    assert isinstance(result.results["2-timescales"], TimescalesResult)
    assert (out / "1-spectrum" / "spectrum.png").is_file() and (out / "rf_dynamics_with_theory.png").is_file()
    assert (out / "results.json").is_file() and (out / "report.html").is_file()


def read_json_roundtrip(value):
    from classdiff.core.results import decode

    return decode(encode(value))


def test_summary_comes_from_the_stage_results(demo_run):
    result, out = demo_run
    theory = result.results["2-timescales"]
    dyn = result.results["3-dynamics"]["classes"]
    rf = [r for r in result.summary if r.experiment == "random features"]
    assert [r.label for r in rf] == [c.label for c in theory.classes]
    for r in rf:
        assert r.predicted_order == theory.generalization_order.index(r.label) + 1
        assert r.predicted_memorization_order == theory.memorization_order.index(r.label) + 1
    measured = class_order([demo.measured_time(c["tau_gen"]) for c in dyn], [c["label"] for c in dyn])
    assert [r.measured_order for r in rf] == [measured.index(r.label) + 1 for r in rf]
    evaluation = result.results["5-unet"]["evaluation"]
    unet = [r for r in result.summary if r.experiment == "U-Net Fashion-MNIST"]
    assert [r.label for r in unet] == [c["label"] for c in evaluation["measured"]["classes"]]
    for r in unet:
        assert r.measured_order == evaluation["measured"][ORDER_KEYS["tau_gen"]].index(r.label) + 1
        assert r.predicted_order == evaluation["theory"][ORDER_KEYS["tau_gen"]].index(r.label) + 1
        assert r.predicted_memorization_order == evaluation["theory"][ORDER_KEYS["tau_mem"]].index(r.label) + 1
    assert [r.f_mem for r in unet] == [c["f_mem_final"] for c in evaluation["measured"]["classes"]]
    table = demo.format_table(result.summary)
    assert "U-Net Fashion-MNIST" in table and "0.25" in table
    assert read_json(out / "results.json")["summary"] == read_json_roundtrip(result.summary)


def test_summary_shows_the_cloning_speciation_times(demo_run):
    result, out = demo_run
    cloned = {c["label"]: c for c in result.results["6-cloning"]["classes"]}
    unet = [r for r in result.summary if r.experiment == "U-Net Fashion-MNIST"]
    for r in unet:
        assert r.speciation_unet == cloned[r.label]["t_speciation_unet"]
        assert r.speciation_unet_interval == cloned[r.label]["t_speciation_unet_interval"]
        assert r.speciation_theory == cloned[r.label]["t_speciation_theory"]
    table = demo.format_table(result.summary)
    assert "t_S U-Net" in table and "[1.9, 2.8]" in table and "[1.7, inf]" in table
    row_b = [line for line in table.splitlines() if "U-Net" in line and " inf " in f" {line} "]
    assert row_b and "nan" in row_b[0]  # inf (committed at once) and nan (not computed) stay apart in the text
    on_disk = read_json(out / "results.json")["summary"]
    assert any(r["t_S U-Net"] == float("inf") for r in on_disk)


def test_summary_without_cloning_leaves_speciation_empty():
    evaluation = _fake_unet(type("C", (), {"images": type("I", (), {"classes": (0, 1)})})(), None)["evaluation"]
    rows = demo.summary_rows({"5-unet": {"evaluation": evaluation}})
    assert [r.speciation_unet for r in rows] == [None, None]
    assert [r.speciation_unet_interval for r in rows] == [None, None]


def test_summary_without_theory_leaves_prediction_empty():
    evaluation = _fake_unet(type("C", (), {"images": type("I", (), {"classes": (0, 1)})})(), None)["evaluation"]
    evaluation["theory"] = {"available": False, "reason": "psi out of range"}
    rows = demo.summary_rows({"5-unet": {"evaluation": evaluation}})
    assert [r.predicted_order for r in rows] == [None, None]
    assert [r.measured_order for r in rows] == [2, 1]


def test_summary_shows_the_covariance_aware_ranks():
    evaluation = _fake_unet(type("C", (), {"images": type("I", (), {"classes": (0, 1)})})(), None)["evaluation"]
    assert [r.covariance_order for r in demo.summary_rows({"5-unet": {"evaluation": evaluation}})] == [None, None]
    evaluation["theory_covariance"] = {"available": True, ORDER_KEYS["tau_gen"]: [1, 0], ORDER_KEYS["tau_mem"]: [0]}
    rows = demo.summary_rows({"5-unet": {"evaluation": evaluation}})
    assert [r.covariance_order for r in rows] == [2, 1]
    assert [r.covariance_memorization_order for r in rows] == [1, None]  # class 1 not in the order: no rank
    assert "cov-aware memorization order" in demo.format_table(rows)
    evaluation["theory_covariance"] = {"available": False, "reason": "failed"}
    assert [r.covariance_order for r in demo.summary_rows({"5-unet": {"evaluation": evaluation}})] == [None, None]
