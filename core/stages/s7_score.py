"""MR-FIQA as a reference-based quality scorer (`synfiqa score --model mr`).

The MR label needs references of the image's identity, so it scores only images whose
identity has some: the identity of an image is the name of the folder it lies in, and its
references are either the images of the same-named sub-folder of a references folder, or
(SynFIQA layout) the `Ref-<k>` images beside it. The domains are the annotation's own
(the configured `annotate.chain` and models):

* fr: cosine to the identity's mean reference embedding;
* sd: ranks over every scored image; an image file carries no degradation intensities, so
  the only axis is the measured |yaw| (the summary says so; `synfiqa annotate` ranks the
  recorded intensities of a built dataset);
* vl: BLIP's ITC score when its weights are there; without them the label is computed
  without vl and every score says so, as in a build;
* mr: (fr + lam * sd) / (1 - vl), min-max normalised over the images scored together.

The scores are relative to the set scored together (ranks, min-max), as in the paper.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from synfiqa.annotation import YAW_AXIS
from synfiqa.stages.s5_annotate import identity_scores, load_annotators, score_dataset
from synfiqa.annotation import SampleTable
from synfiqa.context import RunContext
from synfiqa.errors import BadInputError, ConfigError
from synfiqa.layout import reference_index
from synfiqa.faces import CropMaker
from synfiqa.images import ImageItem, collect_images
from synfiqa.batch_inference import ImageOutcome

NO_INTENSITIES = "sd ranks the measured |yaw| only: image files carry no recorded degradation intensities"


@dataclass
class ReferenceScores:
    outcomes: list[ImageOutcome]               # value: the label (mr) or None with a reason
    domains: dict[str, dict[str, float]]       # image name -> every score (fr, sd, vl, mr, ...)
    label: str | None
    missing: dict[str, str]                    # domain -> why the label was computed without it
    notes: list[str] = field(default_factory=list)
    identities: int = 0


def identity_of(item: ImageItem) -> str | None:
    """The folder an image lies in names its identity."""
    parent = PurePosixPath(item.name).parent.name or (item.path.parent.name if item.path else "")
    return parent or None


def split_references(items: list[ImageItem], references: str | Path | None):
    """(images to score, {identity: reference items}). Without a references folder the
    `Ref-<k>` images beside the scored ones are the references (and are not scored)."""
    if references is None:
        by_identity, samples = defaultdict(list), []
        for item in items:
            if reference_index(PurePosixPath(item.name).name) is not None:
                by_identity[identity_of(item)].append(item)
            else:
                samples.append(item)
        if not by_identity:
            raise ConfigError("--model mr needs references: give --references DIR (one sub-folder per identity) "
                              "or score folders holding Ref-<k> images (the SynFIQA layout)")
        return samples, dict(by_identity)
    root = Path(references).expanduser()
    if not root.is_dir():
        raise ConfigError(f"references folder {str(references)!r} does not exist")
    by_identity = defaultdict(list)
    for item in collect_images([root]):
        parts = PurePosixPath(item.name).parts
        if len(parts) >= 2:  # loose files at the top have no identity folder
            by_identity[parts[0]].append(item)
    if not by_identity:
        raise ConfigError(f"{root} holds no identity sub-folder with images: put each identity's references in "
                          f"{root}/<identity>/")
    given = {item.path.resolve() for refs in by_identity.values() for item in refs}
    return [item for item in items if item.path is None or item.path.resolve() not in given], dict(by_identity)


def score_with_references(items: list[ImageItem], references: str | Path | None, config: dict, registry,
                          crop_maker: CropMaker, progress=None) -> ReferenceScores:
    samples, reference_items = split_references(items, references)
    context = RunContext(config, registry)
    annotators, unavailable = load_annotators(config, context)
    if "mr" not in {key for _, annotator in annotators for key in annotator.provides}:
        raise ConfigError("--model mr needs annotate.chain to make the mr score (fr, sd, mr at least)")
    pose = context.model("pose")

    outcomes = {item.name: ImageOutcome(item.name) for item in samples}
    grouped = defaultdict(list)
    for item in samples:
        grouped[identity_of(item)].append(item)

    names, yaws, rows = [], [], []
    for identity, members in (progress(grouped.items()) if progress else grouped.items()):
        if identity not in reference_items:
            for item in members:
                _fail(outcomes[item.name], "no-reference",
                      f"{item.name}: no references for identity {identity!r}")
            continue
        reference_crops = _crops(reference_items[identity], crop_maker)
        if not reference_crops:
            for item in members:
                _fail(outcomes[item.name], "no-reference",
                      f"{item.name}: none of the {len(reference_items[identity])} references of {identity!r} "
                      "has a usable face")
            continue
        crops, landmarks, kept = [], [], []
        for item in members:
            try:
                crop, points = crop_maker.crop_and_landmarks(item)
            except BadInputError as error:
                _fail(outcomes[item.name], error.reason, str(error))
                continue
            crops.append(crop)
            landmarks.append(points)
            kept.append(item)
        if not kept:
            continue
        sample_tensor = _tensor(crops)
        scores = identity_scores(annotators, sample_tensor, _tensor(reference_crops), context)
        yaw = pose.estimate(sample_tensor, torch.from_numpy(np.stack(landmarks)))[:, 0].abs()
        for i, item in enumerate(kept):
            names.append(item.name)
            yaws.append(float(yaw[i]))
            rows.append({key: values[i] for key, values in scores.items()})

    result = ReferenceScores(list(outcomes.values()), {}, None, dict(unavailable), identities=len(grouped))
    if not names:
        return result
    table = SampleTable(paths=names, params=[{YAW_AXIS: y} for y in yaws],
                        scores={key: np.array([row[key] for row in rows]) for key in rows[0]},
                        severity_axes=[], unavailable=set(unavailable))
    dataset = score_dataset(annotators, unavailable, table, context)
    result.label, result.missing = dataset.label, dataset.missing
    result.notes.append(NO_INTENSITIES)
    for i, name in enumerate(names):
        result.domains[name] = {key: float(values[i]) for key, values in dataset.scores.items()}
        result.domains[name][YAW_AXIS] = yaws[i]
        outcomes[name].value = result.domains[name][dataset.label]
        outcomes[name].detail = "; ".join(dataset.partial)
    return result


def _crops(items: list[ImageItem], crop_maker: CropMaker) -> list[np.ndarray]:
    crops = []
    for item in items:
        try:
            crops.append(crop_maker.crop(item))
        except BadInputError:
            continue  # an unusable reference leaves the mean; the others still define the identity
    return crops


def _tensor(crops: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def _fail(outcome: ImageOutcome, reason: str, detail: str) -> None:
    outcome.reason, outcome.detail = reason, detail
