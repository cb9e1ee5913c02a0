"""Hostile and careless use, replayed (issue 18): every case ends in a clear one-line error or a safe recovery.

Each test names the case it replays. The U-Net runs are tiny (width 8, one level) on synthetic idx files.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from classdiff.commands import cli
from classdiff.core.config import Config, ConfigError, ImagesConfig, save_config
from classdiff.core.io import RunFolderBusy, exclusive_folder, write_json_atomic
from classdiff.core.results import encode
from classdiff.data.fashion_mnist import (
    DataFileError,
    find_fashion_mnist,
    read_checksums,
    write_synthetic_fashion_mnist,
)
from classdiff.images.ddpm import (
    CheckpointError,
    CheckpointWarning,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    train_unet,
)
from classdiff.theory.audit import predict_for_data

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train_per_class=20, n_test_per_class=8)


def tiny(**kw) -> ImagesConfig:
    base = dict(classes=(1, 4), counts=(8, 4), width=8, channel_mults=(1,), attention=(False,), dropout=0.0,
                num_res_blocks=1, batch_size=4, steps=12, n_checkpoints=3, learning_rate=2e-3, n_samples=8,
                sampler_steps=2, n_bootstrap=10, loss_images=4, loss_noise_draws=1, classifier_epochs=1,
                device="cpu")
    base.update(kw)
    return ImagesConfig(**base)


def one_error_line(err: str, command: str) -> str:
    """The stderr of a failed command: exactly one line, ``classdiff COMMAND: error: ...``, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"classdiff {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def train_cli(cfg: ImagesConfig, tmp_path: Path, out: Path, data_dir: Path, *extra: str) -> int:
    cfg_path = save_config(Config(images=cfg), tmp_path / f"c-{abs(hash(cfg))}.toml")
    return cli.main(["train", str(cfg_path), "--out", str(out), "--data-dir", str(data_dir), "--no-progress", *extra])


# ------------------------------------------------------------------------------------------------ checkpoints


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch MARKER_SHOULD_NOT_EXIST",))


