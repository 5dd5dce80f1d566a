"""Quality annotation, shared by `synfiqa build` and `synfiqa annotate`.

Two steps, the same in both commands:
* per identity (`identity_scores`): the identity-scope annotators (fr, vl) score one
  identity's degraded samples against its references;
* dataset wide (`score_dataset`): the dataset-scope annotators (sd ranks, the MR min-max)
  run once over every degraded sample; the result names the quality label and every
  domain the label had to do without (each such score is marked partial).

`synfiqa annotate DATASET` (`annotate_dataset`) scores any dataset in the SynFIQA layout,
ours or another tool's, from the images as stored and the recorded intensities (our
manifest.jsonl, or a CSV/JSON from the user). Each identity's per-identity results are
written atomically to DATASET/.synfiqa/annotate/<identity>.json, so a killed run resumes;
they are discarded when the models or identity-scope annotators change.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from synfiqa import protocols
from synfiqa.annotation import YAW_AXIS, SampleTable
from synfiqa.config import component_params
from synfiqa.context import RunContext
from synfiqa.layout import (BUILD_MARKER, QUALITY_SCORES, format_quality_scores, image_fields, quality_key,
                            reference_index, sample_index, sample_key, scan_dataset)
from synfiqa.errors import BadInputError, ConfigError, WeightsNotFoundError
from synfiqa.images import read_rgb
from synfiqa.mr_label import original_label_sources
from synfiqa.progress import progress as progress_bar
from synfiqa.store import RecordSet, StageFolder, write_text_atomic
from synfiqa.weights import MissingAssets

STORED_FORMAT = 2  # of .synfiqa/annotate/<identity>.json; a change invalidates stored results


# ---------------------------------------------------------------- the two steps, shared with the build


def load_annotators(config: dict, context: RunContext,
                    missing: MissingAssets | None = None) -> tuple[list, dict[str, str]]:
    """The configured annotators, each prepared (models loaded) and its inputs checked
    before any sample is touched. An optional annotator whose weights are missing is
    reported unavailable (name -> why) instead; another one's missing weights raise, or with
    `missing` are collected there (the caller raises once it has tried every component)."""
    annotators, unavailable = [], {}
    for name in config["annotate"]["chain"]:
        try:
            annotator = context.registry.create("annotator", name, **component_params(config, "annotate", name))
            protocols.prepare(annotator, context)
        except WeightsNotFoundError as error:
            if name not in config["annotate"]["optional"]:
                if missing is None:
                    raise
                missing.add(error, f"annotator {name!r}")
                continue
            unavailable[name] = str(error).splitlines()[0].rstrip(".")
            continue
        provided = {key for _, earlier in annotators for key in earlier.provides}
        needed = [key for key in protocols.requires(annotator) if key not in provided]
        if needed and not (missing is not None and missing.missing):  # missing weights of an earlier one explain it
            why = (f" (annotator {needed[0]!r} is unavailable: {unavailable[needed[0]]})"
                   if needed[0] in unavailable else "")
            raise ConfigError(f"annotator {name!r} needs the {needed[0]!r} score: put an annotator providing it "
                              f"before {name!r} in annotate.chain{why}")
        annotators.append((name, annotator))
    return annotators, unavailable


def identity_scores(annotators, samples: torch.Tensor, references: torch.Tensor, context) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {}
    for _, annotator in annotators:
        if annotator.scope == "identity":
            for key, values in annotator.annotate_identity(samples, references, context).items():
                scores[key] = [float(v) for v in torch.as_tensor(values).tolist()]
    return scores


def dataset_scores(annotators, table: SampleTable, context) -> dict[str, np.ndarray]:
    """Runs the dataset-scope annotators in chain order; each sees the scores before it."""
    for _, annotator in annotators:
        if annotator.scope == "dataset" and len(table):
            for key, values in annotator.annotate_dataset(table, context).items():
                table.scores[key] = np.asarray(values, dtype=np.float64)
    return table.scores


@dataclass
class DatasetScores:
    scores: dict[str, np.ndarray]   # every score of every degraded sample, in table order
    label: str | None               # the score written to Quality-Scores.txt
    missing: dict[str, str]         # domain -> why the label was computed without it

    @cached_property
    def partial(self) -> list[str]:
        """The note each sample's scores carry when a domain was missing: computed once, one
        list that every row shares (a build puts it on each of up to millions of rows); do not
        mutate it."""
        return [f"computed without {domain}" for domain in sorted(self.missing)]

    def summary_lines(self) -> list[str]:
        return [f"  {self.label or 'the score'} computed without {domain} ({why}); every score is marked "
                f"'computed without {domain}'" for domain, why in sorted(self.missing.items())]


def score_dataset(annotators, unavailable: dict[str, str], table: SampleTable, context) -> DatasetScores:
    """The dataset-wide step of `build` and `annotate`: ranks, the MR combination, and the
    account of what it lacked. The label (what Quality-Scores.txt holds) is the last score the
    chain produced: the chain ends with the annotator that combines the others (mr)."""
    dataset_scores(annotators, table, context)
    missing = dict(unavailable)
    for _, annotator in annotators:
        if len(table):  # an empty dataset lacks nothing
            for domain in protocols.missing_domains(annotator, table):
                missing.setdefault(domain, "not in annotate.chain")
    produced = [key for _, annotator in annotators for key in annotator.provides if key in table.scores]
    label = produced[-1] if produced else None
    return DatasetScores(table.scores, label, missing)


def labels_as_written(config: dict, quality: dict[str, float]) -> tuple[dict[str, float], dict]:
    """What Quality-Scores.txt holds under annotate.label_order: each sample's own score
    ("by-path"), or the original's bug reproduced ("original-bug", docs/method.md section 11),
    and the summary's record of it ({} by path; `label_order_lines` says it loudly)."""
    if config["annotate"]["label_order"] != "original-bug":
        return quality, {}
    sources = original_label_sources(list(quality))
    moved = sum(1 for path, source in sources.items() if path != source)
    return ({path: quality[source] for path, source in sources.items()},
            {"label_order": "original-bug", "labels_moved": moved, "labels": len(quality)})


