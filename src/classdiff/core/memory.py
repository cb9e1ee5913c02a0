"""Up-front memory estimates: refuse a job that cannot fit before it allocates anything.

A command that allocates arrays whose size follows from the config (p x p matrices of the random-features
dynamics, n x d trajectories of a cloning simulation) calls :func:`check_memory` with its own estimate first.
The limit is the memory the operating system reports as available (``MemAvailable`` of ``/proc/meminfo``,
else physical memory), or ``CLASSDIFF_MEMORY_LIMIT`` when set (bytes, or a number with a K/M/G/T suffix,
powers of 1024).
"""

from __future__ import annotations

import os
import re

__all__ = ["MemoryEstimateError", "available_memory", "check_memory", "format_bytes", "parse_bytes"]

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class MemoryEstimateError(ValueError):
    """A job's estimated memory exceeds what is available; the message names the size and how to shrink it."""


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable size (powers of 1024): ``format_bytes(3 * 2**30) == '3.0 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_bytes(text: str) -> int:
    """``"512M"`` -> 536870912; plain integers are bytes. Raises ``ValueError`` naming the value."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if m is None:
        raise ValueError(f"CLASSDIFF_MEMORY_LIMIT = {text!r}: must be a number of bytes, optionally with a K, M, G "
                         "or T suffix (e.g. 8G)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def available_memory() -> int | None:
    """Bytes a new allocation may use: ``CLASSDIFF_MEMORY_LIMIT`` if set, else ``MemAvailable``, else physical
    memory; ``None`` when none of them can be read."""
    limit = os.environ.get("CLASSDIFF_MEMORY_LIMIT")
    if limit:
        return parse_bytes(limit)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(estimate: float, what: str, shrink: str, fraction: float = 0.9) -> None:
    """Raise :class:`MemoryEstimateError` when ``estimate`` bytes exceed ``fraction`` of :func:`available_memory`.

    ``what`` names the job and its sizes (e.g. ``"dynamics: p = 20000 features, d = 10000"``), ``shrink`` says
    which fields to lower (e.g. ``"lower mixture.dim or model.psi_p"``).
    """
    avail = available_memory()
    if avail is None or estimate <= fraction * avail:
        return
    raise MemoryEstimateError(f"{what}: needs about {format_bytes(estimate)} of memory, {format_bytes(avail)} "
                              f"available; {shrink}")
