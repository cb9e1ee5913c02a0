"""Per-class U-Net times over seeds (images.seed_aggregate, classdiff seeds) on evaluation files written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from classdiff.commands import cli
from classdiff.core.io import write_json_atomic
from classdiff.core.results import NOT_REACHED, encode
from classdiff.images.seed_aggregate import aggregate_runs, format_aggregate, summarize_times


def fake_run(folder, seed, tau_mem, fmem_curves, hist_final, theory_order=(8, 1)):
    """A run folder holding only what the aggregation reads: config.toml (the seed) and metrics/evaluation.json
    with two classes (8: 24 images, 1: 8 images) at checkpoints 1, 10, 100, 1000."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(f"[images]\nclasses = [8, 1]\ncounts = [24, 8]\nseed = {seed}\n")
    steps = [1, 10, 100, 1000]
    memorization = [{"classes": [{"label": 8, "f_mem": float(fmem_curves[0][j])},
                                 {"label": 1, "f_mem": float(fmem_curves[1][j])}]} for j in range(4)]
    ev = {
        "classes": [8, 1], "steps": steps, "memorization": memorization,
        "histogram_samples": [[0.5, 0.5]] * 3 + [hist_final], "histogram_data": [0.75, 0.25],
        "measured": {"classes": [
            {"label": 8, "count": 24, "tau_gen": 20.0, "tau_mem": tau_mem[0], "f_mem_final": float(fmem_curves[0][-1]),
             "loss_gap_final": 0.3},
            {"label": 1, "count": 8, "tau_gen": 30.0, "tau_mem": tau_mem[1], "f_mem_final": float(fmem_curves[1][-1]),
             "loss_gap_final": 0.2}]},
        "theory": {"available": True, "generalization_order": list(theory_order),
                   "memorization_order": list(theory_order)},
    }
    write_json_atomic(folder / "metrics" / "evaluation.json", encode(ev))
    return folder


def test_summaries_are_log_t_intervals_and_keep_not_reached_apart():
    s = summarize_times([100.0, 200.0, 400.0])
    logs = np.log([100.0, 200.0, 400.0])
    half = 4.302652729911275 * logs.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert s["estimate"] == pytest.approx(200.0)
    assert s["interval"] == pytest.approx([math.exp(logs.mean() - half), math.exp(logs.mean() + half)])
    part = summarize_times([100.0, NOT_REACHED, 300.0])
    assert part["n_reached"] == 2 and part["partial"] and np.isfinite(part["interval"]).all()
    none = summarize_times([NOT_REACHED, NOT_REACHED])
    assert none["estimate"] is NOT_REACHED and none["n_reached"] == 0


def test_orders_are_reported_only_where_the_seed_intervals_separate(tmp_path):
    fm_major = [0.0, 0.0, 0.2, 0.6]  # crosses 0.1 between steps 10 and 100
    fm_minor = [0.0, 0.0, 0.0, 0.05]  # never reaches 0.1
    runs = [fake_run(tmp_path / f"s{s}", s, (m0, m1), (fm_major, fm_minor), [0.9, 0.1])
            for s, (m0, m1) in enumerate([(100.0, 1000.0), (120.0, 1100.0), (90.0, 900.0)])]
    res = aggregate_runs(runs, fmem_level=0.1)
    assert res["seeds"] == [0, 1, 2]
    c8, c1 = res["classes"]
    assert c8["tau_mem"]["estimate"] == pytest.approx((100 * 120 * 90) ** (1 / 3))
    # log-linear interpolation of f_mem between steps 10 (0.0) and 100 (0.2) at level 0.1: step sqrt(10 * 100)
    assert c8["tau_fmem"]["estimate"] == pytest.approx(math.sqrt(1000.0))
    assert c1["tau_fmem"]["estimate"] is NOT_REACHED and c1["tau_fmem"]["n_reached"] == 0
    assert res["orders"]["tau_mem"]["order"] == [8, 1]  # 90-120 vs 900-1100: separated
    assert res["orders"]["tau_gen"]["order"] == [8, 1]  # 20 vs 30 in every seed: zero-width, disjoint intervals
    assert c1["production_ratio_final"]["estimate"] == pytest.approx(0.4)  # 0.1 of the samples for 0.25 of the data
    curve = c1["production_ratio_by_step"]
    assert curve["steps"] == [1, 10, 100, 1000] and curve["estimate"] == pytest.approx([2.0, 2.0, 2.0, 0.4])
    assert res["agreement"]["tau_mem"] == {"pairs": 1, "agree": 1, "fraction": 1.0, "disagreeing": []}
    # overlapping intervals: not resolved, and no agreement is claimed
    runs2 = [fake_run(tmp_path / f"t{s}", s, (m0, m1), (fm_major, fm_minor), [0.9, 0.1], theory_order=(1, 8))
             for s, (m0, m1) in enumerate([(100.0, 90.0), (300.0, 400.0), (90.0, 200.0)])]
    res2 = aggregate_runs(runs2)
    assert res2["orders"]["tau_mem"]["order"] == "not resolved" and res2["agreement"]["tau_mem"]["pairs"] == 0


