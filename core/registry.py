"""The component registry: every generator, filter, degradation, annotator and model
that the loaded plugins offer, with the plugin and distribution that own it."""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from synfiqa.catalogue import load_catalogue
from synfiqa.errors import DuplicateComponentError, PluginError, UnknownComponentError
from synfiqa.plugins import BUILTIN_DISTRIBUTION, SynfiqaPluginManager, build_plugin_manager

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


class Registry:
    def __init__(self, manager: SynfiqaPluginManager | None = None):
        self.manager = manager or build_plugin_manager()
        self._components: dict[tuple[str, str], Component] = {}
        self._collect()

    def _collect(self):
        catalogue, _ = load_catalogue()
        owners = {p.name: p for p in self.manager.loaded}
        hooks = dict(_HOOK_OF_KIND, model="register_models")
        for kind, hook_name in hooks.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                owner = owners.get(impl.plugin_name)
                distribution = owner.distribution if owner else "unknown"
                version = owner.version if owner else "unknown"

                def register(name, factory, summary="", defaults=None, kind=kind, **extra):
                    if kind == "model":
                        kind = extra.pop("model_kind", None) or getattr(factory, "kind", None)
                        if kind not in MODEL_KINDS:
                            raise PluginError(
                                f"model {name!r} from plugin {impl.plugin_name!r} must say its kind, one of {MODEL_KINDS}"
                            )
                    if extra:
                        raise PluginError(f"register() got unknown arguments {sorted(extra)} for {name!r}")
                    entry = catalogue.get((kind, name)) if distribution == BUILTIN_DISTRIBUTION else None
                    self._add(Component(
                        kind=kind, name=name, factory=factory,
                        summary=summary or (entry.summary if entry else "") or _first_line(factory),
                        defaults=dict(entry.defaults if entry else {}) | dict(defaults or {}),
                        plugin=impl.plugin_name, distribution=distribution, version=version,
                    ))

                impl.function(register=register)

    def _add(self, component: Component):
        key = (component.kind, component.name)
        if key in self._components:
            first = self._components[key]
            raise DuplicateComponentError(
                f"{component.kind} {component.name!r} is registered twice: by plugin {first.plugin!r} "
                f"({first.distribution}) and by plugin {component.plugin!r} ({component.distribution})"
            )
        self._components[key] = component

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
        raise UnknownComponentError(f"no {kind} named {name!r}.{hint}{listing}")

    def find(self, name: str) -> list[Component]:
        return [c for (_, n), c in self._components.items() if n == name]

    def create(self, kind: str, name: str, **params):
        component = self.get(kind, name)
        try:
            inspect.signature(component.factory).bind(**{**component.defaults, **params})
        except TypeError as error:
            raise PluginError(f"bad parameters for {kind} {name!r}: {error}") from None
        return component.create(**params)


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
