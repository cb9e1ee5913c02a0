"""U-Net training throughput on CPU: classdiff's UNet vs diffusers' UNet2DModel with equal widths, blocks, batch.

Run: .venv/bin/python benchmarks/bench_unet.py [--width 32] [--batch 64] [--threads 2]
Target (issue 6): images/s of one training step (forward, epsilon-MSE, backward, Adam) >= 1.2x diffusers'.
diffusers is optional (``pip install diffusers``); without it the reference column is skipped.

Both models: 28x28x1, channels W x (1, 2, 4), 2 residual blocks per level, attention at the two coarser
levels and in the middle (head dimension 32), GroupNorm with 8 groups, dropout 0.1, sinusoidal time embedding.
The two are timed alternately, best of several repeats (the machine is shared; the ratio is what counts).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _table import print_table


def _models(width: int):
    from classdiff.images.unet import UNet

    ours = UNet(width, (1, 2, 4), (False, True, True), dropout=0.1)
    ref = None
    if importlib.util.find_spec("diffusers") is not None:
        from diffusers import UNet2DModel

        ref = UNet2DModel(
            sample_size=28, in_channels=1, out_channels=1, block_out_channels=(width, 2 * width, 4 * width),
            layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
            attention_head_dim=32, dropout=0.1,
        )
    return ours, ref


def _step_fn(model, batch: int, diffusers_api: bool):
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    eps = torch.randn(batch, 1, 28, 28, generator=g)
    k = torch.randint(0, 1000, (batch,), generator=g)
    model.train()

    def step():
        out = model(x, k).sample if diffusers_api else model(x, k)
        loss = F.mse_loss(out, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(width: int = 32, batch: int = 64, threads: int = 2, steps: int = 3, repeats: int = 3) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours, ref = _models(width)
    fns = {"classdiff UNet": _step_fn(ours, batch, False)}
    params = {"classdiff UNet": sum(p.numel() for p in ours.parameters())}
    if ref is not None:
        fns["diffusers UNet2DModel"] = _step_fn(ref, batch, True)
        params["diffusers UNet2DModel"] = sum(p.numel() for p in ref.parameters())
    for fn in fns.values():  # warm-up
        fn()
    best = dict.fromkeys(fns, float("inf"))
    best_cpu = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():  # alternate so that load changes hit both
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
            best_cpu[name] = min(best_cpu[name], (time.process_time() - c0) / steps)
    return {name: {"s_per_step": best[name], "images_per_s": batch / best[name], "cpu_s_per_step": best_cpu[name],
                   "params": params[name]} for name in fns}


def ratios() -> list[dict]:
    quick = os.environ.get("CLASSDIFF_BENCH_QUICK") == "1"
    res = measure(width=16 if quick else 32, batch=32 if quick else 64, steps=2 if quick else 3)
    if "diffusers UNet2DModel" not in res:
        return []
    ours = res["classdiff UNet"]["images_per_s"]
    ref = res["diffusers UNet2DModel"]["images_per_s"]
    return [{"benchmark": "U-Net CPU training throughput vs diffusers", "ours": ours, "reference": ref,
             "unit": "img/s", "ratio": ours / ref / 1.2, "target": ">= 1.2x diffusers UNet2DModel"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    res = measure(a.width, a.batch, a.threads, a.steps, a.repeats)
    base = res.get("diffusers UNet2DModel", {}).get("images_per_s")
    base_cpu = res.get("diffusers UNet2DModel", {}).get("cpu_s_per_step")
    rows = [[name, r["params"], r["s_per_step"], r["images_per_s"], (r["images_per_s"] / base) if base else "-",
             r["cpu_s_per_step"], (base_cpu / r["cpu_s_per_step"]) if base_cpu else "-"] for name, r in res.items()]
    if base is None:
        print("diffusers not installed: reference column skipped", file=sys.stderr)
    print_table(f"U-Net training step on CPU, W = {a.width}, batch {a.batch}, {a.threads} threads",
                ["model", "params", "wall s/step", "img/s", "vs diffusers (wall)", "CPU s/step",
                 "vs diffusers (CPU time)"], rows)


if __name__ == "__main__":
    main()
