"""Packaging glue that pyproject.toml cannot express.

* The source folders keep the names of the design card (core/, plugins/, csrc/),
  but are installed under namespaced import names, so nothing called `core` or
  `plugins` lands in site-packages.
* Built-in plugins are registered through entry points generated from
  registry.toml: the same path a third-party plugin takes.
* registry.toml lives at the top of the repository; wheels carry a copy inside
  the `synfiqa` package, and the licensed demo photos (tests/data/faces, with their
  CREDITS.md) so that `synfiqa build` has its embedded default when installed.
"""
from pathlib import Path
import shutil
import tomllib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
CATALOGUE = tomllib.loads((HERE / "registry.toml").read_text())


PACKAGE_DIRS = {
    "synfiqa": "core",
    "synfiqa_plugins": "plugins",
    "synfiqa_cli": "synfiqa_cli",
    "synfiqa_csrc": "csrc",
}


def plugin_entry_points():
    modules = sorted({plugin["module"] for plugin in CATALOGUE.get("plugin", []) + CATALOGUE.get("module", [])})
    # "synfiqa_plugins.models.mtcnn" -> "models.mtcnn": unique, and says what it is
    return [f"{module.removeprefix('synfiqa_plugins.')} = {module}" for module in modules]


def discover_packages():
    """Every folder with an __init__.py under the mapped source folders, by import name."""
    packages = []
    for import_name, folder in PACKAGE_DIRS.items():
        root = HERE / folder
        for init in sorted(root.rglob("__init__.py")):
            relative = init.parent.relative_to(root)
            if "__pycache__" in relative.parts:
                continue
            packages.append(".".join((import_name, *relative.parts)))
    return packages


class BuildWithCatalogue(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "synfiqa" / "registry.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "registry.toml", target)
        faces = Path(self.build_lib) / "synfiqa" / "data" / "faces"
        shutil.copytree(HERE / "tests" / "data" / "faces", faces, dirs_exist_ok=True)


setup(
    package_dir=PACKAGE_DIRS,
    packages=discover_packages(),
    package_data={
        "synfiqa": ["*.toml", "presets/*.toml"],
        "synfiqa_csrc": ["*.h", "*.cpp", "cpu/*.cpp", "cpu/*.h", "cuda/*.cu", "cuda/*.cuh", "cuda/*.h", "cuda/*.cpp"],
    },
    entry_points={
        "console_scripts": ["synfiqa = synfiqa_cli.main:cli"],
        "synfiqa": plugin_entry_points(),
    },
    cmdclass={"build_py": BuildWithCatalogue},
)
