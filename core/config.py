"""One TOML pipeline config: the shipped default, a user file on top, then `--set` overrides.

Keys outside `params` tables must exist in the default config (a typo is an error
with a suggestion); values keep the default's type. The config is then checked as a
whole (`validate_config`): ranges, lists, the device, and, given the registry, every
component name and parameter. Every problem found is reported in one ConfigError, so a
user fixes them all in one go, before anything is written.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import inspect
import json
import re
import tomllib
from importlib import resources
from pathlib import Path

import tomli_w

from synfiqa.errors import ConfigError, PluginError

FREE_FORM_TABLES = {"params"}  # component parameters: checked by the component itself

# run.device and every component's `device` parameter. MPS and other torch devices are not
# offered: synfiqa's compiled ops and its models are built and tested for CPU and CUDA only.
DEVICE_FORMS = 'auto (CUDA when visible, else CPU), cpu, cuda, cuda:N (N = 0, 1, ...)'
_DEVICE = re.compile(r"(auto|cpu|cuda(:(0|[1-9][0-9]*))?)\Z")

# run.image_size: the side of the aligned crops. The annotator and embedder contracts
# (synfiqa.annotation, synfiqa.models) hand identity-scope annotators uint8 [N, 3, 112, 112]
# crops, and the shipped embedders refuse any other size (SFace, ArcFace ONNX, CR-FIQA,
# AdaFace); so with such an annotator in annotate.chain the size is 112. Without one, any
# size in [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE] builds: below 11 px blur-downscale's 21-tap
# kernel cannot pad the crop, 0 makes a singular alignment; 16 keeps a margin, 1024 is a
# bound against typos (a 64-crop batch of 1024x1024 is already 800 MB of float32).
CROP_SIZE = 112
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024
CROP_ANNOTATORS = ("fr", "vl")  # the built-in identity-scope annotators, known without a registry

# run.jpeg_quality: the libjpeg quality every reference and degraded sample is stored at.
# 0 is accepted by Pillow and turns every crop into a block mosaic; below libjpeg's own
# default (75) the storage itself degrades the references, which no score accounts for.
JPEG_QUALITY_RANGE = (1, 100)
LOW_JPEG_QUALITY = 75

CHAIN_KEYS = (("degrade", "chain", "degradation"), ("filter", "chain", "filter"),
              ("annotate", "chain", "annotator"), ("annotate", "optional", "annotator"))
MODEL_KEYS = {"detector": "detector", "embedder": "embedder", "pose": "pose",
              "vision_language": "vision-language"}
_PARAMS_KIND = {"generate": "generator", "filter": "filter", "degrade": "degradation", "annotate": "annotator"}


def default_config() -> dict:
    text = resources.files("synfiqa").joinpath("default_config.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def read_config_file(path: str | Path) -> dict:
    """The TOML table of a user's config file; a file that cannot be used is one line naming it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder, not a TOML file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8-sig")  # TOML is UTF-8; a leading byte-order mark is tolerated
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte 0x{data[error.start]:02x} on line "
                          f"{line}); TOML files are UTF-8: save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                registry=None) -> dict:
    """Defaults, then the file at `path`, then each `section.key=value` override; then the
    whole config is validated (with `registry`, component names and parameters too). Every
    problem, of the file's keys, the overrides and the values, is in the one ConfigError."""
    config = default_config()
    problems: list[str] = []
    if path is not None:
        merge(config, read_config_file(path), default_config(), problems=problems)
    for override in overrides:
        try:
            key, value = parse_override(override)
            set_key(config, key, value)
        except ConfigError as error:
            problems.append(str(error))
    problems += config_problems(config, registry)
    raise_problems(problems)
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


