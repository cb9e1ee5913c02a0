"""U-Net cloning (issue 16 item 4): the stochastic DDIM sampler with the *exact* noise predictor of a Gaussian
mixture reproduces the theory's commitment curves phi_c(t); the run-level command works on a tiny U-Net."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from classdiff.data.backward import agreement_by_class
from classdiff.data.mixture import GaussianMixture
from classdiff.images.cloning import branch_indices, stochastic_step, unet_cloning
from classdiff.images.schedule import DDPMSchedule
from classdiff.theory.speciation import commitment_curves

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class _ExactNoise(torch.nn.Module):
    """eps(x, k) = -sqrt(Delta_{t_k}) grad log P_{t_k}(x) for a Gaussian mixture on (1, 8, 8) images (float64 score)."""

    def __init__(self, mixture: GaussianMixture, schedule: DDPMSchedule) -> None:
        super().__init__()
        self.mixture, self.schedule = mixture, schedule

    def forward(self, x, k, y=None):
        t = float(self.schedule.ou_time[int(k[0])])
        flat = x.reshape(x.shape[0], -1).double().numpy()
        eps = -np.sqrt(1.0 - np.exp(-2.0 * t)) * self.mixture.score(flat, t)
        return torch.from_numpy(eps).reshape(x.shape).float()


def _mixture() -> GaussianMixture:
    d = 64
    u = np.zeros(d)
    u[0] = 1.0
    # centroids +-2 u (separation 16), variance 0.5 per pixel, 70 / 30
    return GaussianMixture([0.7, 0.3], np.stack([2 * u, -2 * u]), [0.5, 0.5])


def test_branch_indices_and_bad_input():
    assert branch_indices(20, 8).tolist() == [1, 3, 6, 8, 11, 13, 16, 18]
    assert branch_indices(5, 10).tolist() == [1, 2, 3]  # no more branches than steps
    with pytest.raises(ValueError, match="sampler_steps"):
        branch_indices(2, 1)
    with pytest.raises(ValueError, match="n_branch"):
        branch_indices(10, 0)


def test_last_stochastic_step_returns_the_denoised_image_and_noise_enters_only_before():
    x = torch.randn(3, 1, 4, 4)
    eps = torch.randn(3, 1, 4, 4)
    z = torch.randn(3, 1, 4, 4)
    a = 0.3
    end = stochastic_step(x, eps, a, None, z, clip=False)
    torch.testing.assert_close(end, (x - (1 - a) ** 0.5 * eps) / a ** 0.5)
    # a step to a_next = a (no progress) has no noise and returns x
    torch.testing.assert_close(stochastic_step(x, eps, a, a, z, clip=False), x, atol=1e-5, rtol=0)


def test_exact_predictor_cloning_matches_the_theory_commitment_curves():
    mixture = _mixture()
    schedule = DDPMSchedule("linear", 1000)
    model = _ExactNoise(mixture, schedule)

    def labeller(images):
        return (images.reshape(len(images), -1)[:, 0] < 0).astype(np.int64)  # Bayes: sign along u

    n = 3000
    sim = unet_cloning(model, schedule, labeller, n_trajectories=n, sampler_steps=50, n_branch=10, seed=4,
                       batch_size=n, clip=False, shape=(1, 8, 8))
    orig, clones = sim["original"], sim["clones"]
    assert orig.shape == (n,) and clones.shape == (len(sim["branch_times"]), n)
    share = np.bincount(orig, minlength=2) / n
    assert share == pytest.approx([0.7, 0.3], abs=0.03)  # the sampler draws the classes at their weights
    phi, _ = agreement_by_class(orig, clones, 2)
    theory = commitment_curves(mixture, sim["branch_times"])
    # binomial sd of phi_c at n_c ~ 900 pairs is <= 0.017 (measured max deviation 0.017 at 50 steps, 0.028 at 200)
    np.testing.assert_allclose(phi, theory, atol=0.05)
    assert phi[-1].min() > 0.97 and phi[0].max() < theory[0].max() + 0.06  # committed late, chance early
    again = unet_cloning(model, schedule, labeller, n_trajectories=50, sampler_steps=20, n_branch=3, seed=4,
                         batch_size=50, clip=False, shape=(1, 8, 8))
    same = unet_cloning(model, schedule, labeller, n_trajectories=50, sampler_steps=20, n_branch=3, seed=4,
                        batch_size=50, clip=False, shape=(1, 8, 8))
    np.testing.assert_array_equal(again["clones"], same["clones"])  # seeded


def test_cloning_command_on_a_tiny_run(tmp_path, monkeypatch):
    from classdiff.commands import cli
    from classdiff.core.config import Config, ImagesConfig, save_config
    from classdiff.data.fashion_mnist import write_synthetic_fashion_mnist

    data_dir = write_synthetic_fashion_mnist(tmp_path / "fmnist", n_train_per_class=20, n_test_per_class=8)
    monkeypatch.setenv("CLASSDIFF_CACHE", str(tmp_path / "cache"))
    cfg = ImagesConfig(classes=(1, 4), counts=(16, 4), width=8, channel_mults=(1,), attention=(False,), dropout=0.0,
                       num_res_blocks=1, batch_size=8, steps=20, n_checkpoints=2, learning_rate=2e-3, n_samples=8,
                       sampler_steps=4, n_bootstrap=20, loss_images=4, loss_noise_draws=1, classifier_epochs=1,
                       device="cpu")
    cfg_path = save_config(Config(images=cfg), tmp_path / "c.toml")
    run = tmp_path / "run"
    assert cli.main(["train", str(cfg_path), "--out", str(run), "--data-dir", str(data_dir), "--no-progress"]) == 0
    out = tmp_path / "clone"
    assert cli.main(["cloning", str(run), "--out", str(out), "--data-dir", str(data_dir), "--trajectories", "12",
                     "--sampler-steps", "5", "--branches", "3", "--bootstrap", "20", "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [c["label"] for c in res["classes"]] == [1, 4]
    assert res["checkpoint_step"] == 20
    assert sum(c["sample_share"] for c in res["classes"]) == pytest.approx(1.0)
    for c in res["classes"]:  # a time is a number, "inf" or "not reached"; never null
        for key in ("t_speciation_unet", "t_speciation_unet_relative", "t_speciation_theory",
                    "t_speciation_theory_covariance", "t_speciation_theory_covariance_relative"):
            assert c[key] in ("inf", "nan", "not reached") or isinstance(c[key], float), (key, c[key])
        assert len(c["t_speciation_unet_interval"]) == 2
    assert np.asarray(res["curves"]["phi"]).shape == (3, 2)
    assert res["covariance_speciation"]["available"], res["covariance_speciation"]
    assert np.asarray(res["curves"]["theory_covariance_phi"]).shape == (120, 2)
    assert (out / "cloning.png").is_file() and (out / "cloning.pdf").is_file()
    assert cli.main(["cloning", str(run), "--out", str(tmp_path / "bad"), "--trajectories", "1"]) == 1
