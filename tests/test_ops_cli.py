"""`synfiqa ops status | build`, and where the benchmarks went."""
from __future__ import annotations

import json

from click.testing import CliRunner

from synfiqa_cli.main import cli


def test_ops_build_then_status_reports_every_op_native_on_cpu():
    runner = CliRunner()
    built = runner.invoke(cli, ["ops", "build", "--no-cuda"])
    assert built.exit_code == 0, built.output
    assert "cpu: built," in built.output and ".so" in built.output
    status = runner.invoke(cli, ["ops", "status", "--json"])
    assert status.exit_code == 0, status.output
    rows = json.loads(status.output)["ops"]
    cpu = {row["op"]: row["backend"] for row in rows if row["device"] == "cpu"}
    assert cpu == {"blur_resample": "native", "ref_cosine": "native", "greedy_unique": "native", "rasterize": "native"}
    text = runner.invoke(cli, ["ops", "status"])
    assert text.exit_code == 0 and "greedy_unique" in text.output and "native" in text.output


def test_ops_bench_is_gone_and_the_help_points_to_make_bench():
    # The benchmarks and their baselines live in tests/benchmarks (a source checkout), not in
    # the installed package; the old command says where they went and fails.
    runner = CliRunner()
    helped = runner.invoke(cli, ["ops", "--help"])
    assert helped.exit_code == 0 and "make bench" in helped.output and "source checkout" in helped.output
    assert "bench" not in helped.output.split("Commands:")[1].split("The benchmarks")[0]
    old = runner.invoke(cli, ["ops", "bench", "--quick", "--op", "greedy_unique", "--json"])
    assert old.exit_code == 2 and "was removed" in old.output and "make bench" in old.output


def test_the_runtime_package_ships_no_benchmark_code_and_imports_no_plugin():
    import ast
    from pathlib import Path

    import synfiqa.ops

    folder = Path(synfiqa.ops.__file__).parent
    assert not (folder / "bench.py").exists()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name.split(".")[0] in {"synfiqa_plugins", "kornia", "cv2"} for name in names), path
