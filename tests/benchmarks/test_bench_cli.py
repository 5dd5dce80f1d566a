"""How fast `synfiqa --help` starts, and its peak memory, now and as it was when the CLI
imported every built-in plugin module (torch, scipy, OpenCV with them) at start: the "eager"
side imports exactly those modules first, as the old `synfiqa_cli.main` did through its plugin
manager, then prints the same help. Each round is a fresh interpreter, so an import cache never
helps; run with --benchmark-enable to time them side by side (docs/benchmarks.md), and
`python tests/benchmarks/test_bench_cli.py` prints the peak RSS of each."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# `synfiqa --help` in a fresh interpreter; prints its peak RSS (KiB) and whether torch came in
HELP = """
import json, resource, sys
if {eager}:
    from synfiqa.plugins import SynfiqaPluginManager
    SynfiqaPluginManager().load_missing_builtins()   # what the CLI imported before it was lazy
from synfiqa_cli.main import cli
try:
    cli(["--help"], standalone_mode=False)
except SystemExit:
    pass
print("\\nRESULT=" + json.dumps({{"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                  "torch": "torch" in sys.modules}}))
"""


def run_help(eager: bool) -> dict:
    env = {**os.environ, "SYNFIQA_DISABLE_PLUGINS": "1"}
    result = subprocess.run([sys.executable, "-c", HELP.format(eager=eager)], capture_output=True, text=True,
                            env=env, timeout=600, check=True)
    assert "Commands:" in result.stdout
    return json.loads(result.stdout.rpartition("RESULT=")[2])


@pytest.mark.parametrize("side", ["lazy", "eager"])
def test_help_startup(benchmark, side):
    measured = benchmark.pedantic(run_help, args=(side == "eager",), rounds=3, iterations=1)
    benchmark.extra_info["maxrss_mib"] = round(measured["maxrss_kib"] / 1024, 1)
    assert measured["torch"] is (side == "eager")


if __name__ == "__main__":
    import time

    for side in ("lazy", "eager"):
        walls, rss = [], []
        for _ in range(5):
            start = time.perf_counter()
            measured = run_help(side == "eager")
            walls.append(time.perf_counter() - start)
            rss.append(measured["maxrss_kib"] / 1024)
        print(f"{side:5} wall min {min(walls):.3f} s median {sorted(walls)[2]:.3f} s   peak RSS {max(rss):.0f} MiB")
