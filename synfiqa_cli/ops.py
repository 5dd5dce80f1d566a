"""`synfiqa ops`: the compiled ops: which backend each uses, build ahead of time, benchmark."""
from __future__ import annotations

import json
import sys

import click


@click.group("ops")
def ops_group():
    """The compiled ops (blur_resample, ref_cosine, greedy_unique)."""


@ops_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ops_status(as_json):
    """Which backend each op uses on each device, and why (never compiles)."""
    from synfiqa.ops import status

    report = status()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"cache: {report['cache']}   torch {report['torch']}")
    for row in report["ops"]:
        click.echo(f"{row['op']:<14} {row['device']:<5} {row['backend']:<24} {row['reason']}")


@ops_group.command("build")
@click.option("--cuda/--no-cuda", default=None,
              help="Also build the CUDA library (default: when a GPU is visible; --cuda without a GPU "
                   "checks that the CUDA sources compile).")
@click.option("--verbose", is_flag=True, help="Show the compiler commands and output.")
def ops_build(cuda, verbose):
    """Compile the ops ahead of time into the cache."""
    from synfiqa.ops import build, loader

    results = build(cuda=cuda, verbose=verbose)
    failed = False
    for kind, error in results.items():
        if error is None:
            click.echo(f"{kind}: built, {loader.state(kind).path}")
        else:
            failed = True
            click.echo(f"{kind}: FAILED: {error}", err=True)
            for log in loader.state(kind).log[-1:]:
                click.echo(log, err=True)
    if failed:
        sys.exit(1)


@ops_group.command("bench")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--op", "ops", multiple=True, type=click.Choice(["blur_resample", "ref_cosine", "greedy_unique"]),
              help="Only these ops (repeatable; default: all).")
@click.option("--quick", is_flag=True, help="Small sizes only (seconds instead of minutes).")
def ops_bench(as_json, ops, quick):
    """Time each op against its baselines (the comparisons of tests/benchmarks) and print the
    table with the native op's speed-up over each."""
    from synfiqa.ops import bench

    chosen = ops or ("blur_resample", "ref_cosine", "greedy_unique")
    progress = None if as_json else (lambda title: click.echo(f"measuring {title} ...", err=True))
    rows = bench.run(chosen, quick=quick, progress=progress)
    if as_json:
        click.echo(json.dumps({"machine": bench.machine(), "rows": rows}, indent=2))
        return
    machine = bench.machine()
    click.echo(f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
               f"({machine['torch_threads']} threads)")
    click.echo(bench.format_table(rows))


COMMANDS = [ops_group]
