"""DDPM training of the U-Net on an imbalanced Fashion-MNIST subset: resumable, seeded, log-spaced checkpoints.

Forward process (Ho et al. 2020, eq. 4): x_k = sqrt(alpha-bar_k) x_0 + sqrt(1 - alpha-bar_k) eps, k = 0..T-1,
the OU forward step at t_k = -(1/2) log alpha-bar_k (:class:`classdiff.images.schedule.DDPMSchedule`; linear
1e-4 -> 0.02 or cosine). Loss: epsilon-prediction MSE
(Ho et al. eq. 14) with k uniform in {0..T-1}. Adam (or SGD with momentum 0.95, as the precursor), no EMA by
default (with ``images.ema > 0`` both raw and EMA weights are saved).

Reproducibility and resumption. Every random choice of optimizer step s (the mini-batch, the steps k, the
noise eps, dropout masks) is drawn from generators seeded by (seed, s) only, and the mini-batches walk through
per-epoch permutations seeded by (seed, epoch). A checkpoint holds model + optimizer (+ EMA) state, the RNG
states (torch, numpy, python) and the step, written atomically (temporary file + ``os.replace``) beside a
``.sha256`` file holding its checksum. A run killed at any moment (even SIGKILL) and restarted continues from its
last checkpoint and, on CPU at the same thread count (recorded as ``torch_threads``), ends bit-identical to an
uninterrupted run; a latest checkpoint that is truncated or fails its checksum is reported and skipped for the
previous good one.

A run folder belongs to one training config: resuming with a config that differs in anything but the step
count, the checkpoint count, the device and the evaluation settings (:data:`RESUMABLE_FIELDS`) is refused with
the differing fields named; ``resume=False`` (``classdiff train --fresh``) deletes the old checkpoints first.
While training, the folder is locked (:func:`classdiff.core.io.exclusive_folder`) against a second writer.

Run folder::

    config.toml          the full config
    indices.json         the training subset: indices into the Fashion-MNIST training set, labels, counts
    checkpoints/step_00001234.pt, step_00001234.pt.sha256
    metrics/train_loss.csv, train.json
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from classdiff.core.config import Config, ImagesConfig, load_config, save_config
from classdiff.core.io import (
    exclusive_folder,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from classdiff.images.schedule import DDPMSchedule

if TYPE_CHECKING:
    import torch

__all__ = [
    "RESUMABLE_FIELDS",
    "CheckpointError",
    "CheckpointWarning",
    "build_model",
    "checkpoint_steps",
    "class_index",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "load_training_data",
    "make_optimizer",
    "resolve_device",
    "train_unet",
]

CHECKPOINT_DIR = "checkpoints"

#: ``[images]`` fields a run may change between a checkpoint and its resumption: they do not touch the weights
#: trained so far (the step count, the checkpoint grid, the device, and everything ``evaluate`` alone reads).
RESUMABLE_FIELDS = frozenset({
    "steps", "n_checkpoints", "device", "n_samples", "sampler_steps", "loss_times", "memorization_threshold",
    "n_bootstrap", "loss_images", "loss_noise_draws", "eval_batch_size", "classifier_epochs",
})


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: truncated, corrupt, failing its checksum, or holding unsafe objects."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt or truncated) and an earlier one used instead."""


def make_optimizer(params: Iterable, optimizer: str, learning_rate: float) -> torch.optim.Optimizer:
    """The training optimizer over ``params``: ``"adam"`` (Adam, default betas) or ``"sgd"`` (SGD, momentum 0.95, as
    the precursor), both in torch's fused implementation (one kernel over all parameters per step instead of the
    default per-tensor loop; the same update up to float rounding)."""
    import torch

    if optimizer == "adam":
        return torch.optim.Adam(params, lr=learning_rate, fused=True)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, momentum=0.95, fused=True)
    raise ValueError(f"optimizer = {optimizer!r}: must be 'adam' or 'sgd'")


