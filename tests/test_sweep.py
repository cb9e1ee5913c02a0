"""Sweeps: grid expansion, per-point caching, and a LocalCluster sweep killed half way then resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from classdiff.commands.sweep import grid_points, run_sweep
from classdiff.core.config import Config, ConfigError, save_config

HERE = Path(__file__).parent


def _config(command: str = "sweep_fixture:slow_point", scheduler: str = "local") -> Config:
    return Config().with_overrides({
        "mixture.dim": 20,
        "sweep.command": command,
        "sweep.scheduler": scheduler,
        "sweep.n_workers": 2,
        "sweep.grid": {"mixture.seed": [0, 1, 2, 3], "model.psi_n": [2.0, 4.0]},
    })


def test_grid_points_cartesian():
    pts = grid_points(_config())
    assert len(pts) == 8
    assert pts[0] == {"mixture.seed": 0, "model.psi_n": 2.0}
    assert pts[-1] == {"mixture.seed": 3, "model.psi_n": 4.0}


def test_bad_sweep_fields():
    with pytest.raises(ConfigError, match="sweep.command"):
        Config().with_overrides({"sweep.command": "nothing"})
    with pytest.raises(ConfigError, match="sweep.scheduler"):
        Config().with_overrides({"sweep.scheduler": "cloud"})
    with pytest.raises(ConfigError, match="mixture.variances"):
        # a grid value that is invalid for the section fails when its point is built
        run_sweep(Config().with_overrides({"sweep.command": "sweep_fixture:slow_point", "sweep.scheduler": "synchronous",
                                           "sweep.grid": {"mixture.variances": [[1.0, -1.0]]}}), Path("/tmp/never"))


def _env(log: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["SWEEP_LOG"] = str(log)
    env["SWEEP_DELAY"] = "0.6"
    return env


def test_killed_sweep_resumes_only_missing_points(tmp_path, monkeypatch):
    cfg_path = save_config(_config(), tmp_path / "sweep.toml")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "classdiff", "sweep", str(cfg_path), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=_env(tmp_path / "log1"), start_new_session=True,
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
    assert 3 <= len(first) < 8, len(first)
    assert not (out / "table.csv").exists()

    res = subprocess.run([*cmd, "--json"], env=_env(tmp_path / "log2"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    second = (tmp_path / "log2").read_text().split()
    assert len(second) == 8 - len(first)
    assert not set(second) & first

    # the resumed table equals a sweep run in one go (synchronously, without Dask)
    monkeypatch.setenv("SWEEP_DELAY", "0")
    monkeypatch.syspath_prepend(str(HERE))
    fresh = run_sweep(_config(scheduler="synchronous"), tmp_path / "fresh", progress=False)
    assert fresh["computed"] == 8
    assert (out / "table.csv").read_text() == (tmp_path / "fresh" / "table.csv").read_text()
    table = (out / "table.csv").read_text().splitlines()
    assert len(table) == 1 + 8 * 2  # header + (8 points x 2 classes)
    assert (out / "sweep.png").is_file() and (out / "sweep.pdf").is_file()
