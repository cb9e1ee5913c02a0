"""Audit of a labelled data set: statistics are right and the theory's known ordering is recovered."""

import subprocess
import sys

import numpy as np
import pytest

from classdiff.core.config import MixtureConfig
from classdiff.data.mixture import GaussianMixture
from classdiff.theory.audit import class_statistics, load_labelled


def _data(n=400, d=40):
    gm = GaussianMixture.from_config(MixtureConfig(dim=d, weights=(0.5, 0.5), variances=(0.5, 2.0),
                                                   centroid_norms=(0.0, 0.0), geometry="orthogonal"))
    ts = gm.sample(n, seed=0)
    return ts.x, ts.labels + 3  # arbitrary label values


def test_statistics_match_the_generating_mixture():
    x, y = _data(4000, 20)
    st = class_statistics(x, y)
    assert st.labels.tolist() == [3, 4]
    np.testing.assert_allclose(st.variances, [0.5, 2.0], rtol=0.05)
    np.testing.assert_allclose(st.weights, [0.5, 0.5])
    assert np.all(st.centroid_norms < 0.1)


def test_audit_recovers_variance_ordering(tmp_path):
    x, y = _data()
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    res = subprocess.run([sys.executable, "-m", "classdiff", "audit", str(path), "--psi-p", "2", "--json",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    import json

    out = json.loads(res.stdout)
    assert out["generalization_order"] == [4, 3]  # the higher-variance class (label 4) is learned first
    gen = {c["label"]: c["tau_gen"] for c in out["classes"]}
    assert gen[4] < gen[3]
    assert (tmp_path / "out" / "audit.png").is_file()


def test_predict_for_data_maps_labels_through_the_mixture():
    from classdiff.core.readoff import ORDER_KEYS
    from classdiff.theory.audit import audit, predict_for_data, predict_for_mixture

    x, y = _data()
    pred = predict_for_data(x, y)
    assert [c.label for c in pred.timescales.classes] == [3, 4]
    assert pred.generalization_order == [4, 3]
    assert pred.psi_n == len(y) / x.shape[1]
    res = audit(x, y)
    assert [c.tau_gen for c in res.classes] == [c.tau_gen for c in pred.timescales.classes]
    # the same prediction from the fitted mixture itself (the path images.evaluation takes)
    fitted = predict_for_mixture(GaussianMixture.fit(x, y))
    assert [(c.label, c.tau_gen, c.tau_mem) for c in fitted.timescales.classes] == \
        [(c.label, c.tau_gen, c.tau_mem) for c in pred.timescales.classes]
    d = pred.to_dict()  # the orders under the ORDER_KEYS names only
    assert d[ORDER_KEYS["tau_gen"]] == [4, 3] and sorted(d[ORDER_KEYS["tau_mem"]]) == [3, 4]
    assert {k for k in d if k.endswith("_order")} == {ORDER_KEYS["tau_gen"], ORDER_KEYS["tau_mem"]}
    assert [c["tau_gen"] for c in d["classes"]] == [c.tau_gen for c in pred.timescales.classes]


def test_bad_data_file(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, x=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="missing array"):
        load_labelled(p)
    with pytest.raises(FileNotFoundError):
        load_labelled(tmp_path / "nope.npz")
