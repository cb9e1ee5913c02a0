"""``classdiff demo``: the default end-to-end job — theory spectrum, per-class RF dynamics with the theory's
timescales overlaid, speciation under imbalance, a small U-Net on imbalanced Fashion-MNIST, and the per-class
speciation of that U-Net by cloning — then one HTML report and a summary table (class, predicted order, measured
order, f_mem at the end, t_S of the U-Net with its interval beside the theory's).

Each stage calls the library (the ``*_stage`` function of its command module, or
:func:`classdiff.images.ddpm.train_unet` and :func:`classdiff.images.evaluation.evaluate_run`) into a
sub-folder of the output folder, writes that folder's ``results.json`` and figures, and hands its result on;
the summary is built from those returned results. A stage that fails is reported and the others still run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classdiff.core.readoff import ORDER_KEYS, class_order
from classdiff.core.results import NOT_REACHED, Time, format_value, reached

if TYPE_CHECKING:
    from classdiff.core.config import Config
    from classdiff.theory.timescales import TimescalesResult

HELP = "Run the default end-to-end pipeline (theory, RF dynamics, speciation, U-Net, U-Net cloning) on CPU."

#: (sub-folder, command) of each stage, in the order they run
STAGES: tuple[tuple[str, str], ...] = (
    ("1-spectrum", "spectrum"),
    ("2-timescales", "timescales"),
    ("3-dynamics", "dynamics"),
    ("4-speciation", "speciation"),
    ("5-unet", "train"),
    ("6-cloning", "cloning"),
)

#: the demo's cloning settings (``classdiff cloning`` defaults are 200 trajectories and 8 branching steps): small
#: enough for the demo's 10-minute budget (about 20 s on 2 cores), large enough for an interval per class
DEMO_CLONING = {"n_trajectories": 100, "sampler_steps": 20, "n_branch": 6, "threshold": 0.775, "n_boot": 300}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="demo config (default: the packaged demo.toml)")
    parser.add_argument("--skip", nargs="*", default=[], choices=[s[1] for s in STAGES], help="stages to skip")


def default_config_path() -> Path:
    return Path(str(resources.files("classdiff") / "demo.toml"))


@dataclass
class StageRecord:
    """How one stage went: ``ok``, wall time, and the error message when it failed (None when it did not)."""

    stage: str
    command: str
    ok: bool
    seconds: float
    error: str | None = None


@dataclass
class SummaryRow:
    """One (experiment, class) of the summary: ranks in the predicted and measured orders (1 = first; None:
    the class is not in that order), and f_mem at the last checkpoint (None: does not apply). For the U-Net rows,
    ``covariance_order`` / ``covariance_memorization_order`` are the ranks predicted by the covariance-aware theory
    (``docs/theory.md`` §8; None where it was not computed or does not apply), and the ``speciation_*`` fields the
    class's t_S (OU time) by cloning the U-Net, its bootstrap interval [lo, hi], and the isotropic and
    covariance-aware theory's t_S for the class's Gaussian surrogate (None: the cloning stage did not run)."""

    experiment: str
    label: int
    predicted_order: int | None
    measured_order: int | None
    predicted_memorization_order: int | None
    measured_memorization_order: int | None
    f_mem: float | None = None
    covariance_order: int | None = None
    covariance_memorization_order: int | None = None
    speciation_unet: Time | None = None
    speciation_unet_interval: list[Time] | None = None
    speciation_theory: Time | None = None
    speciation_theory_covariance: Time | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "class": self.label, "predicted order": self.predicted_order,
                "measured order": self.measured_order,
                "predicted memorization order": self.predicted_memorization_order,
                "measured memorization order": self.measured_memorization_order, "f_mem": self.f_mem,
                "cov-aware order": self.covariance_order,
                "cov-aware memorization order": self.covariance_memorization_order,
                "t_S U-Net": self.speciation_unet, "t_S U-Net interval": self.speciation_unet_interval,
                "t_S theory": self.speciation_theory, "t_S cov-aware": self.speciation_theory_covariance}


@dataclass
class DemoResult:
    """The ``demo`` result: the stages, the summary rows, and the stage results themselves (``results``,
    by sub-folder; each is also in that sub-folder's ``results.json``)."""

    config: str
    stages: list[StageRecord]
    summary: list[SummaryRow]
    results: dict[str, Any] = field(default_factory=dict, repr=False)
    report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"description": "classdiff demo: theory and measurement per class", "config": self.config,
                "stages": self.stages, "summary": self.summary, "report": self.report}


# ------------------------------------------------------------------------------------------------ stages
def spectrum_stage(config: Config, out: Path) -> Any:
    from classdiff.commands.spectrum import spectrum_stage as stage

    return stage(config, out)


