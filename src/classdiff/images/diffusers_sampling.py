"""Samples from a user's diffusers model (``UNet2DModel`` or ``DDPMPipeline`` saved with ``save_pretrained``).

:func:`load_diffusers_model` reads a local folder (never the hub):

* a pipeline folder (``model_index.json``, sub-folders ``unet/`` and ``scheduler/``): the U-Net and the saved
  scheduler (its class from ``scheduler_config.json``, e.g. ``DDPMScheduler``, ``DDIMScheduler``);
* a model folder (``config.json`` of a ``UNet2DModel``): the U-Net, with a ``DDPMScheduler`` of
  ``num_train_timesteps`` steps (1000 by default) unless a scheduler is given.

A U-Net with ``num_class_embeds`` is class-conditional: each sample is generated for a class label, cycling
through ``classes`` (default 0..num_class_embeds-1, balanced).

:func:`generate_samples` runs the scheduler's reverse loop (``set_timesteps(steps)``; per step
``scale_model_input``, the U-Net's prediction, ``step``) in batches. Batch b starts from noise drawn on the CPU
with ``torch.Generator().manual_seed(s_b)``, s_b from ``SeedSequence([seed, 7, b])``, and the scheduler's own
noise uses the same generator, so a batch is the same whatever the batch order or a resume. Every finished
batch is written atomically to ``batches/batch_<b>.npz``; a rerun with the same settings skips the batches
already there (a killed run loses at most the batch in progress), a rerun with other settings is refused
unless ``fresh``. The result is ``x`` float32 (n, C, H, W) clipped to [-1, 1] and, when conditional, ``y``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["generate_samples", "load_diffusers_model"]

_STREAM = 7  # SeedSequence stream of the generation noise (distinct from classdiff's other streams)


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ValueError("sampling a diffusers model needs the diffusers package (pip install diffusers, or the "
                         "'diffusers' extra of classdiff)") from None
    return diffusers


def load_diffusers_model(path: str | Path, *, device: str = "cpu", num_train_timesteps: int = 1000
                         ) -> tuple[Any, Any, dict[str, Any]]:
    """(unet, scheduler, info) from a local diffusers folder; ``info`` names what was loaded."""
    diffusers = _diffusers()
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder; expected a diffusers pipeline or UNet2DModel saved with "
                         "save_pretrained")
    if (folder / "model_index.json").is_file():
        if not (folder / "unet" / "config.json").is_file():
            raise ValueError(f"{folder}: a pipeline folder without unet/config.json; classdiff samples pipelines "
                             "whose denoiser is a UNet2DModel in unet/")
        unet = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet", local_files_only=True,
                                                   low_cpu_mem_usage=False)
        sched_cfg = folder / "scheduler" / "scheduler_config.json"
        if not sched_cfg.is_file():
            raise ValueError(f"{folder}: pipeline folder without scheduler/scheduler_config.json")
        import json

        name = json.loads(sched_cfg.read_text()).get("_class_name", "DDPMScheduler")
        cls = getattr(diffusers, name, None)
        if cls is None:
            raise ValueError(f"{sched_cfg}: scheduler class {name!r} is not in this diffusers version")
        scheduler = cls.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
        kind = "pipeline"
    elif (folder / "config.json").is_file():
        try:
            unet = diffusers.UNet2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
        except Exception as exc:
            raise ValueError(f"{folder}: not a loadable UNet2DModel ({type(exc).__name__}: {exc})") from None
        scheduler = diffusers.DDPMScheduler(num_train_timesteps=num_train_timesteps)
        name, kind = "DDPMScheduler", "unet"
    else:
        raise ValueError(f"{folder}: neither model_index.json (pipeline) nor config.json (UNet2DModel) found")
    unet = unet.to(device).eval()
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, (list, tuple)) else (cfg.sample_size, cfg.sample_size)
    info = {"path": str(folder), "kind": kind, "scheduler": name, "in_channels": int(cfg.in_channels),
            "sample_size": [int(size[0]), int(size[1])],
            "num_class_embeds": None if cfg.num_class_embeds is None else int(cfg.num_class_embeds)}
    return unet, scheduler, info


def _batch_seed(seed: int, batch: int) -> int:
    return int(np.random.SeedSequence([seed, _STREAM, batch]).generate_state(1, np.uint64)[0] >> 1)


def _class_schedule(n: int, info: dict[str, Any], classes: list[int] | None) -> NDArray[np.int64] | None:
    k = info["num_class_embeds"]
    if k is None:
        if classes:
            raise ValueError("classes: the model is not class-conditional (no num_class_embeds); drop the classes")
        return None
    labs = list(range(k)) if not classes else [int(c) for c in classes]
    bad = [c for c in labs if not 0 <= c < k]
    if bad:
        raise ValueError(f"classes {bad}: out of range; the model has num_class_embeds = {k} (allowed 0..{k - 1})")
    return np.array([labs[i % len(labs)] for i in range(n)], dtype=np.int64)


def generate_samples(model_dir: str | Path, out_dir: str | Path, *, n: int, batch_size: int = 64, steps: int = 50,
                     seed: int = 0, classes: list[int] | None = None, device: str = "cpu", fresh: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """Generate ``n`` samples into ``out_dir`` (``samples.npz``, ``batches/``); returns a JSON-able summary.

    Resumable (module docstring). ``steps``: inference steps of the scheduler's ``set_timesteps``.
    """
    import torch

    from classdiff.core.io import read_json, save_npz_atomic, write_json_atomic

    for name, value, low in (("n", n, 1), ("batch_size", batch_size, 1), ("steps", steps, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} = {value!r}: must be an integer >= {low}")
    out = Path(out_dir)
    unet, scheduler, info = load_diffusers_model(model_dir, device=device)
    labels = _class_schedule(n, info, classes)
    settings = {"model": info, "n": int(n), "batch_size": int(batch_size), "steps": int(steps), "seed": int(seed),
                "classes": None if labels is None else sorted(set(labels.tolist()))}
    batches = out / "batches"
    settings_path = out / "generation.json"
    if settings_path.is_file() and not fresh:
        old = read_json(settings_path)
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise ValueError(f"{out}: holds samples generated with other settings ({', '.join(changed)}); "
                             "use another output folder or --fresh")
    if fresh and batches.is_dir():
        for f in batches.glob("batch_*.npz"):
            f.unlink()
    batches.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings_path, settings)
    n_batches = -(-n // batch_size)
    chans, (h, w) = info["in_channels"], info["sample_size"]
    it = range(n_batches)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="generating", unit="batch", file=sys.stderr)
    reused = 0
    for b in it:
        path = batches / f"batch_{b:05d}.npz"
        m = min(batch_size, n - b * batch_size)
        if path.is_file():
            try:
                with np.load(path) as z:
                    if z["x"].shape == (m, chans, h, w):
                        reused += 1
                        continue
            except Exception:  # a damaged batch file is regenerated
                pass
        gen = torch.Generator().manual_seed(_batch_seed(seed, b))
        x = torch.randn((m, chans, h, w), generator=gen).to(device) * scheduler.init_noise_sigma
        yb = None if labels is None else torch.from_numpy(labels[b * batch_size: b * batch_size + m]).to(device)
        scheduler.set_timesteps(steps)
        with torch.no_grad():
            for t in scheduler.timesteps:
                pred = unet(scheduler.scale_model_input(x, t), t, class_labels=yb).sample
                x = scheduler.step(pred, t, x, generator=gen).prev_sample
        arrays = {"x": x.clamp(-1, 1).float().cpu().numpy()}
        if yb is not None:
            arrays["y"] = yb.cpu().numpy()
        save_npz_atomic(path, **arrays)
    xs, ys = [], []
    for b in range(n_batches):
        with np.load(batches / f"batch_{b:05d}.npz") as z:
            xs.append(z["x"])
            if labels is not None:
                ys.append(z["y"])
    result = {"x": np.concatenate(xs).astype(np.float32)}
    if labels is not None:
        result["y"] = np.concatenate(ys).astype(np.int64)
    save_npz_atomic(out / "samples.npz", **result)
    return {**settings, "samples": str(out / "samples.npz"), "batches": n_batches, "batches_reused": reused}
