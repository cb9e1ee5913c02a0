"""Atomic result writing: JSON (through the one encoding of :mod:`classdiff.core.results`), ``.npz`` arrays, text, and matplotlib figures (PNG + PDF).

Every writer goes through a temporary file in the destination folder followed by ``os.replace``, so a
killed process never leaves a half-written result behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from classdiff.core.results import decode, encode

__all__ = ["read_json", "save_figure", "save_npz_atomic", "write_json_atomic", "write_text_atomic"]


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def write_json_atomic(path: Path, data: Any) -> Path:
    text = json.dumps(encode(data), indent=2, sort_keys=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def read_json(path: Path) -> Any:
    """A JSON file written by :func:`write_json_atomic`, its special values decoded (:func:`~classdiff.core.results.decode`)."""
    return decode(json.loads(Path(path).read_text()))


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> Path:
    return _atomic_write(Path(path), lambda fh: np.savez_compressed(fh, **arrays))


def save_figure(fig, stem: Path, dpi: int = 150) -> list[Path]:
    """Save a matplotlib figure as ``stem.png`` and ``stem.pdf`` (atomically) and close it."""
    import matplotlib.pyplot as plt

    stem = Path(stem)
    out = []
    for ext in ("png", "pdf"):
        out.append(_atomic_write(stem.with_suffix(f".{ext}"), lambda fh, e=ext: fig.savefig(fh, format=e, dpi=dpi,
                                                                                              bbox_inches="tight")))
    plt.close(fig)
    return out
