"""``classdiff demo``: the default end-to-end job — theory spectrum, per-class RF dynamics with the theory's
timescales overlaid, speciation under imbalance, and a small U-Net on imbalanced Fashion-MNIST — then one
HTML report and a summary table (class, predicted order, measured order, f_mem at the end).

Each stage is the corresponding CLI command run into a sub-folder of the output folder, so every stage can
be re-run or inspected on its own; a stage that fails is reported and the others still run.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path
from typing import Any

HELP = "Run the default end-to-end pipeline (theory, RF dynamics, speciation, U-Net) on CPU."

STAGES: list[tuple[str, str, list[str]]] = [
    ("1-spectrum", "spectrum", []),
    ("2-timescales", "timescales", []),
    ("3-dynamics", "dynamics", []),
    ("4-speciation", "speciation", []),
    ("5-unet", "train", ["--evaluate", "--no-progress"]),
]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="demo config (default: the packaged demo.toml)")
    parser.add_argument("--skip", nargs="*", default=[], choices=[s[1] for s in STAGES], help="stages to skip")


def default_config_path() -> Path:
    return Path(str(resources.files("classdiff") / "demo.toml"))


def run(args: argparse.Namespace, out: Path) -> dict:
    from classdiff.commands.cli import main as cli_main
    from classdiff.commands.report import write_report
    from classdiff.core.config import load_config, save_config
    from classdiff.core.io import read_json

    config_path = args.config or default_config_path()
    config = load_config(config_path)
    save_config(config, out / "config.toml")
    stages: list[dict[str, Any]] = []
    for folder, command, extra in STAGES:
        if command in args.skip:
            continue
        t0 = time.perf_counter()
        print(f"[demo] {command} ...", flush=True)
        try:
            code = cli_main([command, str(out / "config.toml"), "--out", str(out / folder), *extra])
        except Exception as exc:  # keep going: the report says which stage failed and why
            code = f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t0
        ok = code == 0 and (out / folder / "results.json").is_file()
        stages.append({"stage": folder, "command": command, "ok": ok, "seconds": round(seconds, 1),
                       "error": None if ok else str(code)})
        print(f"[demo] {command}: {'done' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)
    results = {folder: read_json(out / folder / "results.json") for folder, *_ in STAGES
               if (out / folder / "results.json").is_file()}
    summary = summary_rows(results)
    _overlay_figure(results, out)
    result = {"description": "classdiff demo: theory and measurement per class", "config": str(config_path),
              "stages": stages, "summary": summary}
    from classdiff.core.io import write_json_atomic

    write_json_atomic(out / "results.json", result)
    report = write_report(out, title="classdiff demo")
    result["report"] = str(report)
    print(format_table(summary))
    print(f"[demo] report: {report}")
    return result


def _ranks(values: list[float | None]) -> list[int | None]:
    finite = sorted((v, i) for i, v in enumerate(values) if v is not None)
    ranks: list[int | None] = [None] * len(values)
    for r, (_, i) in enumerate(finite, start=1):
        ranks[i] = r
    return ranks


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (experiment, class): predicted and measured learning order (1 = learned first), f_mem."""
    rows: list[dict[str, Any]] = []
    theory = results.get("2-timescales", {}).get("classes", [])
    measured = results.get("3-dynamics", {}).get("classes", [])
    if theory or measured:
        pred = _ranks([c.get("tau_gen") for c in theory])
        meas = _ranks([c.get("tau_gen") for c in measured])
        pred_m = _ranks([c.get("tau_mem") for c in theory])
        meas_m = _ranks([c.get("tau_mem") for c in measured])
        for i in range(max(len(theory), len(measured))):
            rows.append({"experiment": "random features", "class": i,
                         "predicted order": pred[i] if i < len(pred) else None,
                         "measured order": meas[i] if i < len(meas) else None,
                         "predicted memorization order": pred_m[i] if i < len(pred_m) else None,
                         "measured memorization order": meas_m[i] if i < len(meas_m) else None,
                         "f_mem": None})
    unet = results.get("5-unet", {})
    evaluation = unet.get("evaluation", {}) if isinstance(unet, dict) else {}
    measured_u = evaluation.get("measured", {}) if isinstance(evaluation, dict) else {}
    theory_u = evaluation.get("theory", {}) if isinstance(evaluation, dict) else {}

    def rank_in(order: list[int] | None, label: int) -> int | None:
        return order.index(label) + 1 if order and label in order else None

    for c in measured_u.get("classes", []):
        label = int(c["label"])
        th_ok = bool(theory_u.get("available"))
        rows.append({"experiment": "U-Net Fashion-MNIST", "class": label,
                     "predicted order": rank_in(theory_u.get("learning_order"), label) if th_ok else None,
                     "measured order": rank_in(measured_u.get("learning_order"), label),
                     "predicted memorization order":
                         rank_in(theory_u.get("memorization_order"), label) if th_ok else None,
                     "measured memorization order": rank_in(measured_u.get("memorization_order"), label),
                     "f_mem": c.get("f_mem_final")})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no summary: every stage failed)"
    cols = list(rows[0])
    cells = [cols] + [["–" if r.get(c) is None else (f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]))
                       for c in cols] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _overlay_figure(results: dict[str, Any], out: Path) -> None:
    """Measured per-class RF curves with the theory's predicted tau_gen / tau_mem overlaid."""
    dyn = results.get("3-dynamics")
    theory = results.get("2-timescales", {}).get("classes", [])
    if not dyn or "tau" not in dyn:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure

    tau = np.array([np.inf if v is None else v for v in dyn["tau"]], dtype=float)
    finite = np.isfinite(tau) & (tau > 0)
    classes = dyn["classes"]
    fig, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 3.6), squeeze=False)
    for ax, cl in zip(axes[0], classes):
        for key, style in (("train_loss", "-"), ("test_loss", "--")):
            y = np.array([np.nan if v is None else v for v in cl[key]], dtype=float)
            ax.plot(tau[finite], y[finite], style, label=key.replace("_", " "))
        th = next((c for c in theory if c.get("label") == cl.get("label")), {})
        for key, color in (("tau_gen", "tab:green"), ("tau_mem", "tab:red")):
            if cl.get(key) is not None:
                ax.axvline(cl[key], color=color, lw=1, label=f"{key} measured")
            if th.get(key) is not None:
                ax.axvline(th[key], color=color, lw=1, ls=":", label=f"{key} theory")
        ax.set_xscale("log")
        ax.set_xlabel("training time τ")
        ax.set_title(f"class {cl.get('label')}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "rf_dynamics_with_theory")
