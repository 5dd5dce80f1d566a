"""The typed config (issue 11, point 5): one schema declares every key with its type, default,
allowed values and help; the shipped TOML agrees with it; typed values from code (the CLI's
options) go into the config without a KEY=VALUE text round trip and are checked against the
schema; `synfiqa config show --schema` lists the keys."""
from __future__ import annotations

import json
import shutil
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from synfiqa.config import (KEYS, SCHEMA, config_with, default_config, fingerprint, load_config, schema_rows,
                            to_toml)
from synfiqa.errors import ConfigError
from synfiqa_cli.main import cli

FACES = Path(__file__).parent / "data" / "faces"


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def flatten(config: dict) -> dict[str, object]:
    """section.key -> value, a params table as one value (as the schema declares it)."""
    return {f"{section}.{key}": value for section, table in config.items() for key, value in table.items()}


# ------------------------------------------------------------ the schema and the shipped TOML

def shipped_toml() -> str:
    return resources.files("synfiqa").joinpath("default_config.toml").read_text(encoding="utf-8")


def test_the_shipped_toml_and_the_schema_agree_key_by_key():
    shipped = flatten(tomllib.loads(shipped_toml()))
    declared = {key.name: key.default for key in SCHEMA}
    assert sorted(shipped.keys() - declared.keys()) == [], "keys of default_config.toml missing from SCHEMA"
    assert sorted(declared.keys() - shipped.keys()) == [], "keys of SCHEMA missing from default_config.toml"
    for name, value in shipped.items():
        assert value == declared[name] and type(value) is type(declared[name]), name


def test_the_default_config_is_the_shipped_toml_in_its_order():
    # the order decides the bytes of a build's config.toml
    assert default_config() == tomllib.loads(shipped_toml())
    assert to_toml(default_config()) == to_toml(tomllib.loads(shipped_toml()))


def test_every_declared_default_is_valid_and_has_help():
    for key in SCHEMA:
        assert key.help and key.problems(key.default) == [], key.name
        assert key.type in (int, bool, str, list, dict), key.name
    assert default_config() is not default_config()  # each call a fresh copy
    assert default_config()["annotate"]["params"] is not KEYS["annotate.params"].default


def test_per_key_rules_live_on_the_schema():
    assert (KEYS["run.seed"].low, KEYS["run.seed"].high) == (0, None)
    assert (KEYS["run.jpeg_quality"].low, KEYS["run.jpeg_quality"].high) == (1, 100)
    assert (KEYS["run.image_size"].low, KEYS["run.image_size"].high) == (16, 1024)
    for name in ("run.references", "run.degraded", "run.batch_size"):
        assert KEYS[name].low == 1
    assert KEYS["run.seed"].problems(-1) == [
        "run.seed must be an integer >= 0 (the run seed; every random draw of a run derives from it); got -1"]
    assert KEYS["run.device"].problems("tpu")[0].startswith("run.device must be one of auto")
    assert KEYS["degrade.chain"].problems(["jpeg", "jpeg"])[0].startswith("degrade.chain names 'jpeg' more than once")
    assert KEYS["models.embedder"].kind == "embedder" and KEYS["annotate.optional"].kind == "annotator"


# ------------------------------------------------------------ typed values from code

def test_a_typed_value_and_the_same_set_give_one_config_and_fingerprint():
    typed = load_config(values={"run.seed": 3, "degrade.chain": ["blur-downscale", "jpeg"]})
    text = load_config(None, ["run.seed=3", 'degrade.chain=["blur-downscale", "jpeg"]'])
    assert typed == text and fingerprint(typed) == fingerprint(text)
    assert to_toml(typed) == to_toml(text)


@pytest.mark.parametrize("key, value, message", [
    ("run.seed", "3", "config key 'run.seed' must be a int, got '3'"),
    ("run.seed", True, "config key 'run.seed' must be a int, got True"),
    ("run.seed", 3.0, "config key 'run.seed' must be a int, got 3.0"),
    ("run.device", 0, "config key 'run.device' must be a str, got 0"),
    ("degrade.chain", ("jpeg",), "config key 'degrade.chain' must be a list, got ('jpeg',)"),
    ("run.seed.x", 1, "config key 'run.seed' is a value, not a table"),
    ("run.sed", 1, "unknown config key 'run.sed'; did you mean 'seed'?"),
    # a params value is free-form, but plain: a Path object is no TOML value
    ("generate.params.folder.path", Path("/data"), "generate.params.folder.path must be a string, a number, a "
                                                   "boolean, a list or a table; got PosixPath('/data')"),
    # the schema's ranges apply to typed values as to --set ones
    ("run.seed", -1, "run.seed must be an integer >= 0"),
    ("run.jpeg_quality", 0, "run.jpeg_quality must be an integer from 1 to 100"),
])
def test_a_typed_value_of_the_wrong_type_is_a_config_error_naming_the_key(key, value, message):
    with pytest.raises(ConfigError) as caught:
        load_config(values={key: value})
    assert message in str(caught.value)


def test_typed_values_win_over_set_and_none_is_not_given():
    config = load_config(None, ["run.seed=5", "run.degraded=4"], values={"run.seed": 7, "run.degraded": None})
    assert config["run"]["seed"] == 7 and config["run"]["degraded"] == 4


def test_a_typed_value_is_stored_as_given_without_any_formatting():
    path = "/tmp/a \"quoted\" 'dir'\\with=sign"
    config = load_config(values={"generate.params.folder.path": path})
    assert config["generate"]["params"]["folder"] == {"path": path, "grouping": "auto"}
    assert tomllib.loads(to_toml(config)) == config  # and it survives the build's config.toml