def checkpoint_steps(steps: int, n_checkpoints: int) -> list[int]:
    """Log-spaced optimizer steps in [1, steps] (rounded, unique), always ending at ``steps``."""
    grid = np.unique(np.round(np.geomspace(1, steps, n_checkpoints)).astype(int))
    out = sorted({int(s) for s in grid if 1 <= s <= steps} | {steps})
    return out


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def batch_indices(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    """Positions (batch,) in [0, n) used at optimizer step ``step`` (0-based): consecutive slices of
    per-epoch permutations seeded by (seed, epoch). A pure function of its arguments."""
    start = step * batch
    out = np.empty(batch, dtype=np.int64)
    filled = 0
    while filled < batch:
        epoch, offset = divmod(start + filled, n)
        perm = np.random.default_rng(_seed(seed, 0xE, epoch)).permutation(n)
        take = min(batch - filled, n - offset)
        out[filled: filled + take] = perm[offset: offset + take]
        filled += take
    return out


def _images_config(config: Config | ImagesConfig) -> ImagesConfig:
    return config.images if isinstance(config, Config) else config


def build_model(cfg: ImagesConfig):
    """The :class:`~classdiff.images.unet.UNet` described by an ``[images]`` section."""
    from classdiff.images.unet import UNet

    return UNet(width=cfg.width, channel_mults=cfg.channel_mults, attention=cfg.attention, dropout=cfg.dropout,
                num_res_blocks=cfg.num_res_blocks,
                num_classes=len(cfg.classes) if cfg.class_conditional else 0)


def load_training_data(cfg: ImagesConfig, data_root: str | Path | None = None) -> dict[str, Any]:
    """Fashion-MNIST (validated) and the training subset of ``cfg``.

    Returns a dict with ``data`` (:class:`FashionMNIST`), ``indices`` (n,), ``labels`` (n,) original labels,
    ``counts`` per class. A folder holding a ``SHA256SUMS`` file (``<sha256>  <name>`` lines) is checked
    against it instead of the upstream checksums (used for synthetic test data).
    """
    from classdiff.data.fashion_mnist import (
        SHA256,
        build_subset,
        find_fashion_mnist,
        load_fashion_mnist,
        read_checksums,
        subset_counts,
    )

    root = Path(data_root) if data_root is not None else find_fashion_mnist()
    checksums: dict[str, str] = dict(SHA256)
    if root is not None and (Path(root) / "SHA256SUMS").is_file():
        checksums = read_checksums(Path(root) / "SHA256SUMS")
    data = load_fashion_mnist(root, checksums=checksums)
    counts = subset_counts(cfg.classes, counts=cfg.counts, weights=cfg.weights, n_total=cfg.n_train)
    indices = build_subset(data.train_labels, cfg.classes, counts, cfg.seed)
    return {"data": data, "indices": indices, "labels": data.train_labels[indices].astype(np.int64),
            "counts": counts}


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in a run folder, by increasing step."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    out = []
    for p in folder.glob("step_*.pt"):
        try:
            out.append((int(p.stem.split("_")[1]), p))
        except ValueError:
            continue
    return sorted(out)


def _numpy_rng_state() -> list[Any]:
    """numpy's global RNG state as plain values: [name, keys (624 ints), pos, has_gauss, cached_gaussian]."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (saves the global state)
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _set_numpy_rng_state(state: Any) -> None:
    """Restore numpy's global RNG from :func:`_numpy_rng_state` (or the tuple of older checkpoints)."""
    name, keys, pos, has_gauss, gauss = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(gauss)))  # noqa: NPY002


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def load_checkpoint(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The state saved by :func:`train_unet` at ``path``, tensors on ``device``.

    The file is first checked against its ``.sha256`` companion (checkpoints written before checksums were
    added have none and are only checked by loading). Loaded with ``torch.load(weights_only=True)``: tensors,
    state dicts and plain Python values only, so a file holding any other pickled object (which could run code
    when unpickled) is refused. numpy arrays are allowed as well, for the RNG state of checkpoints written
    before it was saved as a plain list. Every failure is a :class:`CheckpointError` naming the file.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read this checkpoint ({e.strerror or e})") from e
    sums = _checksum_path(path)
    if sums.is_file():
        expected = sums.read_text().split()[0] if sums.read_text().split() else ""
        actual = hashlib.sha256(raw).hexdigest()
        if actual != expected:
            raise CheckpointError(f"{path}: checksum mismatch (file {actual[:12]}..., {sums.name} "
                                  f"{expected[:12] or 'empty'}...): the checkpoint is corrupt or was replaced")
    reconstruct = np.zeros(1, dtype=np.uint32).__reduce__()[0]  # numpy's array unpickler, without private imports
    numpy_arrays = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), reconstruct]
    try:
        with torch.serialization.safe_globals(numpy_arrays):
            state = torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load this checkpoint: it holds objects other than tensors, "
                              f"state dicts and plain Python values (torch.load weights_only=True): {e}") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:  # truncated zip, empty file, bad record
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not a classdiff training checkpoint (no step/model entries)")
    return state


