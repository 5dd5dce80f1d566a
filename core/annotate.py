"""Quality annotation, shared by `synfiqa build` and `synfiqa annotate`.

`synfiqa annotate DATASET` scores any dataset in the SynFIQA layout (ours or another tool's):
identity-scope annotators run per identity on the images as stored (their results are
written per identity, atomically, so a killed run resumes), then the dataset-scope ones
(sd ranks, the MR min-max) run once over every degraded sample.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from synfiqa.annotation import SampleTable
from synfiqa.config import component_params
from synfiqa.context import RunContext
from synfiqa.dataset import quality_key
from synfiqa.errors import BadInputError, ConfigError, WeightsNotFoundError
from synfiqa.images import read_rgb, write_text_atomic

YAW_AXIS = "pose.abs_yaw"
_REFERENCE = re.compile(r"^Ref-(\d+)\.(jpe?g|png)$", re.IGNORECASE)
_DEGRADED = re.compile(r"^(\d+)\.(jpe?g|png)$", re.IGNORECASE)


def load_annotators(config: dict, context: RunContext) -> tuple[list, dict[str, str]]:
    """The configured annotators, each prepared (models loaded) before any sample is touched.
    An optional annotator whose weights are missing is reported unavailable instead."""
    annotators, unavailable = [], {}
    for name in config["annotate"]["chain"]:
        try:
            annotator = context.registry.create("annotator", name, **component_params(config, "annotate", name))
            if hasattr(annotator, "prepare"):
                annotator.prepare(context)
            annotators.append((name, annotator))
        except WeightsNotFoundError as error:
            if name not in config["annotate"]["optional"]:
                raise
            unavailable[name] = str(error).splitlines()[0]
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


# ---------------------------------------------------------------- annotating a dataset on disk


def scan_dataset(root: Path) -> dict[str, dict[str, list[str]]]:
    """identity -> {"references": [...], "degraded": [...]}, file names in index order."""
    data = root / "data"
    if not data.is_dir():
        raise BadInputError("not-a-dataset", f"{root} has no data/ folder: not a dataset in the SynFIQA layout")
    layout = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        names = [p.name for p in folder.iterdir() if p.is_file()]
        references = sorted((n for n in names if _REFERENCE.match(n)), key=lambda n: int(_REFERENCE.match(n)[1]))
        degraded = sorted((n for n in names if _DEGRADED.match(n)), key=lambda n: int(_DEGRADED.match(n)[1]))
        layout[folder.name] = {"references": references, "degraded": degraded}
    if not layout:
        raise BadInputError("not-a-dataset", f"{root / 'data'} holds no identity folders")
    return layout


def read_intensities(root: Path, source: Path | None) -> tuple[dict[str, dict[str, float]], list[str] | None]:
    """Recorded intensities keyed by "/<identity>/<file>", and the severity axes when the
    source says which they are (our own summary.json does)."""
    if source is None:
        manifest = root / "manifest.jsonl"
        if not manifest.is_file():
            raise ConfigError(f"{root} has no manifest.jsonl; give the recorded intensities with --intensities FILE")
        table = {}
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            if row.get("role") == "degraded" and row.get("status") == "ok":
                table[quality_key(row["identity"], Path(row["path"]).name)] = row["params"]
        axes = None
        summary = root / "summary.json"
        if summary.is_file():
            axes = [a for a in json.loads(summary.read_text()).get("severity_axes", []) if a != YAW_AXIS]
        return table, axes
    source = Path(source)
    if not source.is_file():
        raise ConfigError(f"intensities file {str(source)!r} does not exist")
    if source.suffix.lower() == ".json":
        payload = json.loads(source.read_text())
        rows = payload if isinstance(payload, list) else [{"path": k, **v} for k, v in payload.items()]
    else:
        with open(source, newline="") as handle:
            rows = list(csv.DictReader(handle))
    table = {}
    for number, row in enumerate(rows, start=2):
        if "path" not in row:
            raise ConfigError(f"{source}: every row needs a 'path' column (row {number})")
        key = "/" + str(row["path"]).removeprefix("data/").lstrip("/")
        try:
            table[key] = {k: float(v) for k, v in row.items() if k != "path"}
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: row {number} has a value that is not a number: {row}") from None
    return table, None


def annotate_dataset(config: dict, root: str | Path, *, intensities: str | Path | None = None,
                     axes: list[str] | None = None, registry=None, echo=print, progress: bool | None = None) -> dict:
    from synfiqa.registry import get_registry

    root = Path(root)
    layout = scan_dataset(root)
    recorded, recorded_axes = read_intensities(root, Path(intensities) if intensities else None)
    severity_axes = list(axes) if axes else recorded_axes
    if severity_axes is None:  # a user file: every column but yaw is a severity axis
        severity_axes = sorted({k for params in recorded.values() for k in params} - {YAW_AXIS})
    context = RunContext(config, registry or get_registry())
    annotators, unavailable = load_annotators(config, context)
    needs_yaw = any(name == "sd" and getattr(a, "include_yaw", False) for name, a in annotators)
    required = severity_axes + ([YAW_AXIS] if needs_yaw else [])
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
    work = root / ".synfiqa" / "annotate"
    work.mkdir(parents=True, exist_ok=True)
    todo = [i for i in layout if not (work / f"{i}.json").is_file()]
    echo(f"annotate: {len(layout)} identities ({len(layout) - len(todo)} already annotated)")
    for identity in _progress(todo, progress):
        files = layout[identity]
        if not files["degraded"]:
            write_text_atomic(work / f"{identity}.json", json.dumps({}) + "\n")
            continue
        if not files["references"]:
            raise BadInputError("no-reference", f"identity {identity!r} has degraded samples but no Ref-<k> image")
        references = _load_batch(root / "data" / identity, files["references"])
        samples = _load_batch(root / "data" / identity, files["degraded"])
        scores = identity_scores(annotators, samples, references, context)
        per_sample = {name: {key: values[i] for key, values in scores.items()} for i, name in enumerate(files["degraded"])}
        write_text_atomic(work / f"{identity}.json", json.dumps(per_sample, sort_keys=True) + "\n")
    keys, params, rows = [], [], []
    for identity, files in layout.items():
        stored = json.loads((work / f"{identity}.json").read_text())
        for name in files["degraded"]:
            keys.append(quality_key(identity, name))
            params.append(recorded[quality_key(identity, name)])
            rows.append(stored[name])
    table = SampleTable(paths=keys, params=params,
                        scores={k: np.array([r[k] for r in rows]) for k in (rows[0] if rows else {})},
                        severity_axes=severity_axes, unavailable=set(unavailable))
    scores = dataset_scores(annotators, table, context)
    final = "mr" if "mr" in scores else (list(scores)[-1] if scores else None)
    if final is None:
        raise ConfigError("the annotator chain produced no score")
    quality = {key: float(scores[final][i]) for i, key in enumerate(keys)}
    lines = "".join(f"{key}\t{value:.6f}\n" for key, value in sorted(quality.items()))
    write_text_atomic(root / "Quality-Scores.txt", lines)
    annotations = "".join(json.dumps({"path": key, "scores": {k: float(v[i]) for k, v in scores.items()},
                                      "partial": [f"computed without {n}" for n in sorted(unavailable)]},
                                     sort_keys=True) + "\n" for i, key in enumerate(keys))
    write_text_atomic(root / "annotations.jsonl", annotations)
    for name, why in unavailable.items():
        echo(f"  annotator {name!r} unavailable ({why}); every score is marked 'computed without {name}'")
    echo(f"wrote {root / 'Quality-Scores.txt'} ({len(quality)} scores, {final}) and annotations.jsonl")
    return {"samples": len(keys), "identities": len(layout), "score": final, "unavailable": unavailable}


def _load_batch(folder: Path, names: list[str]) -> torch.Tensor:
    arrays = [read_rgb(folder / name) for name in names]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise BadInputError("mixed-sizes", f"{folder}: images of different sizes {sorted(shapes)}; align them first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _progress(items, enabled):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="annotate", unit="id", file=sys.stderr)
