"""One TOML pipeline config: the shipped default, a user file on top, then `--set` overrides.

Keys outside `params` tables must exist in the default config (a typo is an error
with a suggestion); values keep the default's type.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path

import tomli_w

from synfiqa.errors import ConfigError

FREE_FORM_TABLES = {"params"}  # component parameters: checked by the component itself


def default_config() -> dict:
    text = resources.files("synfiqa").joinpath("default_config.toml").read_text()
    return tomllib.loads(text)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    config = default_config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            user = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
        merge(config, user, default_config())
    for override in overrides:
        key, value = parse_override(override)
        set_key(config, key, value)
    return config


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: --set models.embedder=dlib-resnet
    return key, value


def set_key(config: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node, schema = config, default_config()
    free = False
    for depth, part in enumerate(parts[:-1]):
        free = free or part in FREE_FORM_TABLES
        if not free:
            _check_known(part, schema, ".".join(parts[: depth + 1]))
            schema = schema[part]
            if not isinstance(schema, dict):
                raise ConfigError(f"config key {'.'.join(parts[:depth + 1])!r} is a value, not a table")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parts[:depth + 1])!r} is a value, not a table")
    last = parts[-1]
    if not free and parts[-1] not in FREE_FORM_TABLES:
        _check_known(last, schema, dotted)
        value = _coerce(schema[last], value, dotted)
    node[last] = value


def merge(config: dict, user: dict, schema: dict | None, prefix: str = "") -> None:
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if schema is not None and key not in FREE_FORM_TABLES:
            _check_known(key, schema, dotted)
            expected = schema[key]
        else:
            expected = None
        child_schema = None if (schema is None or key in FREE_FORM_TABLES) else expected
        if isinstance(value, dict):
            target = config.setdefault(key, {})
            merge(target, value, child_schema if isinstance(child_schema, dict) else None, f"{dotted}.")
        else:
            config[key] = _coerce(expected, value, dotted) if expected is not None else value


def _check_known(key: str, schema: dict, dotted: str) -> None:
    if key not in schema:
        close = difflib.get_close_matches(key, list(schema), n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown config key {dotted!r}{hint}")


def _coerce(expected, value, dotted: str):
    if expected is None:
        return value
    if isinstance(expected, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(expected, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(expected, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(expected, str) and isinstance(value, str):
        return value
    elif isinstance(expected, list) and isinstance(value, list):
        return value
    elif isinstance(expected, dict) and isinstance(value, dict):
        return value
    raise ConfigError(
        f"config key {dotted!r} must be a {type(expected).__name__}, got {value!r}"
    )


def component_params(config: dict, section: str, name: str) -> dict:
    return copy.deepcopy(config.get(section, {}).get("params", {}).get(name, {}))


def to_toml(config: dict) -> str:
    return tomli_w.dumps(config)


def fingerprint(config: dict) -> str:
    """A hash of everything that changes a build's output."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
