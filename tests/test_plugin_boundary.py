"""The plugin boundary: a third-party plugin that fails to register is named and skipped,
never fatal; a third-party name that takes a built-in's is skipped (the built-in wins); two
third-party plugins with one name stop with the way to disable one; a registration hook
registers its own kind only; built-in failures still raise (they are bugs)."""
from __future__ import annotations

import json
import textwrap
import types
import warnings

import pytest
from click.testing import CliRunner

from synfiqa.errors import DuplicateComponentError, UnknownComponentError
from synfiqa.plugins import PluginWarning, SynfiqaPluginManager
from synfiqa.registry import Registry
from synfiqa_cli.main import cli
from tests.distributions import write_distribution

HEADER = """
    import torch
    from synfiqa import hookimpl

    class Stamp:
        severity_axes = ("amount",)
        def sample_params(self, n, generator):
            return {"amount": torch.rand(n, generator=generator, dtype=torch.float64)}
        def apply(self, images, params, landmarks=None):
            return images.clone()

    class Scorer:
        kind = "fiqa"
        def score(self, crops):
            return torch.zeros(len(crops))
"""

RAISES_IN_REGISTER = HEADER + """
    @hookimpl
    def register_models(register):
        register("stamp-scorer", Scorer)

    @hookimpl
    def register_degradations(register):
        register("stamp", Stamp)
        raise RuntimeError("config file ~/.stamprc is missing")
"""

TAKES_A_BUILTIN_NAME = HEADER + """
    @hookimpl
    def register_degradations(register):
        register("blur-downscale", Stamp)
        register("stamp-own", Stamp)
"""

NAMES_STAMP = HEADER + """
    @hookimpl
    def register_degradations(register):
        register("stamp", Stamp)
"""


def plugin_module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(textwrap.dedent(source), module.__dict__)
    return module


def registry_with(*plugins: tuple[str, str, str]) -> Registry:
    """A registry over the built-ins plus (module name, distribution, source) plugins,
    registered on the manager by hand, as entry points would."""
    manager = SynfiqaPluginManager()
    for name, distribution, source in plugins:
        manager.register_module(plugin_module(name, source), distribution, "1.0")
    manager.load_missing_builtins()
    return Registry(manager)


# ------------------------------------------------------------ a hook that raises


def test_a_plugin_whose_hook_raises_is_named_and_skipped():
    with pytest.warns(PluginWarning) as caught:
        registry = registry_with(("stamp_plugin", "stamp-dist", RAISES_IN_REGISTER))
    message = " ".join(str(w.message) for w in caught)
    assert "'stamp_plugin'" in message and "stamp-dist" in message
    assert "config file ~/.stamprc is missing" in message
    assert "SYNFIQA_DISABLE_PLUGINS=stamp-dist" in message
    # none of its components, also not those its other hook registered fine
    with pytest.raises(UnknownComponentError):
        registry.get("degradation", "stamp")
    with pytest.raises(UnknownComponentError):
        registry.get("fiqa", "stamp-scorer")
    [failed] = registry.manager.failed
    assert (failed.name, failed.distribution) == ("stamp_plugin", "stamp-dist")
    assert "RuntimeError" in failed.error and failed.disable == "SYNFIQA_DISABLE_PLUGINS=stamp-dist"
    assert not any(p.name == "stamp_plugin" for p in registry.manager.loaded)
    assert not registry.manager.has_plugin("stamp_plugin")
    # everything else works
    assert registry.get("degradation", "blur-downscale").distribution == "synfiqa"
    assert registry.create("annotator", "mr").lam == 0.5


