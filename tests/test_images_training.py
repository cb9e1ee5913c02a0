"""U-Net, DDPM training (loss falls, SIGKILL + resume is bit-identical), DDIM sampling, evaluation and CLI.

All on tiny U-Nets and synthetic idx files written by the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from classdiff.core.config import Config, ImagesConfig, save_config
from classdiff.core.readoff import ORDER_KEYS
from classdiff.data.fashion_mnist import write_synthetic_fashion_mnist
from classdiff.data.process import ddpm_alpha_bar, ddpm_time
from classdiff.images.ddpm import (
    batch_indices,
    checkpoint_steps,
    list_checkpoints,
    make_optimizer,
    train_unet,
)
from classdiff.images.sampling import ddim_sample, ddim_steps, fixed_noise
from classdiff.images.schedule import DDPMSchedule
from classdiff.images.unet import UNet

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train_per_class=20, n_test_per_class=8)


def tiny(**kw) -> ImagesConfig:
    base = dict(classes=(1, 4), counts=(16, 4), width=8, channel_mults=(1,), attention=(False,), dropout=0.0,
                num_res_blocks=1,
                batch_size=8, steps=40, n_checkpoints=4, learning_rate=2e-3, n_samples=24, sampler_steps=4,
                n_bootstrap=50, loss_images=8, loss_noise_draws=1, classifier_epochs=1, device="cpu")
    base.update(kw)
    return ImagesConfig(**base)


# ------------------------------------------------------------------------------------------------ U-Net


def test_unet_shapes_and_conditioning():
    m = UNet(8, (1, 2, 4), (False, True, True), dropout=0.1, num_classes=3).eval()
    x = torch.randn(2, 1, 28, 28)
    out = m(x, torch.tensor([3, 999]), torch.tensor([0, 2]))
    assert out.shape == (2, 1, 28, 28)
    assert torch.all(out == 0)  # zero-initialised output conv
    with pytest.raises(ValueError, match="class labels are required"):
        m(x, torch.tensor([1, 2]))


def test_unet_rejects_bad_geometry():
    with pytest.raises(ValueError, match="multiple of 8"):
        UNet(12)
    with pytest.raises(ValueError, match="at most 3 levels"):
        UNet(8, (1, 1, 1, 1), (False,) * 4)
    with pytest.raises(ValueError, match="one flag per level"):
        UNet(8, (1, 2), (False,))


# ------------------------------------------------------------------------------------------------ schedule


def test_make_optimizer_matches_the_plain_update_and_rejects_unknown_names():
    """The fused optimizers take the same step as torch's default per-tensor implementation (to float rounding)."""
    torch.manual_seed(0)
    grads = [torch.randn(7, 3), torch.randn(5)]
    for name, plain in (("adam", lambda p: torch.optim.Adam(p, lr=1e-2)),
                        ("sgd", lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.95))):
        params = [torch.nn.Parameter(torch.ones_like(g)) for g in grads]
        params_ref = [torch.nn.Parameter(torch.ones_like(g)) for g in grads]
        opt, ref = make_optimizer(params, name, 1e-2), plain(params_ref)
        assert opt.param_groups[0]["fused"]
        for _ in range(3):
            for p, q, g in zip(params, params_ref, grads, strict=True):
                p.grad, q.grad = g.clone(), g.clone()
            opt.step()
            ref.step()
        for p, q in zip(params, params_ref, strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
            assert not torch.equal(p.detach(), torch.ones_like(p))
    with pytest.raises(ValueError, match="optimizer = 'rmsprop'"):
        make_optimizer([torch.nn.Parameter(torch.ones(2))], "rmsprop", 1e-3)


def test_schedule_uses_the_package_conventions():
    s = DDPMSchedule("linear", 1000)
    np.testing.assert_array_equal(s.alpha_bar, ddpm_alpha_bar("linear", 1000))
    np.testing.assert_array_equal(s.ou_time, ddpm_time(s.alpha_bar))
    k = s.step_for_time(0.1)
    assert abs(s.ou_time[k] - 0.1) <= np.max(np.diff(s.ou_time[max(k - 1, 0):k + 2]))
    x0, eps = torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28)
    kk = torch.tensor([0, 500, 999])
    ab = torch.tensor(s.alpha_bar[[0, 500, 999]], dtype=torch.float32)[:, None, None, None]
    torch.testing.assert_close(s.add_noise(x0, kk, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    # the same step in OU form, x_t = e^{-t} x0 + sqrt(Delta_t) eta at t = t_k
    t = torch.tensor(s.ou_time[[0, 500, 999]])[:, None, None, None]
    ou = (torch.exp(-t) * x0 + torch.sqrt(-torch.expm1(-2 * t)) * eps).float()
    torch.testing.assert_close(s.add_noise(x0, kk, eps), ou)


def test_checkpoint_steps_and_batch_order():
    cs = checkpoint_steps(10000, 12)
    assert cs[0] == 1 and cs[-1] == 10000 and cs == sorted(set(cs))
    ratios = np.diff(np.log(cs))
    assert ratios.max() < 1.2  # log-spaced
    assert checkpoint_steps(5, 20) == [1, 2, 3, 4, 5]
    # consecutive steps walk through a permutation per epoch; a pure function of (seed, step)
    n, b = 10, 4
    seq = np.concatenate([batch_indices(3, s, n, b) for s in range(5)])  # 20 = two epochs
    assert sorted(seq[:10]) == list(range(10)) and sorted(seq[10:]) == list(range(10))
    np.testing.assert_array_equal(batch_indices(3, 2, n, b), seq[8:12])
    assert not np.array_equal(batch_indices(4, 0, n, b), batch_indices(3, 0, n, b))


# ------------------------------------------------------------------------------------------------ sampling


class _SinglePointDenoiser(torch.nn.Module):
    """The exact noise predictor when the data distribution is a single image x*: eps = (x_k - sqrt(ab) x*)/sqrt(1-ab)."""

    def __init__(self, target: torch.Tensor, alpha_bar: np.ndarray) -> None:
        super().__init__()
        self.target = target
        self.ab = torch.tensor(alpha_bar, dtype=torch.float32)

    def forward(self, x, k, y=None):
        a = self.ab[k][:, None, None, None]
        return (x - a.sqrt() * self.target) / (1 - a).sqrt()


def test_ddim_recovers_the_single_training_point_and_is_deterministic():
    s = DDPMSchedule("cosine", 1000)
    target = torch.rand(1, 1, 28, 28) * 2 - 1
    model = _SinglePointDenoiser(target, s.alpha_bar)
    noise = fixed_noise(5, seed=11)
    torch.testing.assert_close(noise, fixed_noise(5, seed=11))
    out = ddim_sample(model, s, noise, sampler_steps=10, clip=False)
    torch.testing.assert_close(out, target.expand(5, -1, -1, -1), atol=1e-4, rtol=0)
    steps = ddim_steps(1000, 10)
    assert steps[0] == 999 and steps[-1] == 0 and np.all(np.diff(steps) < 0)


# ------------------------------------------------------------------------------------------------ training


def test_training_loss_falls_over_200_steps(tmp_path, data_dir):
    cfg = tiny(steps=200, n_checkpoints=3, batch_size=4)
    res = train_unet(Config(images=cfg), tmp_path / "run", data_root=data_dir, progress=False)
    loss = np.array(res["loss"])
    assert len(loss) == 200
    assert loss[-40:].mean() < 0.6 * loss[:20].mean()
    assert res["checkpoints"] == checkpoint_steps(200, 3)
    assert (tmp_path / "run" / "config.toml").is_file()
    idx = json.loads((tmp_path / "run" / "indices.json").read_text())
    assert idx["counts"] == [16, 4] and len(idx["indices"]) == 20


def _train_script(config_path, out, data_dir) -> str:
    return textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from classdiff.core.config import load_config
        from classdiff.images.ddpm import train_unet
        r = train_unet(load_config({str(config_path)!r}), {str(out)!r}, data_root={str(data_dir)!r}, progress=False)
        print("RESUMED_FROM", r["resumed_from"])
    """)


def test_sigkill_and_resume_is_bit_identical(tmp_path, data_dir):
    cfg = Config(images=tiny(steps=60, n_checkpoints=12, dropout=0.1, ema=0.9))
    cfg_path = save_config(cfg, tmp_path / "c.toml")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, "-c", _train_script(cfg_path, killed, data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list_checkpoints(killed):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first = [s for s, _ in list_checkpoints(killed)]
    assert first and first[-1] < 60, "the run finished before it could be killed"
    # restart (in this process, same single thread) and an uninterrupted run
    resumed = train_unet(cfg, killed, data_root=data_dir, progress=False)
    assert resumed["resumed_from"] == first[-1]
    uninterrupted = train_unet(cfg, clean, data_root=data_dir, progress=False)
    assert uninterrupted["resumed_from"] is None
    a = torch.load(list_checkpoints(killed)[-1][1], weights_only=False)
    b = torch.load(list_checkpoints(clean)[-1][1], weights_only=False)
    assert a["step"] == b["step"] == 60
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    for key in a["optimizer"]["state"]:
        for name, v in a["optimizer"]["state"][key].items():
            assert torch.equal(v, b["optimizer"]["state"][key][name])
    assert a["history"] == b["history"]


# ------------------------------------------------------------------------------------------------ evaluation + CLI


def test_train_and_evaluate_cli(tmp_path, data_dir, monkeypatch):
    from classdiff.commands import cli

    monkeypatch.setenv("CLASSDIFF_CACHE", str(tmp_path / "cache"))
    cfg_path = save_config(Config(images=tiny(steps=30, n_checkpoints=3)), tmp_path / "c.toml")
    run = tmp_path / "run"
    assert cli.main(["train", str(cfg_path), "--out", str(run), "--data-dir", str(data_dir), "--no-progress"]) == 0
    assert cli.main(["evaluate", str(run), "--out", str(tmp_path / "ev"), "--data-dir", str(data_dir),
                     "--no-progress"]) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["steps"] == checkpoint_steps(30, 3)
    assert len(res["memorization"]) == 3
    per_class = res["memorization"][-1]["classes"]
    assert [c["label"] for c in per_class] == [1, 4]
    assert sum(c["n_nearest"] for c in per_class) == 24
    assert np.array(res["loss_train"]).shape == (3, 2, 3)
    assert [c["label"] for c in res["measured"]["classes"]] == [1, 4]
    m = res["measured"]
    for key in ("generalization_order", "memorization_order", "fmem_order"):  # ORDER_KEYS, + the f_mem order
        assert set(m[key]) <= {1, 4} and len(set(m[key])) == len(m[key]), (key, m[key])
    for c in m["classes"]:  # a time is a number, "inf", "nan" (not computed) or "not reached"; never null
        for key in ("tau_gen", "tau_mem", "tau_fmem"):
            assert c[key] in ("inf", "nan", "not reached") or isinstance(c[key], float), (key, c[key])
    saved = json.loads((run / "metrics" / "evaluation.json").read_text())
    for section in (saved["measured"], saved["theory"]):  # one order vocabulary, measured and predicted
        assert {k for k in section if k.endswith("_order")} <= {*ORDER_KEYS.values(), "fmem_order"}
    assert "available" in res["theory"]
    for stem in ("fmem_vs_step", "loss_gap_vs_step", "theory_vs_measured", "samples_step_00000030"):
        assert (run / "figures" / f"{stem}.png").is_file()
    for name in ("memorization.csv", "loss.csv", "quality.csv", "train_loss.csv", "evaluation.json"):
        assert (run / "metrics" / name).is_file()
    assert list((tmp_path / "cache").glob("classifier-*.pt"))  # the classifier was cached
    # running train again on the finished folder resumes at the end and does nothing more
    assert cli.main(["train", str(cfg_path), "--out", str(run), "--data-dir", str(data_dir), "--no-progress"]) == 0
    again = json.loads((run / "results.json").read_text())
    assert again["resumed_from"] == 30


def test_subset_larger_than_class_is_a_clear_cli_error(tmp_path, data_dir, capsys):
    from classdiff.commands import cli

    cfg_path = save_config(Config(images=tiny(counts=(16, 25))), tmp_path / "c.toml")
    assert cli.main(["train", str(cfg_path), "--out", str(tmp_path / "r"), "--data-dir", str(data_dir)]) == 1
    assert "class 4 (Coat): asked for 25 images but only 20 exist" in capsys.readouterr().err


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_checkpoint_with_a_code_running_object_is_refused(tmp_path):
    """load_checkpoint unpickles with weights_only=True: an object that would run code is refused, naming the file;
    a plain checkpoint (tensors, plain values, numpy RNG state of older runs) loads."""
    from classdiff.images.ddpm import load_checkpoint

    bad = tmp_path / "step_00000001.pt"
    torch.save({"step": 1, "model": {"w": torch.ones(2)}, "extra": _RunsCodeWhenUnpickled()}, bad)
    with pytest.raises(ValueError, match=r"step_00000001\.pt: refused to load"):
        load_checkpoint(bad)
    plain = tmp_path / "plain.pt"
    torch.save({"step": 2, "model": {"w": torch.ones(2)}, "rng": {"numpy": np.random.get_state()}}, plain)  # noqa: NPY002
    state = load_checkpoint(plain)
    assert state["step"] == 2 and torch.equal(state["model"]["w"], torch.ones(2))