def test_config_with_returns_a_validated_copy():
    base = load_config()
    changed = config_with(base, {"run.seed": 2, "models.params.mtcnn": {"min_face_size": 30}})
    assert changed["run"]["seed"] == 2 and base["run"]["seed"] == 0
    assert changed["models"]["params"] == {"mtcnn": {"min_face_size": 30}}
    with pytest.raises(ConfigError, match="run.batch_size must be an integer >= 1"):
        config_with(base, {"run.batch_size": 0})


# ------------------------------------------------------------ what the schema now refuses (found broken)

def test_a_toml_date_in_a_params_table_is_refused():
    # before: accepted, then fingerprint() raised "Object of type date is not JSON serializable"
    with pytest.raises(ConfigError, match=r"degrade.params.jpeg.when must be a string, a number, a boolean"):
        load_config(None, ["degrade.params.jpeg.when=1979-05-27"])


def test_setting_a_whole_section_merges_its_keys():
    # before: --set 'run={seed=1}' replaced the section, and every other run key was "got None"
    config = load_config(None, ["run={seed=1, degraded=3}"])
    assert config["run"] == {**default_config()["run"], "seed": 1, "degraded": 3}
    with pytest.raises(ConfigError, match="unknown config key 'run.sed'"):
        load_config(None, ["run={sed=1}"])


def test_a_config_made_in_code_is_checked_for_keys_the_schema_lacks():
    from synfiqa.config import config_problems

    config = default_config()
    config["run"]["seeds"] = 1
    config["extra"] = {}
    assert config_problems(config) == ["unknown config key 'run.seeds'; did you mean 'seed'?",
                                       "unknown config key 'extra'"]


# ------------------------------------------------------------ the CLI's typed options

@pytest.fixture
def captured_builds(monkeypatch):
    """`synfiqa build` up to the config: the config it would build with, per call."""
    import synfiqa.stages.build

    configs = []
    monkeypatch.setattr(synfiqa.stages.build, "build", lambda config, out, **_: configs.append(config) or {})  # build returns its summary
    return configs


def test_seed_option_and_set_give_the_same_config(tmp_path, captured_builds):
    assert run("build", "--out", tmp_path / "a", "--seed", "3")[0] == 0
    assert run("build", "--out", tmp_path / "b", "--set", "run.seed=3")[0] == 0
    by_option, by_set = captured_builds
    assert by_option == by_set and by_option["run"]["seed"] == 3
    assert fingerprint(by_option) == fingerprint(by_set)


def test_typed_options_are_checked_by_the_schema(tmp_path, captured_builds, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, output = run("build", "--out", tmp_path / "o", "--seed", "-1")
    assert code == 2 and output.startswith("Error: run.seed must be an integer >= 0") and output.count("\n") == 1
    code, output = run("build", "--out", tmp_path / "o", "--seed", "x")
    assert code == 2 and "'x' is not a valid integer" in output
    code, output = run("build", "--out", tmp_path / "o", "--device", "tpu")
    assert code == 2 and "run.device must be one of auto" in output
    assert run("build", "--out", tmp_path / "o", "--device", "cpu")[0] == 0
    assert captured_builds[-1]["run"]["device"] == "cpu"
    assert not (tmp_path / "o").exists()


def awkward_input(tmp_path) -> Path:
    """A folder of the test photos whose name has quotes, spaces, a backslash and an `=`."""
    folder = tmp_path / "in put" / "it's a \"folder\" \\ with=sign"
    folder.mkdir(parents=True)
    for photo in sorted(FACES.glob("*.jpg")):
        shutil.copy(photo, folder / photo.name)
    return folder


def test_input_sets_the_folder_path_as_given(tmp_path, captured_builds):
    folder = awkward_input(tmp_path)
    code, output = run("build", "--out", tmp_path / "out", "--input", folder)
    assert code == 0, output
    assert captured_builds[0]["generate"]["params"]["folder"]["path"] == str(folder.resolve())
    for wrong in (tmp_path / "missing", folder / "obama_1.jpg"):
        code, output = run("build", "--out", tmp_path / "out", "--input", wrong)
        assert code == 2 and "does not exist or is not a folder" in output and output.count("\n") == 1


@pytest.mark.slow
def test_a_build_from_an_awkwardly_named_input_folder(tmp_path):
    folder = awkward_input(tmp_path)
    out = tmp_path / "out"
    code, output = run("build", "--out", out, "--input", folder, "--set", "run.degraded=2", "--no-progress")
    assert code == 0, output
    recorded = tomllib.loads((out / "config.toml").read_text())
    assert recorded["generate"]["params"]["folder"]["path"] == str(folder.resolve())
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    references = {row["identity"] for row in rows if row.get("role") == "reference"}
    assert references == {"ardern", "macron", "obama", "sunak"}
    assert sum(row.get("role") == "degraded" for row in rows) == 2 * len(references)


# ------------------------------------------------------------ config show --schema

def test_config_show_schema_lists_every_key_with_type_default_range_and_help():
    code, output = run("config", "show", "--schema")
    assert code == 0, output
    assert "run.seed = 0\n    type: int   allowed: >= 0\n    the run seed" in output
    assert "run.jpeg_quality = 95\n    type: int   allowed: 1..100\n" in output
    assert 'run.device = "auto"\n    type: str   allowed: auto | cpu | cuda | cuda:N\n' in output
    for row in schema_rows():
        assert f"{row['key']} = {row['default']}\n" in output and row["help"] in output
    code, output = run("config", "show", "--schema", "--set", "run.seed=1")
    assert code == 2 and "takes no --config, --set or --preset" in output


def test_config_show_still_prints_the_resolved_toml():
    code, output = run("config", "show")
    assert code == 0 and tomllib.loads(output) == default_config()
