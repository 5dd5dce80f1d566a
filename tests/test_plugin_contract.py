"""The public plugin contract, with no built-in privileges: register takes its options by
keyword and the kind from the hook; a component's defaults are its factory's for everybody
(registry.toml's are documentation); model assets of built-ins (registry.toml) and of
plugins (register_model_assets) go through one code path into the offline lookup; a
misspelt hook fails loudly (a built-in raises, a third-party plugin is named and skipped);
synfiqa.protocols states the optional members' defaults once; the degradation input checks
are public, so the README's example and the example package pass every check of the kit;
every hook has its section in docs/plugins.md. A real third-party package
(tests/plugin_packages/synfiqa-fogbank), installed with pip, brings an asset found from
$SYNFIQA_WEIGHTS, a degradation that passes the kit and a command in `synfiqa --help`."""
from __future__ import annotations

import ast
import doctest
import hashlib
import importlib.util
import inspect
import json
import re
import shutil
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pluggy
import pytest
from click.testing import CliRunner

from synfiqa.catalogue import load_catalogue
from synfiqa.errors import DuplicateComponentError, PluginError, UnknownComponentError, WeightsNotFoundError
from synfiqa.plugins import PluginWarning, SynfiqaPluginManager, build_plugin_manager
from synfiqa.registry import HOOKS, Registry, factory_defaults
from synfiqa.testing import DegradationConformance, run_checks
from synfiqa_cli.main import cli
from tests.distributions import write_distribution

REPO = Path(__file__).resolve().parent.parent
PACKAGES = Path(__file__).resolve().parent / "plugin_packages"
FOGBANK = PACKAGES / "synfiqa-fogbank"
EXAMPLE = REPO / "examples" / "synfiqa-vignette"
VEIL = b"fogbank veil: grey level 200\n"


def plugin_module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(textwrap.dedent(source), module.__dict__)
    return module


def registry_with(*plugins: tuple[str, str, str]) -> Registry:
    """The built-ins plus (module name, distribution, source) plugins, registered by hand as
    entry points would be."""
    manager = SynfiqaPluginManager()
    for name, distribution, source in plugins:
        manager.register_module(plugin_module(name, source), distribution, "1.0")
    manager.load_missing_builtins()
    return Registry(manager)


STAMP = """
    import torch
    from synfiqa import hookimpl

    class Stamp:
        severity_axes = ("amount",)
        def __init__(self, amount=(0.0, 1.0), colour: str = "red", *, size: int = 3):
            self.amount, self.colour, self.size = amount, colour, size
        def sample_params(self, n, generator):
            return {"amount": torch.rand(n, generator=generator, dtype=torch.float64)}
        def apply(self, images, params, landmarks=None):
            return images.clone()
"""


# ------------------------------------------------------------ register: keywords, kinds, defaults


def test_register_takes_options_by_keyword_only():
    source = STAMP + """
    @hookimpl
    def register_degradations(register):
        register("stamp", Stamp, "a stamp")
"""
    with pytest.warns(PluginWarning, match="only the name and the factory are positional"):
        registry = registry_with(("positional_plugin", "positional", source))
    assert [f.distribution for f in registry.manager.failed] == ["positional"]
    assert registry.find("stamp") == []