def timescales_stage(config: Config, out: Path) -> Any:
    from classdiff.commands.timescales import timescales_stage as stage

    return stage(config, out)


def dynamics_stage(config: Config, out: Path) -> Any:
    from classdiff.commands.dynamics import dynamics_stage as stage

    return stage(config, out)


def speciation_stage(config: Config, out: Path) -> Any:
    from classdiff.commands.speciation import speciation_stage as stage

    return stage(config, out)


def unet_stage(config: Config, out: Path) -> dict[str, Any]:
    """Train the U-Net of ``[images]`` (resuming) and evaluate every checkpoint."""
    from classdiff.images.ddpm import train_unet
    from classdiff.images.evaluation import evaluate_run

    training = train_unet(config, out, progress=False)
    return {"training": training, "evaluation": evaluate_run(out, progress=False)}


def cloning_stage(config: Config, out: Path) -> dict[str, Any]:
    """Per-class speciation of the U-Net trained by the train stage (``out/../5-unet``) by cloning its backward
    trajectories (:func:`classdiff.images.run_speciation.speciation_of_run` with :data:`DEMO_CLONING`)."""
    from classdiff.commands.cloning import plot_cloning
    from classdiff.images.run_speciation import speciation_of_run

    result = speciation_of_run(out.parent / "5-unet", seed=int(config.images.seed), progress=False, **DEMO_CLONING)
    plot_cloning(result, out / "cloning")
    return result


def _stage_functions() -> dict[str, Callable[[Config, Path], Any]]:
    # looked up at call time, so that a test can replace one stage (e.g. the slow U-Net) by monkeypatching
    return {"spectrum": spectrum_stage, "timescales": timescales_stage, "dynamics": dynamics_stage,
            "speciation": speciation_stage, "train": unet_stage, "cloning": cloning_stage}


def run_stages(config: Config, out: Path, skip: tuple[str, ...] | list[str] = ()) -> tuple[list[StageRecord],
                                                                                         dict[str, Any]]:
    """Run every stage not in ``skip`` into ``out/<stage>``, writing its ``results.json``; the records and the
    results of the stages that succeeded, by sub-folder."""
    from classdiff.core.config import save_config
    from classdiff.core.io import write_json_atomic

    functions = _stage_functions()
    records: list[StageRecord] = []
    results: dict[str, Any] = {}
    for folder, command in STAGES:
        if command in skip:
            continue
        t0 = time.perf_counter()
        print(f"[demo] {command} ...", flush=True)
        stage_out = out / folder
        stage_out.mkdir(parents=True, exist_ok=True)
        error = None
        try:
            save_config(config, stage_out / "config.toml")
            result = functions[command](config, stage_out)
            write_json_atomic(stage_out / "results.json", result)
            results[folder] = result
        except Exception as exc:  # keep going: the report says which stage failed and why
            error = f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t0
        records.append(StageRecord(folder, command, error is None, round(seconds, 1), error))
        print(f"[demo] {command}: {'done' if error is None else 'FAILED'} in {seconds:.1f} s", flush=True)
    return records, results


def run(args: argparse.Namespace, out: Path) -> DemoResult:
    from classdiff.commands.report import write_report
    from classdiff.core.config import load_config, save_config
    from classdiff.core.io import write_json_atomic

    config_path = args.config or default_config_path()
    config = load_config(config_path)
    save_config(config, out / "config.toml")
    stages, results = run_stages(config, out, args.skip)
    summary = summary_rows(results)
    overlay_figure(results, out)
    result = DemoResult(config=str(config_path), stages=stages, summary=summary, results=results)
    write_json_atomic(out / "results.json", result)
    result.report = str(write_report(out, title="classdiff demo"))
    print(format_table(summary))
    print(f"[demo] report: {result.report}")
    return result


# ------------------------------------------------------------------------------------------------ summary
def measured_time(value: Any) -> Time:
    """A measured time as a :data:`~classdiff.core.results.Time`: None or nan (never reached) -> NOT_REACHED."""
    return NOT_REACHED if value is None else reached(value)


def _rank(order: list[int] | None, label: int) -> int | None:
    return order.index(label) + 1 if order and label in order else None


def _order_of(section: dict[str, Any], key: str) -> list[int] | None:
    """The order of the per-class time ``key`` in an evaluation section, under its :data:`ORDER_KEYS` name."""
    return section.get(ORDER_KEYS[key])


def _available(section: dict[str, Any] | None) -> dict[str, Any]:
    """An evaluation's theory section if it was computed, else {} (its orders then give no ranks)."""
    return section if section and section.get("available") else {}


