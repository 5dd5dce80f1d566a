"""The plugin manager: discovers plugins through the `synfiqa` entry-point group.

Built-in plugins are found the same way as third-party ones, through the entry
points that setup.py generates from registry.toml.

Environment switches (read each time the manager is built):
  SYNFIQA_DISABLE_PLUGINS=1         load only the built-in plugins
  SYNFIQA_DISABLE_PLUGINS=a,b       skip these distributions or entry-point names
  SYNFIQA_PLUGINS=dist1,dist2       allow-list: built-ins plus these distributions only

A third-party plugin that fails to import, that pluggy refuses, that implements a hook
synfiqa does not have (a misspelt name such as ``register_degradation``: see `check_hooks`),
or whose registration hook raises (see synfiqa.registry) is skipped: a PluginWarning names
it, its distribution, the error and the SYNFIQA_DISABLE_PLUGINS setting that silences it,
and `failed` records it for `synfiqa plugins list`. A built-in that fails raises: that is a
bug in synfiqa.

Besides the catalogue's plugin modules, the built-ins include ``synfiqa.catalogue`` itself:
it declares registry.toml's model assets through ``register_model_assets``, the hook a
third-party plugin declares its own with.

The built-in plugin modules are not imported when the manager is built (most import torch):
`build_plugin_manager` records them in ``deferred``, the registry lists their components from
registry.toml, and a module is imported and registered (`load_builtin`) when one of its
components is created or one of its commands runs. Third-party plugins are imported when the
manager is built: their components can be known no other way.
"""
from __future__ import annotations

import difflib
import importlib
import os
import warnings
from dataclasses import dataclass
from importlib import metadata

import pluggy

from synfiqa import hookspecs
from synfiqa.catalogue import builtin_plugin_modules

GROUP = "synfiqa"
BUILTIN_DISTRIBUTION = "synfiqa"
# the built-in plugin that declares registry.toml's model assets (not an entry point: it is
# part of the core, loaded with the other built-ins by load_missing_builtins)
CATALOGUE_PLUGIN = "synfiqa.catalogue"


@dataclass(frozen=True)
class LoadedPlugin:
    name: str          # the name the plugin manager knows it by
    module: str
    distribution: str
    version: str


@dataclass(frozen=True)
class FailedPlugin:
    name: str
    distribution: str
    error: str
    disable: str = ""  # the setting that silences it: SYNFIQA_DISABLE_PLUGINS=<distribution>


class PluginWarning(UserWarning):
    """A third-party plugin was skipped (it failed to load or to register), or one of its
    components was (its name is a built-in's). synfiqa goes on without it."""


def disable_hint(distribution: str, entry_name: str = "") -> str:
    """The environment setting that stops synfiqa loading this plugin."""
    return f"SYNFIQA_DISABLE_PLUGINS={distribution if distribution != 'unknown' else entry_name or distribution}"


def _csv_env(name: str) -> set[str]:
    return {part.strip() for part in os.environ.get(name, "").split(",") if part.strip()}


def _wanted(distribution: str, entry_name: str) -> bool:
    if distribution == BUILTIN_DISTRIBUTION:
        return True
    disabled = _csv_env("SYNFIQA_DISABLE_PLUGINS")
    if disabled & {"1", "all", "true"}:
        return False
    if distribution in disabled or entry_name in disabled:
        return False
    allowed = _csv_env("SYNFIQA_PLUGINS")
    return not allowed or distribution in allowed


