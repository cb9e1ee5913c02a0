"""Sweeps: grid expansion, per-point caching, and a LocalCluster sweep killed half way then resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from classdiff.commands.sweep import grid_points, run_sweep
from classdiff.core.config import Config, ConfigError, save_config


def _config(command: str = "speciation", scheduler: str = "local") -> Config:
    # a real built-in point of about a second (cloning simulation), so that a sweep can be killed midway
    return Config().with_overrides({
        "mixture.dim": 20,
        "theory.n_trajectories": 4000, "theory.n_steps": 100, "theory.n_branch_times": 4, "theory.bootstrap": 10,
        "sweep.command": command,
        "sweep.scheduler": scheduler,
        "sweep.n_workers": 2,
        "sweep.grid": {"mixture.seed": [0, 1, 2, 3], "theory.seed": [0, 1]},
    })


def test_grid_points_cartesian():
    pts = grid_points(_config())
    assert len(pts) == 8
    assert pts[0] == {"mixture.seed": 0, "theory.seed": 0}
    assert pts[-1] == {"mixture.seed": 3, "theory.seed": 1}


def test_bad_sweep_fields():
    for command in ("nothing", "sweep_fixture:slow_point", "os:system"):  # only the built-in allow-list
        with pytest.raises(ConfigError, match="sweep.command.*spectrum, timescales, dynamics, speciation"):
            Config().with_overrides({"sweep.command": command})
    with pytest.raises(ConfigError, match="sweep.scheduler"):
        Config().with_overrides({"sweep.scheduler": "cloud"})
    with pytest.raises(ConfigError, match="mixture.variances"):
        # a grid value that is invalid for the section fails when its point is built
        run_sweep(Config().with_overrides({"sweep.command": "spectrum", "sweep.scheduler": "synchronous",
                                           "sweep.grid": {"mixture.variances": [[1.0, -1.0]]}}), Path("/tmp/never"))


def test_killed_sweep_resumes_only_missing_points(tmp_path):
    cfg_path = save_config(_config(), tmp_path / "sweep.toml")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "classdiff", "sweep", str(cfg_path), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = list((out / "points").glob("*.json")) if (out / "points").exists() else []
        if len(done) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.stem for p in (out / "points").glob("*.json")}
    first_mtime = {p.stem: p.stat().st_mtime_ns for p in (out / "points").glob("*.json")}
    assert 3 <= len(first) < 8, len(first)
    assert not (out / "table.csv").exists()

    res = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["computed"] == 8 - len(first)
    assert {p.stem for p in (out / "points").glob("*.json")} >= first and len(list((out / "points").glob("*.json"))) == 8
    for p in (out / "points").glob("*.json"):  # the points of the first run were kept, not recomputed
        if p.stem in first:
            assert p.stat().st_mtime_ns <= first_mtime[p.stem]

    # the resumed table equals a sweep run in one go (synchronously, without Dask)
    fresh = run_sweep(_config(scheduler="synchronous"), tmp_path / "fresh", progress=False)
    assert fresh["computed"] == 8
    assert (out / "table.csv").read_text() == (tmp_path / "fresh" / "table.csv").read_text()
    table = (out / "table.csv").read_text().splitlines()
    assert len(table) == 1 + 8 * 2  # header + (8 points x 2 classes)
    assert (out / "sweep.png").is_file() and (out / "sweep.pdf").is_file()