def load_latest_checkpoint(run_dir: str | Path, device: str = "cpu",
                           max_step: int | None = None) -> tuple[int, dict[str, Any]] | None:
    """(step, state) of the newest usable checkpoint in ``run_dir`` (at most ``max_step``), or None if none.

    A checkpoint that is truncated, corrupt or fails its checksum is skipped with a :class:`CheckpointWarning`
    naming it, and the previous one is tried. One holding unsafe (code-running) objects is not skipped: its
    :class:`CheckpointError` propagates, since the folder has been tampered with.
    """
    for step, path in reversed(list_checkpoints(run_dir)):
        if max_step is not None and step > max_step:
            continue
        try:
            return step, load_checkpoint(path, device)
        except CheckpointError as e:
            if "refused to load" in str(e):
                raise
            warnings.warn(f"{e}; skipped, trying the previous checkpoint", CheckpointWarning, stacklevel=2)
    return None


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, its SHA-256 first into ``path.sha256`` (a checkpoint that exists
    is therefore always covered by its checksum file; a checksum file without its checkpoint is ignored)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    raw = buffer.getvalue()
    write_text_atomic(_checksum_path(path), f"{hashlib.sha256(raw).hexdigest()}  {path.name}\n")
    write_bytes_atomic(path, raw)


def _check_resumable(out: Path, config: Config) -> None:
    """Refuse to resume the run in ``out`` with an ``[images]`` config that changes its trained weights."""
    saved_path = out / "config.toml"
    if not saved_path.is_file() or not list_checkpoints(out):  # nothing trained yet: nothing to mix
        return
    try:
        saved = load_config(saved_path).images.to_dict()
    except Exception as e:  # any unreadable saved config is reported the same way
        raise ValueError(f"{saved_path}: the run folder's config cannot be read ({e}); use --fresh to start over "
                         "or another --out") from e
    new = config.images.to_dict()
    changed = sorted(k for k in set(saved) | set(new) if k not in RESUMABLE_FIELDS and saved.get(k) != new.get(k))
    if changed:
        diff = "; ".join(f"images.{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"{out}: refused to resume: the run folder was trained with another config ({diff}). "
                         "Use --fresh to discard its checkpoints, or another --out")


def _clear_checkpoints(out: Path) -> None:
    folder = out / CHECKPOINT_DIR
    if folder.is_dir():
        for p in list(folder.glob("step_*.pt")) + list(folder.glob("step_*.pt.sha256")):
            p.unlink()


def resolve_device(name: str) -> str:
    """The torch device of an ``images.device`` setting: ``"auto"`` -> cuda when available, else cpu."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("images.device = 'cuda': no CUDA device is available (use 'auto' or 'cpu')")
    return name


def class_index(labels: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Positions (n,) int64 in ``classes`` of the original labels ``labels`` (n,) (the model's class indices)."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[int(v)] for v in labels], dtype=np.int64)


def train_unet(
    config: Config | ImagesConfig,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a DDPM U-Net on the subset described by ``config.images``; write the run folder ``out_dir``.

    Resumes from the last checkpoint in ``out_dir`` when ``resume`` is true. Uses one GPU (bf16 autocast)
    when ``images.device`` allows it; under ``torchrun`` (WORLD_SIZE > 1) each process takes a slice of every
    mini-batch and gradients are averaged by DistributedDataParallel (rank 0 writes the folder).

    Returns ``{"steps": [...], "loss": [...], "checkpoints": [...], "resumed_from": step or None,
    "images_per_second": ..., "device": ..., "torch_threads": ...}`` (the loss averaged over logging windows).
    Raises ``ValueError`` when ``out_dir`` holds a run of another config (see the module docstring) and
    :class:`classdiff.core.io.RunFolderBusy` when another process is training into it.
    """
    import contextlib

    full = config if isinstance(config, Config) else Config(images=config)
    out = Path(out_dir)
    rank = int(os.environ.get("RANK", "0"))
    lock = exclusive_folder(out) if rank == 0 else contextlib.nullcontext()
    with lock:
        if rank == 0:
            if resume:
                _check_resumable(out, full)
            else:
                _clear_checkpoints(out)
        return _train(full, out, data_root=data_root, resume=resume, progress=progress)


