"""`synfiqa ops`: the compiled ops: which backend each uses, build ahead of time. The
benchmarks are not part of the installed package: `make bench` in a source checkout."""
from __future__ import annotations

import json
import sys

import click


BENCH_HINT = ("The benchmarks against the baselines need a source checkout of synfiqa (they live in "
              "tests/benchmarks, with the test dependencies): run `make bench` there, or "
              "`python -m tests.benchmarks.baselines [--op OP] [--quick] [--json]` for the comparison table.")


@click.group("ops", epilog=BENCH_HINT)
def ops_group():
    """The compiled ops (blur_resample, ref_cosine, greedy_unique, rasterize): status and build."""


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


@ops_group.command("bench", hidden=True, context_settings={"ignore_unknown_options": True},
                   add_help_option=False)
@click.argument("ignored", nargs=-1, type=click.UNPROCESSED)
def ops_bench(ignored):
    """Gone from the installed command: says where the benchmarks are."""
    click.echo(f"`synfiqa ops bench` was removed. {BENCH_HINT}", err=True)
    sys.exit(2)


COMMANDS = [ops_group]
