"""U-Net training throughput on CPU: classdiff's UNet vs diffusers' UNet2DModel with equal widths, blocks, batch.

Run: .venv/bin/python benchmarks/bench_unet.py [--width 32] [--batch 64] [--threads 2] [--compile]
     [--config experiments/fashion_cpu.toml] [--ref-channels-last]
Target (issue 15): images/s of one training step (forward, epsilon-MSE, backward, Adam) >= 1.0x diffusers',
both in float32 eager mode (no autocast), both with the optimizer of classdiff's trainer
(``classdiff.images.ddpm.make_optimizer``: torch's fused Adam). diffusers is optional (``pip install diffusers``,
the ``bench`` extra); without it the reference rows are skipped.

Both models (the paper layout): 28x28x1, channels W x (1, 2, 4), 2 residual blocks per level, attention at the
two coarser levels and in the middle (head dimension 32), GroupNorm with 8 groups, dropout 0.1, sinusoidal time
embedding; the parameter counts are printed and must agree. ``--config`` times instead the layout, width and batch
that an experiment config trains (the shipped CPU config: W = 16, channels x (1, 2, 2), one block per level,
attention at 7x7 only, no dropout, batch 32). ``--ref-channels-last`` adds the diffusers model converted to
channels_last (weights and input), to check that the lead does not come from the memory layout alone.
Both models are pure PyTorch.

The variants are timed alternately (one round of every variant, then the next round, in reversed order every
other round). Two ratios are printed: the best round of each model against the best round of the other, and the
median (with quartiles and a bootstrap 95% confidence interval) of the per-round ratios, each round timing the two
models back to back, the one less sensitive to a lucky round on this shared machine. The load average before and
after is printed.

``--compile`` adds both models wrapped in ``torch.compile`` (inductor, needs a C++ compiler), with the compile time
(the first steps) reported apart from the step time, and three ratios: both eager (the target), both compiled,
and classdiff compiled vs diffusers eager. classdiff itself never compiles: on this CPU the compiled step
measured slower than the eager one.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import print_table

OURS, REF = "classdiff UNet", "diffusers UNet2DModel"
REF_CL = REF + " (channels_last)"


PAPER_LAYOUT = {"channel_mults": (1, 2, 4), "attention": (False, True, True), "num_res_blocks": 2, "dropout": 0.1}


def layout_from_config(path: str) -> tuple[int, int, dict]:
    """(width, batch, layout) of the ``[images]`` section of an experiment config (e.g. experiments/fashion_cpu.toml),
    for timing the network a config trains; ``layout`` has the keys of ``PAPER_LAYOUT``."""
    from classdiff.core.config import load_config

    im = load_config(path).images
    layout = {"channel_mults": tuple(im.channel_mults), "attention": tuple(im.attention),
              "num_res_blocks": im.num_res_blocks, "dropout": im.dropout}
    return im.width, im.batch_size, layout


def _models(width: int, layout: dict | None = None):
    """classdiff's UNet and, when diffusers is installed, the ``UNet2DModel`` of the same layout (same blocks, widths,
    attention placement with head dimension 32, GroupNorm(8), dropout)."""
    from classdiff.images.unet import UNet

    lay = PAPER_LAYOUT if layout is None else layout
    mults, att = lay["channel_mults"], lay["attention"]
    ours = UNet(width, mults, att, dropout=lay["dropout"], num_res_blocks=lay["num_res_blocks"])
    ref = None
    if importlib.util.find_spec("diffusers") is not None:
        from diffusers import UNet2DModel

        ref = UNet2DModel(
            sample_size=28, in_channels=1, out_channels=1, block_out_channels=tuple(width * m for m in mults),
            layers_per_block=lay["num_res_blocks"],
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in att),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(att)), norm_num_groups=8,
            attention_head_dim=32, dropout=lay["dropout"],
        )
    return ours, ref


def _step_fn(model, batch: int, diffusers_api: bool, compiled: bool = False, channels_last: bool = False):
    import torch
    import torch.nn.functional as F

    from classdiff.images.ddpm import make_optimizer

    opt = make_optimizer(model.parameters(), "adam", 1e-4)  # classdiff's training optimizer, for both models
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    eps = torch.randn(batch, 1, 28, 28, generator=g)
    k = torch.randint(0, 1000, (batch,), generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    net = torch.compile(model) if compiled else model

    def step():
        out = net(x, k).sample if diffusers_api else net(x, k)
        loss = F.mse_loss(out, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" (1, 5, 15 min; {os.cpu_count()} CPUs)"
    except OSError:
        return "unavailable"


def measure(width: int = 32, batch: int = 64, threads: int = 2, steps: int = 3, repeats: int = 3,
            compile: bool = False, layout: dict | None = None, ref_channels_last: bool = False) -> dict:
    """Per variant: ``s_per_step``, ``images_per_s``, ``cpu_s_per_step`` (best of ``repeats`` rounds of ``steps``),
    ``params``, ``warmup_s`` (the first two steps: the compile time for compiled variants) and ``compiled``;
    ``layout``: see :func:`_models` (default ``PAPER_LAYOUT``); ``ref_channels_last`` adds a copy of the diffusers
    model with channels_last weights and input (``REF_CL``)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours, ref = _models(width, layout)
    variants = {OURS: (ours, False, False, False)}
    if ref is not None:
        variants[REF] = (ref, True, False, False)
        if ref_channels_last:
            variants[REF_CL] = (ref, True, False, True)
    if compile:
        variants[OURS + " (compiled)"] = (ours, False, True, False)
        if ref is not None:
            variants[REF + " (compiled)"] = (ref, True, True, False)
    fns, warmup = {}, {}
    for name, (model, diffusers_api, compiled, channels_last) in variants.items():
        if compiled or channels_last:  # a separate copy, with its own weights and optimizer
            import copy

            model = copy.deepcopy(model)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
        fns[name] = _step_fn(model, batch, diffusers_api, compiled, channels_last)
        t0 = time.perf_counter()
        fns[name]()
        fns[name]()
        warmup[name] = time.perf_counter() - t0
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    rounds_cpu: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        # alternate so that load changes hit every variant, in reversed order every other round (each variant
        # follows the other as often: the allocator's and the caches' state after a step depends on the model)
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            fn = fns[name]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fn()
            rounds[name].append((time.perf_counter() - t0) / steps)
            rounds_cpu[name].append((time.process_time() - c0) / steps)
    out = {}
    for name in fns:
        entry = {"s_per_step": min(rounds[name]), "images_per_s": batch / min(rounds[name]),
                 "cpu_s_per_step": min(rounds_cpu[name]), "round_s_per_step": rounds[name],
                 "params": sum(p.numel() for p in variants[name][0].parameters()), "warmup_s": warmup[name],
                 "compiled": variants[name][2]}
        if REF in fns and name != REF:  # per-round speed ratios, each round's variants timed back to back
            paired = sorted(r / o for r, o in zip(rounds[REF], rounds[name], strict=True))
            entry["paired_ratio_quartiles"] = tuple(float(v) for v in np.quantile(paired, [0.25, 0.5, 0.75]))
            entry["paired_median_ci95"] = median_ci(paired)
        if REF_CL in fns and name == OURS:  # classdiff against the channels_last copy of diffusers, paired
            paired_cl = sorted(r / o for r, o in zip(rounds[REF_CL], rounds[name], strict=True))
            entry["paired_ratio_vs_ref_cl"] = float(np.median(paired_cl))
        out[name] = entry
    return out


