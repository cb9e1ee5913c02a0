"""Speciation under imbalance (docs/speciation.md §6b): the minority's delay in theory, closed form and cloning."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from classdiff.commands import cli
from classdiff.core.results import NOT_REACHED
from classdiff.theory.speciation import percentile_interval, time_difference
from classdiff.theory.speciation_map import map_weights, speciation_map


def test_interval_and_difference_keep_inf_and_not_reached_apart():
    assert percentile_interval([math.inf] * 10) == [math.inf, math.inf]  # no inf - inf = nan from interpolation
    assert percentile_interval([math.nan] * 5) == [NOT_REACHED, NOT_REACHED]
    lo, hi = percentile_interval(np.arange(1001.0))
    assert lo == pytest.approx(25.0) and hi == pytest.approx(975.0)
    assert time_difference(math.inf, 2.0) == math.inf
    assert math.isnan(time_difference(math.inf, math.inf)) and math.isnan(time_difference(1.0, math.nan))
    assert time_difference(3.0, 2.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="majority_share"):
        map_weights(2, 1.0)
    assert map_weights(3, 0.9) == pytest.approx([0.45, 0.45, 0.1])


def test_two_classes_relative_delay_is_zero_and_absolute_delay_does_not_depend_on_the_signal():
    """K = 2: rho_1 (1 - phi_1) = rho_2 (1 - phi_2) makes the chance-relative times equal at every imbalance; with
    sigma^2 = 1 (Gamma_t = 1) t_S,c = (1/2) log(|mu_1 - mu_2|^2 / S*_c), so the delay is the same at every m^2 d."""
    shares = [0.5, 0.6, 0.7, 0.75]
    res = speciation_map(signals=[64.0, 1024.0], dim=64, theory_shares=shares, n_classes=[2])
    low, high = res.theory
    assert np.max(np.abs(low["delay_relative"])) < 2e-3 and np.max(np.abs(high["delay_relative"])) < 2e-3
    d_low, d_high = np.array(low["delay_absolute"]), np.array(high["delay_absolute"])
    assert abs(d_low[0]) < 2e-3 and np.all(np.diff(d_low) > 0)  # balanced: none; grows with the imbalance
    np.testing.assert_allclose(d_low, d_high, atol=5e-3)
    # the closed form of the minority's time follows the exact read-off (docs: within 0.05 for K = 2)
    t_abs, t_cf = np.array(high["t_absolute"]), np.array(high["t_closed_form"])
    np.testing.assert_allclose(t_cf[:, 1], t_abs[:, 1], atol=0.05)
    # shift by (1/2) log of the signal ratio: 1024 vs 64 (the separation is |mu_1 - mu_2|^2 = 4 m^2 d)
    np.testing.assert_allclose(t_abs[:, 1] - np.array(low["t_absolute"])[:, 1], 0.5 * np.log(16.0), atol=5e-3)


def test_cloning_confirms_the_delays_k2_relative_none_k3_relative_minority_later():
    """Seeded cloning runs (d = 64, m^2 d = 256, rho = 0.9): K = 2 relative delay interval contains 0, the absolute
    one is +inf (the majority committed at start); K = 3 (0.45, 0.45, 0.1): the minority's relative delay is
    positive, its interval excludes 0 and contains the theory."""
    res = speciation_map(signals=[256.0], dim=64, theory_shares=[0.9], simulated_shares=[0.9], n_classes=[2, 3],
                         n_trajectories=3000, bootstrap=100, seed=1)
    two, three = res.points
    absolute, relative = two.minority_delay
    assert absolute.theory == math.inf and absolute.simulated == math.inf
    assert absolute.simulated_interval == [math.inf, math.inf]
    lo, hi = relative.simulated_interval
    assert abs(relative.theory) < 2e-3 and relative.closed_form == 0.0 and lo < 0 < hi
    absolute3, relative3 = three.minority_delay
    lo3, hi3 = relative3.simulated_interval
    assert relative3.theory > 0.15 and 0 < lo3 <= relative3.theory <= hi3
    assert math.isnan(relative3.closed_form)  # no closed form for K = 3 relative: nan, "not computed"
    assert 0 < absolute3.simulated_interval[0] <= absolute3.theory <= absolute3.simulated_interval[1]


def test_speciation_map_command_writes_figure_and_typed_json(tmp_path, capsys):
    out = tmp_path / "map"
    rc = cli.main(["speciation-map", "--signals", "64", "--classes", "2", "--simulate", "0.9", "--trajectories", "1000",
                   "--bootstrap", "20", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "minority delay absolute: theory inf" in text
    assert (out / "speciation_map.png").stat().st_size > 0 and (out / "speciation_map.pdf").stat().st_size > 0
    data = json.loads((out / "results.json").read_text())
    assert data["points"][0]["minority_delay"][0]["theory"] == "inf"
    assert data["points"][0]["weights"] == [0.9, pytest.approx(0.1)]
    assert cli.main(["speciation-map", "--trajectories", "5", "--out", str(tmp_path / "bad")]) == 1
    assert "--trajectories = 5: must be >= 100" in capsys.readouterr().err
    # the saved JSON reads back into the same result (inf / not reached decoded), and replots
    from classdiff.commands.speciation_map import plot_speciation_map
    from classdiff.theory.speciation_map import SpeciationMapResult

    back = SpeciationMapResult.from_dict(data)
    assert back.points[0].minority_delay[0].theory == math.inf and back.signals == [64.0]
    plot_speciation_map(back, tmp_path / "again")
    assert (tmp_path / "again.png").stat().st_size > 0
