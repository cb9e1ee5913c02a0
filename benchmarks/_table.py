"""Tiny helpers shared by the benchmark scripts: timing with repeats and a plain-text table."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time (s) of ``repeats`` calls; the best is the least noisy on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n## {title}")
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
