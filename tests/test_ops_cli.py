"""`synfiqa ops status | build | bench`."""
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
    assert cpu == {"blur_resample": "native", "ref_cosine": "native", "greedy_unique": "native"}
    text = runner.invoke(cli, ["ops", "status"])
    assert text.exit_code == 0 and "greedy_unique" in text.output and "native" in text.output


def test_ops_bench_prints_the_comparison_with_ratios():
    runner = CliRunner()
    result = runner.invoke(cli, ["ops", "bench", "--quick", "--op", "greedy_unique", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["machine"]["cores"] >= 1
    rows = {row["contender"]: row for row in report["rows"]}
    assert set(rows) == {"synfiqa native", "plain greedy loop (torch)", "blocked reference (torch float64)"}
    assert rows["synfiqa native"]["speedup"] == 1.0
    assert all(row["throughput"] > 0 and row["unit"] == "rows" for row in rows.values())
    table = runner.invoke(cli, ["ops", "bench", "--quick", "--op", "greedy_unique"])
    assert table.exit_code == 0 and "| greedy_unique N=3e+03 D=512 | plain greedy loop (torch) |" in table.output