class SynfiqaPluginManager(pluggy.PluginManager):
    def __init__(self):
        super().__init__(GROUP)
        self.add_hookspecs(hookspecs)
        self.loaded: list[LoadedPlugin] = []
        self.failed: list[FailedPlugin] = []
        # built-in modules known from the catalogue, not imported yet (see the module's docstring)
        self.deferred: list[LoadedPlugin] = []

    def register_module(self, module, distribution: str, version: str, name: str | None = None):
        name = name or module.__name__
        if self.has_plugin(name) or self.is_registered(module):
            return
        self.register(module, name=name)
        self.loaded.append(LoadedPlugin(name, module.__name__, distribution, version))
        self.deferred = [p for p in self.deferred if p.module != module.__name__]

    def defer_builtins(self):
        """Record the built-in modules (registry.toml's) without importing them."""
        from synfiqa import __version__

        loaded = {p.module for p in self.loaded}
        self.deferred = [LoadedPlugin(module_name, module_name, BUILTIN_DISTRIBUTION, __version__)
                         for module_name in builtin_plugin_modules() if module_name not in loaded]

    def load_builtin(self, module_name: str):
        """Import one built-in module now, register it and check its hooks (a misspelt hook in a
        built-in raises); returns the module."""
        from synfiqa import __version__

        module = importlib.import_module(module_name)
        self.register_module(module, BUILTIN_DISTRIBUTION, __version__)
        self.check_hooks()
        return module

    def fail(self, name: str, distribution: str, error: str) -> FailedPlugin:
        """Skip a third-party plugin: unregister it (none of its hooks runs again), record
        why in `failed` (what `synfiqa plugins list` shows) and warn, naming the plugin, its
        distribution, the error and how to disable it."""
        if self.has_plugin(name):
            self.unregister(name=name)
        self.loaded = [p for p in self.loaded if p.name != name]
        failed = FailedPlugin(name, distribution, error, disable_hint(distribution, name))
        self.failed.append(failed)
        warnings.warn(f"synfiqa plugin {name!r} from {distribution} is skipped: {error}. None of its components "
                      f"is registered; to stop loading it set {failed.disable}", PluginWarning, stacklevel=3)
        return failed

    def hook_names(self) -> list[str]:
        """The hooks synfiqa defines (core/hookspecs.py)."""
        return sorted(name for name, caller in vars(self.hook).items()
                      if not name.startswith("_") and caller.has_spec())

    def check_hooks(self) -> None:
        """pluggy's ``check_pending``, one plugin at a time: a hook implementation whose name
        is no synfiqa hook (``register_degradation`` for ``register_degradations``) would
        otherwise never be called, and the plugin would silently offer nothing. A built-in
        with one is a bug in synfiqa and raises pluggy's PluginValidationError; a
        third-party one is skipped like any broken plugin (`fail`): the warning names the
        plugin, its distribution, the unknown hook and the closest real one."""
        owners = {p.name: p.distribution for p in self.loaded}
        known = self.hook_names()
        for name in sorted(vars(self.hook)):
            caller = getattr(self.hook, name)
            if name.startswith("_") or caller.has_spec():
                continue
            for impl in list(caller.get_hookimpls()):
                if impl.optionalhook or not self.has_plugin(impl.plugin_name):
                    continue
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                why = (f"it implements {name!r}, which is not a synfiqa hook"
                       + (f" (did you mean {close[0]!r}?)" if close else f"; the hooks are {', '.join(known)}"))
                distribution = owners.get(impl.plugin_name, "unknown")
                if distribution == BUILTIN_DISTRIBUTION:
                    raise pluggy.PluginValidationError(impl.plugin, f"built-in plugin {impl.plugin_name!r}: {why}")
                self.fail(impl.plugin_name, distribution, why)

    def add_commands(self, cli) -> None:
        """Let every plugin add its click commands, one plugin at a time: a third-party
        plugin whose register_commands raises is skipped (see `fail`) and whatever it added
        before raising is taken out again; the others' commands stay."""
        owners = {p.name: p.distribution for p in self.loaded}
        for impl in self.hook.register_commands.get_hookimpls():
            before = dict(getattr(cli, "commands", {}))
            try:
                impl.function(cli=cli)
            except Exception as error:
                distribution = owners.get(impl.plugin_name, "unknown")
                if distribution == BUILTIN_DISTRIBUTION:
                    raise
                if hasattr(cli, "commands"):
                    cli.commands.clear()
                    cli.commands.update(before)
                self.fail(impl.plugin_name, distribution, f"register_commands raised {' '.join(repr(error).split())}")

    def load_entry_points(self, builtins: bool = True):
        """Import and register every wanted entry point's module; with builtins=False only the
        third-party ones (the built-ins are the catalogue's, see `defer_builtins`)."""
        for entry_point in metadata.entry_points(group=GROUP):
            dist = entry_point.dist
            distribution = dist.metadata["Name"] if dist else "unknown"
            version = dist.version if dist else "unknown"
            if not _wanted(distribution, entry_point.name):
                continue
            if distribution == BUILTIN_DISTRIBUTION and not builtins:
                continue
            try:
                module = entry_point.load()
                self.register_module(module, distribution, version)
            except Exception as error:  # a broken third-party plugin must not break synfiqa
                if distribution == BUILTIN_DISTRIBUTION:
                    raise  # a built-in that cannot load is a bug in synfiqa, not something to skip
                self.fail(entry_point.name, distribution, f"failed to load: {error!r}")

    def load_missing_builtins(self):
        """Built-in modules listed in registry.toml but absent from the installed entry points:
        a checkout that was never installed, or an editable install older than the catalogue."""
        from synfiqa import __version__

        loaded = {p.module for p in self.loaded}
        for module_name in [*builtin_plugin_modules(), CATALOGUE_PLUGIN]:
            if module_name not in loaded:
                self.register_module(importlib.import_module(module_name), BUILTIN_DISTRIBUTION, __version__)


def build_plugin_manager() -> SynfiqaPluginManager:
    """Every wanted plugin: the third-party entry points imported, registered and checked
    (`check_hooks`: a misspelt hook fails loudly), the catalogue plugin registered, and the
    built-in modules deferred (imported by `load_builtin` when needed)."""
    from synfiqa import __version__

    manager = SynfiqaPluginManager()
    manager.load_entry_points(builtins=False)
    manager.register_module(importlib.import_module(CATALOGUE_PLUGIN), BUILTIN_DISTRIBUTION, __version__)
    manager.defer_builtins()
    manager.check_hooks()
    return manager


def add_builtin_commands(cli, module_names) -> None:
    """Run the register_commands hook of these built-in modules (imported now) on `cli`."""
    if not module_names:
        return
    manager = SynfiqaPluginManager()
    for module_name in module_names:
        manager.load_builtin(module_name)
    manager.add_commands(cli)
