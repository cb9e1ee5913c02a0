"""Atomic result writing: JSON (through the one encoding of :mod:`classdiff.core.results`), ``.npz`` arrays, text,
bytes and matplotlib figures (PNG + PDF); and the lock that gives a run folder a single writer.

Every writer goes through a temporary file in the destination folder followed by ``os.replace``, so a
killed process never leaves a half-written result behind. ``os.replace`` replaces a symbolic link at the
destination by the new file instead of writing through it, so a planted link cannot redirect a write outside
the folder. Files get the mode a plain ``open`` would give them (0666 less the umask), whatever they hold.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from classdiff.core.results import decode, encode

__all__ = [
    "RunFolderBusy",
    "exclusive_folder",
    "read_json",
    "save_figure",
    "save_npz_atomic",
    "write_bytes_atomic",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

LOCK_NAME = ".classdiff.lock"


def _file_mode() -> int:
    """0666 less the process umask (read without changing it where /proc allows, else set and restored)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    return _atomic_write(Path(path), lambda fh: fh.write(data))


def write_csv_atomic(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV table (``header`` then ``rows``, as the ``csv`` module writes them), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


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


class RunFolderBusy(OSError):
    """Another process is writing into the same output folder."""


_held: dict[Path, int] = {}  # folders this process holds, with a nesting count
_held_guard = threading.Lock()


@contextlib.contextmanager
def exclusive_folder(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder``'s lock file (``.classdiff.lock``, an advisory ``flock``) while the block runs.

    A second process asking for the same folder gets :class:`RunFolderBusy` at once, naming the folder and the
    process holding it; the lock dies with its process, so a killed run never leaves the folder locked. Nested
    requests from the same process (a command that calls a library function that locks again) are free. On a
    system without ``fcntl`` the block runs unlocked.
    """
    folder = Path(folder).resolve()
    with _held_guard:
        if folder in _held:
            _held[folder] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield folder
        finally:
            with _held_guard:
                _held[folder] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX)
        yield folder
        return
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / LOCK_NAME, "a+")  # held open for the lifetime of the lock
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunFolderBusy(f"{folder}: another classdiff process ({holder}) is writing into this folder; "
                                "wait for it to finish or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        with _held_guard:
            _held[folder] = 1
        try:
            yield folder
        finally:
            with _held_guard:
                del _held[folder]
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()
