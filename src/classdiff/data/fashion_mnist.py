"""Fashion-MNIST from its original idx files: offline look-up, validation, imbalanced subsets.

Files (Xiao, Rasul & Vollgraf 2017): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally gzip-compressed (``.gz``).

Where the files are looked for, in order (:func:`find_fashion_mnist`):

1. the folder in the environment variable ``FASHION_MNIST_DIR``;
2. ``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``, ``*.gz``);
3. the user cache ``$CLASSDIFF_CACHE/fashion-mnist`` (default ``~/.cache/classdiff/fashion-mnist``).

If none holds them, :func:`load_fashion_mnist` downloads them from the upstream location into the cache
(``download=True``) and verifies them; offline it fails with :class:`DataFileError` saying how to get them.

Validation: the idx magic number (``0x00000803`` images, ``0x00000801`` labels), the declared shape against
the file size (a truncated file is an error naming the file), and a SHA-256 checksum of the *decompressed*
content (so recompressed copies such as Debian's still validate). Pixels are returned as uint8; use
:func:`to_model_space` for the [-1, 1] scaling used by the diffusion models.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CLASS_NAMES",
    "FILES",
    "SHA256",
    "DataFileError",
    "FashionMNIST",
    "build_subset",
    "cache_dir",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "read_checksums",
    "read_idx",
    "subset_counts",
    "to_model_space",
    "write_idx",
    "write_synthetic_fashion_mnist",
]

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# SHA-256 of the decompressed upstream files (checked against the Debian package dataset-fashion-mnist).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
UPSTREAM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
HOW_TO_GET = (
    "Get Fashion-MNIST with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu, files go to "
    "/usr/share/datasets/fashion-mnist/), or copy the four idx files (optionally .gz) from "
    f"{UPSTREAM_URL} into a folder and set FASHION_MNIST_DIR to it."
)


class DataFileError(OSError):
    """A data file is missing, truncated, corrupt or fails its checksum; the message names the file."""


def cache_dir() -> Path:
    """The user cache folder of classdiff: ``$CLASSDIFF_CACHE`` or ``~/.cache/classdiff``."""
    env = os.environ.get("CLASSDIFF_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "classdiff"


def _candidate(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    return None


def _search_folders() -> list[Path]:
    folders = []
    env = os.environ.get("FASHION_MNIST_DIR")
    if env:
        folders.append(Path(env))
    folders += [DEBIAN_DIR, cache_dir() / "fashion-mnist"]
    return folders


def find_fashion_mnist(folders: Sequence[Path] | None = None) -> Path | None:
    """The first folder (see the module docstring for the order) that holds all four files, or None.

    A ``FASHION_MNIST_DIR`` that is set but does not hold the four files is an error (:class:`DataFileError`),
    not a reason to read another copy silently.
    """
    env = os.environ.get("FASHION_MNIST_DIR")
    if folders is None and env:
        missing = [s for s in FILES.values() if _candidate(Path(env), s) is None]
        if missing:
            what = "is not a folder" if not Path(env).is_dir() else f"lacks {', '.join(missing)} (or .gz)"
            raise DataFileError(f"FASHION_MNIST_DIR={env}: {what}; point it at the folder with the four idx "
                                "files, or unset it to use the Debian copy or the cache")
    for folder in (folders if folders is not None else _search_folders()):
        folder = Path(folder)
        if all(_candidate(folder, stem) is not None for stem in FILES.values()):
            return folder
    return None


def read_checksums(path: str | Path) -> dict[str, str]:
    """The ``SHA256SUMS`` file at ``path`` (``<64 hex digits>  <file name>`` lines, as ``sha256sum`` writes them)
    as {file stem without ``.gz``: digest}; a malformed line is a :class:`DataFileError` naming file and line."""
    path = Path(path)
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        digest = parts[0].lower() if parts else ""
        if len(parts) != 2 or len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            raise DataFileError(f"{path}: line {number} is {line.strip()!r}; expected '<sha256 in 64 hex digits>  "
                                "<file name>'")
        out[parts[1].lstrip("*").removesuffix(".gz")] = digest
    return out


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataFileError(f"{path}: cannot be read or decompressed ({exc}); the file is corrupt or truncated. "
                            + HOW_TO_GET) from exc


def read_idx(path: str | Path, expected_sha256: str | None = None) -> NDArray[np.uint8]:
    """Read an idx1/idx3 uint8 file (optionally ``.gz``), validating magic, shape and checksum.

    Returns labels of shape (n,) for idx1 files and images of shape (n, rows, cols) for idx3 files.
    Raises :class:`DataFileError` naming the file when it is unreadable, has a wrong magic number,
    fewer bytes than its header declares (truncated), trailing bytes, or a SHA-256 mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file does not exist. " + HOW_TO_GET)
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DataFileError(f"{path}: only {len(raw)} bytes, too short for an idx header (truncated?)")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (IMAGE_MAGIC, LABEL_MAGIC):
        raise DataFileError(f"{path}: magic number 0x{magic:08x} is neither 0x{IMAGE_MAGIC:08x} (images) nor "
                            f"0x{LABEL_MAGIC:08x} (labels); not an idx uint8 file")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: header truncated ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) < expected:
        raise DataFileError(f"{path}: truncated: header declares shape {shape} ({expected} bytes) but the "
                            f"file holds {len(raw)} bytes")
    if len(raw) > expected:
        raise DataFileError(f"{path}: {len(raw) - expected} unexpected trailing bytes after shape {shape}")
    if expected_sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected_sha256:
            raise DataFileError(f"{path}: SHA-256 of the content is {digest}, expected {expected_sha256}; "
                                "the file is corrupt or not the original. " + HOW_TO_GET)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def write_idx(path: str | Path, array: NDArray[np.uint8]) -> Path:
    """Write a uint8 array of ndim 1 or 3 as an idx file (gzip-compressed when the name ends in ``.gz``)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    if a.ndim not in (1, 3):
        raise ValueError(f"array.ndim = {a.ndim}: idx files written here hold labels (1-D) or images (3-D)")
    magic = LABEL_MAGIC if a.ndim == 1 else IMAGE_MAGIC
    blob = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in a.shape) + a.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(blob)
    else:
        path.write_bytes(blob)
    return path


@dataclass(frozen=True)
class FashionMNIST:
    """The four arrays: images uint8 (n, 28, 28) and labels uint8 (n,), plus the folder they came from."""

    train_images: NDArray[np.uint8]
    train_labels: NDArray[np.uint8]
    test_images: NDArray[np.uint8]
    test_labels: NDArray[np.uint8]
    root: Path


def _download(folder: Path, url: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in FILES.values():
        target = folder / (stem + ".gz")
        if target.is_file():
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part.gz", dir=folder)
        try:
            with urllib.request.urlopen(url + stem + ".gz", timeout=60) as resp, os.fdopen(fd, "wb") as fh:
                shutil.copyfileobj(resp, fh)
            read_idx(tmp, SHA256[stem])
            os.replace(tmp, target)
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise DataFileError(f"could not download {url}{stem}.gz into {folder} ({exc}). " + HOW_TO_GET) from exc


def load_fashion_mnist(
    root: str | Path | None = None,
    *,
    download: bool = True,
    checksums: Mapping[str, str] | None = SHA256,
    url: str = UPSTREAM_URL,
) -> FashionMNIST:
    """Load and validate the four Fashion-MNIST files.

    Parameters
    ----------
    root : folder to read from; ``None`` searches ``FASHION_MNIST_DIR``, the Debian folder and the cache.
    download : when nothing is found, download from ``url`` into the cache (verified by checksum).
    checksums : SHA-256 of each decompressed file by stem (default: the upstream files); ``None`` skips
        the check (for synthetic files in tests, which pass their own mapping instead).
    """
    if root is not None:
        folder = Path(root)
        missing = [s for s in FILES.values() if _candidate(folder, s) is None]
        if missing:
            raise DataFileError(f"{folder}: missing {', '.join(missing)} (or .gz). " + HOW_TO_GET)
    else:
        found = find_fashion_mnist()
        if found is None:
            if not download:
                raise DataFileError("Fashion-MNIST not found in " + ", ".join(str(f) for f in _search_folders())
                                    + ". " + HOW_TO_GET)
            folder = cache_dir() / "fashion-mnist"
            _download(folder, url)
        else:
            folder = found
    arrays = {}
    for key, stem in FILES.items():
        path = _candidate(folder, stem)
        assert path is not None
        arrays[key] = read_idx(path, None if checksums is None else checksums.get(stem))
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataFileError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match")
        if y.size and y.max() > 9:
            raise DataFileError(f"{folder}: {split} labels hold {int(y.max())}, expected 0..9")
    return FashionMNIST(root=folder, **arrays)


def to_model_space(images: NDArray[np.uint8]) -> NDArray[np.float32]:
    """uint8 (n, 28, 28) -> float32 (n, 1, 28, 28) in [-1, 1] (x / 127.5 - 1)."""
    return (np.asarray(images, dtype=np.float32)[:, None] / 127.5 - 1.0).astype(np.float32)


def subset_counts(
    classes: Sequence[int],
    *,
    counts: Sequence[int] | None = None,
    weights: Sequence[float] | None = None,
    n_total: int | None = None,
) -> tuple[int, ...]:
    """Per-class image counts n_c: given explicitly, or n_c = round(rho_c n) by largest remainders (each >= 1)."""
    k = len(classes)
    if counts is not None:
        if len(counts) != k:
            raise ValueError(f"counts = {list(counts)}: need one count per class ({k})")
        return tuple(int(c) for c in counts)
    if n_total is None:
        raise ValueError("n_total: required when counts are not given")
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != k or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"weights = {list(w)}: need {k} non-negative numbers summing to 1")
    if n_total < k:
        raise ValueError(f"n_total = {n_total}: need at least one image per class ({k})")
    raw = w * n_total
    base = np.maximum(np.floor(raw).astype(int), 1)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while base.sum() < n_total:
        base[order[i % k]] += 1
        i += 1
    while base.sum() > n_total:
        j = int(np.argmax(base))
        base[j] -= 1
    return tuple(int(c) for c in base)


def build_subset(
    labels: NDArray, classes: Sequence[int], counts: Sequence[int], seed: int
) -> NDArray[np.int64]:
    """Indices (sorted by class, then random) of an imbalanced subset: ``counts[i]`` images of ``classes[i]``.

    Seeded (numpy ``default_rng(seed)``); raises ValueError naming the class when it has too few images.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    out = []
    for c, n_c in zip(classes, counts, strict=True):
        pool = np.flatnonzero(labels == c)
        if n_c > pool.size:
            name = CLASS_NAMES[c] if 0 <= c < len(CLASS_NAMES) else str(c)
            raise ValueError(f"class {c} ({name}): asked for {n_c} images but only {pool.size} exist")
        out.append(np.sort(rng.choice(pool, size=n_c, replace=False)))
    return np.concatenate(out).astype(np.int64)


