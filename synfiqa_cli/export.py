"""`synfiqa export`: a finished build in the formats large datasets travel in."""
from __future__ import annotations

import click


@click.command()
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--format", "fmt", required=True, type=click.Choice(["webdataset", "recordio", "parquet", "hf"]),
              help="webdataset: tar shards; recordio: MXNet train.rec/.idx/property (InsightFace, CR-FIQA); "
                   "parquet: one row per sample; hf: a `datasets` imagefolder.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--roles", type=click.Choice(["all", "degraded"]), default="all", show_default=True,
              help="Export the references and the degraded samples, or the degraded (MR-labelled) ones only.")
@click.option("--identities-per-shard", default=100, show_default=True, type=click.IntRange(min=1),
              help="WebDataset: identities per tar shard.")
@click.option("--overwrite", is_flag=True, help="Replace an export of other settings in --out.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
def export(dataset, fmt, out, roles, identities_per_shard, overwrite, progress):
    """Export the SynFIQA build in DATASET to --out (docs/export.md).

    Identities are numbered 0..K-1 in name order (the class label); every sample carries its
    MR quality label (none for references), its recorded parameters and scores. Every file
    is written atomically; OUT/export.json, written last, marks a complete export."""
    from synfiqa.stages.export import export_dataset

    export_dataset(dataset, fmt, out, overwrite=overwrite,
                   roles=("degraded",) if roles == "degraded" else ("reference", "degraded"),
                   identities_per_shard=identities_per_shard, progress=progress, echo=click.echo)


COMMANDS = [export]
