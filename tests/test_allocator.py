"""The command-line allocator tuning: opt-outs, and freed tensor memory reused without new page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from classdiff.allocator import tune_allocator

# 400 tensors of 100 kB (below glibc's initial mmap threshold, so they come from the heap), touched and freed
# together, 4 rounds after 2 warm-up rounds. glibc's defaults hand the freed 40 MB at the top of the heap back to the
# system (trim threshold 128 kB) and the next round faults those pages in again; tuned, the heap keeps them.
PROBE = """
import json, resource, sys, torch
from classdiff.allocator import tune_allocator
applied = tune_allocator({}) if sys.argv[1] == "tuned" else False
def round_():
    ts = [torch.empty(25_000).fill_(1.0) for _ in range(400)]
    del ts
for _ in range(2):
    round_()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    round_()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}))
"""


def _probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def test_opt_outs_leave_the_allocator_alone():
    assert tune_allocator({"CLASSDIFF_MALLOC_TUNING": "0"}) is False
    assert tune_allocator({"MALLOC_ARENA_MAX": "2"}) is False  # the user's own glibc settings win


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tuned_process_reuses_freed_tensor_memory():
    tuned = _probe("tuned")
    if not tuned["applied"]:
        pytest.skip("this C library has no working mallopt (not glibc)")
    default = _probe("default")
    pages = 4 * 400 * 25_000 * 4 // 4096
    # tuned: the freed blocks stay in the heap and are reused (0 faults on the development VM); default glibc
    # refaulted from a few hundred to 9,500 pages per round there, varying between runs (not asserted: heap layout,
    # transparent huge pages or another glibc version change that number)
    assert tuned["faults"] < 0.02 * pages, (tuned, default)


def test_console_entry_tunes_the_allocator_then_runs(monkeypatch, capsys):
    """``classdiff`` (the console script, :func:`classdiff.cli.entry`) tunes first; :func:`classdiff.cli.main`,
    which tests and library users call, never does."""
    import classdiff.allocator
    from classdiff import cli

    calls = []
    monkeypatch.setattr(classdiff.allocator, "tune_allocator", lambda: calls.append("tuned") or True)
    assert cli.main([]) == 2 and calls == []
    monkeypatch.setattr(sys, "argv", ["classdiff"])
    with pytest.raises(SystemExit) as exc:
        cli.entry()
    assert exc.value.code == 2 and calls == ["tuned"]
    assert "COMMAND" in capsys.readouterr().out