def test_plugins_list_survives_a_raising_plugin_and_shows_it(tmp_path, monkeypatch):
    write_distribution(tmp_path, "stamp-dist", "stamp_plugin", RAISES_IN_REGISTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        listed = CliRunner().invoke(cli, ["plugins", "list"])
        assert listed.exit_code == 0, listed.output
        assert "blur-downscale" in listed.output
        failed_lines = [line for line in listed.output.splitlines() if line.startswith("FAILED")]
        assert len(failed_lines) == 1
        assert "stamp_plugin" in failed_lines[0] and "stamp-dist" in failed_lines[0]
        assert ".stamprc" in failed_lines[0] and "SYNFIQA_DISABLE_PLUGINS=stamp-dist" in failed_lines[0]

        as_json = CliRunner().invoke(cli, ["plugins", "list", "--json"])
        assert as_json.exit_code == 0, as_json.output
        payload = json.loads(as_json.output)
        assert [f["distribution"] for f in payload["failed"]] == ["stamp-dist"]
        assert ("degradation", "stamp") not in {(c["kind"], c["name"]) for c in payload["components"]}
    # the switch the message names does disable it
    monkeypatch.setenv("SYNFIQA_DISABLE_PLUGINS", "stamp-dist")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        assert Registry().manager.failed == []


def test_a_plugin_that_pluggy_refuses_is_skipped(tmp_path, monkeypatch):
    """A hook implementation with an argument the hook does not pass: pluggy refuses the
    module when it is registered, and that must not stop synfiqa either."""
    write_distribution(tmp_path, "odd-args", "odd_args_plugin", """
        from synfiqa import hookimpl

        @hookimpl
        def register_degradations(register, colour):
            pass
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    with pytest.warns(PluginWarning, match="odd-args.*SYNFIQA_DISABLE_PLUGINS=odd-args"):
        registry = Registry()
    assert [f.distribution for f in registry.manager.failed] == ["odd-args"]
    assert registry.get("degradation", "jpeg")


def test_a_builtin_that_raises_is_a_bug_and_raises():
    manager = SynfiqaPluginManager()
    manager.register_module(plugin_module("synfiqa_plugins.broken", RAISES_IN_REGISTER), "synfiqa", "0")
    manager.load_missing_builtins()
    with pytest.raises(RuntimeError, match="stamprc"):
        Registry(manager)


# ------------------------------------------------------------ name clashes


def test_a_builtin_name_taken_by_a_third_party_keeps_the_builtin():
    with pytest.warns(PluginWarning) as caught:
        registry = registry_with(("impostor_plugin", "impostor", TAKES_A_BUILTIN_NAME))
    message = " ".join(str(w.message) for w in caught)
    assert "'blur-downscale'" in message
    assert "impostor" in message and "(synfiqa)" in message           # both owners
    assert "SYNFIQA_DISABLE_PLUGINS=impostor" in message
    component = registry.get("degradation", "blur-downscale")
    assert component.distribution == "synfiqa" and component.factory.__name__ == "BlurDownscale"
    # only the clashing component is left out; the plugin's other one is there
    assert registry.get("degradation", "stamp-own").distribution == "impostor"
    [skipped] = registry.skipped
    assert (skipped.kind, skipped.name, skipped.distribution) == ("degradation", "blur-downscale", "impostor")
    assert registry.manager.failed == []


def test_the_builtin_wins_whatever_the_loading_order():
    """Third-party plugins are usually found before the built-ins that load_missing_builtins adds."""
    manager = SynfiqaPluginManager()
    manager.load_missing_builtins()
    manager.register_module(plugin_module("impostor_plugin", TAKES_A_BUILTIN_NAME), "impostor", "1.0")
    with pytest.warns(PluginWarning, match="blur-downscale"):
        registry = Registry(manager)
    assert registry.get("degradation", "blur-downscale").distribution == "synfiqa"


def test_plugins_list_shows_the_skipped_component(tmp_path, monkeypatch):
    write_distribution(tmp_path, "impostor", "impostor_plugin", TAKES_A_BUILTIN_NAME)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        listed = CliRunner().invoke(cli, ["plugins", "list"])
    assert listed.exit_code == 0, listed.output
    [line] = [line for line in listed.output.splitlines() if line.startswith("SKIPPED")]
    assert "'blur-downscale'" in line and "impostor" in line


def test_two_third_party_plugins_with_one_name_name_both_and_how_to_disable():
    with pytest.raises(DuplicateComponentError) as raised:
        registry_with(("stamp_one", "stamp-one", NAMES_STAMP), ("stamp_two", "stamp-two", NAMES_STAMP))
    message = str(raised.value)
    assert "'stamp'" in message and "stamp-one" in message and "stamp-two" in message
    assert "SYNFIQA_DISABLE_PLUGINS=stamp-one" in message and "SYNFIQA_DISABLE_PLUGINS=stamp-two" in message
    assert "\n" not in message


def test_one_plugin_registering_a_name_twice_is_skipped():
    twice = HEADER + """
    @hookimpl
    def register_degradations(register):
        register("stamp", Stamp)
        register("stamp", Stamp)
"""
    with pytest.warns(PluginWarning, match="twice"):
        registry = registry_with(("twice_plugin", "twice", twice))
    assert [f.distribution for f in registry.manager.failed] == ["twice"]


# ------------------------------------------------------------ the kind is the hook's


@pytest.mark.parametrize("call", [
    'register("sneaky", Stamp, kind="generator")',
    'register("sneaky", Stamp, kind="annotator")',
    'register("sneaky", Scorer, model_kind="fiqa")',
], ids=["kind-generator", "kind-annotator", "model-kind"])
def test_a_degradation_hook_registers_degradations_only(call):
    source = HEADER + f"""
    @hookimpl
    def register_degradations(register):
        {call}
"""
    with pytest.warns(PluginWarning, match="register_degradations registers degradations only"):
        registry = registry_with(("sneaky_plugin", "sneaky", source))
    assert registry.find("sneaky") == []


@pytest.mark.parametrize("kind", ["degradation", "generator", "model", "nonsense"])
def test_the_model_hook_registers_models_only(kind):
    source = HEADER + f"""
    @hookimpl
    def register_models(register):
        register("sneaky", Stamp, kind="{kind}")
"""
    with pytest.warns(PluginWarning, match="must say its kind"):
        registry = registry_with(("sneaky_plugin", "sneaky", source))
    assert registry.find("sneaky") == []


def test_the_model_hook_takes_the_role_from_kind_or_the_factory():
    source = HEADER + """
    @hookimpl
    def register_models(register):
        register("stamp-scorer", Scorer)
        register("stamp-embedder", Scorer, kind="embedder")
"""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        registry = registry_with(("models_plugin", "models-dist", source))
    assert registry.get("fiqa", "stamp-scorer").distribution == "models-dist"
    assert registry.get("embedder", "stamp-embedder").distribution == "models-dist"


@pytest.mark.parametrize("call, why", [
    ('register("stamp", None)', "not callable"),
    ('register("", Stamp)', "not a non-empty string"),
    ('register("stamp", Stamp, defaults=[1, 2])', "defaults must be a dict"),
    ('register("stamp", Stamp, colour="red")', "unknown arguments"),
], ids=["factory", "name", "defaults", "extra"])
def test_malformed_registrations_skip_the_plugin(call, why):
    source = HEADER + f"""
    @hookimpl
    def register_degradations(register):
        {call}
"""
    with pytest.warns(PluginWarning, match=why):
        registry = registry_with(("malformed_plugin", "malformed", source))
    assert [f.distribution for f in registry.manager.failed] == ["malformed"]
    assert registry.find("stamp") == []