def test_the_builtins_pass_nothing_positional_after_the_factory():
    """Every built-in registration fits the keyword-only signature: register(name, factory,
    **keywords)."""
    seen = 0
    for path in sorted((REPO / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "register":
                seen += 1
                assert len(node.args) <= 2, f"{path.relative_to(REPO)}:{node.lineno} passes options positionally"
    assert seen > 20


def test_defaults_are_the_factorys_for_everybody():
    source = STAMP + """
    @hookimpl
    def register_degradations(register):
        register("stamp", Stamp)
        register("stamp-blue", Stamp, defaults={"colour": "blue", "extra": 1})
"""
    registry = registry_with(("stamp_plugin", "stamp-dist", source))
    plain = registry.get("degradation", "stamp")
    assert plain.defaults == {"amount": (0.0, 1.0), "colour": "red", "size": 3}
    assert registry.get("degradation", "stamp-blue").defaults == {"amount": (0.0, 1.0), "colour": "blue",
                                                                   "size": 3, "extra": 1}
    assert plain.create(colour="green").colour == "green"
    # a built-in's defaults come from the same place: its factory, not registry.toml
    for component in registry.components():
        if component.distribution == "synfiqa":
            assert component.defaults == factory_defaults(component.factory), (component.kind, component.name)


def test_registry_toml_defaults_are_documentation_that_agrees():
    """registry.toml's `defaults` tables grant nothing (the registry does not read them); where
    they remain, they must say what the factory says."""

    def same(a, b):
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    registry = Registry()
    catalogue, _ = load_catalogue()
    for (kind, name), entry in catalogue.items():
        defaults = registry.get(kind, name).defaults
        for key, value in entry.defaults.items():
            assert key in defaults and same(defaults[key], value), (kind, name, key, value, defaults.get(key))


def test_a_hook_registers_its_own_kind_only():
    source = STAMP + """
    @hookimpl
    def register_degradations(register):
        register("stamp", Stamp, kind="annotator")
"""
    with pytest.warns(PluginWarning, match="register_degradations registers degradations only"):
        registry = registry_with(("kind_plugin", "kind-dist", source))
    assert registry.find("stamp") == []
    assert set(HOOKS) == {"register_generators", "register_filters", "register_stage2_backends", "register_degradations",
                          "register_annotators", "register_models", "register_model_assets"}


# ------------------------------------------------------------ misspelt hooks


MISSPELT = STAMP + """
    @hookimpl
    def register_degradation(register):
        register("stamp", Stamp)

    @hookimpl
    def register_models(register):
        pass
"""


def test_a_third_party_misspelt_hook_is_named_and_skipped():
    with pytest.warns(PluginWarning) as caught:
        registry = registry_with(("misspelt_plugin", "misspelt-dist", MISSPELT))
    message = " ".join(str(w.message) for w in caught)
    assert "'misspelt_plugin' from misspelt-dist is skipped" in message
    assert "'register_degradation', which is not a synfiqa hook (did you mean 'register_degradations'?)" in message
    assert "SYNFIQA_DISABLE_PLUGINS=misspelt-dist" in message
    [failed] = registry.manager.failed
    assert failed.distribution == "misspelt-dist" and "register_degradation" in failed.error
    assert not registry.manager.has_plugin("misspelt_plugin")
    registry.manager.check_pending()  # what is left is what pluggy accepts
    assert registry.get("degradation", "jpeg").distribution == "synfiqa"


def test_a_builtin_misspelt_hook_is_a_bug_and_raises():
    manager = SynfiqaPluginManager()
    manager.register_module(plugin_module("synfiqa_plugins.misspelt", MISSPELT), "synfiqa", "0")
    manager.load_missing_builtins()
    with pytest.raises(pluggy.PluginValidationError, match="built-in plugin 'synfiqa_plugins.misspelt'.*"
                                                           "register_degradation"):
        Registry(manager)


def test_the_builtins_implement_only_real_hooks():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        manager = build_plugin_manager()
    manager.check_pending()
    assert manager.failed == []


# ------------------------------------------------------------ model assets: one code path


def test_builtin_assets_are_registered_through_the_hook():
    from synfiqa.weights import all_assets

    _, catalogue_assets = load_catalogue()
    assets = all_assets()
    assert set(catalogue_assets) <= set(assets)
    for name, entry in catalogue_assets.items():
        registered = assets[name]
        assert (registered.distribution, registered.plugin) == ("synfiqa", "synfiqa.catalogue")
        assert (registered.files, registered.license, registered.source, registered.summary, registered.package,
                registered.hf_repo, registered.cache_dirs) == (entry.files, entry.license, entry.source,
                                                               entry.summary, entry.package, entry.hf_repo,
                                                               entry.cache_dirs)


ASSETS = """
    from synfiqa import hookimpl

    @hookimpl
    def register_model_assets(register):
        {body}
"""


def assets_plugin(body: str) -> str:
    return ASSETS.replace("{body}", body)


def test_a_third_party_asset_cannot_take_a_builtin_name():
    source = assets_plugin('register("sface", files="mine.onnx", license="MIT", source="mine")\n'
                           '        register("mine", files="mine.onnx", license="MIT", source="mine")')
    with pytest.warns(PluginWarning, match="model asset 'sface' is registered twice.*built-in is kept"):
        registry = registry_with(("asset_plugin", "asset-dist", source))
    assert registry.asset("sface").distribution == "synfiqa"
    assert registry.asset("mine").distribution == "asset-dist"
    assert [(s.kind, s.name) for s in registry.skipped] == [("asset", "sface")]


def test_two_third_party_assets_with_one_name():
    source = assets_plugin('register("mine", files="mine.onnx", license="MIT", source="mine")')
    with pytest.raises(DuplicateComponentError, match="model asset 'mine'.*SYNFIQA_DISABLE_PLUGINS=one"):
        registry_with(("one_plugin", "one", source), ("two_plugin", "two", source))


@pytest.mark.parametrize("call, why", [
    ('register("../up", files="a.bin", license="MIT", source="s")', "folder name"),
    ('register("a", files="/abs/a.bin", license="MIT", source="s")', "relative path"),
    ('register("a", files={"a.bin": "abc"}, license="MIT", source="s")', "64 lower-case hex"),
    ('register("a", files=[], license="MIT", source="s")', "files is empty"),
    ('register("a", files="a.bin", license="MIT", source="")', "where to get"),
    ('register("a", files="a.bin", license="MIT")', "source"),
    ('register("a", files="a.bin", license="MIT", source="s", colour=1)', "unknown arguments"),
    ('register("a", "a.bin", license="MIT", source="s")', "by keyword"),
], ids=["name", "absolute", "sha", "empty", "no-source", "missing", "extra", "positional"])
def test_malformed_assets_skip_the_plugin(call, why):
    with pytest.warns(PluginWarning, match=why):
        registry = registry_with(("bad_assets", "bad-assets", assets_plugin(call)))
    assert [f.distribution for f in registry.manager.failed] == ["bad-assets"]


def test_asset_files_forms(isolated):
    from synfiqa.weights import locate

    digest = hashlib.sha256(b"x").hexdigest()
    source = assets_plugin(
        f'register("one", files="one.bin", license="MIT", source="s")\n'
        f'        register("map", files={{"m.bin": "{digest}"}}, license="MIT", source="s")\n'
        f'        register("list", files=["a.bin", {{"path": "sub/b.bin", "size": 1}}], license="MIT", source="s",'
        f' hf_repo=["org/x"], cache_dirs=["~/.tool"])')
    registry = registry_with(("forms_plugin", "forms", source))
    assert [(f.path, f.sha256, f.size) for f in registry.asset("list").files] == [("a.bin", None, None),
                                                                                ("sub/b.bin", None, 1)]
    assert registry.asset("list").hf_repo == ("org/x",) and registry.asset("list").cache_dirs == ("~/.tool",)
    folder = isolated / "weights" / "map"
    folder.mkdir(parents=True)
    (folder / "m.bin").write_bytes(b"x")
    assert locate(registry.asset("map")).origin == "$SYNFIQA_WEIGHTS"
    (folder / "m.bin").write_bytes(b"y")
    with pytest.raises(WeightsNotFoundError, match="wrong sha256"):
        locate(registry.asset("map"))
    with pytest.raises(WeightsNotFoundError, match="unknown model asset 'mapp'; Did you mean 'map'"):
        registry.asset("mapp")


def test_a_lookup_while_registering_is_refused_not_recursive(tmp_path, monkeypatch):
    """A registration hook that asks for an asset (or a component) while the process-wide
    registry is being built gets a PluginError, not an endless recursion: its plugin is
    skipped and named."""
    from synfiqa.registry import get_registry

    write_distribution(tmp_path, "eager-dist", "eager_plugin", """
        from synfiqa import hookimpl

        @hookimpl
        def register_model_assets(register):
            from synfiqa.weights import locate
            locate("sface")
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    with pytest.warns(PluginWarning, match="eager_plugin.*while its registration hook ran"):
        registry = get_registry(refresh=True)
    assert [f.distribution for f in registry.manager.failed] == ["eager-dist"]
    assert get_registry() is registry


# ------------------------------------------------------------ protocols


def test_every_builtin_offers_its_kinds_required_members():
    from synfiqa.protocols import REQUIRED

    registry = Registry()
    for component in registry.components():
        if inspect.isclass(component.factory):
            missing = [m for m in REQUIRED[component.kind] if not hasattr(component.factory, m)]
            assert not missing, (component.kind, component.name, missing)


def test_protocol_helpers_state_the_defaults_once():
    import torch

    from synfiqa import protocols as p

    class Bare:
        def detect(self, image):
            return []

        def embed(self, crops):
            return crops

    bare = Bare()
    assert isinstance(bare, p.Detector) and isinstance(bare, p.Embedder) and not isinstance(bare, p.FIQAScorer)
    assert p.min_face_size(bare) == p.BaseDetector.min_face_size == 20
    assert p.same_identity_threshold(bare) is None and p.model_variant(bare) == ""
    assert not p.is_generative(bare) and p.input_folder(bare) is None and p.skipped_files(bare) == []
    assert p.requires(bare) == () and not p.include_yaw(bare) and p.missing_domains(bare, None) == []
    p.prepare(bare, None)

    class Picky(p.BaseDetector, p.BaseEmbedder):
        min_face_size = 40.5
        same_identity_threshold = 0.4

    assert p.min_face_size(Picky()) == 41 and p.same_identity_threshold(Picky()) == 0.4
    Picky.min_face_size = "big"
    with pytest.raises(PluginError, match="min_face_size must be a number"):
        p.min_face_size(Picky())

    class HalfGenerative:
        def generate_indices(self, indices, seed):
            return iter(())

    with pytest.raises(PluginError, match="identity_name, metadata, count"):
        p.is_generative(HalfGenerative())

    class Mean(p.BaseAnnotator):
        scope, provides, requires = "identity", ("mean",), ("fr",)

        def annotate_identity(self, samples, references, context):
            return {"mean": samples.float().mean(dim=(1, 2, 3))}

    assert isinstance(Mean(), p.Annotator) and p.requires(Mean()) == ("fr",) and p.declared_scope(Mean) == "identity"
    assert p.missing_members(Mean(), "annotator") == [] and p.missing_members(bare, "fiqa") == ["score"]
    assert set(p.optional_members("detector")) == {"min_face_size"}
    assert set(p.PROTOCOLS) == set(p.REQUIRED) == set(p.OPTIONAL) == set(p.BASES)
    assert isinstance(Mean().annotate_identity(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), None, None), dict)


# ------------------------------------------------------------ the kit, the README and the example


def test_the_readme_example_passes_every_check_of_the_kit():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Writing a plugin"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = plugin_module("readme_vignette", code)
    results = run_checks(DegradationConformance, factory=module.Vignette)
    assert len(results) == 24
    assert all(r.passed for r in results), [str(r) for r in results if not r.passed]


def test_the_example_package_ships_a_test_that_passes_every_check(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    spec = importlib.util.spec_from_file_location("example_test_vignette", EXAMPLE / "tests" / "test_vignette.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert issubclass(module.TestVignette, DegradationConformance)
    results = run_checks(module.TestVignette)
    assert len(results) == 24
    assert all(r.passed for r in results), [str(r) for r in results if not r.passed]


def test_run_checks_reports_each_failure():
    class Careless:
        severity_axes = ("strength",)

        def sample_params(self, n, generator):
            import torch
            return {"strength": torch.rand(n, generator=generator, dtype=torch.float64)}

        def apply(self, images, params, landmarks=None):
            return images.clone()

    results = {r.check: r for r in run_checks(DegradationConformance, factory=Careless)}
    assert results["test_apply_is_deterministic"].passed
    assert not results["test_rejects_float_images"].passed
    assert "DID NOT RAISE" in results["test_rejects_float_images"].message
    assert not results["test_rejects_malformed_landmarks[flat]"].passed


# ------------------------------------------------------------ docs


def test_every_hook_has_a_section_in_docs_plugins_md():
    from synfiqa import hookspecs

    docs = (REPO / "docs" / "plugins.md").read_text()
    headings = [line for line in docs.splitlines() if line.startswith("## ")]
    marker = hookspecs.hookspec.project_name + "_spec"   # what @hookspec sets on a function
    hooks = [name for name, value in vars(hookspecs).items()
             if inspect.isfunction(value) and getattr(value, marker, None) is not None]
    assert len(hooks) == 8, hooks
    for name in hooks:
        assert any(f"`{name}(" in heading for heading in headings), f"docs/plugins.md has no section for {name}"
    for switch in ("SYNFIQA_DISABLE_PLUGINS", "SYNFIQA_PLUGINS"):
        assert switch in docs


@pytest.mark.parametrize("module", ["synfiqa.hookspecs", "synfiqa.protocols"])
def test_the_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------ a third-party package, installed


def pip_install(package: Path, target: Path) -> None:
    """Install a plugin package with pip into `target` (no network, no dependencies), built
    from a copy so that no build folders are left in the repository."""
    source = target.parent / f"{package.name}-source"
    shutil.copytree(package, source)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def fogbank_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("fogbank") / "site"
    pip_install(FOGBANK, site)
    return site


@pytest.fixture
def fogbank(fogbank_site, monkeypatch, isolated):
    """synfiqa-fogbank installed and enabled, and its veil file in $SYNFIQA_WEIGHTS."""
    monkeypatch.syspath_prepend(str(fogbank_site))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    folder = isolated / "weights" / "fogbank-veil"
    folder.mkdir(parents=True)
    (folder / "veil.txt").write_bytes(VEIL)
    return folder / "veil.txt"


def test_third_party_asset_is_found_offline_and_listed(fogbank):
    from synfiqa.weights import all_assets, asset_report, locate

    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        found = locate("fogbank-veil")
    assert (found.origin, found.files["veil.txt"]) == ("$SYNFIQA_WEIGHTS", fogbank)
    entry = all_assets()["fogbank-veil"]
    assert (entry.distribution, entry.version, entry.license) == ("synfiqa-fogbank", "0.2.0", "CC0-1.0")
    [row] = [row for row in asset_report() if row["asset"] == "fogbank-veil"]
    assert row["found"] and row["origin"] == "$SYNFIQA_WEIGHTS" and row["distribution"] == "synfiqa-fogbank"
    assert {"sface", "mtcnn"} <= {row["asset"] for row in asset_report()}   # with the built-ins'
    fogbank.write_bytes(b"fogbank veil: grey level 100\n")   # the declared sha256 is checked
    with pytest.raises(WeightsNotFoundError, match="wrong sha256.*write 'fogbank veil"):
        locate("fogbank-veil")
    fogbank.unlink()
    with pytest.raises(WeightsNotFoundError, match=r"(?s)'fogbank-veil' not found.*\$SYNFIQA_WEIGHTS/fogbank-veil/"):
        locate("fogbank-veil")


def test_third_party_degradation_passes_the_kit(fogbank):
    registry = Registry()
    component = registry.get("degradation", "haze")
    assert (component.distribution, component.defaults) == ("synfiqa-fogbank", {"density": (0.0, 0.7), "veil": 200.0})
    results = run_checks(DegradationConformance,
                         factory=lambda **params: registry.create("degradation", "haze", **params))
    assert len(results) == 24
    assert all(r.passed for r in results), [str(r) for r in results if not r.passed]


def test_third_party_command_is_in_synfiqa_help(fogbank):
    before = dict(cli.commands)
    try:
        build_plugin_manager().add_commands(cli)   # what synfiqa_cli.main does when it is imported
        runner = CliRunner()
        shown = runner.invoke(cli, ["--help"])
        assert shown.exit_code == 0, shown.output
        assert re.search(r"^\s+fogbank\s+Where the fogbank veil asset is", shown.output, re.M), shown.output
        ran = runner.invoke(cli, ["fogbank"])
        assert ran.exit_code == 0, ran.output
        assert ran.output == "fogbank-veil: grey level 200\n"
    finally:
        cli.commands.clear()
        cli.commands.update(before)


def test_models_list_data_includes_the_third_party_asset(fogbank):
    """What `synfiqa models list --json` prints, through synfiqa.weights.asset_report."""
    from synfiqa.weights import asset_report

    rows = json.loads(json.dumps(asset_report()))
    assert [r["asset"] for r in rows] == sorted(r["asset"] for r in rows)
    assert any(r["asset"] == "fogbank-veil" and r["found"] for r in rows)


def test_a_copy_with_a_misspelt_hook_fails_loudly(tmp_path, monkeypatch, isolated):
    source = (FOGBANK / "synfiqa_fogbank.py").read_text()
    assert "def register_degradations(" in source
    misspelt = source.replace("def register_degradations(", "def register_degradation(")
    write_distribution(tmp_path / "site", "fogbank-misspelt", "fogbank_misspelt", misspelt, version="0.2.1")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("SYNFIQA_DISABLE_PLUGINS")
    with pytest.warns(PluginWarning) as caught:
        registry = Registry()
    [message] = [str(w.message) for w in caught if "fogbank_misspelt" in str(w.message)]
    assert "from fogbank-misspelt is skipped" in message
    assert "'register_degradation', which is not a synfiqa hook (did you mean 'register_degradations'?)" in message
    assert "SYNFIQA_DISABLE_PLUGINS=fogbank-misspelt" in message
    # nothing of it is registered, not even what its correctly spelt hooks offer; synfiqa goes on
    with pytest.raises(UnknownComponentError, match="Skipped plugins, which may have offered it: fogbank_misspelt"):
        registry.get("degradation", "haze")
    assert "fogbank-veil" not in registry.assets()
    assert registry.get("degradation", "jpeg").distribution == "synfiqa"
    # the plugin list says why
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        listed = CliRunner().invoke(cli, ["plugins", "list"])
    assert listed.exit_code == 0, listed.output
    [line] = [line for line in listed.output.splitlines() if line.startswith("FAILED")]
    assert "fogbank_misspelt" in line and "register_degradation" in line
