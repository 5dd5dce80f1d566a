"""Reads registry.toml: the catalogue of built-in plugins and model assets.

The catalogue is how the built-ins announce themselves, and it grants them nothing a
third-party plugin cannot have:

* ``[[plugin]]`` names the module of each built-in component (setup.py makes the entry
  points from it), its summary and its factory's default parameters (``defaults``, and
  ``defaults_none`` for those whose default is None). They let synfiqa list a built-in, show
  it and check a config's parameters for it without importing its module (most import
  torch); once imported, the factory's own defaults rule (see synfiqa.registry), and a test
  keeps the two equal.
* ``[[module]]`` names a built-in module that registers no component, only commands
  (``register_commands``) or assets; it becomes an entry point like the others.
* ``[[command]]`` announces a command a built-in module adds through ``register_commands``
  (its path, as ``render`` or ``convert guided-diffusion``, and its short help), so that
  ``synfiqa --help`` lists it without importing the module; the module is imported when the
  command runs.
* ``[[asset]]`` declares the built-in model assets. This module is itself a built-in
  plugin: its ``register_model_assets`` hands every ``[[asset]]`` to the same ``register``
  a third-party plugin declares its assets with, so both take one code path into
  synfiqa.weights (lookup) and ``synfiqa models list``.
"""
from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from synfiqa.hookspecs import hookimpl


@dataclass(frozen=True)
class PluginEntry:
    name: str
    kind: str
    module: str
    summary: str
    # the factory's own defaults, announced for listing and config checks before the module is
    # imported (a test keeps them equal to the factory's)
    defaults: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CommandEntry:
    path: str      # "render", or "convert guided-diffusion" for a subcommand of a group
    module: str    # the built-in module whose register_commands adds it
    summary: str   # the short help `synfiqa --help` shows before the module is imported


@dataclass(frozen=True)
class AssetFile:
    path: str
    sha256: str | None = None
    size: int | None = None
    # where `synfiqa models fetch` downloads it: an http(s) URL, or hf://ORG/REPO@REVISION/PATH for a
    # file of a Hugging Face repo (synfiqa.fetch); fetched only with a sha256 to check it against
    url: str | None = None


@dataclass(frozen=True)
class AssetEntry:
    name: str
    files: tuple[AssetFile, ...]
    license: str
    source: str
    summary: str = ""
    package: str | None = None  # a PyPI package that ships the files, when one does
    hf_repo: str | tuple[str, ...] | None = None  # Hugging Face repo id(s): their snapshots in the HF cache are searched
    cache_dirs: tuple[str, ...] = ()  # another tool's own cache folders (e.g. ~/.insightface/models/buffalo_l)
    # who declared it (filled in by the registry): the plugin, its distribution and version
    plugin: str = ""
    distribution: str = ""
    version: str = ""


def catalogue_path() -> Path:
    """The installed copy inside the package (wheels), else the repository's top-level file."""
    packaged = resources.files("synfiqa").joinpath("registry.toml")
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "registry.toml"


@functools.cache
def _raw_catalogue() -> dict:
    return tomllib.loads(catalogue_path().read_text())


@functools.cache
def load_catalogue() -> tuple[dict[tuple[str, str], PluginEntry], dict[str, AssetEntry]]:
    raw = _raw_catalogue()
    plugins = {}
    for item in raw.get("plugin", []):
        entry = PluginEntry(
            name=item["name"], kind=item["kind"], module=item["module"],
            summary=item.get("summary", ""),
            defaults=dict(item.get("defaults", {})) | dict.fromkeys(item.get("defaults_none", [])),
        )
        plugins[(entry.kind, entry.name)] = entry
    assets = {}
    for item in raw.get("asset", []):
        files = tuple(AssetFile(**f) for f in item.get("files", []))
        assets[item["name"]] = AssetEntry(
            name=item["name"], files=files, license=item.get("license", "unknown"),
            source=item.get("source", ""), summary=item.get("summary", ""),
            package=item.get("package"),
            hf_repo=tuple(item["hf_repo"]) if isinstance(item.get("hf_repo"), list) else item.get("hf_repo"),
            cache_dirs=tuple(item.get("cache_dirs", ())),
        )
    return plugins, assets


def builtin_plugin_modules() -> list[str]:
    """Every built-in plugin module: those of the ``[[plugin]]`` components and the
    ``[[module]]`` entries (modules that register only commands or assets)."""
    plugins, _ = load_catalogue()
    raw = _raw_catalogue()
    return sorted({entry.module for entry in plugins.values()} | {item["module"] for item in raw.get("module", [])})


def builtin_commands() -> dict[str, CommandEntry]:
    """The ``[[command]]`` tables by path: the commands built-in modules add."""
    return {item["path"]: CommandEntry(item["path"], item["module"], item.get("summary", ""))
            for item in _raw_catalogue().get("command", [])}


@hookimpl
def register_model_assets(register):
    """The built-in model assets: every ``[[asset]]`` of registry.toml, declared through the
    ``register`` that third-party plugins use."""
    _, assets = load_catalogue()
    for entry in assets.values():
        register(entry.name, files=entry.files, license=entry.license, source=entry.source, summary=entry.summary,
                 package=entry.package, hf_repo=entry.hf_repo, cache_dirs=entry.cache_dirs)
