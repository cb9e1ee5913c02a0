"""Parameter sweeps over config fields, executed through Dask and cached per point.

A sweep config is an ordinary config plus a ``[sweep]`` section::

    [sweep]
    command = "timescales"            # or spectrum | dynamics | speciation (core.config.SWEEP_COMMANDS)
    scheduler = "local"               # local (LocalCluster) | synchronous | slurm | pbs | tcp://host:8786
    n_workers = 2
    [sweep.grid]
    "mixture.weights" = [[0.5, 0.5], [0.8, 0.2], [0.95, 0.05]]
    "model.psi_n" = [1.0, 2.0, 4.0]

Every grid point is the base config with those fields replaced (validated like any config) and is a pure
function of that config. Its result is written atomically to ``points/<digest>.json`` as soon as it finishes,
where ``digest`` is :meth:`Config.digest` of the point's config (the ``[sweep]`` section excluded), so an
interrupted sweep, run again, computes only the missing points. The tidy table ``table.csv`` has one row per
(point, class) with the grid values and every scalar of the result.

Clusters: ``slurm`` / ``pbs`` use dask-jobqueue's ``SLURMCluster`` / ``PBSCluster`` configured by the usual
dask config (``~/.config/dask/jobqueue.yaml``: queue, cores, memory, walltime) and scaled to ``n_workers`` jobs;
any ``tcp://`` address connects to a running scheduler (``dask scheduler`` + ``dask worker`` on the nodes).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import itertools
import json
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from classdiff.core.config import SWEEP_COMMANDS, Config, ConfigError, SweepConfig
from classdiff.core.io import read_json, write_json_atomic, write_text_atomic
from classdiff.core.results import encode

__all__ = ["grid_points", "resolve_point_function", "run_sweep", "tidy_rows"]

def resolve_point_function(command: str) -> Callable[[Config], Any]:
    """The pure function ``Config -> result`` of one sweep point: ``classdiff.commands.<command>.point`` for a
    command of the allow-list :data:`classdiff.core.config.SWEEP_COMMANDS`."""
    if command not in SWEEP_COMMANDS:
        raise ConfigError("sweep.command", command, "must be one of " + ", ".join(SWEEP_COMMANDS))
    return importlib.import_module(f"classdiff.commands.{command}").point


def grid_points(config: Config) -> list[dict[str, Any]]:
    """Cartesian product of ``config.sweep.grid`` as a list of override dicts (row-major in file order)."""
    grid = config.sweep.grid
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def point_config(config: Config, overrides: Mapping[str, Any]) -> Config:
    """The config of one point: overrides applied, the sweep section reset (it does not affect the result)."""
    return config.with_overrides(overrides).replace(sweep=SweepConfig(command=config.sweep.command))


def _compute(command: str, config_dict: dict) -> dict:
    """Worker-side: rebuild the config and run the point function (module-level, so it pickles)."""
    return encode(resolve_point_function(command)(Config.from_dict(config_dict)))


def _client(scheduler: str, n_workers: int):
    from dask.distributed import Client, LocalCluster

    if scheduler == "local":
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster), cluster
    if scheduler in ("slurm", "pbs"):
        import dask_jobqueue

        cls = dask_jobqueue.SLURMCluster if scheduler == "slurm" else dask_jobqueue.PBSCluster
        cluster = cls()
        cluster.scale(jobs=n_workers)
        return Client(cluster), cluster
    return Client(scheduler), None


def _cached(path: Path) -> bool:
    """Whether ``path`` holds a usable cached point; a truncated, empty or malformed one is reported (by file,
    as a warning) and removed, so that the point is computed again."""
    if not path.is_file():
        return False
    try:
        entry = read_json(path)
        if not isinstance(entry, dict) or not isinstance(entry.get("result"), dict) or "overrides" not in entry:
            raise ValueError("no 'overrides' and 'result' entries")
    except (ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
        warnings.warn(f"{path}: corrupt sweep cache entry ({' '.join(str(exc).split())}); computing the point "
                      "again", stacklevel=3)
        path.unlink(missing_ok=True)
        return False
    return True


def run_sweep(
    config: Config,
    out: Path,
    scheduler: str | None = None,
    n_workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Run every grid point of ``config.sweep`` not already cached under ``out/points``; write the table.

    Returns ``{"command", "n_points", "computed", "cached", "table", "columns"}``; ``table`` is the tidy
    rows (also written to ``out/table.csv``), and a figure ``out/sweep.png``/``.pdf`` is drawn.
    """
    out = Path(out)
    points_dir = out / "points"
    points_dir.mkdir(parents=True, exist_ok=True)
    sweep = config.sweep
    scheduler = scheduler or sweep.scheduler
    n_workers = n_workers or sweep.n_workers
    resolve_point_function(sweep.command)  # fail early on a bad command
    points = grid_points(config)
    configs = [point_config(config, p) for p in points]
    digests = [c.digest() for c in configs]
    missing = [i for i, dg in enumerate(digests) if not _cached(points_dir / f"{dg}.json")]
    cached = len(points) - len(missing)

    def store(i: int, result: dict) -> None:
        write_json_atomic(points_dir / f"{digests[i]}.json", {"overrides": points[i], "result": result})

    if missing:
        bar = _progress(len(missing), progress, f"sweep {sweep.command}")
        if scheduler == "synchronous":
            for i in missing:
                store(i, _compute(sweep.command, configs[i].to_dict()))
                bar.update(1)
        else:
            from dask.distributed import as_completed

            client, cluster = _client(scheduler, n_workers)
            try:
                futures = {
                    client.submit(_compute, sweep.command, configs[i].to_dict(), key=f"point-{digests[i]}", pure=False): i
                    for i in missing
                }
                for fut in as_completed(futures):
                    store(futures[fut], fut.result())
                    bar.update(1)
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
        bar.close()

    rows = tidy_rows(points, [read_json(points_dir / f"{dg}.json")["result"] for dg in digests], digests)
    columns = _columns(rows)
    write_text_atomic(out / "table.csv", _csv(rows, columns))
    _plot(rows, list(sweep.grid), out)
    return {
        "command": sweep.command,
        "n_points": len(points),
        "computed": len(missing),
        "cached": cached,
        "columns": columns,
        "table": rows,
    }


