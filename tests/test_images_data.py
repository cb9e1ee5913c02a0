"""Fashion-MNIST idx loading, validation, look-up order, imbalanced subsets and per-class statistics.

Every test writes its own small synthetic idx files, except the theory's predicted order on the real data set
(Debian's ``dataset-fashion-mnist``, which ``make test`` installs).
"""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from classdiff.core.config import Config
from classdiff.core.readoff import ORDER_KEYS
from classdiff.data import fashion_mnist as fm
from classdiff.data.labelled import class_statistics
from classdiff.data.mixture import GaussianMixture


@pytest.fixture
def synthetic(tmp_path):
    return fm.write_synthetic_fashion_mnist(tmp_path / "data", n_train_per_class=12, n_test_per_class=4)


def _sums(folder):
    out = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        out[name.removesuffix(".gz")] = digest
    return out


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    fm.write_idx(tmp_path / name, imgs)
    fm.write_idx(tmp_path / ("l" + name), labels)
    np.testing.assert_array_equal(fm.read_idx(tmp_path / name), imgs)
    np.testing.assert_array_equal(fm.read_idx(tmp_path / ("l" + name)), labels)


def test_load_synthetic_with_checksums(synthetic):
    data = fm.load_fashion_mnist(synthetic, checksums=_sums(synthetic))
    assert data.train_images.shape == (120, 28, 28) and data.train_labels.shape == (120,)
    assert data.test_images.shape == (40, 28, 28)
    assert np.bincount(data.train_labels, minlength=10).tolist() == [12] * 10


def test_truncated_file_is_an_error_naming_it(synthetic):
    path = synthetic / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    with gzip.open(path, "wb") as fh:
        fh.write(raw[:-100])
    with pytest.raises(fm.DataFileError, match="train-images-idx3-ubyte.gz: truncated"):
        fm.load_fashion_mnist(synthetic, checksums=None)


def test_truncated_gzip_stream_is_an_error_naming_it(synthetic):
    path = synthetic / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(fm.DataFileError, match="train-labels-idx1-ubyte.gz"):
        fm.load_fashion_mnist(synthetic, checksums=None)


def test_corrupt_content_fails_the_checksum(synthetic):
    sums = _sums(synthetic)
    path = synthetic / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[500] ^= 0xFF
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(raw))
    with pytest.raises(fm.DataFileError, match="t10k-images-idx3-ubyte.gz: SHA-256"):
        fm.load_fashion_mnist(synthetic, checksums=sums)


