"""`synfiqa annotate`: MR-FIQA quality labels for a dataset in the SynFIQA layout."""
from __future__ import annotations

import click

from synfiqa_cli.main import config_options, resolve_config


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--intensities", type=click.Path(dir_okay=False),
              help="CSV or JSON of recorded intensities (a 'path' column plus one column per intensity); "
                   "default: the dataset's manifest.jsonl.")
@click.option("--axis", "axes", multiple=True,
              help="A severity axis to rank (repeatable); default: every recorded column but pose.abs_yaw.")
@click.option("--progress/--no-progress", default=None)
@config_options
def annotate(dataset, intensities, axes, progress, config_path, overrides):
    """Score every degraded sample of DATASET: writes Quality-Scores.txt and annotations.jsonl.

    Resumable: identities already annotated (DATASET/.synfiqa/annotate/) are not redone."""
    from synfiqa.annotate import annotate_dataset

    config = resolve_config(config_path, overrides)
    annotate_dataset(config, dataset, intensities=intensities, axes=list(axes) or None,
                     echo=click.echo, progress=progress)


COMMANDS = [annotate]
