"""`synfiqa score`: face image quality of photos or aligned crops with a FIQA model."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import click

from synfiqa_cli.main import config_options, resolve_config
from synfiqa_cli.output import Output, json_option

REFERENCE_SCORER = "mr"

@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--model", required=True, metavar="NAME|FILE",
              help="A FIQA model (`synfiqa plugins list --kind fiqa`), a CR-FIQA checkpoint file, or `mr`: "
                   "the MR-FIQA label against references of each image's identity.")
@click.option("--references", type=click.Path(file_okay=False),
              help="With --model mr: one sub-folder of reference images per identity; an image's identity is "
                   "the folder it lies in. Default: the Ref-<k> images beside it (SynFIQA layout).")
@click.option("--aligned", is_flag=True, help="The images are aligned 112x112 face crops: no face detection.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write scores.csv or scores.json (default: CSV on stdout).")
@click.option("--detector", default="mtcnn", show_default=True, help="Face detector for photos.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when available), cpu, cuda or cuda:N: the device of every model used.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
@json_option
@config_options
def score(paths, model, references, aligned, out, detector, batch_size, device, progress, as_json, config_path,
          overrides):
    """Score the face image quality of PATHS (image files, or folders searched recursively).

    Photos are detected and aligned to the ArcFace 112x112 template first. An image without
    a usable face gets an empty score and a reason. Folder images are named relative to the
    folder, so the names match a benchmark's pairs file.

    With --model mr the label is the MR-FIQA score (models and annotators from the config):
    fr against the identity's references, sd over the measured |yaw|, vl when BLIP's weights
    are there, min-max over the images scored together. --config/--set apply to it only."""
    from synfiqa.config import device_problem
    from synfiqa.context import create_on_device
    from synfiqa.errors import ConfigError
    from synfiqa.faces import CropMaker
    from synfiqa.images import collect_images
    from synfiqa.batch_inference import resolve_model, run_model
    from synfiqa.registry import get_registry

    problem = device_problem(device)
    if problem:  # before any image is read or model loaded
        raise ConfigError(f"--device {problem}")
    if out is not None and Path(out).suffix.lower() not in (".csv", ".json"):
        raise ConfigError(f"--out must end in .csv or .json, got {out!r}")
    items = collect_images(paths)
    if not items:
        raise ConfigError(f"no images found in {', '.join(paths)}")
    registry = get_registry()
    if model == REFERENCE_SCORER:
        return score_against_references(items, references, aligned, out, detector, device, progress,
                                        config_path, overrides, registry, as_json)
    if references is not None:
        raise ConfigError("--references is for --model mr: a FIQA network needs no references")
    scorer, label = resolve_model("fiqa", model, device, registry)
    crop_maker = CropMaker(aligned, None if aligned else create_on_device(registry, "detector", detector, device))
    outcomes = run_model(items, crop_maker, scorer.score, batch_size, progress, "scoring")

    from synfiqa.protocols import model_variant

    variant = model_variant(scorer)
    emit(out, outcomes, scores_json(outcomes, label, variant), as_json)
    line = f"scored {scored_summary(outcomes)} images with {label}" + (f" ({variant})" if variant else "")
    line += without_score(outcomes)
    if out is not None:
        line += f"; wrote {out}"
    click.echo(line, err=True)


def score_against_references(items, references, aligned, out, detector, device, progress, config_path, overrides,
                             registry, as_json: bool = False) -> None:
    from synfiqa.context import create_on_device
    from synfiqa.faces import CropMaker
    from synfiqa.progress import progress as progress_bar
    from synfiqa.stages.s7_score import score_with_references

    # --device is run.device: the config's models (RunContext) and the detector run on it
    config = resolve_config(config_path, overrides, {"run.device": None if device == "auto" else device})
    device = config["run"]["device"]
    crop_maker = CropMaker(aligned, None if aligned else create_on_device(registry, "detector", detector, device))
    result = score_with_references(items, references, config, registry, crop_maker,
                                   progress=lambda groups: progress_bar(groups, enabled=progress,
                                                                        description="identities", unit="id"))
    document = scores_json(result.outcomes, REFERENCE_SCORER, "reference-based MR-FIQA")
    for row in document["scores"]:
        row["scores"] = result.domains.get(row["image"], {})
    document["missing_domains"] = result.missing
    document["notes"] = result.notes
    emit(out, result.outcomes, document, as_json)
    click.echo(f"scored {scored_summary(result.outcomes)} images of {result.identities} identities with "
               f"{result.label or REFERENCE_SCORER} against their references" + without_score(result.outcomes),
               err=True)
    for domain, why in sorted(result.missing.items()):
        click.echo(f"  {result.label} computed without {domain} ({why.rstrip('.')}); every score says so", err=True)
    for note in result.notes:
        click.echo(f"  {note}", err=True)
    if out is not None:
        click.echo(f"wrote {out}", err=True)


def emit(out: str | None, outcomes, document: dict, as_json: bool = False) -> None:
    """The CSV or the JSON document --out names, if any; on stdout the JSON document with --json,
    else the CSV when there is no --out."""
    Output(as_json).result(document)
    if out is None:
        if not as_json:
            click.echo(scores_csv(outcomes), nl=False)
    elif Path(out).suffix.lower() == ".csv":
        _write(out, scores_csv(outcomes))
    else:
        _write(out, json.dumps(document, indent=2) + "\n")


def scored_summary(outcomes) -> str:
    return f"{sum(1 for o in outcomes if o.value is not None)} of {len(outcomes)}"


def without_score(outcomes) -> str:
    failed = Counter(o.reason for o in outcomes if o.value is None)
    if not failed:
        return ""
    return "; without a score: " + ", ".join(f"{reason} ({count})" for reason, count in sorted(failed.items()))




def scores_csv(outcomes) -> str:
    """image,quality,reason; quality empty (never a made-up number) where reason says why."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "quality", "reason"])
    for outcome in outcomes:
        writer.writerow([outcome.name, "" if outcome.value is None else repr(float(outcome.value)), outcome.reason])
    return buffer.getvalue()


def scores_json(outcomes, model: str, variant: str) -> dict:
    return {
        "model": model,
        "variant": variant,
        "images": len(outcomes),
        "scored": sum(1 for o in outcomes if o.value is not None),
        "scores": [{"image": o.name, "quality": None if o.value is None else float(o.value),
                    "reason": o.reason, "detail": o.detail} for o in outcomes],
    }


def _write(path: str, text: str) -> None:
    from synfiqa.store import write_text_atomic

    write_text_atomic(path, text)


COMMANDS = [score]
