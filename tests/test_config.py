"""Config files: validation errors name the file, the field and what is allowed."""

import glob
import os

import pytest

from ggn_jax.config import ANALYZE_SCHEMA, ConfigError, load_config, validate

SCHEMA = ANALYZE_SCHEMA


def test_defaults_are_filled_in_and_ints_widen_to_floats():
    config = validate({"network": {"sizes": [2, 3, 1]}, "analysis": {"tol": 0}}, SCHEMA, "x.toml")
    assert config["network"]["activation"] == "bent_identity"
    assert config["analysis"]["tol"] == 0.0 and isinstance(config["analysis"]["tol"], float)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"network": {"sizes": [2, 1]}, "optimiser": {}}, r"x.toml: unknown section\(s\) optimiser; allowed: network, data, analysis"),
        ({"network": {"sizes": [2, 1], "widths": [3]}}, r"unknown field\(s\) network.widths; allowed in \[network\]: sizes"),
        ({"network": {}}, r"x.toml: network.sizes is required \(a list of int\)"),
        ({"network": {"sizes": [2, "3"]}}, r"network.sizes\[1\] must be int, got '3'"),
        ({"network": {"sizes": [2, 1], "activation": "relu"}}, "network.activation = 'relu'; allowed: 'bent_identity'"),
        ({"network": {"sizes": [2, 1]}, "analysis": {"fit_first": 1}}, "analysis.fit_first must be bool, got 1"),
        ({"network": {"sizes": [2, 1]}, "data": {"num_samples": True}}, "data.num_samples must be int, got true"),
        ({"network": {"sizes": [2, 1]}, "data": 3}, r"\[data\] must be a table"),
    ],
)
def test_bad_configs_name_the_problem(raw, message):
    with pytest.raises(ConfigError, match=message):
        validate(raw, SCHEMA, "x.toml")


def test_files_that_are_missing_or_not_toml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "absent.toml"), SCHEMA)
    bad = tmp_path / "bad.toml"
    bad.write_text("[network\nsizes = [")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(str(bad), SCHEMA)


ANALYZE_CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                "analyze", "*.toml")))


@pytest.mark.parametrize("path", ANALYZE_CONFIGS, ids=os.path.basename)
def test_shipped_configs_load(path):
    assert load_config(path, SCHEMA)["network"]["sizes"]