def tidy_rows(points: list[dict], results: list[dict], digests: Iterable[str]) -> list[dict]:
    """One row per (point, class): grid values, the point's scalar results, then each class's scalars."""
    rows = []
    for index, (p, res, dg) in enumerate(zip(points, results, digests)):
        base = {"point": index, "digest": dg[:12]}
        base.update({k: _cell(v) for k, v in p.items()})
        base.update({k: v for k, v in res.items() if _is_scalar(v)})
        classes = res.get("classes") if isinstance(res, Mapping) else None
        if isinstance(classes, list) and classes:
            for cl in classes:
                row = dict(base)
                row.update({f"class_{k}" if k in base else k: v for k, v in cl.items() if _is_scalar(v)})
                rows.append(row)
        else:
            rows.append(base)
    return rows


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, list | tuple | dict) else v


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)


def _plot(rows: list[dict], grid_keys: list[str], out: Path) -> None:
    """Every numeric per-class column against the first grid field, one line per class and other-field value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from classdiff.core.io import save_figure

    if not rows or not grid_keys:
        return
    x_key = grid_keys[0]
    skip = {"point", "digest", "label", *grid_keys}
    metrics = [k for k in _columns(rows) if k not in skip and all(isinstance(r.get(k), int | float | type(None))
                                                                    and not isinstance(r.get(k), bool) for r in rows)
               and any(r.get(k) is not None for r in rows)]
    if not metrics:
        return
    metrics = metrics[:6]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    others = grid_keys[1:]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("label"), *(r.get(k) for k in others)), []).append(r)
    numeric_x = all(isinstance(r.get(x_key), int | float) for r in rows)
    for ax, m in zip(axes[0], metrics):
        for key, grp in groups.items():
            xs = [r[x_key] for r in grp]
            ys = [r.get(m) for r in grp]
            pos = xs if numeric_x else list(range(len(xs)))
            name = ", ".join([f"class {key[0]}"] * (key[0] is not None) + [f"{k}={v}" for k, v in zip(others, key[1:])])
            ax.plot(pos, [float("nan") if y is None else y for y in ys], "o-", label=name or None, ms=3)
        if not numeric_x:
            ticks = [r[x_key] for r in next(iter(groups.values()))]
            ax.set_xticks(range(len(ticks)), [str(t) for t in ticks], rotation=30, fontsize=7)
        vals = [r.get(m) for r in rows if isinstance(r.get(m), int | float) and r.get(m) is not None]
        if vals and min(vals) > 0 and max(vals) / min(vals) > 30:
            ax.set_yscale("log")
        ax.set_xlabel(x_key)
        ax.set_title(m, fontsize=9)
        if 1 < len(groups) <= 8 or (len(groups) == 1 and any(name for name in ax.get_legend_handles_labels()[1])):
            ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, out / "sweep")

HELP = "Run a grid of configs through Dask, cached per point, into one table."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="TOML config with a [sweep] section and a [sweep.grid] table")
    parser.add_argument("--scheduler", default=None,
                        help="local (default: a LocalCluster), synchronous, slurm, pbs, or an address tcp://host:port")
    parser.add_argument("--workers", type=int, default=None, help="number of workers (LocalCluster) or jobs (SLURM/PBS)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace, out: Path) -> dict:
    from classdiff.core.config import load_config, save_config

    config = load_config(args.config)
    if not config.sweep.grid:
        raise ValueError(f"{args.config}: [sweep.grid] is empty; give at least one 'section.field' = [values]")
    save_config(config, out / "config.toml")
    return run_sweep(config, out, scheduler=args.scheduler, n_workers=args.workers, progress=not args.no_progress)
