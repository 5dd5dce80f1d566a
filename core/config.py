"""The typed pipeline config.

`SCHEMA` below declares every section and key once: its type, default, allowed values and a
one-line help. The shipped default_config.toml holds the same defaults for people to read (a
test keeps the two equal). A config is the defaults, then a user's TOML file, then `--set
KEY=VALUE` overrides (TOML text, from users), then typed `values` (Python values, from code
such as the CLI's options: no text round trip). It is then validated once, as a whole: every
key against its schema entry (type, range, choices), the cross-key rules (the crop size and
the annotate chain), and, given the registry, every component name and parameter. Every
problem found is in one ConfigError, so a user fixes them all in one go, before anything is
written. The result is a plain nested dict: what `fingerprint` hashes and a build records.

The `params` tables (`generate.params`, `models.params`, ...) are free-form: one table of
parameters per component, checked against that component (with the registry) and otherwise
only for being plain TOML values.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from synfiqa.errors import ConfigError, PluginError

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


# ---------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Key:
    """One config key. `type` is int, float, bool, str, list (a list of names) or dict (a
    free-form `params` table: one table of parameters per component). `low`/`high` bound an
    int; `choices` says in words what a str may be and `check` (value -> why not, or None)
    decides it, its type included; `kind` is the component kind a str or list names
    (checked with the registry) or whose parameters a params table holds."""

    name: str  # dotted: "run.seed"
    type: type
    default: object
    help: str
    low: int | None = None
    high: int | None = None
    choices: str = ""
    check: Callable[[object], str | None] | None = None
    kind: str = ""

    @property
    def section(self) -> str:
        return self.name.split(".")[0]

    @property
    def leaf(self) -> str:
        return self.name.split(".")[1]

    @property
    def free(self) -> bool:
        return self.type is dict

    @property
    def type_name(self) -> str:
        return {list: "list[str]", dict: "table"}.get(self.type, self.type.__name__)

    @property
    def allowed(self) -> str:
        """The allowed values in words (`synfiqa config show --schema`)."""
        if self.low is not None and self.high is not None:
            return f"{self.low}..{self.high}"
        if self.low is not None:
            return f">= {self.low}"
        if self.high is not None:
            return f"<= {self.high}"
        if self.choices:
            return self.choices
        if self.free:
            return f"{{<{self.kind} name> = {{<parameter> = <value>}}}}"
        if self.type is list:
            return f"{self.kind} names, each once"
        if self.kind:
            return f"a registered {self.kind} name"
        return ""

    @property
    def expected(self) -> str:
        """What a value must be, for messages: '{name} must be {expected}; got ...'."""
        if self.type is int:
            bounds = (f" from {self.low} to {self.high}" if self.low is not None and self.high is not None else
                      f" >= {self.low}" if self.low is not None else f" <= {self.high}" if self.high is not None else "")
            return f"an integer{bounds} ({self.help})"
        if self.free:
            return "a table of component tables"
        if self.type is list:
            return f"a list of {self.kind} names (strings)"
        if self.kind:
            return f"a registered {self.kind} name"
        return f"a {self.type.__name__}"

    def problems(self, value) -> list[str]:
        """This key's own problems with `value` (the cross-key rules are separate)."""
        if self.free:
            return _params_problems(self.name, value)
        if self.check is not None:  # it decides the type too
            problem = self.check(value)
            return [f"{self.name} {problem}"] if problem else []
        if not _has_type(self.type, value) or (self.type is list and not all(isinstance(v, str) for v in value)) \
                or (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return [f"{self.name} must be {self.expected}; got {value!r}"]
        if self.type is list:
            twice = sorted({name for name in value if value.count(name) > 1})
            if twice:
                return [f"{self.name} names {', '.join(repr(n) for n in twice)} more than once; "
                        f"each {self.kind} may appear once"]
        return []


DEGRADE_ON = ("detector-crop", "aligned-crop")


def _choice_check(choices: tuple[str, ...]) -> Callable[[object], str | None]:
    """A `check` for a str key that must be one of `choices`."""
    def problem(value) -> str | None:
        return None if value in choices else f"must be one of {' | '.join(choices)}; got {value!r}"
    return problem


# The faithful switches (docs/method.md#11-conventions-the-original-and-synfiqa): each first
# value is synfiqa's default, the value after it the original's.
JPEG_SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")  # as synfiqa.images, which stays free of config
ALIGNMENTS = ("landmarks-to-template", "template-to-landmarks")
LABEL_ORDERS = ("by-path", "original-bug")


def _degrade_on_problem(value) -> str | None:
    if value not in DEGRADE_ON:
        return f"must be one of {' | '.join(DEGRADE_ON)}; got {value!r}"
    return None


def _bank_problem(value) -> str | None:
    if not isinstance(value, str) or not value:
        return f"must be \"synthetic\" or the path of a DICT_DECA_DEG_REF.json file; got {value!r}"
    if value != "synthetic" and not Path(value).expanduser().is_file():
        return f"names no file: {value!r} (\"synthetic\" or the path of a DICT_DECA_DEG_REF.json file)"
    return None


SCHEMA: tuple[Key, ...] = (
    Key("run.seed", int, 0, "the run seed; every random draw of a run derives from it", low=0),
    Key("run.references", int, 10, "references per identity, at most as many as it has photos", low=1),
    Key("run.degraded", int, 20, "degraded samples per identity; the paper uses 100", low=1),
    Key("run.batch_size", int, 64, "crops per batch", low=1),
    Key("run.device", str, "auto", "what every model runs on; a models.params table may set its own",
        choices="auto | cpu | cuda | cuda:N", check=device_problem),
    Key("run.image_size", int, CROP_SIZE, f"the side of the aligned crops; {CROP_SIZE} while annotate.chain "
        "holds an identity-scope annotator (fr, vl)", low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE),
    Key("run.jpeg_quality", int, 95, f"the libjpeg quality every image is stored at; below {LOW_JPEG_QUALITY} "
        "warns", low=JPEG_QUALITY_RANGE[0], high=JPEG_QUALITY_RANGE[1]),
    Key("run.jpeg_subsampling", str, "4:4:4", "the chroma subsampling every image is stored with; the "
        "original's Pillow default is quality 75 with 4:2:0", choices=" | ".join(JPEG_SUBSAMPLINGS),
        check=_choice_check(JPEG_SUBSAMPLINGS)),
    Key("run.alignment", str, "landmarks-to-template", "how the similarity to the ArcFace template is "
        "solved: least squares from the landmarks to the template, or the original's fit from the "
        "template to the landmarks, inverted (crops 1.5-4 % larger)", choices=" | ".join(ALIGNMENTS),
        check=_choice_check(ALIGNMENTS)),
    Key("generate.generator", str, "folder", "the generator of the identities", kind="generator"),
    Key("generate.params", dict, {"folder": {"path": "", "grouping": "auto"}},
        "each generator's parameters; folder.path empty: the embedded demo photos", kind="generator"),
    Key("filter.chain", list, [], "identity filters, in order; the paper's stage 1 is yaw, glasses, "
        "expression, uniqueness", kind="filter"),
    Key("filter.params", dict, {}, "each filter's parameters", kind="filter"),
    Key("stage2.backend", str, "folder", "the Stage-2 backend that makes each identity's references and "
        "samples (folder: its own photos, disjoint; echo: its photo warped to the planned pose)",
        kind="stage2-backend"),
    Key("stage2.params", dict, {}, "each Stage-2 backend's parameters", kind="stage2-backend"),
    Key("stage2.bank", str, "synthetic", "where the plan's specs come from: \"synthetic\" (the built-in bank, "
        "docs/plan.md) or the path of MR-FIQA's DICT_DECA_DEG_REF.json", check=_bank_problem),
    Key("stage2.faithful", bool, False, "reproduce the original's prompt-list bug (only degraded samples "
        "D-R..D-1 get scene prompts)"),
    Key("stage2.degrade_on", str, "detector-crop", "what a degraded sample's degradations see: the detector's "
        "square crop, aligned afterwards (the original), or the aligned crop",
        choices="detector-crop | aligned-crop", check=_degrade_on_problem),
    Key("models.detector", str, "mtcnn", "the face detector", kind="detector"),
    Key("models.embedder", str, "sface", "the face embedder", kind="embedder"),
    Key("models.pose", str, "dlib68-pnp", "the head-pose model", kind="pose"),
    Key("models.vision_language", str, "blip-itc", "the vision-language model", kind="vision-language"),
    Key("models.params", dict, {}, "each model's parameters", kind="model"),
    Key("degrade.chain", list, ["blur-downscale"], "degradations applied in order to every degraded sample",
        kind="degradation"),
    Key("degrade.params", dict, {}, "each degradation's parameters", kind="degradation"),
    Key("annotate.chain", list, ["fr", "sd", "vl", "mr"], "the annotators, in order", kind="annotator"),
    Key("annotate.optional", list, ["vl"], "annotators allowed to be unavailable (missing weights); the "
        "scores are then marked partial", kind="annotator"),
    Key("annotate.label_order", str, "by-path", "how Quality-Scores.txt pairs scores with paths: each "
        "sample's own score, or the original's bug (scores in generation order written against paths in "
        "natural order: labels shift across identities when the two orders differ)",
        choices=" | ".join(LABEL_ORDERS), check=_choice_check(LABEL_ORDERS)),
    Key("annotate.params", dict, {"mr": {"lam": 0.5}}, "each annotator's parameters", kind="annotator"),
)
KEYS: dict[str, Key] = {key.name: key for key in SCHEMA}
SECTIONS: dict[str, dict[str, Key]] = {}
for _key in SCHEMA:
    SECTIONS.setdefault(_key.section, {})[_key.leaf] = _key
del _key
MODEL_KINDS = tuple(key.kind for key in SECTIONS["models"].values() if key.type is str)


def default_config() -> dict:
    """The schema's defaults, as a config (in the schema's order, which is the shipped TOML's)."""
    return {section: {leaf: copy.deepcopy(key.default) for leaf, key in keys.items()}
            for section, keys in SECTIONS.items()}


def schema_rows() -> list[dict]:
    """Every key with its type, default (as TOML), allowed values and help."""
    return [{"key": key.name, "type": key.type_name, "default": _inline_toml(key.default),
             "allowed": key.allowed, "help": key.help} for key in SCHEMA]


def schema_text() -> str:
    """The schema for people (`synfiqa config show --schema`): per key, `name = default`, then
    its type and allowed values, then its help."""
    blocks = []
    for row in schema_rows():
        allowed = f"   allowed: {row['allowed']}" if row["allowed"] else ""
        blocks.append(f"{row['key']} = {row['default']}\n    type: {row['type']}{allowed}\n    {row['help']}\n")
    return "\n".join(blocks)


def _inline_toml(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_inline_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline_toml(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


# ---------------------------------------------------------------- building a config


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


# Presets: TOML layers shipped with synfiqa (core/presets/<name>.toml), applied over the
# defaults and under a user's file and overrides. `paper` is the MR-FIQA paper's configuration.
PRESETS = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS.glob("*.toml"))


def read_preset(name: str) -> dict:
    """The TOML table of a shipped preset; an unknown name is one line listing the known ones."""
    if name not in preset_names():
        close = difflib.get_close_matches(name, preset_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint} (presets: {', '.join(preset_names())})")
    return tomllib.loads((PRESETS / f"{name}.toml").read_text(encoding="utf-8"))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), registry=None,
                *, values: Mapping[str, object] | None = None, preset: str | None = None) -> dict:
    """The validated config: the defaults, then the shipped `preset` (a name, see
    `preset_names`), then the file at `path`, then each `section.key=value` override (TOML
    text, as users type it), then `values`, {dotted key: Python value} from code (a CLI
    option's value, already typed: checked against the key's type, never formatted as text;
    None means "not given" and is skipped). Then the whole config is validated (with
    `registry`, component names and parameters too). Every problem, of the preset's, the
    file's keys, the overrides, the values and the config as a whole, is in the one ConfigError."""
    config = default_config()
    problems: list[str] = []
    if preset is not None:
        merge(config, read_preset(preset), problems=problems)
    if path is not None:
        merge(config, read_config_file(path), problems=problems)
    for override in overrides:
        try:
            key, value = parse_override(override)
        except ConfigError as error:
            problems.append(str(error))
            continue
        set_key(config, key, value, problems)
    _set_values(config, values or {}, problems)
    problems += config_problems(config, registry)
    raise_problems(problems)
    return config


