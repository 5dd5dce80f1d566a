"""The plugin boundary: a third-party plugin that fails to register is named and skipped,
never fatal; a third-party name that takes a built-in's is skipped (the built-in wins); two
third-party plugins with one name stop with the way to disable one; a registration hook
registers its own kind only; built-in failures still raise (they are bugs). Degradations:
the chain checks every step's params and output and names the step; DegradationChain.probe
refuses, before a build writes anything, a step that is not deterministic, depends on the
batch, writes into its input or declares no severity axis."""
from __future__ import annotations

import json
import textwrap
import time
import types
import warnings

import pytest
import torch
from click.testing import CliRunner

from synfiqa.degradation import PROBE_IMAGES, ChainStep, DegradationChain, probe_images
from synfiqa.errors import DuplicateComponentError, PluginError, UnknownComponentError
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
    with pytest.raises(UnknownComponentError, match=r"Skipped plugins, which may have offered it: "
                                                   r"stamp_plugin \(stamp-dist\); see `synfiqa plugins list`"):
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


# ------------------------------------------------------------ degradations at the chain's boundary


class Good:
    """A well-behaved degradation: darkens by a seeded amount, sample by sample."""

    severity_axes = ("amount",)

    def sample_params(self, n, generator):
        return {"amount": torch.rand(n, generator=generator, dtype=torch.float64)}

    def apply(self, images, params, landmarks=None):
        scale = (1 - 0.5 * params["amount"]).view(-1, 1, 1, 1)
        return (images.to(torch.float64) * scale).round().to(torch.uint8)


class FloatOutput(Good):
    def apply(self, images, params, landmarks=None):
        return images.to(torch.float32) / 255


class WrongShape(Good):
    def apply(self, images, params, landmarks=None):
        return images[:, :, ::2, ::2].contiguous()


class NotATensor(Good):
    def apply(self, images, params, landmarks=None):
        return images.permute(0, 2, 3, 1).numpy()


class DropsASample(Good):
    def apply(self, images, params, landmarks=None):
        return images[1:].clone()


class Nondeterministic(Good):
    def apply(self, images, params, landmarks=None):
        noise = torch.randint(0, 8, images.shape, dtype=torch.uint8)  # the global generator
        return images // 2 + noise


class BatchDependent(Good):
    def apply(self, images, params, landmarks=None):
        # normalises by the batch's mean brightness: a sample's result depends on its neighbours
        return (images.to(torch.float64) * 100 / images.to(torch.float64).mean()).clamp(0, 255).to(torch.uint8)


class NoAxis(Good):
    severity_axes = ()


class AxisNotAParam(Good):
    severity_axes = ("strength",)


class IntegerAxis(Good):
    def sample_params(self, n, generator):
        return {"amount": torch.randint(0, 5, (n,), generator=generator)}


class WritesIntoItsInput(Good):
    def apply(self, images, params, landmarks=None):
        images //= 2
        return images.clone()


class ImpureParams(Good):
    def sample_params(self, n, generator):
        return {"amount": torch.rand(n, dtype=torch.float64)}  # ignores the generator


class ParamsOfWrongLength(Good):
    def sample_params(self, n, generator):
        return {"amount": torch.rand(n, generator=generator, dtype=torch.float64), "table": torch.zeros(5)}


class ParamsAsFloats(Good):
    def sample_params(self, n, generator):
        return {"amount": [0.5] * n}


class RaisesOnApply(Good):
    def apply(self, images, params, landmarks=None):
        raise KeyError("landmarks_68")


def chain_of(degradation, name="odd") -> DegradationChain:
    return DegradationChain([ChainStep(name, degradation, owner="plugin 'odd_plugin' (odd-dist 1.0)")])


def probe_inputs(chain, n=2):
    images = probe_images(n)
    return images, chain.sample(1, "someone", list(range(n)))


@pytest.mark.parametrize("degradation, what", [
    (FloatOutput(), "apply returned float32 images; a degradation returns uint8"),
    (WrongShape(), "apply returned shape [2, 3, 56, 56] for input of shape [2, 3, 112, 112]"),
    (NotATensor(), "apply returned a ndarray, not a torch.Tensor"),
    (DropsASample(), "apply returned shape [1, 3, 112, 112] for input of shape [2, 3, 112, 112]"),
], ids=["float", "shape", "numpy", "drops-a-sample"])
def test_apply_checks_every_steps_output_and_names_the_step(degradation, what):
    chain = DegradationChain([ChainStep("first", Good()), ChainStep("odd", degradation, owner="plugin 'odd_plugin' "
                                                                                              "(odd-dist 1.0)")])
    images, sampled = probe_inputs(chain)
    with pytest.raises(PluginError) as raised:
        chain.apply(images, sampled)
    message = str(raised.value)
    assert message.startswith("degradation 'odd' of plugin 'odd_plugin' (odd-dist 1.0): ")
    assert what in message and "\n" not in message


def test_a_good_chain_applies_unchanged():
    chain = DegradationChain([ChainStep("one", Good()), ChainStep("two", Good())])
    images, sampled = probe_inputs(chain, n=4)
    out = chain.apply(images, sampled)
    expected = images
    for step, params in zip(chain.steps, sampled):
        expected = step.degradation.apply(expected, params)
    assert torch.equal(out, expected)
    chain.probe()


def test_an_error_inside_a_step_is_noted_with_the_step():
    chain = chain_of(RaisesOnApply())
    images, sampled = probe_inputs(chain)
    with pytest.raises(KeyError) as raised:
        chain.apply(images, sampled)
    assert any("degradation 'odd' of plugin 'odd_plugin'" in note for note in raised.value.__notes__)


