"""End to end: a tiny diffusers pipeline built and saved here, sampled by ``classdiff generate`` (with resume),
audited by ``classdiff memorization`` against a training set holding copies of one class's samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classdiff.commands.cli import main
from classdiff.core.readoff import interval_order, pairwise_agreement

diffusers = pytest.importorskip("diffusers")  # installed by `make test` (the dev extra)


def _save_pipeline(folder: Path, conditional: bool = True) -> None:
    import torch

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=4 if conditional else None)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=50)).save_pretrained(folder)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusers")
    _save_pipeline(root / "pipe")
    for name, seed in (("gen", 0), ("other", 1)):
        assert main(["generate", str(root / "pipe"), "--n", "64", "--batch-size", "16", "--steps", "10", "--seed",
                     str(seed), "--out", str(root / name), "--no-progress"]) == 0
    return {"root": root, "pipe": root / "pipe", "gen": root / "gen", "other": root / "other"}


def test_generate_is_seeded_resumable_and_conditional(generated: dict[str, Path], capsys) -> None:
    z = np.load(generated["gen"] / "samples.npz")
    assert z["x"].shape == (64, 1, 8, 8) and z["x"].dtype == np.float32
    assert np.abs(z["x"]).max() <= 1 and z["y"].tolist() == [i % 4 for i in range(64)]
    first = z["x"].copy()
    # a killed run: two batches lost; the rerun regenerates only those, bit-identically
    (generated["gen"] / "batches" / "batch_00001.npz").unlink()
    (generated["gen"] / "batches" / "batch_00003.npz").write_bytes(b"damaged")
    out = generated["gen"]
    assert main(["generate", str(generated["pipe"]), "--n", "64", "--batch-size", "16", "--steps", "10",
                 "--out", str(out), "--no-progress", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["batches_reused"] == 2
    np.testing.assert_array_equal(np.load(out / "samples.npz")["x"], first)
    # other settings in the same folder are refused
    assert main(["generate", str(generated["pipe"]), "--n", "64", "--steps", "5", "--out", str(out),
                 "--no-progress"]) == 1
    assert "other settings (batch_size, steps)" in capsys.readouterr().err
    assert main(["generate", str(generated["pipe"]), "--n", "8", "--classes", "1,9", "--out",
                 str(generated["root"] / "bad"), "--no-progress"]) == 1
    assert "classes [9]: out of range" in capsys.readouterr().err
    assert main(["generate", str(generated["root"]), "--n", "8", "--out", str(generated["root"] / "bad2"),
                 "--no-progress"]) == 1
    assert "neither model_index.json" in capsys.readouterr().err


def test_memorization_audit_finds_the_copied_class(generated: dict[str, Path], capsys) -> None:
    gen = np.load(generated["gen"] / "samples.npz")
    other = np.load(generated["other"] / "samples.npz")
    keep = other["y"] != 0
    # class 0 of the training set: copies of the samples generated for class 0; classes 1-3: fresh samples
    x = np.concatenate([gen["x"][gen["y"] == 0], other["x"][keep]])
    y = np.concatenate([np.zeros(int((gen["y"] == 0).sum()), np.int64), other["y"][keep]])
    train = generated["root"] / "train.npz"
    np.savez(train, x=x, y=y)
    out = generated["root"] / "audit"
    assert main(["memorization", str(generated["gen"] / "samples.npz"), str(train), "--bootstrap", "200",
                 "--out", str(out), "--no-progress", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    by = {c["label"]: c for c in res["memorization"]["classes"]}
    assert by[0]["n_conditioning"] == 16 and by[0]["f_mem_conditioning"] >= 0.95
    for c in (1, 2, 3):
        assert by[c]["f_mem_conditioning"] <= 0.05
    assert res["measured_memorization_order"]["attribution"] == "conditioning"
    assert res["measured_memorization_order"]["sorted"][0] == 0
    assert res["theory"]["available"] and "agreement" in res
    assert res["quality"]["available"] and len(res["quality"]["classes"]) == 4
    per = np.load(out / "per_sample.npz")
    assert per["ratio"].shape == (64,) and (per["ratio"][gen["y"] == 0] < 1e-6).all()
    for stem in ("gallery", "memorization"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").is_file()


def test_memorization_command_errors(generated: dict[str, Path], tmp_path: Path, capsys) -> None:
    samples = generated["gen"] / "samples.npz"
    np.savez(tmp_path / "unlabelled.npz", x=np.zeros((4, 8, 8), np.float32))
    assert main(["memorization", str(samples), str(tmp_path / "unlabelled.npz"), "--out", str(tmp_path / "o1")]) == 1
    assert "no array 'y' of labels" in capsys.readouterr().err
    np.savez(tmp_path / "small.npz", x=np.zeros((4, 6, 6), np.float32), y=np.arange(4))
    assert main(["memorization", str(samples), str(tmp_path / "small.npz"), "--out", str(tmp_path / "o2")]) == 1
    assert "samples have shape (1, 8, 8)" in capsys.readouterr().err
    assert main(["memorization", str(samples), str(samples), "--threshold", "1.5", "--out", str(tmp_path / "o3")]) == 1
    assert "--threshold 1.5: must lie in (0, 1)" in capsys.readouterr().err


def test_interval_order_and_agreement_rule() -> None:
    res = interval_order([0.9, 0.1, 0.5], [[0.8, 1.0], [0.0, 0.2], [0.4, 0.6]], [5, 6, 7], descending=True)
    assert res["order"] == [5, 7, 6] and res["resolved"]
    tie = interval_order([0.9, 0.1, 0.5], [[0.45, 1.0], [0.0, 0.2], [0.4, 0.6]], [5, 6, 7], descending=True)
    assert tie["order"] == "not resolved" and tie["ties"] == [[5, 7]] and tie["sorted"] == [5, 7, 6]
    agree = pairwise_agreement(tie, [7, 5, 6])  # (5, 7) unresolved; (5, 6) and (7, 6) resolved and agree
    assert agree["pairs"] == 2 and agree["agree"] == 2
    assert pairwise_agreement(res, [6, 7, 5])["disagreeing"] == [[5, 7], [5, 6], [7, 6]]
    assert interval_order([None, 0.3], [[np.nan, np.nan], [0.2, 0.4]])["sorted"] == [1]
