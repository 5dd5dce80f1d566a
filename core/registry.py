"""The component registry: every generator, filter, degradation, annotator and model
that the loaded plugins offer, with the plugin and distribution that own it."""
from __future__ import annotations

import difflib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from synfiqa.catalogue import load_catalogue
from synfiqa.errors import DuplicateComponentError, PluginError, UnknownComponentError
from synfiqa.plugins import (BUILTIN_DISTRIBUTION, PluginWarning, SynfiqaPluginManager, build_plugin_manager,
                             disable_hint)

MODEL_KINDS = ("detector", "embedder", "pose", "vision-language", "fiqa")
KINDS = ("generator", "filter", "degradation", "annotator", *MODEL_KINDS)

_HOOK_OF_KIND = {
    "generator": "register_generators",
    "filter": "register_filters",
    "degradation": "register_degradations",
    "annotator": "register_annotators",
}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    summary: str
    defaults: dict = field(default_factory=dict)
    plugin: str = ""
    distribution: str = ""
    version: str = ""

    def create(self, **params):
        return self.factory(**{**self.defaults, **params})

    def describe(self) -> dict:
        return {
            "kind": self.kind, "name": self.name, "summary": self.summary,
            "defaults": self.defaults, "plugin": self.plugin,
            "distribution": self.distribution, "version": self.version,
        }


@dataclass(frozen=True)
class SkippedComponent:
    """A third-party component left out because a built-in has its kind and name."""
    kind: str
    name: str
    plugin: str
    distribution: str
    reason: str


class Registry:
    """Every component of every loaded plugin. A third-party plugin whose registration hook
    raises (or registers something malformed) is skipped whole, with a PluginWarning and a
    record in ``manager.failed``; a third-party component that takes a built-in's name is
    skipped (the built-in wins), recorded in ``skipped``. A built-in that fails raises: that
    is a bug in synfiqa."""

    def __init__(self, manager: SynfiqaPluginManager | None = None):
        self.manager = manager or build_plugin_manager()
        self._components: dict[tuple[str, str], Component] = {}
        self.skipped: list[SkippedComponent] = []
        self._collect()

    def _collect(self):
        catalogue, _ = load_catalogue()
        owners = {p.name: p for p in self.manager.loaded}
        hooks = dict(_HOOK_OF_KIND, model="register_models")
        staged: dict[str, list[Component]] = {}   # plugin name -> what its hooks registered
        broken: dict[str, tuple[str, str]] = {}   # third-party plugin name -> (distribution, why)
        for hook_kind, hook_name in hooks.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                if plugin in broken:
                    continue
                owner = owners.get(plugin)
                distribution = owner.distribution if owner else "unknown"
                version = owner.version if owner else "unknown"
                register = self._register_callback(hook_kind, hook_name, plugin, distribution, version, catalogue,
                                                   staged.setdefault(plugin, []))
                try:
                    impl.function(register=register)
                    _check_no_repeats(staged[plugin], plugin)
                except Exception as error:
                    if distribution == BUILTIN_DISTRIBUTION:
                        raise
                    broken[plugin] = (distribution, f"{hook_name} raised {_short(error)}")
        for plugin, (distribution, why) in broken.items():
            staged.pop(plugin, None)
            self.manager.fail(plugin, distribution, why)
        # built-ins first: a third-party component never displaces one
        ordered = sorted(staged.values(), key=lambda parts: not parts or parts[0].distribution != BUILTIN_DISTRIBUTION)
        for components in ordered:
            for component in components:
                self._add(component)

    def _register_callback(self, hook_kind, hook_name, plugin, distribution, version, catalogue, into: list):
        """The `register` a hook implementation receives. The kind is the hook's: a
        degradation hook registers degradations only; the model hook takes the model's
        role from `kind=` (or the factory's `kind` attribute), one of MODEL_KINDS."""

        def register(name, factory, summary="", defaults=None, **extra):
            asked = extra.pop("kind", None)
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
                raise PluginError(f"register() got unknown arguments {sorted(extra)} for {name!r}")
            if not isinstance(name, str) or not name.strip():
                raise PluginError(f"plugin {plugin!r} registered a {kind} whose name is {name!r}, not a non-empty string")
            if not callable(factory):
                raise PluginError(f"{kind} {name!r} from plugin {plugin!r}: the factory {factory!r} is not callable")
            if defaults is not None and not isinstance(defaults, dict):
                raise PluginError(f"{kind} {name!r} from plugin {plugin!r}: defaults must be a dict, "
                                  f"got {type(defaults).__name__}")
            entry = catalogue.get((kind, name)) if distribution == BUILTIN_DISTRIBUTION else None
            into.append(Component(
                kind=kind, name=name, factory=factory,
                summary=summary or (entry.summary if entry else "") or _first_line(factory),
                defaults=dict(entry.defaults if entry else {}) | dict(defaults or {}),
                plugin=plugin, distribution=distribution, version=version,
            ))

        return register

    def _add(self, component: Component):
        key = (component.kind, component.name)
        if key not in self._components:
            self._components[key] = component
            return
        first = self._components[key]
        both = (f"{component.kind} {component.name!r} is registered twice: by plugin {first.plugin!r} "
                f"({first.distribution}) and by plugin {component.plugin!r} ({component.distribution})")
        if first.distribution == BUILTIN_DISTRIBUTION and component.distribution != BUILTIN_DISTRIBUTION:
            reason = f"{both}; the built-in is kept and the other skipped"
            self.skipped.append(SkippedComponent(component.kind, component.name, component.plugin,
                                                 component.distribution, reason))
            warnings.warn(f"synfiqa: {reason}. Rename it in {component.distribution}, or stop loading that "
                          f"plugin with {disable_hint(component.distribution, component.plugin)}",
                          PluginWarning, stacklevel=4)
            return
        if component.distribution == BUILTIN_DISTRIBUTION:
            raise DuplicateComponentError(both)  # two built-ins: a bug in synfiqa
        raise DuplicateComponentError(
            f"{both}. Disable one of them: {disable_hint(first.distribution, first.plugin)} "
            f"or {disable_hint(component.distribution, component.plugin)}")

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
            inspect.signature(component.factory).bind(**{**component.defaults, **params})
        except TypeError as error:
            raise PluginError(f"bad parameters for {kind} {name!r}: {error}") from None
        return component.create(**params)


def _check_no_repeats(components: list[Component], plugin: str) -> None:
    seen = set()
    for component in components:
        key = (component.kind, component.name)
        if key in seen:
            raise PluginError(f"plugin {plugin!r} registers {component.kind} {component.name!r} twice")
        seen.add(key)


def _short(error: BaseException) -> str:
    """repr of an error on one line, at most 300 characters."""
    text = " ".join(repr(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


_default_registry: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use."""
    global _default_registry
    if _default_registry is None or refresh:
        _default_registry = Registry()
    return _default_registry