@pytest.mark.parametrize("degradation", [ParamsOfWrongLength(), ParamsAsFloats()], ids=["length", "list"])
def test_sample_checks_the_params(degradation):
    with pytest.raises(PluginError, match="degradation 'odd' of plugin 'odd_plugin'.*sample_params"):
        chain_of(degradation).sample(1, "someone", [0, 1])


@pytest.mark.parametrize("degradation, why", [
    (Nondeterministic(), "is not deterministic: the same images and params gave different output"),
    (BatchDependent(), "output depends on the batch: probe image 0 comes out differently alone"),
    (NoAxis(), "declares no severity axis; the sd score needs at least one"),
    (AxisNotAParam(), "severity axis 'strength' must be a 1-D float param (it is not among the params)"),
    (IntegerAxis(), "severity axis 'amount' must be a 1-D float param (it is int64"),
    (WritesIntoItsInput(), "apply writes into its input images"),
    (ImpureParams(), "sample_params is not pure"),
    (ParamsOfWrongLength(), "returned params['table'] of shape (5,); its first dimension must be 1"),
    (FloatOutput(), "apply returned float32 images"),
    (WrongShape(), "apply returned shape [3, 3, 56, 56] for input of shape [3, 3, 112, 112]"),
    (RaisesOnApply(), f"failed on synfiqa's probe batch ({PROBE_IMAGES} images of 112x112): KeyError('landmarks_68')"),
], ids=["nondeterministic", "batch-dependent", "no-axis", "axis-not-a-param", "integer-axis", "writes-input",
        "impure-params", "params-length", "float", "shape", "raises"])
def test_probe_refuses_a_step_that_breaks_the_contract(degradation, why):
    chain = DegradationChain([ChainStep("first", Good()), ChainStep("odd", degradation, owner="plugin 'odd_plugin' "
                                                                                              "(odd-dist 1.0)")])
    with pytest.raises(PluginError) as raised:
        chain.probe()
    message = str(raised.value)
    assert "degradation 'odd' of plugin 'odd_plugin' (odd-dist 1.0)" in message
    assert why in message, message
    assert "\n" not in message


def test_the_owner_comes_from_the_registry():
    source = HEADER + """
    class Floaty(Stamp):
        def apply(self, images, params, landmarks=None):
            return images.float()

    @hookimpl
    def register_degradations(register):
        register("floaty", Floaty)
"""
    registry = registry_with(("floaty_plugin", "floaty-dist", source))
    chain = DegradationChain.from_config({"degrade": {"chain": ["floaty"], "params": {}}}, registry)
    with pytest.raises(PluginError, match=r"degradation 'floaty' of plugin 'floaty_plugin' \(floaty-dist 1.0\): "
                                          r"apply returned float32 images"):
        chain.probe()


def test_probe_passes_every_builtin_and_costs_little(registry_session, one_torch_thread):
    from synfiqa.catalogue import load_catalogue

    catalogue, _ = load_catalogue()
    names = sorted(name for kind, name in catalogue if kind == "degradation")
    params = {"blur-downscale": {"mode": "reference"}}  # no compile inside a test
    chain = DegradationChain([ChainStep(name, registry_session.create("degradation", name, **params.get(name, {})))
                              for name in names])
    chain.probe()
    chain.probe(96)
    chain.probe((96, 80))
    started = time.perf_counter()
    chain.probe()
    # ~0.2 s for all seven on a quiet core (blur-downscale's reference mode is most of it);
    # a build runs one chain, and a loaded shared machine is slower
    assert time.perf_counter() - started < 5.0


def test_an_empty_chain_probes_to_nothing():
    DegradationChain([]).probe()


def test_a_build_names_the_plugin_whose_output_is_wrong(tmp_path, monkeypatch, faces_dir):
    """End to end: a plugin returning float images stops `synfiqa build` with one line naming
    it (exit code 2), not a PIL error deep in the JPEG writer."""
    write_distribution(tmp_path / "site", "floaty-dist", "floaty_plugin", HEADER + """
    class Floaty(Stamp):
        def apply(self, images, params, landmarks=None):
            return images.float()

    @hookimpl
    def register_degradations(register):
        register("floaty", Floaty)
""")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    result = CliRunner().invoke(cli, ["build", "--out", str(tmp_path / "out"), "--input", str(faces_dir),
                                      "--set", "run.degraded=1", "--set", 'degrade.chain=["floaty"]',
                                      "--set", 'annotate.chain=["sd"]', "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert "degradation 'floaty' of plugin 'floaty_plugin' (floaty-dist 1.0)" in lines[0]
    assert "float32" in lines[0]


def test_a_plugin_whose_commands_fail_is_named_and_the_others_keep_theirs():
    import click

    good = """
    import click
    from synfiqa import hookimpl

    @hookimpl
    def register_commands(cli):
        @cli.command("hello")
        def hello():
            click.echo("hi")
"""
    bad = """
    import click
    from synfiqa import hookimpl

    @hookimpl
    def register_commands(cli):
        @cli.command("half")
        def half():
            pass
        raise RuntimeError("no terminal colours")
"""

    @click.group()
    def group():
        pass

    manager = SynfiqaPluginManager()
    manager.register_module(plugin_module("good_commands", good), "good-dist", "1.0")
    manager.register_module(plugin_module("bad_commands", bad), "bad-dist", "1.0")
    with pytest.warns(PluginWarning, match="'bad_commands' from bad-dist.*no terminal colours.*"
                                           "SYNFIQA_DISABLE_PLUGINS=bad-dist"):
        manager.add_commands(group)
    assert sorted(group.commands) == ["hello"]
    assert [f.distribution for f in manager.failed] == ["bad-dist"]