def test_seeds_command_writes_figure_and_json_and_names_missing_evaluations(tmp_path, capsys):
    runs = [fake_run(tmp_path / f"s{s}", s, (100.0 + s, 1000.0 + s), ([0, 0, 0.2, 0.6], [0, 0, 0, 0.05]), [0.9, 0.1])
            for s in range(3)]
    out = tmp_path / "all"
    assert cli.main(["seeds", *map(str, runs), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "measured order by tau_mem: [8, 1]" in text and "tau_fmem" in text and "0/3 seeds reached" in text
    data = json.loads((out / "results.json").read_text())
    assert data["classes"][1]["tau_fmem"]["estimate"] == "not reached"
    assert (out / "seeds.png").stat().st_size > 0 and (out / "seeds.pdf").stat().st_size > 0
    (tmp_path / "empty").mkdir()
    assert cli.main(["seeds", str(tmp_path / "empty"), "--out", str(tmp_path / "bad")]) == 1
    assert "evaluation.json: missing; run 'classdiff evaluate" in capsys.readouterr().err


def test_one_seed_claims_no_order(tmp_path):
    run = fake_run(tmp_path / "s0", 0, (100.0, 1000.0), ([0, 0, 0.2, 0.6], [0, 0, 0, 0.5]), [0.9, 0.1])
    res = aggregate_runs([run])
    for key in ("tau_gen", "tau_mem", "tau_fmem"):
        assert res["orders"][key]["order"] == "not resolved" and res["orders"][key]["without_interval"] == [8, 1]
    assert res["agreement"]["tau_mem"]["pairs"] == 0


def _add_cloning(run, t_unet, t_theory=(1.2, 0.9), share=(0.8, 0.2), t_cov=None):
    """cloning/results.json as 'classdiff cloning' writes it (only the fields the aggregation reads); ``t_cov``:
    the covariance-aware theory's times (absent: results written before it existed)."""
    classes = [{"label": lab, "t_speciation_unet": t_unet[i], "t_speciation_theory": t_theory[i],
                "sample_share": share[i]} for i, lab in enumerate((8, 1))]
    extra = {}
    if t_cov is not None:
        for i, c in enumerate(classes):
            c["t_speciation_theory_covariance"] = t_cov[i]
        extra["speciation_order_theory_covariance"] = [8, 1] if t_cov[0] > t_cov[1] else [1, 8]
    write_json_atomic(run / "cloning" / "results.json",
                      encode({"classes": classes, "speciation_order_theory": [8, 1]} | extra))


def test_speciation_over_seeds_and_the_comparison_table(tmp_path, capsys):
    runs = []
    for s, (t8, t1) in enumerate([(1.5, 0.6), (1.4, 0.7), (float("inf"), 0.65), (1.6, 0.62)]):
        run = fake_run(tmp_path / f"s{s}", s, (100.0, 1000.0), ([0, 0, 0.2, 0.6], [0, 0, 0, 0.5]), [0.9, 0.1])
        ev = json.loads((run / "metrics" / "evaluation.json").read_text())
        ev["theory"]["classes"] = [{"label": 8, "tau_gen": 5.0 + s, "tau_mem": 50.0}, {"label": 1, "tau_gen": 7.0,
                                                                                     "tau_mem": 80.0}]
        write_json_atomic(run / "metrics" / "evaluation.json", ev)
        _add_cloning(run, (t8, t1))
        runs.append(run)
    res = aggregate_runs(runs)
    c8, c1 = res["classes"]
    assert c8["t_speciation"]["n_reached"] == 3 and c8["t_speciation"]["n_inf"] == 1  # +inf counted apart
    assert c8["t_speciation"]["estimate"] == pytest.approx((1.5 * 1.4 * 1.6) ** (1 / 3))
    assert res["orders"]["t_speciation"]["order"] == [8, 1]  # the larger t commits first (descending)
    assert res["agreement"]["t_speciation"]["agree"] == 1
    assert c1["theory"]["tau_gen"]["estimate"] == pytest.approx(7.0)
    assert c8["theory"]["tau_gen"]["estimate"] == pytest.approx((5 * 6 * 7 * 8) ** 0.25)
    # the table: a 'classdiff dynamics --data' result on the same classes, RF point values, agreement by rank
    rf = tmp_path / "rf"
    write_json_atomic(rf / "results.json", encode({"labels": [8, 1], "classes": [
        {"tau_gen": 3.0, "tau_mem": 40.0}, {"tau_gen": 2.0, "tau_mem": NOT_REACHED}]}))
    out = tmp_path / "table"
    assert cli.main(["seeds", *map(str, runs), "--rf", str(rf), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "covariance-aware theory: not computed" in text
    data = json.loads((out / "results.json").read_text())
    table = data["table"]
    assert table["orders"]["rf_real_pixels"]["tau_gen"] == [1, 8]
    assert table["agreement"]["rf_real_pixels"]["tau_gen"]["agree"] == 0  # theory said [8, 1]
    assert table["orders"]["rf_real_pixels"]["tau_mem"] == [8, 1]  # not reached last
    row8 = table["classes"][0]
    assert row8["predicted"]["covariance_aware"]["tau_mem"]["estimate"] == "nan"
    assert row8["measured"]["rf_real_pixels"]["tau_gen"]["estimate"] == 3.0
    assert (out / "comparison.png").is_file()
    assert cli.main(["seeds", *map(str, runs), "--rf", str(tmp_path / "nothing"), "--out", str(tmp_path / "b")]) == 1


def test_covariance_aware_column_and_its_agreement(tmp_path, capsys):
    runs = []
    for s, (m0, m1) in enumerate([(100.0, 1000.0), (120.0, 1100.0), (90.0, 900.0)]):
        run = fake_run(tmp_path / f"s{s}", s, (m0, m1), ([0, 0, 0.2, 0.6], [0, 0, 0.1, 0.5]), [0.8, 0.2])
        ev = json.loads((run / "metrics" / "evaluation.json").read_text())
        # the covariance-aware theory predicts the opposite memorization order to the isotropic one
        ev["theory_covariance"] = {"available": True, "classes": [{"label": 8, "tau_gen": 4.0, "tau_mem": 90.0},
                                                                   {"label": 1, "tau_gen": 9.0, "tau_mem": 60.0}],
                                   "generalization_order": [8, 1], "memorization_order": [1, 8]}
        write_json_atomic(run / "metrics" / "evaluation.json", ev)
        runs.append(run)
    res = aggregate_runs(runs)
    assert res["orders"]["tau_mem"]["order"] == [8, 1]  # resolved: 90-120 vs 900-1100
    assert res["agreement"]["tau_mem"]["agree"] == 1  # isotropic [8, 1]
    assert res["agreement_covariance"]["tau_mem"] == {"pairs": 1, "agree": 0, "fraction": 0.0,
                                                      "disagreeing": [[8, 1]]}
    assert res["covariance_reason"] is None
    out = tmp_path / "table"
    assert cli.main(["seeds", *map(str, runs), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "with the covariance-aware theory on 0 of 1" in text
    # the same value in every seed is printed as one value, not as a zero-width interval
    row = next(line for line in text.splitlines() if line.split()[:2] == ["1", "tau_mem"])
    assert "[60, 60]" not in row and " 60 " in row
    table = json.loads((out / "results.json").read_text())["table"]
    row1 = table["classes"][1]
    assert row1["predicted"]["covariance_aware"]["tau_mem"]["estimate"] == pytest.approx(60.0)
    assert row1["predicted"]["covariance_aware"]["t_speciation"]["estimate"] == "nan"
    assert table["orders"]["covariance_aware"]["tau_mem"] == [1, 8]


def test_covariance_aware_speciation_time_and_its_agreement(tmp_path, capsys):
    runs = []
    for s, (t8, t1) in enumerate([(1.5, 0.6), (1.4, 0.7), (1.6, 0.65)]):
        run = fake_run(tmp_path / f"s{s}", s, (100.0, 1000.0), ([0, 0, 0.2, 0.6], [0, 0, 0.1, 0.5]), [0.8, 0.2])
        ev = json.loads((run / "metrics" / "evaluation.json").read_text())
        ev["theory_covariance"] = {"available": True, "classes": [{"label": 8, "tau_gen": 4.0, "tau_mem": 90.0},
                                                                   {"label": 1, "tau_gen": 9.0, "tau_mem": 60.0}],
                                   "generalization_order": [8, 1], "memorization_order": [1, 8]}
        write_json_atomic(run / "metrics" / "evaluation.json", ev)
        # the covariance-aware surrogate commits class 1 first, against the U-Net's resolved order [8, 1]
        _add_cloning(run, (t8, t1), t_cov=(0.8, 1.1))
        runs.append(run)
    res = aggregate_runs(runs)
    assert res["orders"]["t_speciation"]["order"] == [8, 1]
    assert res["theory_covariance"]["t_speciation"] == [1, 8]
    assert res["agreement_covariance"]["t_speciation"]["pairs"] == 1
    assert res["agreement_covariance"]["t_speciation"]["agree"] == 0
    assert res["classes"][1]["t_speciation_theory_covariance"]["estimate"] == pytest.approx(1.1)
    out = tmp_path / "table"
    assert cli.main(["seeds", *map(str, runs), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.split()[:2] == ["1", "t_speciation"])
    assert " 1.100 " in row
    assert "predate" not in text
    table = json.loads((out / "results.json").read_text())["table"]
    assert table["classes"][1]["predicted"]["covariance_aware"]["t_speciation"]["estimate"] == pytest.approx(1.1)
    assert table["orders"]["covariance_aware"]["t_speciation"] == [1, 8]


def test_a_value_equal_in_every_seed_prints_once_even_off_by_the_last_bit():
    from classdiff.images.comparison import _cell

    v = float(np.exp(np.mean(np.log([732.2] * 3))))  # the geometric mean of equal values, off by an ulp
    assert _cell({"estimate": v, "interval": [732.2, np.nextafter(732.2, 800.0)]}, ".4g") == "732.2"
    assert _cell({"estimate": 732.2, "interval": [700.0, 760.0]}, ".4g") == "732.2 [700, 760]"


def test_order_with_intervals_needs_an_interval_for_every_class() -> None:
    from classdiff.core.seed_statistics import order_with_intervals

    a = summarize_times([10.0, 11.0, 12.0])
    b = summarize_times([100.0, 110.0, 120.0])
    one = summarize_times([50.0, NOT_REACHED, NOT_REACHED])  # one reached seed: an estimate, no interval
    assert order_with_intervals([b, a], [7, 3])["order"] == [3, 7]
    assert order_with_intervals([b, a], [7, 3], descending=True)["order"] == [7, 3]
    out = order_with_intervals([a, one, b], [0, 1, 2])
    assert out["order"] == "not resolved" and out["without_interval"] == [1] and not out["resolved"]
    wide = summarize_times([10.0, 200.0])
    tie = order_with_intervals([a, wide], [0, 1])
    assert tie["order"] == "not resolved" and tie["ties"]


def test_paired_orders_of_runs_and_of_rf_seeds(tmp_path):
    from classdiff.images.comparison import comparison_table, format_comparison_table

    # one seed effect moves both classes: the marginal intervals overlap, the seed-by-seed ratio (0.9) does not
    runs = [fake_run(tmp_path / f"s{s}", s, (m8, m1), ([0, 0, 0.2, 0.6], [0, 0, 0.1, 0.5]), [0.8, 0.2],
                     theory_order=(1, 8))
            for s, (m8, m1) in enumerate([(100.0, 110.0), (200.0, 225.0), (400.0, 440.0)])]
    res = aggregate_runs(runs)
    assert not res["orders"]["tau_mem"]["resolved"]
    paired = res["orders_paired"]["tau_mem"]
    assert paired["order"] == [8, 1] and paired["pairs"][0]["interval"][1] < 1.0
    ratios = np.log(np.array([100.0, 200.0, 400.0]) / np.array([110.0, 225.0, 440.0]))
    assert paired["pairs"][0]["ratio"] == pytest.approx(math.exp(ratios.mean()))
    assert res["agreement_paired"]["tau_mem"] == {"pairs": 1, "agree": 0, "fraction": 0.0, "disagreeing": [[8, 1]]}
    assert "paired order by tau_mem: [8, 1]" in format_aggregate(res)
    # an RF result with per-seed times: interval orders and paired orders, scored against the isotropic theory
    rf = {"labels": [8, 1], "classes": [
        {"tau_gen_seeds": [3.0, 3.3, 2.9], "tau_mem_seeds": [40.0, 80.0, 60.0]},
        {"tau_gen_seeds": [2.0, 2.1, 1.9], "tau_mem_seeds": [44.0, 90.0, 65.0]}]}
    for c in rf["classes"]:
        for key in ("tau_gen", "tau_mem"):
            c[f"{key}_summary"] = summarize_times(c[f"{key}_seeds"])
    table = comparison_table(res, rf)
    assert table["orders"]["rf_real_pixels"]["tau_gen"]["order"] == [1, 8]
    assert not table["orders"]["rf_real_pixels"]["tau_mem"]["resolved"]
    assert table["orders"]["rf_real_pixels_paired"]["tau_mem"]["order"] == [8, 1]
    assert table["agreement"]["rf_real_pixels_paired"]["tau_mem"]["agree"] == 0  # the theory said [1, 8]
    assert table["agreement"]["rf_real_pixels"]["tau_gen"]["agree"] == 1
    assert table["orders"]["unet_paired"]["tau_mem"]["order"] == [8, 1]
    text = format_comparison_table(table)
    assert "rf_real_pixels_paired" in text and "unet_paired" in text
    assert table["classes"][0]["measured"]["rf_real_pixels"]["tau_mem"]["interval"][0] < 60.0