def write_synthetic_fashion_mnist(
    folder: str | Path, n_train_per_class: int = 40, n_test_per_class: int = 20, seed: int = 0,
    compress: bool = True, checksums: bool = True,
) -> Path:
    """Write a small Fashion-MNIST look-alike (four idx files, 10 classes) for tests and offline demos.

    Class c is a bright bar whose position and orientation depend on c, with per-class intensity spread
    growing with c, on a noisy background (uint8). With ``checksums`` a ``SHA256SUMS`` file lists the
    decompressed contents, which :func:`classdiff.images.ddpm.load_training_data` then verifies.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sums = []

    def make(n_per: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        labels = np.repeat(np.arange(10, dtype=np.uint8), n_per)
        rng.shuffle(labels)
        imgs = rng.normal(20.0, 8.0, size=(labels.size, 28, 28))
        for i, c in enumerate(labels):
            lo = 3 + 2 * int(c)
            level = 200.0 + rng.normal(0.0, 5.0 + 4.0 * int(c))
            if c % 2:
                imgs[i, lo:lo + 4, 4:24] += level
            else:
                imgs[i, 4:24, lo:lo + 4] += level
        return np.clip(imgs, 0, 255).astype(np.uint8), labels

    tr_x, tr_y = make(n_train_per_class)
    te_x, te_y = make(n_test_per_class)
    arrays = {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x, "test_labels": te_y}
    for key, stem in FILES.items():
        name = stem + (".gz" if compress else "")
        write_idx(folder / name, arrays[key])
        sums.append(f"{hashlib.sha256(_read_bytes(folder / name)).hexdigest()}  {name}")
    if checksums:
        (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return folder
