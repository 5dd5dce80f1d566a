"""Plugin discovery through real entry points, ownership, duplicates and unknown names."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from synfiqa.catalogue import load_catalogue
from synfiqa.errors import DuplicateComponentError, UnknownComponentError
from synfiqa.plugins import PluginWarning
from synfiqa.registry import Registry
from synfiqa_cli.main import cli
from tests.distributions import pip_install_example, write_distribution

TWO_DEGRADATIONS = """
    from synfiqa import hookimpl

    class Stamp:
        severity_axes = ()
        def sample_params(self, n, generator):
            return {}
        def apply(self, images, params, landmarks=None):
            return images

    @hookimpl
    def register_degradations(register):
        register("{name}", Stamp, summary="does nothing")
"""


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    pip_install_example(target)
    return target


@pytest.fixture
def with_example(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    return installed_example


def test_every_catalogue_entry_is_registered_by_its_module():
    registry = Registry()
    catalogue, _ = load_catalogue()
    for (kind, name), entry in catalogue.items():
        component = registry.get(kind, name)
        assert component.distribution == "synfiqa"
        module = component.factory.__module__   # the entry's module, or a module of the entry's package
        assert module == entry.module or module.startswith(entry.module + "."), (module, entry.module)
        assert component.summary == entry.summary
    builtin = {(c.kind, c.name) for c in registry.components() if c.distribution == "synfiqa"}
    assert builtin == set(catalogue), "a built-in component is missing from registry.toml"


def test_catalogue_defaults_reach_the_component():
    component = Registry().get("annotator", "mr")
    assert component.defaults == {"lam": 0.5}
    assert component.create().lam == 0.5
    assert component.create(lam=0.25).lam == 0.25


def test_example_plugin_found_through_its_installed_entry_point(with_example):
    registry = Registry()
    component = registry.get("degradation", "vignette")
    assert component.distribution == "synfiqa-vignette"
    assert component.version == "0.1.0"
    assert any(p.distribution == "synfiqa-vignette" for p in registry.manager.loaded)


def test_disable_switch_hides_third_party_plugins(with_example, monkeypatch):
    monkeypatch.setenv("SYNFIQA_DISABLE_PLUGINS", "synfiqa-vignette")
    with pytest.raises(UnknownComponentError):
        Registry().get("degradation", "vignette")
    monkeypatch.setenv("SYNFIQA_DISABLE_PLUGINS", "")
    monkeypatch.setenv("SYNFIQA_PLUGINS", "someone-else")
    with pytest.raises(UnknownComponentError):
        Registry().get("degradation", "vignette")
    monkeypatch.setenv("SYNFIQA_PLUGINS", "synfiqa-vignette")
    assert Registry().get("degradation", "vignette").name == "vignette"


def test_duplicate_names_name_both_owners(tmp_path, monkeypatch):
    write_distribution(tmp_path, "stamp-one", "stamp_one", TWO_DEGRADATIONS.replace("{name}", "stamp"))
    write_distribution(tmp_path, "stamp-two", "stamp_two", TWO_DEGRADATIONS.replace("{name}", "stamp"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    with pytest.raises(DuplicateComponentError) as raised:
        Registry()
    message = str(raised.value)
    assert "stamp-one" in message and "stamp-two" in message and "'stamp'" in message


def test_a_plugin_cannot_take_a_builtin_name(tmp_path, monkeypatch):
    write_distribution(tmp_path, "impostor", "impostor_plugin", TWO_DEGRADATIONS.replace("{name}", "blur-downscale"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    # the built-in wins; the third-party component is skipped with a warning naming both
    with pytest.warns(PluginWarning, match="impostor"):
        registry = Registry()
    assert registry.get("degradation", "blur-downscale").distribution == "synfiqa"
    assert [(s.name, s.distribution) for s in registry.skipped] == [("blur-downscale", "impostor")]


def test_broken_plugin_is_reported_not_fatal(tmp_path, monkeypatch):
    write_distribution(tmp_path, "broken", "broken_plugin", "raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    with pytest.warns(UserWarning, match="xyz"):
        registry = Registry()
    assert [f.distribution for f in registry.manager.failed] == ["broken"]
    assert registry.get("degradation", "blur-downscale")


def test_unknown_name_suggests_close_matches():
    registry = Registry()
    with pytest.raises(UnknownComponentError, match="Did you mean 'blur-downscale'"):
        registry.get("degradation", "blur-downscal")
    with pytest.raises(UnknownComponentError, match="unknown component kind"):
        registry.get("degradations", "blur-downscale")


def test_bad_component_parameters_are_named():
    from synfiqa.errors import PluginError

    with pytest.raises(PluginError, match="unexpected keyword argument 'lambda_'"):
        Registry().create("annotator", "mr", lambda_=0.3)


def test_plugins_list_json_shows_owners(with_example):
    result = CliRunner().invoke(cli, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    owners = {(c["kind"], c["name"]): c["distribution"] for c in payload["components"]}
    assert owners[("degradation", "blur-downscale")] == "synfiqa"
    assert owners[("generator", "folder")] == "synfiqa"
    assert owners[("degradation", "vignette")] == "synfiqa-vignette"


def test_plugins_show_and_unknown(with_example):
    runner = CliRunner()
    shown = runner.invoke(cli, ["plugins", "show", "vignette"])
    assert shown.exit_code == 0
    assert json.loads(shown.output)["distribution"] == "synfiqa-vignette"
    missing = runner.invoke(cli, ["plugins", "show", "vignete"])
    assert missing.exit_code == 2
    assert "Did you mean 'vignette'" in missing.output


def test_builtins_are_announced_through_entry_points():
    """Built-ins take the same path as third-party plugins: every catalogue module is an
    entry point of the installed synfiqa distribution (a stale install fails here)."""
    from importlib import metadata

    from synfiqa.catalogue import builtin_plugin_modules

    announced = {ep.value for ep in metadata.entry_points(group="synfiqa") if ep.dist.metadata["Name"] == "synfiqa"}
    assert announced == set(builtin_plugin_modules())
