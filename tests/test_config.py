"""The TOML pipeline config: defaults, user files, command-line overrides, validation."""
from __future__ import annotations

import tomllib

import pytest
from click.testing import CliRunner

from synfiqa.config import default_config, fingerprint, load_config
from synfiqa.errors import ConfigError
from synfiqa_cli.main import cli


def test_defaults_follow_the_paper_where_it_is_explicit():
    config = default_config()
    assert config["annotate"]["params"]["mr"]["lam"] == 0.5
    assert config["run"]["image_size"] == 112
    assert config["degrade"]["chain"] == ["blur-downscale"]


def test_overrides_keep_types_and_reach_nested_keys():
    config = load_config(None, ["run.degraded=7", "run.seed=3", "degrade.chain=[\"blur-downscale\", \"jpeg\"]",
                                "models.embedder=dlib-resnet", "annotate.params.mr.lam=0.25"])
    assert config["run"]["degraded"] == 7
    assert config["degrade"]["chain"] == ["blur-downscale", "jpeg"]
    assert config["models"]["embedder"] == "dlib-resnet"
    assert config["annotate"]["params"]["mr"]["lam"] == 0.25


def test_int_is_accepted_for_a_float_key():
    assert load_config(None, ["annotate.params.mr.lam=1"])["annotate"]["params"]["mr"]["lam"] == 1


def test_file_then_overrides(tmp_path):
    path = tmp_path / "build.toml"
    path.write_text("[run]\ndegraded = 5\nseed = 11\n[degrade.params.blur-downscale]\nmode = \"reference\"\n")
    config = load_config(path, ["run.seed=12"])
    assert config["run"]["degraded"] == 5
    assert config["run"]["seed"] == 12
    assert config["degrade"]["params"]["blur-downscale"]["mode"] == "reference"
    assert config["run"]["references"] == default_config()["run"]["references"]


@pytest.mark.parametrize("override, message", [
    ("run.degradd=5", "unknown config key 'run.degradd'; did you mean 'degraded'"),
    ("runn.seed=1", "unknown config key 'runn'"),
    ("run.degraded=many", "must be a int"),
    ("run.degraded", "must look like section.key=value"),
    ("run.seed.x=1", "is a value, not a table"),
])
def test_bad_overrides_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file_key_and_bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[run]\nsed = 1\n")
    with pytest.raises(ConfigError, match="'run.sed'; did you mean 'seed'"):
        load_config(path)
    path.write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_fingerprint_changes_with_any_value():
    base = default_config()
    assert fingerprint(base) == fingerprint(default_config())
    assert fingerprint(base) != fingerprint(load_config(None, ["run.seed=1"]))


def test_config_show_prints_the_resolved_config():
    result = CliRunner().invoke(cli, ["config", "show", "--set", "run.degraded=9"])
    assert result.exit_code == 0
    shown = tomllib.loads(result.output)
    assert shown["run"]["degraded"] == 9
    assert shown["models"] == default_config()["models"]


def test_config_show_bad_key_exits_2():
    result = CliRunner().invoke(cli, ["config", "show", "--set", "run.nope=1"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "unknown config key 'run.nope'" in result.output