def _train(full: Config, out: Path, *, data_root: str | Path | None, resume: bool, progress: bool) -> dict[str, Any]:
    """The training loop of :func:`train_unet` (the run folder already checked and locked)."""
    import torch
    import torch.nn.functional as F

    cfg = full.images
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}" if backend == "nccl" else "cpu"
        if backend == "nccl":
            torch.cuda.set_device(local)
    else:
        device = resolve_device(cfg.device)
    if cfg.batch_size % world:
        raise ValueError(f"images.batch_size = {cfg.batch_size}: must be divisible by the number of processes ({world})")

    loaded = load_training_data(cfg, data_root)
    data = loaded["data"]
    from classdiff.data.fashion_mnist import to_model_space

    x_all = torch.from_numpy(to_model_space(data.train_images[loaded["indices"]])).to(device)
    y_all = torch.from_numpy(class_index(loaded["labels"], cfg.classes)).to(device)
    n = x_all.shape[0]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(full, out / "config.toml")
        write_json_atomic(out / "indices.json", {
            "classes": list(cfg.classes), "counts": list(loaded["counts"]),
            "indices": loaded["indices"].tolist(), "labels": loaded["labels"].tolist(),
            "data_root": str(data.root)})

    schedule = DDPMSchedule(cfg.schedule, cfg.num_diffusion_steps)
    torch.manual_seed(_seed(cfg.seed, 0xA))
    model = build_model(cfg).to(device)  # the UNet keeps its channels_last weights through .to(device)
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.learning_rate)
    ema = None
    if cfg.ema > 0:
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

    start, history, resumed_from = 0, {"step": [], "loss": []}, None
    window: list[float] = []  # losses since the last logged point (saved, so a resumed history is identical)
    beyond = [s for s, _ in list_checkpoints(out) if s > cfg.steps] if resume else []
    if beyond:
        raise ValueError(f"{out}: images.steps = {cfg.steps} but the run folder holds a checkpoint at step "
                         f"{beyond[-1]}; raise images.steps or use --fresh")
    latest = load_latest_checkpoint(out, device) if resume else None
    if latest is not None:
        step0, state = latest
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema = state["ema"]
        torch.set_rng_state(state["rng"]["torch"])
        _set_numpy_rng_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        history = state["history"]
        window = list(state.get("loss_window", []))
        start, resumed_from = step0, step0
    net = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[int(device.split(":")[1])] if "cuda" in device else None)

    save_at = set(checkpoint_steps(cfg.steps, cfg.n_checkpoints))
    log_every = max(1, cfg.steps // 200)
    local_b = cfg.batch_size // world
    use_bf16 = device.startswith("cuda")
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)
    t0, imgs = time.perf_counter(), 0
    model.train()
    for step in range(start, cfg.steps):
        pos = batch_indices(cfg.seed, step, n, cfg.batch_size)[rank * local_b:(rank + 1) * local_b]
        g = torch.Generator(device="cpu").manual_seed(_seed(cfg.seed, 0xB, step))
        k = torch.randint(0, schedule.num_steps, (cfg.batch_size,), generator=g)[rank * local_b:(rank + 1) * local_b]
        eps = torch.randn((cfg.batch_size, 1, 28, 28), generator=g)[rank * local_b:(rank + 1) * local_b]
        torch.manual_seed(_seed(cfg.seed, 0xD, step, rank))  # dropout masks
        idx = torch.from_numpy(pos).to(device)
        x0, yb, k, eps = x_all[idx], y_all[idx], k.to(device), eps.to(device)
        xk = schedule.add_noise(x0, k, eps)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            pred = net(xk, k, yb if cfg.class_conditional else None)
        loss = F.mse_loss(pred.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for name, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[name].mul_(cfg.ema).add_(v.detach(), alpha=1 - cfg.ema)
                    else:
                        ema[name].copy_(v)
        logged = loss.detach()
        if distributed:  # log the mean over all processes, i.e. over the whole mini-batch
            import torch.distributed as dist

            dist.all_reduce(logged)
            logged = logged / world
        last_loss = float(logged)  # a detached scalar (the postfix below must not convert the graph's loss)
        window.append(last_loss)
        imgs += cfg.batch_size
        done = step + 1
        if done % log_every == 0 or done == cfg.steps:
            history["step"].append(done)
            history["loss"].append(float(np.mean(window)))
            window = []
        if bar is not None:
            bar.update(1)
            if done % 10 == 0 or done == cfg.steps:
                bar.set_postfix(loss=f"{history['loss'][-1] if history['loss'] else last_loss:.4f}",
                                img_s=f"{imgs / (time.perf_counter() - t0):.0f}")
        if done in save_at and rank == 0:
            _save_checkpoint(out / CHECKPOINT_DIR / f"step_{done:08d}.pt", {
                "step": done, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "ema": ema, "history": history, "loss_window": list(window),
                "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
                "config": full.to_dict(), "torch_threads": torch.get_num_threads(),
            })
        if distributed and done in save_at:
            import torch.distributed as dist

            dist.barrier()
    if bar is not None:
        bar.close()
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    elapsed = time.perf_counter() - t0
    result = {
        "steps": history["step"], "loss": history["loss"],
        "checkpoints": [s for s, _ in list_checkpoints(out)], "resumed_from": resumed_from,
        "images_per_second": imgs / elapsed if elapsed > 0 and imgs else None, "device": device,
        "n_train": int(n), "counts": list(loaded["counts"]), "classes": list(cfg.classes),
        "torch_threads": torch.get_num_threads(),
    }
    if rank == 0:
        write_csv_atomic(out / "metrics" / "train_loss.csv", ["step", "loss"], zip(history["step"], history["loss"]))
        write_json_atomic(out / "metrics" / "train.json", result)
    return result