def config_with(config: dict, values: Mapping[str, object], registry=None) -> dict:
    """A validated copy of `config` with typed `values` set, as `load_config(values=...)` sets them."""
    config = copy.deepcopy(config)
    problems: list[str] = []
    _set_values(config, values, problems)
    problems += config_problems(config, registry)
    raise_problems(problems)
    return config


def _set_values(config: dict, values: Mapping[str, object], problems: list[str]) -> None:
    for key, value in values.items():
        if value is not None:
            set_key(config, key, copy.deepcopy(value), problems)


def parse_override(text: str) -> tuple[str, object]:
    """`section.key=value`: the value is TOML (a bare word is a string)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: --set models.embedder=dlib-resnet
    return key, value


def set_key(config: dict, dotted: str, value, problems: list[str] | None = None) -> None:
    """Sets one dotted key to `value`, checked against the schema: a schema key's value must be
    of its type; a section takes a table of its keys (merged, each checked); inside a params
    table any TOML value goes (the component checks it). A bad key or value raises, or with
    `problems`, is appended there."""
    try:
        _set_key(config, dotted, value, problems)
    except ConfigError as error:
        if problems is None:
            raise
        problems.append(str(error))


def _set_key(config: dict, dotted: str, value, problems: list[str] | None) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"config key {dotted!r} is not a dotted key such as run.seed")
    section = parts[0]
    _check_known(section, SECTIONS, section)
    if not isinstance(config.get(section), dict):
        config[section] = {}
    if len(parts) == 1:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {dotted!r} is a table of keys, not a value")
        merge(config[section], value, SECTIONS[section], f"{section}.", problems)
        return
    key = _check_known(parts[1], SECTIONS[section], ".".join(parts[:2]))
    if not key.free:
        if len(parts) > 2:
            raise ConfigError(f"config key {key.name!r} is a value, not a table")
        if isinstance(value, dict):
            raise ConfigError(f"config key {dotted!r} is a value, not a table")
        config[section][key.leaf] = _coerce(key, value, dotted)
        return
    node = config[section]  # inside a params table: free-form
    for depth, part in enumerate(parts[1:-1], start=2):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(parts[:depth])!r} is a value, not a table")
        node = child
    node[parts[-1]] = value


def merge(config: dict, user: dict, schema: dict | None = SECTIONS, prefix: str = "",
          problems: list[str] | None = None) -> None:
    """Merges `user` (a TOML table) into `config`, each key checked against `schema` (a table of
    sections or of Keys; None inside a params table). With `problems`, a bad key is appended
    there and the rest is merged; without, the first bad key raises."""
    for name, value in user.items():
        dotted = f"{prefix}{name}"
        try:
            node = None if schema is None else _check_known(name, schema, dotted)
            if node is None or (isinstance(node, Key) and node.free):
                if isinstance(value, dict) and isinstance(config.get(name), dict):
                    merge(config[name], value, None, f"{dotted}.", problems)
                else:
                    config[name] = value
            elif isinstance(node, dict):  # a section
                if not isinstance(value, dict):
                    raise ConfigError(f"config key {dotted!r} is a table of keys, not a value")
                if not isinstance(config.get(name), dict):
                    config[name] = {}
                merge(config[name], value, node, f"{dotted}.", problems)
            elif isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} is a value, not a table")
            else:
                config[name] = _coerce(node, value, dotted)
        except ConfigError as error:
            if problems is None:
                raise
            problems.append(str(error))


def _check_known(key: str, schema: dict, dotted: str):
    if key not in schema:
        close = difflib.get_close_matches(key, list(schema), n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown config key {dotted!r}{hint}")
    return schema[key]


def _has_type(expected: type, value) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, expected)


def _coerce(key: Key, value, dotted: str):
    """`value` as `key`'s type (an int for a float key becomes a float), or a ConfigError naming the key."""
    if not _has_type(key.type, value):
        raise ConfigError(f"config key {dotted!r} must be a {key.type.__name__}, got {value!r}")
    return float(value) if key.type is float else value


