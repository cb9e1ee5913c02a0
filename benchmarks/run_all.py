"""``make bench``: run every benchmark in this folder and print one table of ratios.

Each ``bench_*.py`` module exposes ``ratios() -> list[dict]`` with keys ``benchmark``, ``ours``, ``reference``,
``unit``, ``ratio`` (> 1 means classdiff meets or beats the reference/target) and ``target``; the module's
``main()`` prints its own detailed tables. Pass ``--quick`` to use the reduced sizes the modules offer.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _table import print_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes where a benchmark offers them")
    parser.add_argument("only", nargs="*", help="module names to run (default: all bench_*.py)")
    args = parser.parse_args()
    if args.quick:
        os.environ["CLASSDIFF_BENCH_QUICK"] = "1"
    names = args.only or sorted(p.stem for p in HERE.glob("bench_*.py"))
    rows, failures = [], []
    for name in names:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(name)
            for r in module.ratios():
                rows.append([name, r["benchmark"], r["ours"], r["reference"], r.get("unit", ""), r["ratio"],
                             r.get("target", ""), "yes" if r["ratio"] >= 1 else "NO"])
        except Exception:  # a failing benchmark is reported, the others still run
            failures.append(name)
            traceback.print_exc()
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    print_table("classdiff benchmarks (ratio >= 1: target met)",
                ["module", "benchmark", "ours", "reference", "unit", "ratio", "target", "met"], rows)
    if failures:
        print("\nfailed:", ", ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