def summary_rows(results: dict[str, Any]) -> list[SummaryRow]:
    """One row per (experiment, class) from the stage results: predicted and measured orders (1 = first), f_mem.

    ``results`` holds the returned results by sub-folder: ``2-timescales`` a
    :class:`~classdiff.theory.timescales.TimescalesResult`, ``3-dynamics`` the dynamics dict, ``5-unet``
    {"training", "evaluation"}; missing stages give no rows of their experiment.
    """
    rows: list[SummaryRow] = []
    theory: TimescalesResult | None = results.get("2-timescales")
    measured = results.get("3-dynamics", {}).get("classes", [])
    if theory is not None or measured:
        th_labels = [c.label for c in theory.classes] if theory is not None else []
        me_labels = [int(c.get("label", i)) for i, c in enumerate(measured)]
        me_gen = class_order([measured_time(c.get("tau_gen")) for c in measured], me_labels)
        me_mem = class_order([measured_time(c.get("tau_mem")) for c in measured], me_labels)
        th_gen = theory.generalization_order if theory is not None else None
        th_mem = theory.memorization_order if theory is not None else None
        for label in dict.fromkeys(th_labels + me_labels):
            rows.append(SummaryRow("random features", label, _rank(th_gen, label), _rank(me_gen, label),
                                   _rank(th_mem, label), _rank(me_mem, label)))
    evaluation = results.get("5-unet", {}).get("evaluation", {})
    measured_u = evaluation.get("measured", {})
    theory_u, cov_u = (_available(evaluation.get(key)) for key in ("theory", "theory_covariance"))
    cloned = {int(c["label"]): c for c in results.get("6-cloning", {}).get("classes", [])}
    for c in measured_u.get("classes", []):
        label = int(c["label"])
        f_mem = c.get("f_mem_final")
        sp = cloned.get(label, {})
        rows.append(SummaryRow("U-Net Fashion-MNIST", label, _rank(_order_of(theory_u, "tau_gen"), label),
                               _rank(_order_of(measured_u, "tau_gen"), label),
                               _rank(_order_of(theory_u, "tau_mem"), label),
                               _rank(_order_of(measured_u, "tau_mem"), label),
                               None if f_mem is None else float(f_mem),
                               _rank(_order_of(cov_u, "tau_gen"), label), _rank(_order_of(cov_u, "tau_mem"), label),
                               sp.get("t_speciation_unet"), sp.get("t_speciation_unet_interval"),
                               sp.get("t_speciation_theory"), sp.get("t_speciation_theory_covariance")))
    return rows


def format_table(rows: list[SummaryRow]) -> str:
    """The summary as a text table (:func:`classdiff.core.results.format_value`; "-" where a rank is absent)."""
    if not rows:
        return "(no summary: every stage failed)"
    dicts = [r.to_dict() for r in rows]
    cols = list(dicts[0])
    def cell(value: Any) -> str:
        if isinstance(value, list | tuple):
            return "[" + ", ".join(format_value(v, ".3g") for v in value) + "]"
        return format_value(value, ".3g")

    cells = [cols] + [[cell(r[c]) for c in cols] for r in dicts]
    widths = [max(len(row[j]) for row in cells) for j in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def overlay_figure(results: dict[str, Any], out: Path) -> None:
    """Measured per-class RF curves with the theory's predicted tau_gen / tau_mem overlaid."""
    dyn = results.get("3-dynamics")
    theory: TimescalesResult | None = results.get("2-timescales")
    if not dyn or "tau" not in dyn:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from classdiff.core.io import save_figure
    from classdiff.core.results import is_reached

    tau = np.asarray(dyn["tau"], dtype=float)
    finite = np.isfinite(tau) & (tau > 0)
    classes = dyn["classes"]
    by_label = {c.label: c for c in theory.classes} if theory is not None else {}
    fig, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 3.6), squeeze=False)
    for i, (ax, cl) in enumerate(zip(axes[0], classes)):
        label = int(cl.get("label", i))
        for key, style in (("train_loss", "-"), ("test_loss", "--")):
            y = np.asarray(cl[key], dtype=float)
            ax.plot(tau[finite], y[finite], style, label=key.replace("_", " "))
        th = by_label.get(label)
        for key, color in (("tau_gen", "tab:green"), ("tau_mem", "tab:red")):
            t_meas = measured_time(cl.get(key))
            if is_reached(t_meas) and np.isfinite(t_meas):
                ax.axvline(t_meas, color=color, lw=1, label=f"{key} measured")
            t_th = getattr(th, key) if th is not None else NOT_REACHED
            if is_reached(t_th) and np.isfinite(t_th):
                ax.axvline(t_th, color=color, lw=1, ls=":", label=f"{key} theory")
        ax.set_xscale("log")
        ax.set_xlabel("training time τ")
        ax.set_title(f"class {label}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "rf_dynamics_with_theory")