def median_ci(values: list[float], level: float = 0.95, draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of ``values`` (the rounds resampled with replacement;
    fixed seed). It measures how well the rounds of one run pin the median, not run-to-run drift of the machine."""
    v = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, v.size, size=(draws, v.size))
    meds = np.median(v[idx], axis=1)
    return float(np.quantile(meds, (1 - level) / 2)), float(np.quantile(meds, (1 + level) / 2))


def ratios() -> list[dict]:
    """The ``make bench`` row: the median of the per-round img/s ratios (each round times both models back to back;
    quick: W = 16, batch 32, 5 rounds; else W = 32, batch 64, 9 rounds)."""
    quick = os.environ.get("CLASSDIFF_BENCH_QUICK") == "1"
    res = measure(width=16 if quick else 32, batch=32 if quick else 64, steps=2, repeats=5 if quick else 9)
    if REF not in res:
        raise RuntimeError("the diffusers row cannot run: diffusers is not installed (pip install -e '.[bench]'; "
                           "make bench installs it)")
    ratio = res[OURS]["paired_ratio_quartiles"][1]
    ref = res[REF]["images_per_s"]
    return [{"benchmark": "U-Net CPU training throughput vs diffusers (median of paired rounds)",
             "ours": ratio * ref, "reference": ref, "unit": "img/s", "ratio": ratio,
             "target": ">= 1.0x diffusers UNet2DModel"}]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    parser.add_argument("--ref-channels-last", action="store_true",
                        help="also time the diffusers model with channels_last weights and input")
    parser.add_argument("--config", help="time the layout, width and batch of this experiment config's [images] "
                        "section instead (e.g. experiments/fashion_cpu.toml); --width and --batch are then ignored")
    a = parser.parse_args()
    layout, what = None, "paper layout"
    if a.config:
        a.width, a.batch, layout = layout_from_config(a.config)
        what = f"layout of {a.config}"
    versions = f"torch {torch.__version__}"
    if importlib.util.find_spec("diffusers") is not None:
        import diffusers

        versions += f", diffusers {diffusers.__version__}"
    print(f"{versions}; load average before: {load_average()}")
    res = measure(a.width, a.batch, a.threads, a.steps, a.repeats, a.compile, layout, a.ref_channels_last)
    print(f"load average after: {load_average()}")
    if REF not in res:
        print("diffusers not installed: reference rows skipped", file=sys.stderr)

    def vs(name: str, ref: str, key: str) -> object:
        if ref not in res:
            return "-"
        r, b = res[name][key], res[ref][key]
        return b / r if key.endswith("per_step") else r / b

    rows = [[name, "compiled" if r["compiled"] else "eager", r["params"], r["warmup_s"], r["s_per_step"],
             r["images_per_s"], vs(name, REF, "images_per_s"), r["cpu_s_per_step"], vs(name, REF, "cpu_s_per_step")]
            for name, r in res.items()]
    print_table(f"U-Net training step on CPU, fp32, {what}, W = {a.width}, batch {a.batch}, {a.threads} threads, "
                f"best of {a.repeats} x {a.steps} steps", ["model", "mode", "params", "first 2 steps s (compile)",
                "wall s/step", "img/s", "vs diffusers eager (wall)", "CPU s/step", "vs diffusers eager (CPU)"], rows)
    if REF in res:
        q1, med, q3 = res[OURS]["paired_ratio_quartiles"]
        lo, hi = res[OURS]["paired_median_ci95"]
        summary = [["both eager, best round of each (the target: >= 1.0)",
                    res[OURS]["images_per_s"] / res[REF]["images_per_s"]],
                   [f"both eager, median of the {a.repeats} paired rounds (quartiles {q1:.3f}-{q3:.3f}, "
                    f"bootstrap 95% CI of the median {lo:.3f}-{hi:.3f})", med]]
        if REF_CL in res:
            summary += [["classdiff vs diffusers in channels_last, median of the paired rounds",
                         res[OURS]["paired_ratio_vs_ref_cl"]]]
        if a.compile:
            summary += [["both compiled", res[OURS + " (compiled)"]["images_per_s"]
                         / res[REF + " (compiled)"]["images_per_s"]],
                        ["classdiff compiled vs diffusers eager (not like for like)",
                         res[OURS + " (compiled)"]["images_per_s"] / res[REF]["images_per_s"]]]
        print_table("throughput ratio classdiff / diffusers (img/s, wall)", ["comparison", "ratio"], summary)


if __name__ == "__main__":
    main()
