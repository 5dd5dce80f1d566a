"""`synfiqa report`: a static HTML report of a finished build (core/stages/s9_report)."""
from __future__ import annotations

import json

import click


@click.command()
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default: DATASET/report).")
@click.option("--evaluation", type=click.Path(dir_okay=False),
              help="Add the EDC plot of this `synfiqa evaluate ... --json --curves` output.")
@click.option("--galleries", default=50, show_default=True, type=click.IntRange(min=0),
              help="Identity galleries shown, flagged identities first (the tables list every identity).")
@click.option("--compare-references/--no-compare-references", default=True, show_default=True,
              help="Embed the references of identities with two or more (the build's embedder) to flag one far "
                   "from the others.")
@click.option("--json", "as_json", is_flag=True, help="The findings as JSON on stdout; status on stderr.")
def report(dataset, out, evaluation, galleries, compare_references, as_json):
    """Write a static HTML report of the build in DATASET: one folder that opens from disk.

    Flags identities whose labels do not fall as the recorded degradation severity rises, and
    references that are themselves of low quality; shows every identity's references and
    samples sorted by score, the score histograms, the filter decisions and, with
    --evaluation, the EDC plot. The rules are in docs/report.md."""
    from synfiqa.stages.s9_report import json_summary, make_report, summary_lines

    result = make_report(dataset, out, evaluation, galleries=galleries, embed=compare_references)
    for line in summary_lines(result):
        click.echo(line, err=as_json)
    if as_json:
        click.echo(json.dumps(json_summary(result), indent=2))


COMMANDS = [report]
