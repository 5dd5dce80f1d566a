"""`synfiqa degrade`: the configured degradation chain over face images, outside a build."""
from __future__ import annotations

from pathlib import Path

import click

from synfiqa_cli.main import config_options, resolve_config
from synfiqa_cli.output import Output, json_option


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("-n", "count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Degraded copies per input image.")
@click.option("--aligned", is_flag=True, help="The images are aligned 112x112 face crops: no face detection.")
@click.option("--detector", default="mtcnn", show_default=True, help="Face detector for photos.")
@click.option("--seed", type=int, help="Run seed (run.seed).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
@json_option
@config_options
def degrade(paths, out, count, aligned, detector, seed, progress, as_json, config_path, overrides):
    """Apply degrade.chain to PATHS (image files, or folders searched recursively): N copies
    of each, written losslessly as OUT/<name>/<k>.png with every drawn parameter in
    OUT/degraded.jsonl. Copy k of an image is seeded by (run seed, its name, k): a folder's
    images are named relative to it, a file given alone by its file name. Photos are detected and aligned first; unusable ones are skipped
    with their reason. A rerun with the same settings resumes."""
    from synfiqa.stages.s4_degrade import degrade_folder
    from synfiqa.errors import ConfigError
    from synfiqa.faces import CropMaker
    from synfiqa.images import ImageItem, collect_images
    from synfiqa.registry import get_registry

    config = resolve_config(config_path, overrides, {"run.seed": seed})
    # a file given by itself is named by its file name: its copies and their seeds do not
    # depend on where it was given from
    items = [ImageItem(Path(path).name, Path(path)) if Path(path).is_file() else item
             for path in paths for item in collect_images([path])]
    if not items:
        raise ConfigError(f"no images found in {', '.join(paths)}")
    registry = get_registry()
    crop_maker = CropMaker(aligned, None if aligned else registry.create("detector", detector))
    output = Output(as_json)
    result = degrade_folder(items, config, registry, crop_maker, count, out, progress=progress, echo=output.echo)
    output.result({"out": str(out), "manifest": str(Path(out) / "degraded.jsonl"), **result})


COMMANDS = [degrade]
