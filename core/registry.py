"""The component registry: every generator, filter, degradation, annotator and model
that the loaded plugins offer, and every model asset they declare, with the plugin and
distribution that own each.

One code path for everybody: a built-in registers through the same ``register`` as a
third-party plugin, takes its default parameters from the same place (its factory's
signature, then ``register(..., defaults=...)``) and declares its model assets through the
same ``register_model_assets`` hook (registry.toml's ``[[asset]]`` tables reach it through
the built-in plugin ``synfiqa.catalogue``). What the catalogue still gives a built-in is
its summary, which a third party passes as ``summary=``."""
from __future__ import annotations

import difflib
import functools
import inspect
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

from synfiqa.catalogue import AssetEntry, AssetFile, load_catalogue
from synfiqa.errors import DuplicateComponentError, PluginError, UnknownComponentError, WeightsNotFoundError
from synfiqa.plugins import (BUILTIN_DISTRIBUTION, PluginWarning, SynfiqaPluginManager, build_plugin_manager,
                             disable_hint)

MODEL_KINDS = ("detector", "embedder", "pose", "vision-language", "fiqa")
KINDS = ("generator", "filter", "stage2-backend", "degradation", "annotator", *MODEL_KINDS)

_HOOK_OF_KIND = {
    "generator": "register_generators",
    "filter": "register_filters",
    "stage2-backend": "register_stage2_backends",
    "degradation": "register_degradations",
    "annotator": "register_annotators",
}
# every registration hook and what it registers: a kind, "model" (one of MODEL_KINDS, said by
# kind= or the factory) or "asset" (a model asset, see register_model_assets)
HOOKS = {**{hook: kind for kind, hook in _HOOK_OF_KIND.items()}, "register_models": "model",
         "register_model_assets": "asset"}

# an asset name is a folder name under $SYNFIQA_WEIGHTS and ~/.cache/synfiqa/weights
_ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_URL = re.compile(r"https?://\S+|hf://[^/@\s]+/[^/@\s]+@[^/\s]+/\S+")


def factory_defaults(factory) -> dict:
    """The default parameters a factory states itself: every parameter that can be passed by
    keyword and has a default value. A factory without a readable signature states none."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters
            if p.default is not inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


class Component:
    """One registered component. A built-in whose module is not imported yet is known from
    registry.toml (kind, name, summary, defaults): its ``factory`` is imported on first use
    (`Registry` loads the module then), so listing components, showing one or checking a
    config imports no torch. Once imported, ``defaults`` are the factory's own, and
    registry.toml's must have said the same (`Registry._import_builtin` checks it)."""

    def __init__(self, kind: str, name: str, factory: Callable[..., Any] | None, summary: str,
                 defaults: dict | None = None, plugin: str = "", distribution: str = "", version: str = "",
                 *, importer: Callable[[], Component] | None = None):
        self.kind, self.name, self.summary = kind, name, summary
        self.plugin, self.distribution, self.version = plugin, distribution, version
        self._factory = factory
        self._defaults = dict(defaults or {})
        self._importer = importer  # returns the component as its module registers it

    @property
    def imported(self) -> bool:
        return self._importer is None

    def _import(self) -> None:
        if self._importer is not None:
            registered = self._importer()
            self._factory, self._defaults, self._importer = registered.factory, registered.defaults, None

    @property
    def factory(self) -> Callable[..., Any]:
        self._import()
        return self._factory

    @property
    def defaults(self) -> dict:
        return self._defaults

    def check_params(self, params: dict) -> None:
        """Raises TypeError when `params` (over the defaults) do not bind to the factory. Parameters
        that are all among the announced defaults of a component not imported yet bind without
        importing it (the defaults are the factory's keyword parameters)."""
        if not self.imported and set(params) <= set(self._defaults):
            return
        inspect.signature(self.factory).bind(**{**self.defaults, **params})

    def create(self, **params):
        factory = self.factory
        return factory(**{**self.defaults, **params})

    def describe(self) -> dict:
        return {
            "kind": self.kind, "name": self.name, "summary": self.summary,
            "defaults": self.defaults, "plugin": self.plugin,
            "distribution": self.distribution, "version": self.version,
        }

    def __repr__(self):
        return (f"Component(kind={self.kind!r}, name={self.name!r}, plugin={self.plugin!r}, "
                f"distribution={self.distribution!r}, imported={self.imported})")