def label_order_lines(summary: dict) -> list[str]:
    """The warning a build or `synfiqa annotate` prints when it reproduced the label-ordering bug."""
    if summary.get("label_order") != "original-bug":
        return []
    return [f"WARNING: annotate.label_order = \"original-bug\": Quality-Scores.txt reproduces the original's "
            f"label-ordering bug: {summary['labels_moved']} of {summary['labels']} labels are another sample's "
            f"score (manifest.jsonl and annotations.jsonl keep each sample's own)"]


# ---------------------------------------------------------------- a dataset on disk


def read_intensities(root: Path, source: Path | None, registry) -> tuple[dict[str, dict[str, float]], list[str] | None]:
    """Recorded intensities keyed by "/<identity>/<file>", and the severity axes when the
    source says which they are (our own build does: summary.json, else its config.toml)."""
    if source is None:
        manifest = root / "manifest.jsonl"
        if not manifest.is_file():
            raise ConfigError(f"{root} has no manifest.jsonl; give the recorded intensities with --intensities FILE")
        table = {}
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            if row.get("role") == "degraded" and row.get("status") == "ok":
                table[sample_key(row["path"])] = row["params"]
        return table, _recorded_axes(root, registry)
    if not source.is_file():
        raise ConfigError(f"intensities file {str(source)!r} does not exist")
    if source.suffix.lower() == ".json":
        try:
            payload = json.loads(source.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source} is not valid JSON: {error}") from None
        if isinstance(payload, dict):
            payload = [{"path": key, **values} for key, values in payload.items()]
        rows = list(payload)
    else:
        with open(source, newline="") as handle:
            rows = list(csv.DictReader(handle))
    table = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "path" not in row:
            raise ConfigError(f"{source}: every row needs a 'path' column (row {number})")
        key = sample_key(row["path"])
        if key in table:
            raise ConfigError(f"{source}: {key} appears twice (row {number})")
        try:
            table[key] = {column: float(value) for column, value in row.items() if column != "path"}
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: row {number} has a value that is not a number: {row}") from None
    return table, None


