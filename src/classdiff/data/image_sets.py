"""Labelled (or unlabelled) image sets from files: ``.npz``, a folder of images, idx files, Fashion-MNIST.

:func:`load_image_set` reads any of

* ``FILE.npz`` with an array ``x`` of images and, for a labelled set, integer labels ``y`` (optional
  ``class_names``, one string per class; labels then lie in 0..K-1);
* a folder with one sub-folder per class holding PNG/JPEG files (labelled: the sub-folder names, sorted, are
  the classes; names that are all integers are used as the labels, else the sorted position is), or a folder
  of PNG/JPEG files without sub-folders (unlabelled, e.g. generated samples); read with Pillow;
* ``IMAGES-idx3-ubyte[.gz]`` (the labels file beside it is found by replacing ``images-idx3`` with
  ``labels-idx1``, or given as ``labels=``), the format of MNIST and Fashion-MNIST;
* ``fashion-mnist:train`` or ``fashion-mnist:test``: the Fashion-MNIST split found by
  :func:`classdiff.data.fashion_mnist.load_fashion_mnist`.

Pixels are returned in model space, float32 (n, C, H, W) in [-1, 1]: uint8 images become x / 127.5 - 1, float
images must already lie in [-1, 1]. Shapes accepted for ``x``: (n, H, W), (n, C, H, W) with C in {1, 3}, and
(n, d) with d a perfect square (one channel). Every problem (missing file, wrong shape or dtype, NaN, pixels
out of range, an empty class, labels out of range, images of different sizes, an unreadable image) raises
:class:`ImageSetError`, a ``ValueError`` whose message names the file and the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["IMAGE_SUFFIXES", "ImageSet", "ImageSetError", "load_image_set", "to_pixel_space"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_RANGE_SLACK = 1e-3


class ImageSetError(ValueError):
    """A problem with an image-set file; the message names the file."""


@dataclass(frozen=True)
class ImageSet:
    """Images ``x`` float32 (n, C, H, W) in [-1, 1]; labels ``y`` int64 (n,) or None; where they came from.

    ``class_names[c]`` names label c when known (folder names, ``class_names`` in an npz), else None.
    """

    x: NDArray[np.float32]
    y: NDArray[np.int64] | None
    source: str
    class_names: tuple[str, ...] | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x.shape[1:])  # type: ignore[return-value]

    @property
    def classes(self) -> NDArray[np.int64]:
        """The labels present, sorted (empty for an unlabelled set)."""
        return np.zeros(0, np.int64) if self.y is None else np.unique(self.y)

    def flat(self) -> NDArray[np.float32]:
        """The images flattened, (n, C * H * W)."""
        return self.x.reshape(self.n, -1)

    def pooled(self, factor: int) -> ImageSet:
        """The set with each image average-pooled over ``factor`` x ``factor`` blocks (H, W cropped to multiples
        of ``factor``): (n, C, H // factor, W // factor); ``factor`` 1 returns the set itself."""
        if int(factor) != factor or factor < 1:
            raise ValueError(f"pool = {factor!r}: must be an integer >= 1")
        if factor == 1:
            return self
        n, c, h, w = self.x.shape
        if h < factor or w < factor:
            raise ValueError(f"pool = {factor}: images of {h}x{w} pixels are smaller than one block")
        hh, ww = h // factor, w // factor
        x = self.x[:, :, : hh * factor, : ww * factor].reshape(n, c, hh, factor, ww, factor).mean(axis=(3, 5))
        return ImageSet(x.astype(np.float32), self.y, f"{self.source} (pooled {factor}x{factor})", self.class_names)


def to_pixel_space(x: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Model-space images in [-1, 1] -> uint8 0..255 (round((x + 1) * 127.5), clipped), same shape."""
    return np.clip(np.rint((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _fail(source: str, problem: str) -> ImageSetError:
    return ImageSetError(f"{source}: {problem}")


def _as_images(x: np.ndarray, source: str) -> NDArray[np.float32]:
    """Validate ``x`` and return float32 (n, C, H, W) in [-1, 1] (see the module docstring for the rules)."""
    if x.dtype == np.bool_ or np.iscomplexobj(x) or not np.issubdtype(x.dtype, np.number):
        raise _fail(source, f"x has dtype {x.dtype}; expected uint8 pixels 0..255 or real floats in [-1, 1]")
    if x.ndim < 2 or x.shape[0] == 0:
        raise _fail(source, f"x has shape {x.shape}; expected (n, H, W), (n, C, H, W) or (n, d) with n >= 1")
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise _fail(source, f"x has shape {x.shape}: flat images need d = side^2 (one channel); "
                                "give (n, H, W) or (n, C, H, W) instead")
        x = x.reshape(x.shape[0], 1, side, side)
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4 or x.shape[1] not in (1, 3):
        raise _fail(source, f"x has shape {x.shape}; expected (n, H, W), (n, C, H, W) with C in {{1, 3}} "
                            "or (n, d)")
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise _fail(source, f"integer pixels span {lo}..{hi}; expected 0..255")
        return (x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)
    xf = x.astype(np.float32)
    bad = ~np.isfinite(xf)
    if bad.any():
        raise _fail(source, f"x has {int(bad.sum())} non-finite entries (NaN or inf)")
    lo, hi = float(xf.min()), float(xf.max())
    if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise _fail(source, f"float pixels span [{lo:.4g}, {hi:.4g}]; expected [-1, 1] "
                            "(save uint8 0..255 instead, or rescale with x / 127.5 - 1)")
    return np.clip(xf, -1.0, 1.0)


def _as_labels(y: np.ndarray, n: int, source: str, n_classes: int | None) -> NDArray[np.int64]:
    if y.shape != (n,):
        raise _fail(source, f"y has shape {y.shape}; expected ({n},), one label per image")
    if np.iscomplexobj(y) or not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise _fail(source, f"y has dtype {y.dtype}; expected integer labels")
    if not np.issubdtype(y.dtype, np.integer):
        yf = y.astype(np.float64)
        wrong = ~np.isfinite(yf) | (yf != np.round(yf))
        if wrong.any():
            raise _fail(source, f"y must hold integer labels; found values such as {yf[wrong][:3].tolist()}")
        y = yf
    yi = y.astype(np.int64)
    top = n_classes if n_classes is not None else 2**31
    out = (yi < 0) | (yi >= top)
    if out.any():
        allowed = f"0..{n_classes - 1} (one per class name)" if n_classes is not None else "non-negative integers"
        raise _fail(source, f"labels out of range: {sorted(set(yi[out].tolist()))[:5]}; allowed {allowed}")
    if n_classes is not None:
        empty = sorted(set(range(n_classes)) - set(np.unique(yi).tolist()))
        if empty:
            raise _fail(source, f"class(es) {empty} have no images")
    return yi


def _load_npz(path: Path, labelled: bool | None) -> ImageSet:
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            if "x" not in files:
                raise _fail(source, f"no array 'x' of images; found {', '.join(sorted(files)) or 'none'}")
            x = data["x"]
            y = data["y"] if "y" in files else None
            names = data["class_names"] if "class_names" in files else None
    except ImageSetError:
        raise
    except Exception as exc:  # truncated or corrupt archive, pickled object arrays
        raise _fail(source, f"not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if labelled and y is None:
        raise _fail(source, f"no array 'y' of labels; a labelled set needs 'x' and 'y' (found {', '.join(files)})")
    images = _as_images(x, source)
    class_names = None
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise _fail(source, f"class_names has shape {names.shape} and dtype {names.dtype}; expected strings (K,)")
        class_names = tuple(str(s) for s in names)
    labels = None if y is None or labelled is False else _as_labels(
        y, images.shape[0], source, None if class_names is None else len(class_names))
    return ImageSet(images, labels, source, class_names)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_images(files: list[Path]) -> NDArray[np.uint8]:
    """uint8 (n, C, H, W): one channel if every image is grayscale, else RGB; sizes must agree."""
    from PIL import Image, UnidentifiedImageError

    opened = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                opened.append(im.copy())
        except (OSError, UnidentifiedImageError) as exc:
            raise _fail(str(f), f"not a readable image ({type(exc).__name__}: {exc})") from None
    gray = all(im.mode in ("1", "L", "LA", "I", "I;16") or (im.mode == "P" and _palette_gray(im)) for im in opened)
    mode = "L" if gray else "RGB"
    size = opened[0].size
    arrays = []
    for f, im in zip(files, opened):
        if im.size != size:
            raise _fail(str(f), f"image is {im.size[0]}x{im.size[1]} but {files[0].name} is {size[0]}x{size[1]}; "
                                "all images of a set must have the same size")
        if im.mode in ("I", "I;16"):
            a = np.asarray(im, dtype=np.float64)
            a = np.clip(np.rint(a / (256.0 if a.max() > 255 else 1.0)), 0, 255).astype(np.uint8)
        else:
            a = np.asarray(im.convert(mode), dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0))
    return np.stack(arrays)


def _palette_gray(im) -> bool:
    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))


def _load_folder(folder: Path, labelled: bool | None) -> ImageSet:
    source = str(folder)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = _image_files(folder)
    if subdirs and files:
        raise _fail(source, f"holds both image files ({len(files)}) and sub-folders ({len(subdirs)}); use one "
                            "sub-folder per class, or only image files for an unlabelled set")
    if files:
        if labelled:
            raise _fail(source, "holds image files but no class sub-folders; a labelled set needs one "
                                "sub-folder per class")
        return ImageSet(_as_images(_read_images(files), source), None, source)
    if not subdirs:
        raise _fail(source, f"no images ({', '.join(IMAGE_SUFFIXES)}) and no class sub-folders")
    names = [p.name for p in subdirs]
    per_class = []
    for sub in subdirs:
        fs = _image_files(sub)
        if not fs:
            raise _fail(str(sub), f"class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        per_class.append(fs)
    numeric = all(n.isdigit() for n in names)
    ids = [int(n) for n in names] if numeric else list(range(len(names)))
    if numeric and len(set(ids)) != len(ids):
        raise _fail(source, f"class folders {names} name the same label twice")
    all_files = [f for fs in per_class for f in fs]
    labels = np.concatenate([np.full(len(fs), c, np.int64) for c, fs in zip(ids, per_class)])
    images = _as_images(_read_images(all_files), source)
    class_names = None
    if not numeric:
        class_names = tuple(names)
    return ImageSet(images, None if labelled is False else labels, source, class_names)


def _idx_labels_path(path: Path) -> Path | None:
    name = path.name
    if "images-idx3" not in name:
        return None
    cand = path.with_name(name.replace("images-idx3", "labels-idx1"))
    return cand if cand.is_file() else None


def _load_idx(path: Path, labels: Path | None, labelled: bool | None) -> ImageSet:
    from classdiff.data.fashion_mnist import DataFileError, read_idx

    try:
        x = read_idx(path)
    except DataFileError as exc:
        raise ImageSetError(str(exc)) from None
    if x.ndim != 3:
        raise _fail(str(path), f"idx file holds shape {x.shape}; expected images (n, H, W)")
    lab_path = labels if labels is not None else _idx_labels_path(path)
    if labelled and lab_path is None:
        raise _fail(str(path), "no labels file found beside it (…-labels-idx1-ubyte); pass the labels file")
    y = None
    if lab_path is not None and labelled is not False:
        try:
            y = read_idx(lab_path)
        except DataFileError as exc:
            raise ImageSetError(str(exc)) from None
        y = _as_labels(y, x.shape[0], str(lab_path), None)
    return ImageSet(_as_images(x, str(path)), y, str(path))


def _load_fashion(split: str, labelled: bool | None) -> ImageSet:
    from classdiff.data.fashion_mnist import load_fashion_mnist, to_model_space

    if split not in ("train", "test"):
        raise ImageSetError(f"fashion-mnist:{split}: the split must be 'train' or 'test'")
    data = load_fashion_mnist()
    x = getattr(data, f"{split}_images")
    y = getattr(data, f"{split}_labels").astype(np.int64)
    return ImageSet(to_model_space(x), None if labelled is False else y, f"fashion-mnist:{split}")


def load_image_set(path: str | Path, *, labels: str | Path | None = None,
                   labelled: bool | None = None) -> ImageSet:
    """Read an image set (formats in the module docstring).

    ``labelled``: True requires labels (error if the source has none), False drops them, None keeps what the
    source has. ``labels``: an idx labels file for an idx images file.
    """
    text = str(path)
    if text.startswith("fashion-mnist:"):
        return _load_fashion(text.split(":", 1)[1], labelled)
    p = Path(path)
    if not p.exists():
        raise ImageSetError(f"{p}: does not exist (expected an .npz file, an image folder, an idx file or "
                            "fashion-mnist:train|test)")
    if p.is_dir():
        return _load_folder(p, labelled)
    if p.suffix == ".npz":
        return _load_npz(p, labelled)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    if "idx" in name and name.endswith("-ubyte"):
        return _load_idx(p, None if labels is None else Path(labels), labelled)
    raise ImageSetError(f"{p}: unknown format; expected FILE.npz, a folder of PNG/JPEG images, "
                        "an idx file (…-idx3-ubyte[.gz]) or fashion-mnist:train|test")
