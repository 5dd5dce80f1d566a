"""The command line starts without torch: `synfiqa --help`, `plugins list/show`, `config show`
and `models list` import no plugin module, and what they print from registry.toml and the
lazy command table is what the modules themselves say once imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from synfiqa.catalogue import builtin_commands, load_catalogue
from synfiqa.plugins import SynfiqaPluginManager, build_plugin_manager
from synfiqa.registry import Registry, factory_defaults

HEAVY = ("torch", "scipy", "cv2", "transformers", "diffusers", "numpy")

# runs the CLI in a fresh interpreter and prints the heavy modules it imported
PROBE = """
import json, sys
from synfiqa_cli.main import cli
try:
    cli(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print("\\nIMPORTED=" + json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def run_probe(*args: str) -> tuple[str, list[str]]:
    env = {**os.environ, "SYNFIQA_DISABLE_PLUGINS": "1"}  # a third party's imports are its own
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    output, _, imported = result.stdout.rpartition("IMPORTED=")
    return output, json.loads(imported)


@pytest.mark.parametrize("args", [
    ["--help"], ["plugins", "list"], ["plugins", "list", "--json"], ["plugins", "show", "blur-downscale"],
    ["config", "show"], ["models", "list"],
])
def test_these_commands_import_no_torch(args):
    output, imported = run_probe(*args)
    assert output.strip()
    assert imported == [], f"synfiqa {' '.join(args)} imported {imported}"


def test_help_lists_every_command_and_running_one_imports_it():
    output, _ = run_probe("--help")
    for name in ("build", "generate", "filter", "degrade", "annotate", "score", "evaluate", "export", "train",
                 "convert", "render", "plugins", "config", "models"):
        assert f"\n  {name} " in output, name
    # a subcommand a built-in plugin adds to a stage group appears once that group is looked up
    output, imported = run_probe("convert", "--help")
    for name in ("guided-diffusion", "blip", "caphuman"):
        assert f"  {name} " in output, name
    assert "torch" in imported  # the converters' modules were imported: for `convert` only


def _cli():
    from synfiqa_cli.main import LAZY_COMMANDS, cli

    return LAZY_COMMANDS, cli


def test_the_lazy_table_says_what_each_command_says():
    import importlib

    lazy, _ = _cli()
    for name, (module_name, short_help) in lazy.items():
        commands = {c.name: c for c in importlib.import_module(module_name).COMMANDS}
        assert name in commands, (name, module_name)
        announced = click.Command(name, help=short_help)
        for limit in (45, 60, 80, 500):
            assert announced.get_short_help_str(limit) == commands[name].get_short_help_str(limit), (name, limit)


def test_the_catalogue_announces_each_builtin_command_as_it_is():
    _, cli = _cli()
    ctx = click.Context(cli)
    for path, entry in builtin_commands().items():
        group_name, *rest = path.split()
        command = cli.get_command(ctx, group_name)
        assert command is not None, path
        if rest:
            command = command.get_command(ctx, rest[0])
            assert command is not None, path
        else:
            announced = click.Command(group_name, help=entry.summary)
            assert announced.get_short_help_str(500) == command.get_short_help_str(500), path


def test_a_command_added_by_a_builtin_runs():
    _, cli = _cli()
    result = CliRunner().invoke(cli, ["render", "--help"])
    assert result.exit_code == 0, result.output
    assert "FLAME" in result.output


def eager_registry() -> Registry:
    manager = SynfiqaPluginManager()
    manager.load_missing_builtins()
    return Registry(manager)


def same(a, b) -> bool:
    """registry.toml's value against the factory's: TOML writes arrays where Python has tuples."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_registry_toml_says_exactly_what_each_builtin_registers():
    """What `plugins list/show` print before a module is imported: every built-in component with
    its summary and all of its factory's defaults (values and types)."""
    eager = eager_registry()
    catalogue, _ = load_catalogue()
    builtins = {(c.kind, c.name): c for c in eager.components() if c.distribution == "synfiqa"}
    assert set(builtins) == set(catalogue)
    for key, component in builtins.items():
        announced = catalogue[key].defaults
        assert announced.keys() == component.defaults.keys(), key
        assert all(same(announced[k], component.defaults[k]) for k in announced), (key, announced, component.defaults)
        assert component.defaults == factory_defaults(component.factory) | component.defaults
        assert component.summary == catalogue[key].summary


def test_the_lazy_registry_lists_as_the_eager_one_and_imports_on_creation():
    lazy = Registry(build_plugin_manager())
    eager = eager_registry()
    builtin = [c for c in lazy.components() if c.distribution == "synfiqa"]
    assert builtin and not any(c.imported for c in builtin)
    assert [(c.kind, c.name, c.summary, c.plugin) for c in builtin] == \
        [(c.kind, c.name, c.summary, c.plugin) for c in eager.components() if c.distribution == "synfiqa"]
    jpeg = lazy.get("degradation", "jpeg")
    assert jpeg.factory is eager.get("degradation", "jpeg").factory  # the same class, imported now
    assert jpeg.imported and jpeg.defaults == eager.get("degradation", "jpeg").defaults
    # only that module was imported (and registered): another built-in stays announced
    assert not lazy.get("annotator", "vl").imported
    assert "synfiqa_plugins.degradations.jpeg" in {p.module for p in lazy.manager.loaded}


def test_a_bad_parameter_of_a_component_not_imported_is_still_refused():
    from synfiqa.config import load_config
    from synfiqa.errors import ConfigError

    registry = Registry(build_plugin_manager())
    with pytest.raises(ConfigError, match="degrade.params.blur-downscale: bad parameters.*no_such_parameter"):
        load_config(None, ["degrade.params.blur-downscale.no_such_parameter=1"], registry=registry)
    # parameters among the announced defaults bind without importing the module
    load_config(None, ["filter.params.yaw.max_abs_yaw=15.0"], registry=registry)
    assert not registry.get("filter", "yaw").imported


def test_every_builtin_hook_is_a_real_hook():
    """build_plugin_manager no longer imports the built-ins, so their hooks are checked here."""
    manager = SynfiqaPluginManager()
    manager.load_missing_builtins()
    manager.check_hooks()
    manager.check_pending()
    assert manager.failed == []


THIRD_PARTY = """
import click
from synfiqa import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command("lightweight")
    def lightweight():
        '''A third party's command, light to import.'''
        click.echo("lightweight ran")

    @cli.commands["convert"].command("lightweight-checkpoint")
    def convert_lightweight():
        '''A third party's converter, in the built-in convert group.'''
"""


def test_a_third_party_command_is_listed_runs_and_may_join_a_stage_group(tmp_path):
    """A third party's module is imported at start (its commands are known no other way): its
    commands show in --help and run, a subcommand it adds to `convert` sits beside the built-ins'
    (which are still imported only when `convert` is looked up), and a light plugin keeps the
    start free of torch."""
    from distributions import write_distribution

    site = tmp_path / "site"
    write_distribution(site, "synfiqa-lightweight", "lightweight_plugin", THIRD_PARTY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("SYNFIQA_DISABLE_PLUGINS", None)

    def probe(*args):
        result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        output, _, imported = result.stdout.rpartition("IMPORTED=")
        return output, json.loads(imported)

    output, imported = probe("--help")
    assert "  lightweight " in output and "A third party's command" in output
    assert imported == []
    output, _ = probe("lightweight")
    assert "lightweight ran" in output
    output, _ = probe("convert", "--help")
    for name in ("lightweight-checkpoint", "guided-diffusion", "blip", "caphuman"):
        assert f"  {name} " in output, name