@dataclass(frozen=True)
class SkippedComponent:
    """A third-party component (or model asset: kind "asset") left out because a built-in
    has its kind and name."""
    kind: str
    name: str
    plugin: str
    distribution: str
    reason: str


class Registry:
    """Every component and model asset of every loaded plugin. A third-party plugin whose
    registration hook raises (or registers something malformed) is skipped whole, with a
    PluginWarning and a record in ``manager.failed``; a third-party component or asset that
    takes a built-in's name is skipped (the built-in wins), recorded in ``skipped``. A
    built-in that fails raises: that is a bug in synfiqa."""

    def __init__(self, manager: SynfiqaPluginManager | None = None):
        self.manager = manager or build_plugin_manager()
        self.manager.check_hooks()  # a hand-built manager too: a misspelt hook fails loudly
        self._components: dict[tuple[str, str], Component] = {}
        self._assets: dict[str, AssetEntry] = {}
        self.skipped: list[SkippedComponent] = []
        self._imported_builtins: dict[str, dict[tuple[str, str], Component]] = {}  # module -> its components
        self._collect()

    def _collect(self):
        staged, broken = self._run_hooks()
        for plugin, (distribution, why) in broken.items():
            staged.pop(plugin, None)
            self.manager.fail(plugin, distribution, why)
        # built-ins first (those not imported yet, then the others): a third-party component never displaces one
        ordered = [self._announced_builtins(), *sorted(
            staged.values(), key=lambda parts: not parts or parts[0].distribution != BUILTIN_DISTRIBUTION)]
        for parts in ordered:
            for part in parts:
                self._add(part)

    def _announced_builtins(self) -> list[Component]:
        """The components of the deferred built-in modules, as registry.toml announces them."""
        catalogue, _ = load_catalogue()
        deferred = {p.module: p for p in self.manager.deferred}
        return [Component(kind=entry.kind, name=entry.name, factory=None, summary=entry.summary,
                          defaults=entry.defaults, plugin=entry.module, distribution=BUILTIN_DISTRIBUTION,
                          version=deferred[entry.module].version,
                          importer=functools.partial(self._import_builtin, entry.kind, entry.name))
                for entry in catalogue.values() if entry.module in deferred]

    def _import_builtin(self, kind: str, name: str) -> Component:
        """Import the built-in module of (kind, name), run its hooks and return the component as
        the module registers it. A component the module registers beyond registry.toml's is
        added now; one registry.toml announces that the module does not register is a bug in
        synfiqa. (tests/test_cli_startup.py keeps the announced defaults equal to the factories'.)"""
        catalogue, _ = load_catalogue()
        module_name = catalogue[(kind, name)].module
        if module_name not in self._imported_builtins:
            self.manager.load_builtin(module_name)
            staged, _ = self._run_hooks(only=module_name)
            registered = {(c.kind, c.name): c for c in staged.get(module_name, []) if isinstance(c, Component)}
            missing = sorted(key for key, entry in catalogue.items()
                             if entry.module == module_name and key not in registered)
            if missing:
                raise PluginError(f"registry.toml announces {missing} in built-in module {module_name}, "
                                  f"which does not register them; make the two agree")
            for key, component in registered.items():
                if key not in self._components:
                    self._add(component)
            self._imported_builtins[module_name] = registered
        return self._imported_builtins[module_name][(kind, name)]

    def _run_hooks(self, only: str | None = None) -> tuple[dict[str, list], dict[str, tuple[str, str]]]:
        """Every registration hook of every registered plugin (or of plugin `only`): plugin name ->
        what its hooks registered (components, assets), and the third-party plugins whose hooks
        failed -> (distribution, why)."""
        catalogue, _ = load_catalogue()
        owners = {p.name: p for p in self.manager.loaded}
        staged: dict[str, list] = {}   # plugin name -> what its hooks registered (components, assets)
        broken: dict[str, tuple[str, str]] = {}   # third-party plugin name -> (distribution, why)
        for hook_name, hook_kind in HOOKS.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                if plugin in broken or (only is not None and plugin != only):
                    continue
                owner = owners.get(plugin)
                distribution = owner.distribution if owner else "unknown"
                version = owner.version if owner else "unknown"
                into = staged.setdefault(plugin, [])
                if hook_kind == "asset":
                    register = self._asset_callback(plugin, distribution, version, into)
                else:
                    register = self._register_callback(hook_kind, hook_name, plugin, distribution, version,
                                                       catalogue, into)
                try:
                    impl.function(register=register)
                    _check_no_repeats(staged[plugin], plugin)
                except Exception as error:
                    if distribution == BUILTIN_DISTRIBUTION:
                        raise
                    broken[plugin] = (distribution, f"{hook_name} raised {_short(error)}")
        return staged, broken

    def _register_callback(self, hook_kind, hook_name, plugin, distribution, version, catalogue, into: list):
        """The `register` a component hook implementation receives:
        ``register(name, factory, *, summary="", defaults=None, kind=None)``. The kind is the
        hook's: a degradation hook registers degradations only; the model hook takes the
        model's role from `kind=` (or the factory's `kind` attribute), one of MODEL_KINDS.
        The defaults are the factory's own (`factory_defaults`) with `defaults` over them."""

        def register(name, factory, *positional, summary="", defaults=None, kind=None, **extra):
            if positional:
                raise PluginError(f"register({name!r}, ...) from plugin {plugin!r} got {len(positional) + 2} positional "
                                  f"arguments; only the name and the factory are positional: pass "
                                  f"register(name, factory, summary=..., defaults=...)")
            asked = kind
            model_kind = extra.pop("model_kind", None)
            if hook_kind == "model":
                kind = asked or model_kind or getattr(factory, "kind", None)
                if kind not in MODEL_KINDS:
                    raise PluginError(f"model {name!r} from plugin {plugin!r} must say its kind, one of {MODEL_KINDS}"
                                      + (f", not {kind!r}" if kind is not None else ""))
            else:
                kind = hook_kind
                if (asked is not None and asked != kind) or model_kind is not None:
                    raise PluginError(f"{hook_name} registers {kind}s only; {name!r} from plugin {plugin!r} "
                                      f"asked for kind {asked or model_kind!r}")
            if extra:
                raise PluginError(f"register() got unknown arguments {sorted(extra)} for {name!r}; it takes "
                                  f"summary=, defaults=" + (" and kind=" if hook_kind == "model" else ""))
            if not isinstance(name, str) or not name.strip():
                raise PluginError(f"plugin {plugin!r} registered a {kind} whose name is {name!r}, not a non-empty string")
            if not callable(factory):
                raise PluginError(f"{kind} {name!r} from plugin {plugin!r}: the factory {factory!r} is not callable")
            if defaults is not None and not isinstance(defaults, dict):
                raise PluginError(f"{kind} {name!r} from plugin {plugin!r}: defaults must be a dict, "
                                  f"got {type(defaults).__name__}")
            if not isinstance(summary, str):
                raise PluginError(f"{kind} {name!r} from plugin {plugin!r}: summary must be a string, "
                                  f"got {type(summary).__name__}")
            # the catalogue announces a built-in's summary, as summary= does a third party's
            entry = catalogue.get((kind, name)) if distribution == BUILTIN_DISTRIBUTION else None
            into.append(Component(
                kind=kind, name=name, factory=factory,
                summary=summary or (entry.summary if entry else "") or _first_line(factory),
                defaults=factory_defaults(factory) | dict(defaults or {}),
                plugin=plugin, distribution=distribution, version=version,
            ))

        return register

    def _asset_callback(self, plugin, distribution, version, into: list):
        """The `register` a ``register_model_assets`` implementation receives (see
        synfiqa.hookspecs.register_model_assets)."""

        def register(name, *positional, files=None, license=None, source=None, summary="", package=None,
                     hf_repo=None, cache_dirs=(), **extra):
            what = f"model asset {name!r} from plugin {plugin!r}"
            if positional:
                raise PluginError(f"{what}: register(name, *, files=, license=, source=, ...) takes everything "
                                  f"after the name by keyword")
            missing = [key for key, value in (("files", files), ("license", license), ("source", source))
                       if value is None]
            if missing:
                raise PluginError(f"{what}: register() needs files=, license= and source= (missing: "
                                  f"{', '.join(missing)})")
            if extra:
                raise PluginError(f"{what}: register() got unknown arguments {sorted(extra)}; it takes files=, "
                                  f"license=, source=, summary=, package=, hf_repo=, cache_dirs=")
            if not isinstance(name, str) or not _ASSET_NAME.fullmatch(name):
                raise PluginError(f"plugin {plugin!r} declared a model asset named {name!r}: an asset name is a "
                                  f"folder name (letters, digits, '.', '_', '+', '-')")
            for label, value in (("license", license), ("source", source), ("summary", summary)):
                if not isinstance(value, str):
                    raise PluginError(f"{what}: {label} must be a string, got {type(value).__name__}")
            if not source.strip():
                raise PluginError(f"{what}: source must say where to get the files (the not-found error prints it)")
            if package is not None and (not isinstance(package, str) or not package):
                raise PluginError(f"{what}: package must be an importable package name, got {package!r}")
            repos = (hf_repo,) if isinstance(hf_repo, str) else tuple(hf_repo or ())
            if not all(isinstance(r, str) and r for r in repos):
                raise PluginError(f"{what}: hf_repo must be a Hugging Face repo id or a list of them, got {hf_repo!r}")
            if isinstance(cache_dirs, str) or not all(isinstance(d, str) and d for d in cache_dirs):
                raise PluginError(f"{what}: cache_dirs must be a list of folders, got {cache_dirs!r}")
            into.append(AssetEntry(
                name=name, files=_asset_files(files, what), license=license.strip() or "unknown", source=source,
                summary=summary, package=package,
                hf_repo=None if not repos else repos[0] if isinstance(hf_repo, str) else repos,
                cache_dirs=tuple(cache_dirs), plugin=plugin, distribution=distribution, version=version,
            ))

        return register

    def _add(self, part: Component | AssetEntry):
        kind, name = _key(part)
        table, key = (self._assets, name) if kind == "asset" else (self._components, (kind, name))
        if key not in table:
            table[key] = part
            return
        first = table[key]
        what = "model asset" if kind == "asset" else kind
        both = (f"{what} {name!r} is registered twice: by plugin {first.plugin!r} "
                f"({first.distribution}) and by plugin {part.plugin!r} ({part.distribution})")
        if first.distribution == BUILTIN_DISTRIBUTION and part.distribution != BUILTIN_DISTRIBUTION:
            reason = f"{both}; the built-in is kept and the other skipped"
            self.skipped.append(SkippedComponent(kind, name, part.plugin, part.distribution, reason))
            warnings.warn(f"synfiqa: {reason}. Rename it in {part.distribution}, or stop loading that "
                          f"plugin with {disable_hint(part.distribution, part.plugin)}",
                          PluginWarning, stacklevel=4)
            return
        if part.distribution == BUILTIN_DISTRIBUTION:
            raise DuplicateComponentError(both)  # two built-ins: a bug in synfiqa
        raise DuplicateComponentError(
            f"{both}. Disable one of them: {disable_hint(first.distribution, first.plugin)} "
            f"or {disable_hint(part.distribution, part.plugin)}")

    # ------------------------------------------------------------ model assets

    def assets(self) -> dict[str, AssetEntry]:
        """Every declared model asset by name: registry.toml's and the plugins'."""
        return dict(sorted(self._assets.items()))

    def asset(self, name: str) -> AssetEntry:
        """The declared model asset; an unknown name is a WeightsNotFoundError listing the
        known ones (and the close matches)."""
        if name in self._assets:
            return self._assets[name]
        known = sorted(self._assets)
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise WeightsNotFoundError(f"unknown model asset {name!r};{hint} known assets: {', '.join(known)}")

    # ------------------------------------------------------------ components

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self._components if k == kind)

    def components(self, kind: str | None = None) -> list[Component]:
        return [c for (k, _), c in sorted(self._components.items()) if kind is None or k == kind]

    def get(self, kind: str, name: str) -> Component:
        if kind not in KINDS:
            raise UnknownComponentError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        try:
            return self._components[(kind, name)]
        except KeyError:
            pass
        known = self.names(kind)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        listing = f" Known: {', '.join(known)}." if known else f" No {kind} is registered."
        failed = self.manager.failed
        skipped = (f" Skipped plugins, which may have offered it: "
                   f"{', '.join(f'{f.name} ({f.distribution})' for f in failed)}; see `synfiqa plugins list`."
                   if failed else "")
        raise UnknownComponentError(f"no {kind} named {name!r}.{hint}{listing}{skipped}")

    def find(self, name: str) -> list[Component]:
        return [c for (_, n), c in self._components.items() if n == name]

    def create(self, kind: str, name: str, **params):
        component = self.get(kind, name)
        try:
            inspect.signature(component.factory).bind(**{**component.defaults, **params})  # imports it
        except TypeError as error:
            raise PluginError(f"bad parameters for {kind} {name!r}: {error}") from None
        return component.create(**params)