# ---------------------------------------------------------------- validation of the whole config


def validate_config(config: dict, registry=None) -> None:
    """Raises one ConfigError naming every problem of `config` (see `config_problems`)."""
    raise_problems(config_problems(config, registry))


def raise_problems(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"the config has {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems))


def get_key(config: dict, dotted: str, default=None):
    """The value at a dotted key, or `default` where the config lacks it."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def config_problems(config: dict, registry=None) -> list[str]:
    """Every problem of the config as a whole, one line each: keys the schema lacks, each key's
    own problems (type, range, choices, lists of unique names, params tables, devices), then
    the cross-key rules (a rule's verdict on a key replaces the key's own). With `registry`,
    also every component name (with the registry's did-you-mean) and the parameter names of
    every component the config uses."""
    problems = _unknown_keys(config)
    by_key = {key.name: key.problems(get_key(config, key.name)) for key in SCHEMA}
    for rule in CROSS_KEY_RULES:
        by_key.update(rule(config, registry))
    problems += [problem for found in by_key.values() for problem in found]
    if registry is not None:
        problems += _registry_problems(config, registry)
    return problems


def _unknown_keys(config: dict) -> list[str]:
    """Keys a config made in code has and the schema does not (a file's or an override's are
    refused when they are read)."""
    if not isinstance(config, dict):
        return [f"a config must be a table of sections; got {config!r}"]
    problems = []
    for section, table in config.items():
        try:
            keys = _check_known(section, SECTIONS, section)
        except ConfigError as error:
            problems.append(str(error))
            continue
        if not isinstance(table, dict):
            problems.append(f"config key {section!r} is a table of keys, not a value; got {table!r}")
            continue
        for name in table:
            try:
                _check_known(name, keys, f"{section}.{name}")
            except ConfigError as error:
                problems.append(str(error))
    return problems


def _names(config: dict, key: Key) -> list[str]:
    """The component names a name or list-of-names key holds, where it holds them well."""
    value = get_key(config, key.name)
    if key.type is list:
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else []
    return [value] if isinstance(value, str) else []


def _params_problems(name: str, params) -> list[str]:
    """A params table: one table of plain TOML values per component, any `device` a device."""
    if not isinstance(params, dict):
        return [f"{name} must be a table of component tables; got {params!r}"]
    problems = []
    for component, table in params.items():
        if not isinstance(table, dict):
            problems.append(f"{name}.{component} must be a table of {component}'s parameters; got {table!r}")
            continue
        problems += _plain_problems(f"{name}.{component}", table)
        if "device" in table and device_problem(table["device"]):
            problems.append(f"{name}.{component}.device {device_problem(table['device'])}")
    return problems


def _plain_problems(dotted: str, value) -> list[str]:
    """A value must be what TOML and the fingerprint's JSON both hold: a string, a number, a
    boolean, a list or a table of them (no TOML date, no Python object)."""
    if isinstance(value, dict):
        problems = []
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{dotted} has a key {key!r} that is not a string")
            else:
                problems += _plain_problems(f"{dotted}.{key}", item)
        return problems
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in _plain_problems(f"{dotted}[{index}]", item)]
    if isinstance(value, (str, bool, int, float)):
        return []
    return [f"{dotted} must be a string, a number, a boolean, a list or a table; got {value!r}"]


def _image_size_rule(config: dict, registry) -> dict[str, list[str]]:
    """run.image_size is 112 while annotate.chain holds an identity-scope annotator (the built-in
    fr and vl, and with the registry any plugin's); else the key's own range applies."""
    annotators = _names(config, KEYS["annotate.chain"])
    crop_annotators = [n for n in annotators if n in CROP_ANNOTATORS or
                       (registry is not None and _scope(registry, n) == "identity")]
    if not crop_annotators:
        return {}
    size = get_key(config, "run.image_size")
    if size == CROP_SIZE and not isinstance(size, bool):
        return {"run.image_size": []}
    return {"run.image_size": [f"run.image_size must be {CROP_SIZE} while annotate.chain holds "
                               f"{', '.join(repr(n) for n in crop_annotators)} (annotators and embedders take "
                               f"{CROP_SIZE}x{CROP_SIZE} ArcFace-aligned crops); got {size!r}"]}


def _faithful_prompts_rule(config: dict, registry) -> dict[str, list[str]]:
    """stage2.faithful reproduces the original's prompt lists, D reference prompts then D scene
    prompts for R + D samples: that needs R <= D."""
    references, degraded = get_key(config, "run.references"), get_key(config, "run.degraded")
    if get_key(config, "stage2.faithful") is not True or not all(_has_type(int, v) for v in (references, degraded)):
        return {}
    if references <= degraded:
        return {}
    return {"stage2.faithful": [f"stage2.faithful = true (the original's prompt lists) needs run.references <= "
                                f"run.degraded; got {references} references and {degraded} degraded samples"]}


# Rules between keys: (config, registry or None) -> {key: that key's problems}, replacing the
# key's own verdict.
CROSS_KEY_RULES: tuple[Callable[[dict, object], dict[str, list[str]]], ...] = (_image_size_rule, _faithful_prompts_rule)


def config_warnings(config: dict) -> list[str]:
    """Legal but probably unintended values, one line each (the CLI prints them; nothing stops)."""
    warnings = []
    quality = get_key(config, "run.jpeg_quality")
    if _has_type(int, quality) and JPEG_QUALITY_RANGE[0] <= quality < LOW_JPEG_QUALITY:
        warnings.append(f"run.jpeg_quality = {quality} stores every reference and degraded sample with heavy "
                        f"JPEG loss (below libjpeg's default {LOW_JPEG_QUALITY}) that no score accounts for; "
                        "the jpeg degradation is the way to degrade by compression")
    return warnings


def _registry_problems(config: dict, registry) -> list[str]:
    """Every component name the config gives must be registered, and the parameters of every
    component it uses must bind to that component's factory."""
    problems = []

    def lookup(key: str, kind: str, name):
        try:
            return registry.get(kind, name)
        except PluginError as error:
            problems.append(f"{key}: {error}")
            return None

    used: dict[tuple[str, str], object] = {}  # (section, name) -> the component whose params that table holds
    for key in SCHEMA:
        if key.kind and not key.free:
            for name in _names(config, key):
                component = lookup(key.name, key.kind, name)
                if key.leaf != "optional":  # an optional annotator is used only when also in the chain
                    used[(key.section, name)] = component

    for params_key in (key for key in SCHEMA if key.free):
        params = get_key(config, params_key.name)
        if not isinstance(params, dict):
            continue
        section = params_key.section
        for name, table in params.items():
            if not isinstance(table, dict):
                continue
            if (section, name) in used:
                component = used[(section, name)]
                if component is not None:
                    try:
                        component.check_params(table)
                    except TypeError as error:
                        problems.append(f"{section}.params.{name}: bad parameters for {component.kind} "
                                        f"{name!r}: {error}")
                continue
            # a table for a component the config does not use: harmless, unless no such component
            # exists (a misspelt name, whose parameters would silently go unused)
            if section != "models":
                if not _exists(registry, params_key.kind, name):
                    lookup(f"{section}.params.{name}", params_key.kind, name)
            elif not any(_exists(registry, kind, name) for kind in MODEL_KINDS):
                known = sorted({n for kind in MODEL_KINDS for n in registry.names(kind)})
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
        component = registry.get("annotator", name)
    except PluginError:
        return None
    if component.distribution == "synfiqa":  # CROP_ANNOTATORS knows the built-ins': nothing imported to ask
        return "identity" if name in CROP_ANNOTATORS else "dataset"
    from synfiqa.protocols import declared_scope  # imports torch

    return declared_scope(component.factory)


def component_params(config: dict, section: str, name: str) -> dict:
    return copy.deepcopy(config.get(section, {}).get("params", {}).get(name, {}))


def to_toml(config: dict) -> str:
    return tomli_w.dumps(config)


def fingerprint(config: dict) -> str:
    """A hash of everything that changes a build's output."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
