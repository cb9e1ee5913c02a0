"""Self-contained HTML reports of run folders (figures embedded, tables, config, versions, seeds).

``write_report(run_dir)`` reads ``results.json`` (and ``config.toml``) of the folder and of every direct
sub-folder that has one (the demo writes one sub-folder per stage), embeds every PNG figure as base64,
and writes ``report.html``, a single file that can be mailed to a colleague. A small script in the page
checks on load that every image decoded and records the count in ``#image-check`` (used by the tests,
which open the page in headless Chromium).
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import importlib.metadata
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from classdiff import __version__
from classdiff.core.io import read_json, write_text_atomic

__all__ = ["collect_sections", "environment_versions", "write_report"]

_PACKAGES = ("numpy", "scipy", "matplotlib", "torch", "dask", "distributed", "tqdm")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right} th{background:#f3f3f3} td.l,th.l{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em} .muted{color:#777;font-size:.85em}
"""

_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img');
  var ok = 0;
  imgs.forEach(function (im) { if (im.complete && im.naturalWidth > 0) { ok += 1; } });
  var el = document.getElementById('image-check');
  el.setAttribute('data-loaded', ok);
  el.setAttribute('data-total', imgs.length);
  el.textContent = ok + ' of ' + imgs.length + ' figures rendered';
});
"""


def environment_versions() -> dict[str, str]:
    """Versions of Python, the platform, classdiff (+ git commit when available) and key packages."""
    out = {"python": platform.python_version(), "platform": platform.platform(), "classdiff": __version__}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent)
        if commit.returncode == 0:
            out["git commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def collect_sections(run_dir: Path) -> list[dict[str, Any]]:
    """The folder itself and each direct sub-folder holding a ``results.json``, in name order."""
    run_dir = Path(run_dir)
    folders = [run_dir] + sorted(p for p in run_dir.iterdir() if p.is_dir())
    sections = []
    for folder in folders:
        res_path = folder / "results.json"
        if not res_path.is_file() and folder is not run_dir:
            continue
        results = read_json(res_path) if res_path.is_file() else {}
        figures = sorted(folder.glob("*.png")) + sorted(folder.glob("figures/*.png"))
        config = (folder / "config.toml").read_text() if (folder / "config.toml").is_file() else None
        if not results and not figures and config is None:
            continue
        sections.append({"name": folder.name if folder is not run_dir else "summary", "path": folder,
                         "results": results, "figures": figures, "config": config})
    return sections


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "–"
    return html.escape(str(v))


def _scalar_table(data: Mapping[str, Any]) -> str:
    rows = [(k, v) for k, v in data.items() if v is None or isinstance(v, bool | int | float | str)]
    if not rows:
        return ""
    body = "".join(f"<tr><th class='l'>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _records_table(records: list[Mapping[str, Any]], css_class: str = "") -> str:
    cols: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in cols and (v is None or isinstance(v, bool | int | float | str)):
                cols.append(k)
    if not cols:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in records)
    cls = f" class='{css_class}'" if css_class else ""
    return f"<table{cls}><tr>{head}</tr>{body}</table>"


def _seeds(config_text: str | None) -> list[str]:
    if not config_text:
        return []
    section = ""
    seeds = []
    for line in config_text.splitlines():
        m = re.match(r"\s*\[([^\]]+)\]", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"\s*(seed\w*)\s*=\s*(.+)", line)
        if m:
            seeds.append(f"{section}.{m.group(1)} = {m.group(2).strip()}")
    return seeds


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    caption = html.escape(path.stem.replace("_", " "))
    return (f"<figure><img alt='{caption}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{caption} <span class='muted'>({html.escape(path.name)}; PDF beside it)</span>"
            "</figcaption></figure>")


def render_html(run_dir: Path, title: str | None = None) -> str:
    """The report page as a string (see :func:`write_report`)."""
    run_dir = Path(run_dir)
    sections = collect_sections(run_dir)
    if not sections:
        raise FileNotFoundError(f"{run_dir}: no results.json, config.toml or figures to report")
    title = title or f"classdiff report: {run_dir.name}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='muted'>Generated {_dt.datetime.now().isoformat(timespec='seconds')} from "
             f"<code>{html.escape(str(run_dir.resolve()))}</code>. "
             "<span id='image-check' data-loaded='0' data-total='?'>figure check pending</span></p>"]
    summary_rows = None
    for sec in sections:
        res = sec["results"]
        if isinstance(res, Mapping) and isinstance(res.get("summary"), list):
            summary_rows = res["summary"]
    if summary_rows:
        parts.append("<h2 id='summary-table'>Summary</h2>")
        parts.append(_records_table(summary_rows, "summary"))
    for sec in sections:
        res = sec["results"]
        parts.append(f"<h2>{html.escape(sec['name'])}</h2>")
        if isinstance(res, Mapping):
            if res.get("description"):
                parts.append(f"<p>{html.escape(str(res['description']))}</p>")
            parts.append(_scalar_table(res))
            for key, value in res.items():
                if key == "summary":
                    continue
                if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
                    parts.append(f"<h3>{html.escape(key)}</h3>")
                    parts.append(_records_table(value))
                elif isinstance(value, Mapping) and value and all(
                        v is None or isinstance(v, bool | int | float | str) for v in value.values()):
                    parts.append(f"<h3>{html.escape(key)}</h3>")
                    parts.append(_scalar_table(value))
        for fig in sec["figures"]:
            parts.append(_figure(fig))
        if sec["config"]:
            seeds = _seeds(sec["config"])
            if seeds:
                parts.append("<p><b>Seeds:</b> " + html.escape("; ".join(seeds)) + "</p>")
            parts.append("<details><summary>config.toml</summary><pre>" + html.escape(sec["config"]) + "</pre></details>")
    versions = environment_versions()
    parts.append("<h2>Environment</h2>")
    parts.append(_scalar_table(versions))
    parts.append(f"<script>{_CHECK_SCRIPT}</script></body></html>")
    return "\n".join(p for p in parts if p)


def write_report(run_dir: Path, out: Path | None = None, title: str | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for ``run_dir`` atomically and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    page = render_html(run_dir, title)
    return write_text_atomic(Path(out) if out else run_dir / "report.html", page)


def report_summary(path: Path) -> dict[str, Any]:
    """Small JSON description of a written report (for ``classdiff report --json``)."""
    text = Path(path).read_text()
    return {"report": str(path), "figures": text.count("<img "), "bytes": len(text.encode()),
            "sections": text.count("<h2>")}

HELP = "Write a self-contained HTML report of a run folder."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run folder written by another classdiff command")
    parser.add_argument("--title", default=None, help="page title")


def run(args: argparse.Namespace, out: Path) -> dict:

    target = None if args.out is None else out / "report.html"
    path = write_report(args.run_dir, target, args.title)
    return report_summary(path)