def _key(part: Component | AssetEntry) -> tuple[str, str]:
    return ("asset", part.name) if isinstance(part, AssetEntry) else (part.kind, part.name)


def _check_no_repeats(parts: list, plugin: str) -> None:
    seen = set()
    for part in parts:
        key = _key(part)
        if key in seen:
            raise PluginError(f"plugin {plugin!r} registers {'model asset' if key[0] == 'asset' else key[0]} "
                              f"{key[1]!r} twice")
        seen.add(key)


def _asset_files(files, what: str) -> tuple[AssetFile, ...]:
    """register_model_assets' ``files``: a file name, a mapping file name -> sha256 (or
    None), or a list of file names, {"path", "sha256", "size"} tables or AssetFiles."""
    if isinstance(files, (str, AssetFile)):
        items = [files]
    elif isinstance(files, Mapping):
        items = [{"path": path, "sha256": sha} for path, sha in files.items()]
    elif isinstance(files, Sequence):
        items = list(files)
    else:
        raise PluginError(f"{what}: files must be a file name, a list of them or a mapping name -> sha256, "
                          f"got {type(files).__name__}")
    if not items:
        raise PluginError(f"{what}: files is empty; name the file(s) the asset consists of")
    out = []
    for item in items:
        if isinstance(item, str):
            item = AssetFile(item)
        elif isinstance(item, Mapping):
            unknown = set(item) - {"path", "sha256", "size", "url"}
            if unknown or "path" not in item:
                raise PluginError(f"{what}: a file table has keys path (required), sha256, size and url; "
                                  f"got {sorted(item)}")
            item = AssetFile(item["path"], item.get("sha256"), item.get("size"), item.get("url"))
        elif not isinstance(item, AssetFile):
            raise PluginError(f"{what}: a file is a name or a {{path, sha256, size}} table, got {item!r}")
        path = item.path
        if (not isinstance(path, str) or not path or path.startswith(("/", "~", "\\")) or ".." in path.split("/")
                or "\\" in path):
            raise PluginError(f"{what}: file {path!r} must be a relative path with '/' separators inside the "
                              f"asset's folder")
        if item.sha256 is not None and not (isinstance(item.sha256, str) and _SHA256.fullmatch(item.sha256)):
            raise PluginError(f"{what}: the sha256 of {path!r} must be 64 lower-case hex digits, got {item.sha256!r}")
        if item.size is not None and (isinstance(item.size, bool) or not isinstance(item.size, int) or item.size < 0):
            raise PluginError(f"{what}: the size of {path!r} must be a number of bytes, got {item.size!r}")
        if item.url is not None and not (isinstance(item.url, str) and _URL.fullmatch(item.url)):
            raise PluginError(f"{what}: the url of {path!r} must be http(s)://... or hf://ORG/REPO@REVISION/PATH, "
                              f"got {item.url!r}")
        out.append(item)
    if len({f.path for f in out}) != len(out):
        raise PluginError(f"{what}: a file is listed twice: {[f.path for f in out]}")
    return tuple(out)


def _short(error: BaseException) -> str:
    """repr of an error on one line, at most 300 characters."""
    text = " ".join(repr(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


_default_registry: Registry | None = None
_building = False


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use."""
    global _default_registry, _building
    if _default_registry is None or refresh:
        if _building:
            raise PluginError("a plugin asked for the registry (a component or a model asset) while its registration "
                              "hook ran; look things up when the component is created, not when it is registered")
        _building = True
        try:
            _default_registry = Registry()
        finally:
            _building = False
    return _default_registry
