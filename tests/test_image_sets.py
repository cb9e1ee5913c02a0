"""Image-set loaders (npz, image folder, idx, Fashion-MNIST spec) on real files the tests write, and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classdiff.data.fashion_mnist import write_idx
from classdiff.data.image_sets import ImageSetError, load_image_set, to_pixel_space


def _pixels(n: int, size: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size), dtype=np.uint8)


def _folder(root: Path, per_class: dict[str, np.ndarray], mode: str = "L", suffix: str = ".png") -> Path:
    for name, imgs in per_class.items():
        (root / name).mkdir(parents=True)
        for i, a in enumerate(imgs):
            Image.fromarray(a, mode="L").convert(mode).save(root / name / f"{i:03d}{suffix}")
    return root


def test_npz_uint8_and_float_round_trip(tmp_path: Path) -> None:
    px = _pixels(5)
    np.savez(tmp_path / "a.npz", x=px, y=np.array([0, 1, 1, 0, 2]))
    s = load_image_set(tmp_path / "a.npz")
    assert s.x.shape == (5, 1, 6, 6) and s.x.dtype == np.float32
    np.testing.assert_array_equal(to_pixel_space(s.x)[:, 0], px)  # uint8 -> [-1, 1] -> uint8 is exact
    assert s.y.tolist() == [0, 1, 1, 0, 2] and s.classes.tolist() == [0, 1, 2]
    np.savez(tmp_path / "b.npz", x=s.x, y=s.y.astype(np.float64))  # float images and integral float labels
    t = load_image_set(tmp_path / "b.npz")
    np.testing.assert_array_equal(t.x, s.x)
    np.savez(tmp_path / "c.npz", x=s.x.reshape(5, 36))  # flat square images, unlabelled
    assert load_image_set(tmp_path / "c.npz").x.shape == (5, 1, 6, 6)
    assert load_image_set(tmp_path / "a.npz", labelled=False).y is None


@pytest.mark.parametrize("arrays, problem", [
    ({"y": np.zeros(3)}, "no array 'x'"),
    ({"x": np.zeros((3, 6, 6), np.complex64), "y": np.zeros(3, int)}, "dtype complex64"),
    ({"x": np.array(["a", "b"]), "y": np.zeros(2, int)}, "dtype <U1"),
    ({"x": np.zeros((3, 5)), "y": np.zeros(3, int)}, "d = side^2"),
    ({"x": np.zeros((3, 2, 6, 6)), "y": np.zeros(3, int)}, "C in {1, 3}"),
    ({"x": np.zeros((0, 6, 6)), "y": np.zeros(0, int)}, "n >= 1"),
    ({"x": np.full((3, 6, 6), np.nan), "y": np.zeros(3, int)}, "non-finite"),
    ({"x": np.full((3, 6, 6), 3.0), "y": np.zeros(3, int)}, "expected [-1, 1]"),
    ({"x": np.full((3, 6, 6), 300, np.int32), "y": np.zeros(3, int)}, "expected 0..255"),
    ({"x": np.zeros((3, 6, 6)), "y": np.zeros(4, int)}, "one label per image"),
    ({"x": np.zeros((3, 6, 6)), "y": np.array([0.0, 0.5, 1.0])}, "integer labels"),
    ({"x": np.zeros((3, 6, 6)), "y": np.array([0, -1, 1])}, "labels out of range: [-1]"),
    ({"x": np.zeros((3, 6, 6)), "y": np.array([0, 1, 5]), "class_names": np.array(["a", "b"])},
     "labels out of range: [5]"),
    ({"x": np.zeros((3, 6, 6)), "y": np.array([0, 0, 2]), "class_names": np.array(["a", "b", "c"])},
     "class(es) [1] have no images"),
    ({"x": np.zeros((3, 6, 6))}, "no array 'y'"),
])
def test_npz_bad_inputs_name_file_and_problem(tmp_path: Path, arrays: dict, problem: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ImageSetError) as err:
        load_image_set(path, labelled=True)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_npz_truncated_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, x=_pixels(4), y=np.zeros(4, int))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ImageSetError, match="not a readable .npz"):
        load_image_set(path)
    with pytest.raises(ImageSetError, match="does not exist"):
        load_image_set(tmp_path / "nope.npz")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ImageSetError, match="unknown format"):
        load_image_set(tmp_path / "x.txt")


def test_folder_named_and_numbered_classes(tmp_path: Path) -> None:
    a, b = _pixels(3, seed=1), _pixels(2, seed=2)
    s = load_image_set(_folder(tmp_path / "named", {"shirt": a, "bag": b}), labelled=True)
    assert s.class_names == ("bag", "shirt") and s.y.tolist() == [0, 0, 1, 1, 1]  # sorted names
    np.testing.assert_array_equal(to_pixel_space(s.x)[:2, 0], b)  # PNG is lossless
    t = load_image_set(_folder(tmp_path / "num", {"7": a, "3": b}))
    assert t.class_names is None and sorted(t.y.tolist()) == [3, 3, 7, 7, 7]
    rgb = load_image_set(_folder(tmp_path / "rgb", {"0": a, "1": b}, mode="RGB", suffix=".jpg"))
    assert rgb.x.shape == (5, 3, 6, 6)  # an RGB file stays RGB (JPEG: lossy, so only the shape is checked)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, img in enumerate(a):
        Image.fromarray(img, mode="L").save(flat / f"s{i}.png")
    u = load_image_set(flat)
    assert u.y is None and u.n == 3


def test_folder_rgb_keeps_three_channels(tmp_path: Path) -> None:
    root = tmp_path / "rgb"
    (root / "0").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), mode="RGB").save(root / "0" / f"{i}.png")
    s = load_image_set(root)
    assert s.x.shape == (2, 3, 5, 7)


def test_folder_bad_inputs(tmp_path: Path) -> None:
    root = _folder(tmp_path / "empty_class", {"0": _pixels(2)})
    (root / "1").mkdir()
    with pytest.raises(ImageSetError, match=r"empty_class/1: class folder has no images"):
        load_image_set(root)
    root = _folder(tmp_path / "sizes", {"0": _pixels(2), "1": _pixels(1, size=8)})
    with pytest.raises(ImageSetError, match=r"sizes/1/000.png: image is 8x8 .* same size"):
        load_image_set(root)
    root = _folder(tmp_path / "broken", {"0": _pixels(2)})
    (root / "0" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageSetError, match=r"broken/0/bad.png: not a readable image"):
        load_image_set(root)
    root = _folder(tmp_path / "mixed", {"0": _pixels(1)})
    Image.fromarray(_pixels(1)[0]).save(root / "loose.png")
    with pytest.raises(ImageSetError, match="both image files"):
        load_image_set(root)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ImageSetError, match="no images"):
        load_image_set(tmp_path / "nothing")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(_pixels(1)[0]).save(flat / "a.png")
    with pytest.raises(ImageSetError, match="no class sub-folders"):
        load_image_set(flat, labelled=True)


def test_idx_pair_and_errors(tmp_path: Path) -> None:
    px = _pixels(4)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", px)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([1, 0, 1, 3], np.uint8))
    s = load_image_set(tmp_path / "train-images-idx3-ubyte.gz", labelled=True)
    assert s.y.tolist() == [1, 0, 1, 3]
    np.testing.assert_array_equal(to_pixel_space(s.x)[:, 0], px)
    write_idx(tmp_path / "x-images-idx3-ubyte", px)
    write_idx(tmp_path / "short-labels-idx1-ubyte", np.array([1, 0], np.uint8))
    with pytest.raises(ImageSetError, match="short-labels-idx1-ubyte: y has shape"):
        load_image_set(tmp_path / "x-images-idx3-ubyte", labels=tmp_path / "short-labels-idx1-ubyte")
    with pytest.raises(ImageSetError, match="no labels file"):
        load_image_set(tmp_path / "x-images-idx3-ubyte", labelled=True)
    raw = (tmp_path / "x-images-idx3-ubyte").read_bytes()
    (tmp_path / "cut-images-idx3-ubyte").write_bytes(raw[:-5])
    with pytest.raises(ImageSetError, match="cut-images-idx3-ubyte: truncated"):
        load_image_set(tmp_path / "cut-images-idx3-ubyte")
    with pytest.raises(ImageSetError, match="split must be"):
        load_image_set("fashion-mnist:valid")