def test_wrong_magic_and_trailing_bytes(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes((0x0999).to_bytes(4, "big") + b"\0" * 20)
    with pytest.raises(fm.DataFileError, match="bad-idx: magic number 0x00000999"):
        fm.read_idx(bad)
    fm.write_idx(tmp_path / "ok", np.zeros(5, dtype=np.uint8))
    (tmp_path / "ok").write_bytes((tmp_path / "ok").read_bytes() + b"xx")
    with pytest.raises(fm.DataFileError, match="2 unexpected trailing bytes"):
        fm.read_idx(tmp_path / "ok")


def test_missing_file_names_it_and_says_how_to_get_it(synthetic):
    (synthetic / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(fm.DataFileError, match=r"missing t10k-labels-idx1-ubyte.*apt-get install dataset-fashion-mnist"):
        fm.load_fashion_mnist(synthetic)


def test_search_order_and_offline_message(tmp_path, monkeypatch, synthetic):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(fm, "DEBIAN_DIR", empty)
    monkeypatch.setenv("CLASSDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    assert fm.find_fashion_mnist() is None
    with pytest.raises(fm.DataFileError, match="FASHION_MNIST_DIR"):
        fm.load_fashion_mnist(download=False)
    # cache is searched last, the environment variable first
    cache_copy = fm.write_synthetic_fashion_mnist(tmp_path / "cache" / "fashion-mnist", 3, 1, seed=5)
    assert fm.find_fashion_mnist() == cache_copy
    monkeypatch.setenv("FASHION_MNIST_DIR", str(synthetic))
    assert fm.find_fashion_mnist() == synthetic


def test_download_into_cache_verifies_checksums(tmp_path, monkeypatch):
    upstream = fm.write_synthetic_fashion_mnist(tmp_path / "upstream", 3, 1, seed=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(fm, "DEBIAN_DIR", empty)
    monkeypatch.setenv("CLASSDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(fm, "SHA256", _sums(upstream))
    data = fm.load_fashion_mnist(url=upstream.as_uri() + "/", checksums=_sums(upstream))
    assert data.root == tmp_path / "cache" / "fashion-mnist"
    assert data.train_images.shape == (30, 28, 28)
    # a corrupted upstream file is rejected and nothing is left in the cache
    for p in (tmp_path / "cache" / "fashion-mnist").iterdir():
        p.unlink()
    raw = bytearray(gzip.decompress((upstream / "train-labels-idx1-ubyte.gz").read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    with gzip.open(upstream / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(bytes(raw))
    with pytest.raises(fm.DataFileError, match="could not download .*train-labels"):
        fm.load_fashion_mnist(url=upstream.as_uri() + "/")
    assert not (tmp_path / "cache" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").exists()


def test_real_checksums_are_of_decompressed_content():
    # the table holds 64-hex SHA-256 digests for the four upstream files
    assert set(fm.SHA256) == set(fm.FILES.values())
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in fm.SHA256.values())
    assert hashlib.sha256(b"").hexdigest() not in fm.SHA256.values()


def test_subset_counts_and_indices():
    assert fm.subset_counts((3, 5), counts=(9, 1)) == (9, 1)
    assert fm.subset_counts((0, 1, 2), weights=(0.5, 0.3, 0.2), n_total=11) == (6, 3, 2)
    assert sum(fm.subset_counts((0, 1), weights=(0.999, 0.001), n_total=100)) == 100
    assert min(fm.subset_counts((0, 1), weights=(0.999, 0.001), n_total=100)) == 1
    labels = np.repeat(np.arange(10), 20)
    a = fm.build_subset(labels, (2, 7), (15, 3), seed=4)
    b = fm.build_subset(labels, (2, 7), (15, 3), seed=4)
    np.testing.assert_array_equal(a, b)
    assert np.bincount(labels[a], minlength=10)[[2, 7]].tolist() == [15, 3]
    assert len(np.unique(a)) == 18
    assert not np.array_equal(a, fm.build_subset(labels, (2, 7), (15, 3), seed=5))


def test_subset_asking_too_many_names_the_class():
    labels = np.repeat(np.arange(10), 20)
    with pytest.raises(ValueError, match=r"class 8 \(Bag\): asked for 21 images but only 20 exist"):
        fm.build_subset(labels, (0, 8), (5, 21), seed=0)


def test_class_statistics_against_direct_computation():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0.5, 0.3, (40, 6)), rng.normal(-1.0, 0.8, (10, 6))])
    x[:, 0] *= 3.0  # anisotropic
    y = np.array([4] * 40 + [9] * 10)
    st = class_statistics(x, y, n_eigenvalues=3)
    mean = x.mean(0)
    for i, c in enumerate((4, 9)):
        xc = x[y == c]
        cov = np.cov(xc, rowvar=False)
        assert st.variances[i] == pytest.approx(np.trace(cov) / 6, rel=1e-12)
        np.testing.assert_allclose(st.top_eigenvalues[i], np.sort(np.linalg.eigvalsh(cov))[::-1][:3], rtol=1e-10)
        assert st.centroid_norms[i] == pytest.approx(np.linalg.norm(xc.mean(0) - mean) / np.sqrt(6), rel=1e-12)
    assert st.centroid_distances[0, 1] == pytest.approx(
        np.linalg.norm(x[y == 4].mean(0) - x[y == 9].mean(0)) / np.sqrt(6), rel=1e-12)
    assert st.weights.tolist() == [0.8, 0.2]
    fitted = GaussianMixture.fit(x, y)
    assert fitted.dim == 6 and fitted.weights.tolist() == [0.8, 0.2] and fitted.labels_.tolist() == [4, 9]
    np.testing.assert_allclose(fitted.centroids, st.centroids)
    np.testing.assert_allclose(fitted.variances, st.variances)


def test_predicted_order_maps_labels():
    from classdiff.core.readoff import class_order
    from classdiff.theory.audit import predict_for_data

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.3, 0.5, (60, 40)), rng.normal(-0.3, 1.0, (20, 40))])
    y = np.array([2] * 60 + [5] * 20)
    pred = predict_for_data(x, y)
    res = pred.to_dict()
    assert [c["label"] for c in res["classes"]] == [2, 5]
    # the wider class 5 generalizes first and memorizes last
    assert res["generalization_order"] == [5, 2] and res["memorization_order"] == [2, 5]
    assert res["generalization_order"] == class_order([c["tau_gen"] for c in res["classes"]], [2, 5])
    assert res["memorization_order"] == class_order([c["tau_mem"] for c in res["classes"]], [2, 5])
    assert {k for k in res if k.endswith("_order")} == {ORDER_KEYS["tau_gen"], ORDER_KEYS["tau_mem"]}
    assert res["psi_n"] == pytest.approx(80 / 40)
    # the classes asked for in the other order: each label keeps its times, the orders are unchanged
    swapped = predict_for_data(x, y, labels=[5, 2])
    assert [c.label for c in swapped.timescales.classes] == [5, 2]
    times = {c.label: (c.tau_gen, c.tau_mem) for c in pred.timescales.classes}
    for c in swapped.timescales.classes:
        assert (c.tau_gen, c.tau_mem) == pytest.approx(times[c.label], rel=1e-9)
    assert swapped.generalization_order == [5, 2] and swapped.memorization_order == [2, 5]


def test_predicted_order_on_fashion_mnist_names_the_classes():
    """The demo's classes of the real data set: Bag (high pixel variance) is predicted to generalize before
    Trouser (low pixel variance), and Trouser to be memorized first; the orders hold Fashion-MNIST label ids."""
    from classdiff.images.evaluation import theory_prediction
    from classdiff.theory.audit import predict_for_data

    root = fm.find_fashion_mnist()
    if root is None:
        pytest.skip("Fashion-MNIST not found: needs Debian's dataset-fashion-mnist (make test installs it) "
                    "or FASHION_MNIST_DIR")
    data = fm.load_fashion_mnist(root)
    classes = (1, 8)
    idx = fm.build_subset(data.train_labels, classes, (540, 60), seed=0)
    x, y = fm.to_model_space(data.train_images[idx]), data.train_labels[idx]
    pred = predict_for_data(x, y, labels=classes)
    assert [fm.CLASS_NAMES[c.label] for c in pred.timescales.classes] == ["Trouser", "Bag"]
    assert [fm.CLASS_NAMES[c] for c in pred.generalization_order] == ["Bag", "Trouser"]
    assert [fm.CLASS_NAMES[c] for c in pred.memorization_order] == ["Trouser", "Bag"]
    assert pred.psi_n == pytest.approx(600 / 784)
    swapped = predict_for_data(x, y, labels=classes[::-1])
    times = {c.label: (c.tau_gen, c.tau_mem) for c in pred.timescales.classes}
    for c in swapped.timescales.classes:
        assert (c.tau_gen, c.tau_mem) == pytest.approx(times[c.label], rel=1e-9)
    assert (swapped.generalization_order, swapped.memorization_order) == ([8, 1], [1, 8])
    # the evaluation's theory section is this prediction
    assert theory_prediction(x, y, classes, Config()) == {"available": True, **pred.to_dict()}
