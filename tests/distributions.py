"""Make real installed distributions (dist-info with entry points) in a temporary folder,
so plugin discovery goes through importlib.metadata exactly as with `pip install`."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = REPO / "examples" / "synfiqa-vignette"


def write_distribution(site: Path, name: str, module: str, source: str, version: str = "1.0") -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(f"[synfiqa]\n{module} = {module}\n")


def pip_install_example(target: Path) -> None:
    """Install the example plugin package with pip into `target` (no network, no deps)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(EXAMPLE_PLUGIN)],
        check=True, capture_output=True,
    )