def _recorded_axes(root: Path, registry) -> list[str] | None:
    summary = root / "summary.json"
    if summary.is_file():
        axes = json.loads(summary.read_text()).get("severity_axes")
        if axes is not None:
            return [axis for axis in axes if axis != YAW_AXIS]
    config_file = root / "config.toml"
    if config_file.is_file():
        from synfiqa.config import load_config
        from synfiqa.degradation import ChainStep, DegradationChain

        config = load_config(config_file)
        chain = DegradationChain([ChainStep(name, registry.create("degradation", name,
                                                                   **component_params(config, "degrade", name)))
                                  for name in config["degrade"]["chain"]])
        return chain.severity_axes
    return None


def annotation_fingerprint(config: dict, annotators) -> str:
    """A hash of what the stored per-identity results depend on: the models and the
    identity-scope annotators with their parameters."""
    identity_scope = [(name, component_params(config, "annotate", name)) for name, a in annotators
                      if a.scope == "identity"]
    basis = {"format": STORED_FORMAT, "annotators": identity_scope, "models": config["models"]}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def annotate_dataset(config: dict, root: str | Path, *, intensities: str | Path | None = None,
                     axes: list[str] | None = None, registry=None, echo=print, progress: bool | None = None) -> dict:
    """Score every degraded sample of the dataset in `root`; writes Quality-Scores.txt,
    annotations.jsonl (one row per degraded sample: scores, partial notes, or why it was
    skipped) and annotation-summary.json. Returns that summary."""
    with StageFolder(root, marker=BUILD_MARKER, what="build") as folder:
        if Path(root).is_dir():
            folder.acquire()  # a build or another annotate in the same folder would interleave writes
        return _annotate_dataset(config, Path(root), intensities=intensities, axes=axes, registry=registry,
                                 echo=echo, progress=progress)