def merge(config: dict, user: dict, schema: dict | None, prefix: str = "", problems: list[str] | None = None) -> None:
    """Merges `user` into `config`. With `problems`, a bad key is appended there and the rest
    is merged; without, the first bad key raises."""
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        try:
            if schema is not None and key not in FREE_FORM_TABLES:
                _check_known(key, schema, dotted)
                expected = schema[key]
            else:
                expected = None
            child_schema = None if (schema is None or key in FREE_FORM_TABLES) else expected
            if isinstance(value, dict):
                if expected is not None and not isinstance(expected, dict):
                    raise ConfigError(f"config key {dotted!r} is a value, not a table")
                target = config.setdefault(key, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"config key {dotted!r} is a value, not a table")
                merge(target, value, child_schema if isinstance(child_schema, dict) else None, f"{dotted}.",
                      problems)
            else:
                config[key] = _coerce(expected, value, dotted) if expected is not None else value
        except ConfigError as error:
            if problems is None:
                raise
            problems.append(str(error))


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


# ---------------------------------------------------------------- validation of the whole config


def validate_config(config: dict, registry=None) -> None:
    """Raises one ConfigError naming every problem of `config` (see `config_problems`)."""
    raise_problems(config_problems(config, registry))


def raise_problems(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"the config has {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems))


def device_problem(device) -> str | None:
    """None when `device` is a device form synfiqa runs on and this machine has it; else why not
    (to follow the key or option it came from)."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        return f"must be one of {DEVICE_FORMS}; got {device!r}"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return (f"is {device!r} but no CUDA device is visible (torch.cuda.is_available() is False); "
                    f"use \"cpu\" or \"auto\"")
        if ":" in device:
            count = torch.cuda.device_count()
            if int(device.split(":")[1]) >= count:
                return f"is {device!r} but only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})"
    return None


def config_problems(config: dict, registry=None) -> list[str]:
    """Every problem of the config as a whole, one line each. Without `registry`: types,
    ranges, lists, the device and the crop size. With it, also every component name (with the
    registry's did-you-mean) and the parameter names of every component the config uses."""
    problems: list[str] = []
    run = config.get("run", {})

    def integer(key: str, low: int, high: int | None, what: str) -> int | None:
        value = run.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high):
            return value
        allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        problems.append(f"run.{key} must be {allowed} ({what}); got {value!r}")
        return None

    integer("seed", 0, None, "the run seed")
    integer("references", 1, None, "references per identity")
    integer("degraded", 1, None, "degraded samples per identity")
    integer("batch_size", 1, None, "crops per batch")
    integer("jpeg_quality", *JPEG_QUALITY_RANGE, "the libjpeg quality every image is stored at")
    problem = device_problem(run.get("device"))
    if problem:
        problems.append(f"run.device {problem}")

    chains = {}  # (section, key) -> (kind, names), for the lists that are lists of names
    for section, key, kind in CHAIN_KEYS:
        value = config.get(section, {}).get(key)
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            problems.append(f"{section}.{key} must be a list of {kind} names (strings); got {value!r}")
            continue
        twice = sorted({name for name in value if value.count(name) > 1})
        if twice:
            problems.append(f"{section}.{key} names {', '.join(repr(n) for n in twice)} more than once; "
                            f"each {kind} may appear once")
        chains[(section, key)] = (kind, value)

    annotators = chains.get(("annotate", "chain"), (None, []))[1]
    crop_annotators = [n for n in annotators if n in CROP_ANNOTATORS or
                       (registry is not None and _scope(registry, n) == "identity")]
    size = run.get("image_size")
    if crop_annotators:
        if size != CROP_SIZE or isinstance(size, bool):
            problems.append(f"run.image_size must be {CROP_SIZE} while annotate.chain holds "
                            f"{', '.join(repr(n) for n in crop_annotators)} (annotators and embedders take "
                            f"{CROP_SIZE}x{CROP_SIZE} ArcFace-aligned crops); got {size!r}")
    else:
        integer("image_size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, "the side of the aligned crops")

    for section in ("generate", "models", "filter", "degrade", "annotate"):
        params = config.get(section, {}).get("params", {})
        if not isinstance(params, dict):
            problems.append(f"{section}.params must be a table of component tables; got {params!r}")
            continue
        for name, table in params.items():
            if not isinstance(table, dict):
                problems.append(f"{section}.params.{name} must be a table of {name}'s parameters; got {table!r}")
            elif "device" in table and device_problem(table["device"]):
                problems.append(f"{section}.params.{name}.device {device_problem(table['device'])}")
    if registry is not None:
        problems += _registry_problems(config, registry, chains)
    return problems


def config_warnings(config: dict) -> list[str]:
    """Legal but probably unintended values, one line each (the CLI prints them; nothing stops)."""
    warnings = []
    quality = config.get("run", {}).get("jpeg_quality")
    if isinstance(quality, int) and JPEG_QUALITY_RANGE[0] <= quality < LOW_JPEG_QUALITY:
        warnings.append(f"run.jpeg_quality = {quality} stores every reference and degraded sample with heavy "
                        f"JPEG loss (below libjpeg's default {LOW_JPEG_QUALITY}) that no score accounts for; "
                        "the jpeg degradation is the way to degrade by compression")
    return warnings


def _registry_problems(config: dict, registry, chains: dict) -> list[str]:
    problems = []

    def lookup(key: str, kind: str, name):
        try:
            return registry.get(kind, name)
        except PluginError as error:
            problems.append(f"{key}: {error}")
            return None

    used: dict[tuple[str, str], object] = {}  # (section, name) -> the component whose params that table holds
    generator = config.get("generate", {}).get("generator")
    if not isinstance(generator, str):
        problems.append(f"generate.generator must be a generator name; got {generator!r}")
    else:
        used[("generate", generator)] = lookup("generate.generator", "generator", generator)
    for (section, key), (kind, names) in chains.items():
        for name in names:
            component = lookup(f"{section}.{key}", kind, name)
            if key == "chain":
                used[(section, name)] = component
    for key, kind in MODEL_KEYS.items():
        name = config.get("models", {}).get(key)
        if not isinstance(name, str):
            problems.append(f"models.{key} must be a {kind} model name; got {name!r}")
            continue
        used[("models", name)] = lookup(f"models.{key}", kind, name)

    for section in ("generate", "models", "filter", "degrade", "annotate"):
        params = config.get(section, {}).get("params", {})
        if not isinstance(params, dict):
            continue
        for name, table in params.items():
            if not isinstance(table, dict):
                continue
            if (section, name) in used:
                component = used[(section, name)]
                if component is not None:
                    try:
                        inspect.signature(component.factory).bind(**{**component.defaults, **table})
                    except TypeError as error:
                        problems.append(f"{section}.params.{name}: bad parameters for {component.kind} "
                                        f"{name!r}: {error}")
                continue
            # a table for a component the config does not use: harmless, unless no such component
            # exists (a misspelt name, whose parameters would silently go unused)
            if section != "models":
                if not _exists(registry, _PARAMS_KIND[section], name):
                    lookup(f"{section}.params.{name}", _PARAMS_KIND[section], name)
            elif not any(_exists(registry, kind, name) for kind in MODEL_KEYS.values()):
                known = sorted({n for kind in MODEL_KEYS.values() for n in registry.names(kind)})
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                problems.append(f"models.params.{name}: no model named {name!r}.{hint} Known: {', '.join(known)}.")
    return problems


def _exists(registry, kind: str, name: str) -> bool:
    try:
        registry.get(kind, name)
        return True
    except PluginError:
        return False


def _scope(registry, name: str) -> str | None:
    try:
        return getattr(registry.get("annotator", name).factory, "scope", None)
    except PluginError:
        return None


def component_params(config: dict, section: str, name: str) -> dict:
    return copy.deepcopy(config.get(section, {}).get("params", {}).get(name, {}))


def to_toml(config: dict) -> str:
    return tomli_w.dumps(config)


def fingerprint(config: dict) -> str:
    """A hash of everything that changes a build's output."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