def test_planted_code_running_checkpoint_is_refused_on_resume(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert train_cli(tiny(), tmp_path, run, data_dir) == 0
    capsys.readouterr()
    torch.save({"step": 99999999, "model": {}, "x": _RunsCode()}, run / "checkpoints" / "step_99999999.pt")
    assert train_cli(tiny(steps=99999999), tmp_path, run, data_dir) == 1
    line = one_error_line(capsys.readouterr().err, "train")
    assert "step_99999999.pt: refused to load" in line
    assert not (tmp_path / "MARKER_SHOULD_NOT_EXIST").exists()


def test_checkpoints_are_checksummed_and_a_corrupt_latest_falls_back(tmp_path, data_dir):
    run = tmp_path / "run"
    first = train_unet(Config(images=tiny()), run, data_root=data_dir, progress=False)
    steps = first["checkpoints"]
    assert len(steps) == 3
    for _, path in list_checkpoints(run):
        digest, name = path.with_name(path.name + ".sha256").read_text().split()
        assert name == path.name and len(digest) == 64
    ckpts = list_checkpoints(run)
    # 1. one flipped byte: the checksum catches it
    raw = bytearray(ckpts[-1][1].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ckpts[-1][1].write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"{ckpts[-1][1].name}: checksum mismatch"):
        load_checkpoint(ckpts[-1][1])
    with pytest.warns(CheckpointWarning, match=rf"{ckpts[-1][1].name}: checksum mismatch.*previous"):
        step, state = load_latest_checkpoint(run)
    assert step == steps[-2] and state["step"] == steps[-2]
    # 2. truncated and empty files without checksum files (older runs): loading itself names the file
    for cut in (len(raw) // 3, 0):
        bare = tmp_path / f"step_{cut:08d}.pt"
        bare.write_bytes(bytes(raw[:cut]))
        with pytest.raises(CheckpointError, match=rf"{bare.name}: not a readable checkpoint"):
            load_checkpoint(bare)
    # 3. resuming the run skips the corrupt latest one, warns, and retrains to the same end state
    ckpts[-1][1].write_bytes(bytes(raw[: len(raw) // 3]))
    with pytest.warns(CheckpointWarning, match="skipped"):
        again = train_unet(Config(images=tiny()), run, data_root=data_dir, progress=False)
    assert again["resumed_from"] == steps[-2]
    clean = train_unet(Config(images=tiny()), tmp_path / "clean", data_root=data_dir, progress=False)
    a = load_checkpoint(list_checkpoints(run)[-1][1])
    b = load_checkpoint(list_checkpoints(tmp_path / "clean")[-1][1])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert again["loss"] == clean["loss"]


def test_result_files_and_checkpoints_share_one_mode(tmp_path, data_dir):
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        train_unet(Config(images=tiny(steps=2, n_checkpoints=1)), run, data_root=data_dir, progress=False)
    finally:
        os.umask(old)
    files = [run / "indices.json", run / "metrics" / "train.json", run / "metrics" / "train_loss.csv",
             list_checkpoints(run)[-1][1]]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


# ------------------------------------------------------------------------------------------------ run folders


def test_resume_with_a_changed_config_is_refused_and_fresh_starts_over(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert train_cli(tiny(), tmp_path, run, data_dir) == 0
    before = (run / "config.toml").read_text()
    capsys.readouterr()
    assert train_cli(tiny(learning_rate=1e-3, seed=3), tmp_path, run, data_dir) == 1
    line = one_error_line(capsys.readouterr().err, "train")
    assert "refused to resume" in line and "images.learning_rate: 0.002 -> 0.001" in line
    assert "images.seed: 0 -> 3" in line
    assert (run / "config.toml").read_text() == before  # nothing was overwritten
    # more steps and other evaluation settings are a legitimate resumption
    assert train_cli(tiny(steps=16, n_samples=4), tmp_path, run, data_dir) == 0
    assert json.loads((run / "results.json").read_text())["resumed_from"] == 12
    capsys.readouterr()
    # fewer steps than the folder's last checkpoint: refused, not "resumed" beyond its own length
    assert train_cli(tiny(steps=8), tmp_path, run, data_dir) == 1
    assert "checkpoint at step 16" in one_error_line(capsys.readouterr().err, "train")
    # --fresh discards the old checkpoints
    assert train_cli(tiny(steps=6, n_checkpoints=2, learning_rate=1e-3), tmp_path, run, data_dir, "--fresh") == 0
    res = json.loads((run / "results.json").read_text())
    assert res["resumed_from"] is None
    assert [s for s, _ in list_checkpoints(run)] == res["checkpoints"] and max(res["checkpoints"]) == 6


def test_a_second_writer_on_one_folder_is_refused(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {SRC!r})
            from classdiff.core.io import exclusive_folder
            with exclusive_folder({str(run)!r}):
                print("held", flush=True)
                time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train_cli(tiny(), tmp_path, run, data_dir) == 1
        line = one_error_line(capsys.readouterr().err, "train")
        assert f"another classdiff process (pid {holder.pid})" in line
        with pytest.raises(RunFolderBusy), exclusive_folder(run):
            pass
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process: the folder is free again
    with exclusive_folder(run), exclusive_folder(run):  # and nested use in one process is free
        pass
    assert not list_checkpoints(run)


def test_metric_file_planted_as_a_symlink_is_replaced_not_written_through(tmp_path, data_dir):
    run, outside = tmp_path / "run", tmp_path / "precious.txt"
    outside.write_text("keep me")
    (run / "metrics").mkdir(parents=True)
    (run / "metrics" / "train_loss.csv").symlink_to(outside)
    train_unet(Config(images=tiny(steps=2, n_checkpoints=1)), run, data_root=data_dir, progress=False)
    assert outside.read_text() == "keep me"
    csv = run / "metrics" / "train_loss.csv"
    assert not csv.is_symlink() and csv.read_text().startswith("step,loss\n")


def test_ctrl_c_ends_with_a_message_and_exit_130(tmp_path, data_dir):
    cfg_path = save_config(Config(images=tiny(steps=100000, n_checkpoints=30)), tmp_path / "c.toml")
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "classdiff", "train", str(cfg_path), "--out", str(out),
                             "--data-dir", str(data_dir), "--no-progress"], env=env, stderr=subprocess.PIPE, text=True,
                            # a suite started in the background (`make test &`) inherits SIGINT ignored, and Python
                            # installs no KeyboardInterrupt handler then: give the child the default disposition
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not list_checkpoints(out):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"classdiff train: interrupted; results so far in {out}"
    assert "Traceback" not in err
    assert list_checkpoints(out)  # what was saved stays, and a rerun resumes from it


# ------------------------------------------------------------------------------------------------ bad files


def test_data_file_errors_are_one_line(tmp_path, data_dir, capsys, monkeypatch):
    # a missing data folder (DataFileError is an OSError)
    assert train_cli(tiny(), tmp_path, tmp_path / "r1", tmp_path / "nowhere") == 1
    assert "nowhere: missing" in one_error_line(capsys.readouterr().err, "train")
    assert not (tmp_path / "r1").exists()  # the failed command leaves no empty --out behind
    # a malformed SHA256SUMS names the file and the line
    bad = tmp_path / "bad-sums"
    write_synthetic_fashion_mnist(bad, n_train_per_class=20, n_test_per_class=2)
    (bad / "SHA256SUMS").write_text("abc def ghi\n")
    assert train_cli(tiny(), tmp_path, tmp_path / "r2", bad) == 1
    assert "SHA256SUMS: line 1" in one_error_line(capsys.readouterr().err, "train")
    with pytest.raises(DataFileError, match="line 1"):
        read_checksums(bad / "SHA256SUMS")
    # FASHION_MNIST_DIR pointing at a missing folder is an error, not a silent fallback to another copy
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataFileError, match="FASHION_MNIST_DIR=.*missing: is not a folder"):
        find_fashion_mnist()
    # --out naming a file
    (tmp_path / "afile").write_text("x")
    assert train_cli(tiny(), tmp_path, tmp_path / "afile", data_dir) == 1
    assert "exists and is not a folder" in one_error_line(capsys.readouterr().err, "train")


def test_truncated_npz_for_audit_is_one_line(tmp_path, capsys):
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((40, 6)), y=np.repeat([0, 1], 20))
    path.write_bytes(path.read_bytes()[:100])
    assert cli.main(["audit", str(path), "--out", str(tmp_path / "a")]) == 1
    assert "data.npz" in one_error_line(capsys.readouterr().err, "audit")


def test_bad_labels_and_complex_data_are_rejected(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6))
    cases = {
        "float labels": (x, np.repeat([0.2, 0.7], 20)),
        "complex data": (x + 1j * x, np.repeat([0, 1], 20)),
    }
    for what, (xs, ys) in cases.items():
        path = tmp_path / f"{what.replace(' ', '_')}.npz"
        np.savez(path, x=xs, y=ys)
        assert cli.main(["audit", str(path), "--out", str(tmp_path / what.replace(" ", "_"))]) == 1, what
        one_error_line(capsys.readouterr().err, "audit")


def test_zero_weight_classes_are_rejected():
    with pytest.raises(ConfigError, match=r"mixture.weights.*must be > 0"):
        Config().with_overrides({"mixture.weights": [1.0, 0.0]})
    with pytest.raises(ConfigError, match=r"images.weights.*must be > 0"):
        ImagesConfig(classes=(0, 1), weights=(1.0, 0.0))


def test_a_cuda_device_without_a_gpu_is_one_line(tmp_path, data_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: images.device = 'cuda' is valid here")
    assert train_cli(tiny(device="cuda"), tmp_path, tmp_path / "r", data_dir) == 1
    assert "images.device = 'cuda': no CUDA device" in one_error_line(capsys.readouterr().err, "train")


def test_corrupt_sweep_cache_entries_are_reported_and_recomputed(tmp_path):
    from classdiff.commands.sweep import run_sweep

    cfg = Config().with_overrides({"mixture.dim": 20, "sweep.command": "spectrum", "sweep.scheduler": "synchronous",
                                   "sweep.grid": {"model.psi_p": [0.5, 1.0, 2.0]}})
    out = tmp_path / "sweep"
    first = run_sweep(cfg, out, progress=False)
    files = sorted((out / "points").glob("*.json"))
    assert first["computed"] == 3 and len(files) == 3
    files[0].write_text(files[0].read_text()[:20])  # truncated
    files[1].write_text("")  # empty
    write_json_atomic(files[2], {"overrides": {}})  # missing its result
    with pytest.warns(UserWarning, match="corrupt sweep cache entry") as record:
        again = run_sweep(cfg, out, progress=False)
    reported = {Path(str(w.message).split(": corrupt")[0]).name for w in record if "corrupt sweep" in str(w.message)}
    assert reported == {f.name for f in files}
    assert again["computed"] == 3 and again["table"] == first["table"]
    assert run_sweep(cfg, out, progress=False)["computed"] == 0


def test_audit_of_a_hundred_classes_of_three_points_finishes(tmp_path):
    """100 classes x 3 points (d = 20): the loss model's Theta equation is solved in O(K) per grid point."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(100), 3)
    x = rng.normal(size=(300, 20)) + rng.normal(size=(100, 20))[y]
    pred = predict_for_data(x, y)
    times = np.array([[c.tau_gen, c.tau_mem] for c in pred.timescales.classes], dtype=float)
    assert times.shape == (100, 2) and np.isfinite(times).all()
    assert sorted(pred.generalization_order) == list(range(100))
    # the full 100-class spectrum (5,150 unknowns) is not solved for the edges: "not computed", said in the JSON
    out = encode(pred.timescales.to_dict())
    assert out["edges"] == "nan" and out["definitions"]["edges"].startswith("not computed: the full spectrum")


def test_huge_dimension_is_refused_up_front(tmp_path, capsys, monkeypatch):
    """dim = 1e7: the dynamics' estimate (p x p matrices) is refused before anything is allocated, in one line."""
    cfg = tmp_path / "huge.toml"
    cfg.write_text("[mixture]\ndim = 10000000\n")
    start = time.perf_counter()
    rc = cli.main(["dynamics", str(cfg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and time.perf_counter() - start < 30
    assert err.startswith("classdiff dynamics: error: dynamics with n = 10000000 points, p = 20000000 features")
    assert "PiB of memory" in err and "lower mixture.dim" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    rc = cli.main(["speciation", str(cfg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("classdiff speciation: error: speciation with 2000 trajectories in d = 10000000")
    assert "TiB of memory" in err and "theory.n_trajectories" in err


def test_memory_limit_is_read_from_the_environment(monkeypatch):
    from classdiff.core.memory import MemoryEstimateError, check_memory, format_bytes, parse_bytes

    assert parse_bytes("512M") == 512 * 2**20 and parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("100") == 100
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    monkeypatch.setenv("CLASSDIFF_MEMORY_LIMIT", "1M")
    check_memory(0.5 * 2**20, "small", "nothing to do")
    with pytest.raises(MemoryEstimateError, match=r"big: needs about 2.0 MiB of memory, 1.0 MiB available; shrink"):
        check_memory(2 * 2**20, "big", "shrink")
    monkeypatch.setenv("CLASSDIFF_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="CLASSDIFF_MEMORY_LIMIT = 'lots'"):
        check_memory(1, "x", "y")
