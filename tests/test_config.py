"""Config loading, round trips, and one clear error per bad value."""

import math

import pytest

from classdiff.core.config import Config, ConfigError, MixtureConfig, load_config, save_config, to_toml

GOOD = """
[mixture]
dim = 300
weights = [0.8, 0.2]
variances = [0.5, 1.5]
centroid_norms = [1.0, 1.0]
geometry = "antipodal"
seed = 0
[model]
psi_p = 2.0
psi_n = 1.0
time = 0.1
activation = "tanh"
"""


def test_design_example_loads(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(GOOD)
    cfg = load_config(p)
    assert cfg.mixture.weights == (0.8, 0.2)
    assert cfg.model.time == 0.1
    assert cfg.mixture.n_classes == 2


def test_round_trip(tmp_path):
    cfg = Config().with_overrides({"mixture.weights": [0.9, 0.1], "model.psi_p": 4, "sweep.grid": {"model.psi_n": [1, 2]}})
    path = save_config(cfg, tmp_path / "x.toml")
    back = load_config(path)
    assert back == cfg
    assert back.digest() == cfg.digest()
    assert to_toml(back) == to_toml(cfg)


def test_explicit_centroids_round_trip(tmp_path):
    cfg = Config(mixture=MixtureConfig(dim=3, weights=(0.5, 0.5), variances=(1, 2), centroid_norms=(0, 0),
                                       geometry="explicit", centroids=((1, 0, 0), (0, 1.5, 0))))
    assert load_config(save_config(cfg, tmp_path / "e.toml")) == cfg


def test_digest_changes_with_values():
    a = Config()
    assert a.digest() != a.with_overrides({"mixture.seed": 1}).digest()


BAD = [
    ("mixture.variances", {"mixture": {"variances": [0.5, -1.0]}}, "mixture.variances[1]"),
    ("mixture.variances", {"mixture": {"variances": [0.5, 0.0]}}, "mixture.variances[1]"),
    ("mixture.weights", {"mixture": {"weights": [0.7, 0.2]}}, "sum"),
    ("mixture.weights", {"mixture": {"weights": [1.2, -0.2]}}, "mixture.weights[1]"),
    ("mixture.weights", {"mixture": {"weights": [0.5, 0.5 + 1e-8]}}, "sum"),
    ("mixture.centroid_norms", {"mixture": {"centroid_norms": [1.0, 1.0, 1.0]}}, "K = 2"),
    ("mixture.variances", {"mixture": {"weights": [0.3, 0.3, 0.4], "geometry": "orthogonal",
                                       "centroid_norms": [1, 1, 1]}}, "K = 3"),
    ("mixture.dim", {"mixture": {"dim": 0}}, ">= 1"),
    ("mixture.geometry", {"mixture": {"geometry": "circle"}}, "orthogonal"),
    ("mixture.geometry", {"mixture": {"weights": [0.3, 0.3, 0.4], "variances": [1, 1, 1],
                                      "centroid_norms": [1, 1, 1]}}, "antipodal"),
    ("model.psi_p", {"model": {"psi_p": 0}}, "> 0"),
    ("model.psi_n", {"model": {"psi_n": -1.0}}, "> 0"),
    ("model.time", {"model": {"time": 0.0}}, "> 0"),
    ("model.time", {"model": {"time": math.inf}}, "finite"),
    ("model.psi_p", {"model": {"psi_p": math.nan}}, "finite"),
    ("mixture.variances[0]", {"mixture": {"variances": [math.nan, 1.0]}}, "finite"),
    ("model.activation", {"model": {"activation": "sigmoid"}}, "tanh"),
    ("model.extra", {"model": {"extra": 1}}, "unknown key"),
    ("bogus", {"bogus": {}}, "unknown section"),
    ("model.psi_p", {"model": {"psi_p": "two"}}, "number"),
    ("images.width", {"images": {"width": 12}}, "multiple of 8"),
    ("images.classes[1]", {"images": {"classes": [0, 11]}}, "0..9"),
    ("training.tau_max", {"training": {"tau_min": 10.0, "tau_max": 1.0}}, "tau_min"),
    ("sweep.grid.model.nothing", {"sweep": {"grid": {"model.nothing": [1]}}}, "unknown field"),
]


@pytest.mark.parametrize(("field", "data", "fragment"), BAD, ids=[b[0] + ":" + b[2] for b in BAD])
def test_bad_values_raise_named_error(field, data, fragment):
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    msg = str(info.value)
    assert info.value.field.startswith(field.split("[")[0].split(".grid")[0]) or field in msg
    assert field.split("[")[0] in msg
    assert fragment in msg


def test_unknown_key_in_file_names_file_field(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[mixture]\ndimm = 3\n")
    with pytest.raises(ConfigError, match=r"mixture\.dimm.*unknown key.*dim"):
        load_config(p)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    p = tmp_path / "broken.toml"
    p.write_text("[mixture\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_configs_are_immutable():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.mixture.dim = 3  # type: ignore[misc]
