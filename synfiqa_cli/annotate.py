"""`synfiqa annotate`: MR-FIQA quality labels for a dataset in the SynFIQA layout."""
from __future__ import annotations

from pathlib import Path

import click

from synfiqa_cli.main import PRESET_KEY, config_options, preset_option, resolve_config
from synfiqa_cli.output import Output, json_option


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--intensities", type=click.Path(dir_okay=False),
              help="CSV or JSON of recorded intensities: a 'path' column (data/<id>/<k>.jpg) plus one column "
                   "per intensity. Default: the dataset's manifest.jsonl (a synfiqa build).")
@click.option("--axis", "axes", multiple=True,
              help="A severity axis to rank in sd (repeatable). Default: the axes the build declared, or every "
                   "column of --intensities but path and pose.abs_yaw.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
@json_option
@config_options
@preset_option
def annotate(dataset, intensities, axes, progress, as_json, config_path, overrides):
    """Score every degraded sample of DATASET: writes Quality-Scores.txt (keyed by image
    path), annotations.jsonl and annotation-summary.json.

    The models and annotators come from --config (over --preset), else from DATASET/config.toml
    when the dataset is a synfiqa build and no --preset is given (so the build's scores are
    reproduced), else the defaults.
    Resumable: identities already annotated (DATASET/.synfiqa/annotate/) are not redone
    unless the models or annotators changed."""
    from synfiqa.stages.s5_annotate import annotate_dataset

    output = Output(as_json)
    ours = (Path(dataset) / ".synfiqa" / "build.json").is_file()  # another tool's config.toml is not ours to read
    preset = click.get_current_context().meta.get(PRESET_KEY)
    if config_path is None and preset is None and ours and (Path(dataset) / "config.toml").is_file():
        config_path = Path(dataset) / "config.toml"
        output.echo(f"annotate: models and annotators from {config_path}")
    config = resolve_config(config_path, overrides)
    summary = annotate_dataset(config, dataset, intensities=intensities, axes=list(axes) or None,
                               echo=output.echo, progress=progress)
    output.result({"dataset": str(dataset), **summary})


COMMANDS = [annotate]
