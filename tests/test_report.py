"""HTML reports: self-contained, every figure decodes in a real browser (headless Chromium)."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from classdiff.commands.report import render_html, write_report
from classdiff.core.config import Config, save_config
from classdiff.core.io import save_figure, write_json_atomic


def _make_run(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = tmp_path / "run"
    run.mkdir()
    write_json_atomic(run / "results.json", {"description": "demo", "summary": [
        {"class": 0, "predicted order": 1, "measured order": 1, "f_mem": 0.1}]})
    for name in ("stage_a", "stage_b"):
        sub = run / name
        sub.mkdir()
        fig, ax = plt.subplots()
        ax.plot(np.arange(5), np.arange(5) ** 2)
        save_figure(fig, sub / f"{name}_curve")
        write_json_atomic(sub / "results.json", {"classes": [{"label": 0, "tau_gen": 1.5}, {"label": 1, "tau_gen": 3.0}]})
        save_config(Config(), sub / "config.toml")
    return run


def test_render_contains_tables_config_and_seeds(tmp_path):
    run = _make_run(tmp_path)
    page = render_html(run)
    assert page.count("<img ") == 2
    assert "summary-table" in page and "tau_gen" in page
    assert "mixture.seed = 0" in page
    assert "numpy" in page and "python" in page


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (make test installs Debian's chromium as root)")
def test_report_renders_every_figure_in_headless_chromium(tmp_path):
    run = _make_run(tmp_path)
    res = subprocess.run([sys.executable, "-m", "classdiff", "report", str(run), "--json",
                          "--out", str(tmp_path / "cli-out")], capture_output=True,
                         text=True, check=True)
    assert '"figures": 2' in res.stdout
    good = tmp_path / "cli-out" / "report.html"  # --out keeps the test from writing runs/ into the repository
    # corrupt one copy of the page's images to prove the check can fail
    page = good.read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    results = {}
    for name, path in (("good", good), ("broken", broken)):
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / ('profile-' + name)}", "--virtual-time-budget=5000", "--dump-dom",
             path.as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout
        m = re.search(r'id="image-check" data-loaded="(\d+)" data-total="(\d+)"', dom)
        assert m, dom[:2000]
        results[name] = (int(m.group(1)), int(m.group(2)))
        assert 'id="summary-table"' in dom
    assert results["good"] == (2, 2)
    assert results["broken"] == (1, 2)
