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


def plugin_entry_points():
    modules = sorted({plugin["module"] for plugin in CATALOGUE.get("plugin", [])})
    return [f"{module.rsplit('.', 1)[-1].replace('_', '-')} = {module}" for module in modules]


class BuildWithCatalogue(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "synfiqa" / "registry.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "registry.toml", target)
        faces = Path(self.build_lib) / "synfiqa" / "data" / "faces"
        shutil.copytree(HERE / "tests" / "data" / "faces", faces, dirs_exist_ok=True)


setup(
    package_dir={
        "synfiqa": "core",
        "synfiqa_plugins": "plugins",
        "synfiqa_cli": "synfiqa_cli",
        "synfiqa_csrc": "csrc",
    },
    packages=[
        "synfiqa",
        "synfiqa.ops",
        "synfiqa.evaluation",
        "synfiqa_plugins",
        "synfiqa_plugins.generators",
        "synfiqa_plugins.filters",
        "synfiqa_plugins.degradations",
        "synfiqa_plugins.annotators",
        "synfiqa_plugins.models",
        "synfiqa_cli",
        "synfiqa_csrc",
    ],
    package_data={
        "synfiqa": ["*.toml"],
        "synfiqa_csrc": ["*.h", "cpu/*.cpp", "cpu/*.h", "cuda/*.cu", "cuda/*.cuh", "cuda/*.cpp"],
    },
    entry_points={"synfiqa": plugin_entry_points()},
    cmdclass={"build_py": BuildWithCatalogue},
)