def _annotate_dataset(config: dict, root: Path, *, intensities, axes, registry, echo, progress) -> dict:
    from synfiqa.registry import get_registry

    started = time.perf_counter()
    registry = registry or get_registry()
    layout = scan_dataset(root)
    recorded, recorded_axes = read_intensities(root, Path(intensities) if intensities else None, registry)
    severity_axes = list(axes) if axes else recorded_axes
    if severity_axes is None:
        if intensities is None:
            raise ConfigError(f"{root} has neither summary.json nor config.toml to say which recorded parameters "
                              "are severity axes; name them with --axis")
        # a user's file: every column but yaw is a severity axis
        severity_axes = sorted({k for params in recorded.values() for k in params} - {YAW_AXIS})
    context = RunContext(config, registry)
    annotators, unavailable = load_annotators(config, context)
    if not any(a.provides for _, a in annotators):
        raise ConfigError("annotate.chain holds no available annotator: nothing to score")
    _check_intensities(layout, recorded, severity_axes, annotators)
    present = {quality_key(identity, name) for identity, files in layout.items() for name in files["degraded"]}
    missing_files = sorted(key for key in recorded if key not in present)
    if missing_files:  # recorded in the manifest (or the intensities file) but gone from data/
        shown = ", ".join(missing_files[:5]) + (", ..." if len(missing_files) > 5 else "")
        echo(f"annotate: {len(missing_files)} recorded samples are missing from data/ and are not scored: {shown}")

    # per-identity results, dropped when the models or annotators change
    stored_results = RecordSet(root / ".synfiqa" / "annotate", fingerprint=annotation_fingerprint(config, annotators))
    if stored_results.dropped:
        echo(f"annotate: the models or annotators changed since the last run; {stored_results.dropped} "
             "stored identities redone")
    work = stored_results.folder
    todo = [i for i in layout if not _stored_result_is_current(work / f"{i}.json", layout[i])]
    echo(f"annotate: {len(layout)} identities ({len(layout) - len(todo)} already annotated)")
    bar = progress_bar(total=sum(len(layout[i]["degraded"]) for i in todo), enabled=progress,
                       description="annotate", unit="sample")
    scored_now, loop_started = 0, time.perf_counter()
    for identity in todo:
        result = annotate_identity_folder(root / "data" / identity, layout[identity], annotators, context,
                                          config["run"]["image_size"])
        stored_results.write(identity, result, indent=None)
        scored_now += len(result["scores"])
        bar.update(len(layout[identity]["degraded"]))
    bar.close()
    per_identity_seconds = time.perf_counter() - loop_started

    keys, params, rows, skipped, references_skipped = [], [], [], {}, {}
    for identity, files in layout.items():
        stored = json.loads((work / f"{identity}.json").read_text())
        references_skipped.update({quality_key(identity, name): why
                                   for name, why in stored["references_skipped"].items()})
        for name in files["degraded"]:
            key = quality_key(identity, name)
            if name in stored["skipped"]:
                skipped[key] = stored["skipped"][name]
                continue
            keys.append(key)
            params.append(recorded.get(key, {}))
            rows.append(stored["scores"][name])
    if not keys:
        raise BadInputError("no-usable-sample", f"no degraded sample of {root} could be scored: "
                            + ", ".join(f"{n} {r}" for r, n in Counter(s["reason"] for s in skipped.values()).items()))
    table = SampleTable(paths=keys, params=params, scores={k: np.array([r[k] for r in rows]) for k in rows[0]},
                        severity_axes=severity_axes, unavailable=set(unavailable))
    result = score_dataset(annotators, unavailable, table, context)

    quality = {key: float(result.scores[result.label][i]) for i, key in enumerate(keys)}
    written, label_order = labels_as_written(config, quality)
    write_text_atomic(root / QUALITY_SCORES, format_quality_scores(written))
    annotation_rows = [{**image_fields(key), "role": "degraded", "status": "ok",
                        "scores": {k: float(v[i]) for k, v in result.scores.items()},
                        **({"partial": result.partial} if result.missing else {})} for i, key in enumerate(keys)]
    annotation_rows += [{**image_fields(key), "role": "degraded", "status": "skipped", **why}
                        for key, why in skipped.items()]
    annotation_rows += [{**image_fields(key), "role": "reference", "status": "skipped", **why}
                        for key, why in references_skipped.items()]
    annotation_rows += [{**image_fields(key), "role": "degraded", "status": "missing", "reason": "missing-file",
                         "detail": "recorded, but the file is not in data/"} for key in missing_files]
    annotation_rows.sort(key=lambda row: row["key"])
    write_text_atomic(root / "annotations.jsonl",
                      "".join(json.dumps(row, sort_keys=True) + "\n" for row in annotation_rows))
    reasons = dict(sorted(Counter(s["reason"] for s in skipped.values()).items()))
    seconds = time.perf_counter() - started
    summary = {"identities": len(layout), "samples": len(keys), "skipped": reasons,
               "references_skipped": len(references_skipped), "label": result.label,
               "severity_axes": ([YAW_AXIS] if _needs_yaw(annotators) else []) + list(severity_axes),
               "missing_domains": result.missing, "samples_scored_now": scored_now,
               "missing_samples": len(missing_files),
               "seconds": round(seconds, 3), "per_identity_seconds": round(per_identity_seconds, 3),
               **label_order}
    write_text_atomic(root / "annotation-summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    for line in [*result.summary_lines(), *label_order_lines(summary)]:
        echo(line)
    skipped_text = f", {len(skipped)} skipped ({', '.join(f'{n} {r}' for r, n in reasons.items())})" if skipped else ""
    rate = f", {scored_now / per_identity_seconds:.1f} samples/s" if scored_now else ""
    echo(f"annotate: {len(keys)} samples of {len(layout)} identities scored{skipped_text} in {seconds:.1f} s{rate}")
    echo(f"wrote {root / 'Quality-Scores.txt'} ({len(quality)} scores, {result.label}) and annotations.jsonl")
    return summary


def annotate_identity_folder(folder: Path, files: dict[str, list[str]], annotators, context, image_size: int) -> dict:
    """{"scores": {file: {score: value}}, "skipped": {file: {"reason", "detail"}}} for one
    identity; an unreadable or wrongly sized image is skipped with its reason, not fatal."""
    skipped: dict[str, dict] = {}
    references = _read_images(folder, files["references"], image_size, skipped)
    samples = _read_images(folder, files["degraded"], image_size, skipped)
    degraded_skipped = {name: why for name, why in skipped.items() if sample_index(name) is not None}
    references_skipped = {name: why for name, why in skipped.items() if reference_index(name) is not None}
    if not samples:
        return {"scores": {}, "skipped": degraded_skipped, "references_skipped": references_skipped}
    if not references:
        why = ("every reference image was unreadable" if files["references"] else "the identity has no Ref-<k> image")
        degraded_skipped.update({name: {"reason": "no-reference", "detail": f"{folder.name}: {why}"}
                                 for name in samples})
        return {"scores": {}, "skipped": degraded_skipped, "references_skipped": references_skipped}
    names = list(samples)
    scores = identity_scores(annotators, _stack(samples.values()), _stack(references.values()), context)
    return {"scores": {name: {key: values[i] for key, values in scores.items()} for i, name in enumerate(names)},
            "skipped": degraded_skipped, "references_skipped": references_skipped}


def _stored_result_is_current(path: Path, files: dict[str, list[str]]) -> bool:
    """A stored identity counts as done when it covers exactly the identity's degraded files
    (a file added or removed since then makes the identity be redone)."""
    if not path.is_file():
        return False
    stored = json.loads(path.read_text())
    return set(stored["scores"]) | set(stored["skipped"]) == set(files["degraded"])


def _read_images(folder: Path, names: list[str], size: int, skipped: dict) -> dict[str, np.ndarray]:
    images = {}
    for name in names:
        try:
            image = read_rgb(folder / name)
            if image.shape[:2] != (size, size):
                raise BadInputError("wrong-size", f"{folder.name}/{name}: {image.shape[1]}x{image.shape[0]} pixels, "
                                    f"not the {size}x{size} aligned crop the SynFIQA layout holds")
            images[name] = image
        except BadInputError as error:
            skipped[name] = {"reason": error.reason, "detail": str(error)}
    return images


def _stack(arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(list(arrays))).permute(0, 3, 1, 2).contiguous()


def _needs_yaw(annotators) -> bool:
    return any(protocols.include_yaw(annotator) for _, annotator in annotators)


def _check_intensities(layout, recorded, severity_axes, annotators) -> None:
    """Every degraded sample needs a row, and every row every intensity sd ranks: a missing
    one is an error that names it, before any sample is scored."""
    if not any(a.scope == "dataset" for _, a in annotators):
        return
    required = list(severity_axes) + ([YAW_AXIS] if _needs_yaw(annotators) and YAW_AXIS not in severity_axes else [])
    for identity, files in layout.items():
        for name in files["degraded"]:
            params = recorded.get(quality_key(identity, name))
            if params is None:
                raise ConfigError(f"no recorded intensities for /{identity}/{name}")
            missing = [axis for axis in required if axis not in params]
            if missing:
                raise ConfigError(f"recorded intensities lack the column {missing[0]!r} (for /{identity}/{name})"
                                  + ("; set annotate.params.sd.include_yaw=false if yaw was not recorded"
                                     if missing[0] == YAW_AXIS else ""))
