"""The samples of a finished SynFIQA build, in one fixed order, as every export format
writes them: identities sorted by name (their index is the class label, 0-based), within
an identity the references (Ref-<k>) then the degraded samples, each by index.

Read from the build's manifest.jsonl (status "ok" rows) and Quality-Scores.txt (the MR
label of each degraded sample; references have none). A folder that is not a finished
SynFIQA build, a degraded sample without a score, or a manifest row whose image is gone is
a one-line error naming it, before anything is written.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from synfiqa import layout
from synfiqa.errors import BadInputError, DataFileError

ROLES = ("reference", "degraded")
# manifest keys that are the sample's identity, not columns of their own
_STRUCTURAL = {"identity", "index", "role", "status", "key", "path", "params", "scores", "plugins", "partial", "notes"}


@dataclass
class Sample:
    key: str                    # "/<identity>/<file>", the Quality-Scores.txt key
    identity: str
    identity_index: int         # class label, 0-based, identities sorted by name
    role: str                   # "reference" or "degraded"
    index: int                  # k of Ref-<k>.jpg or <k>.jpg
    path: str                   # relative to the build folder (manifest "path")
    label: float | None         # the MR label (Quality-Scores.txt); None for references
    params: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)   # source, circular, control.*, partial, notes, ...

    @property
    def file_name(self) -> str:
        return Path(self.path).name

    def record(self) -> dict:
        """The sample as one JSON-able dict (WebDataset .json, HF metadata, docs/export.md)."""
        return {"key": self.key, "identity": self.identity, "identity_index": self.identity_index,
                "role": self.role, "index": self.index, "path": self.path, "quality": self.label,
                "params": self.params, "scores": self.scores, **self.extra}


@dataclass
class Build:
    root: Path
    samples: list[Sample]
    identities: list[str]       # identity_index -> name
    label_name: str | None      # summary.json "quality_score" (mr)

    def image_path(self, sample: Sample) -> Path:
        return self.root / sample.path


def read_build(root: str | Path, roles: tuple[str, ...] = ROLES) -> Build:
    root = Path(root)
    if not root.is_dir():
        raise BadInputError("not-a-dataset", f"{root} does not exist or is not a folder")
    if not (root / layout.BUILD_MARKER).is_file() or not (root / layout.DATA).is_dir():
        raise BadInputError("not-a-dataset", f"{root} is not a SynFIQA build (no {layout.BUILD_MARKER} and "
                            f"{layout.DATA}/): export takes the folder `synfiqa build --out` wrote")
    manifest = root / layout.MANIFEST
    if not manifest.is_file():
        raise BadInputError("unfinished-build", f"{root} has no {layout.MANIFEST}: the build has not finished its "
                            "dataset-wide step; rerun `synfiqa build` on it first")
    scores_path = root / layout.QUALITY_SCORES
    try:
        quality = layout.read_quality_scores(scores_path) if scores_path.is_file() else {}
    except (ValueError, UnicodeDecodeError) as error:
        raise DataFileError(f"{scores_path}: {error}") from None
    label_name = None
    if (root / layout.SUMMARY).is_file():
        try:
            label_name = json.loads((root / layout.SUMMARY).read_text()).get("quality_score")
        except ValueError:
            pass
    rows = []
    with open(manifest, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataFileError(f"{manifest}:{number}: not a JSON line") from None
            if row.get("status") == "ok" and row.get("role") in roles:
                rows.append(row)
    if not rows:
        raise BadInputError("empty-dataset", f"{manifest} lists no sample with status ok (roles: {', '.join(roles)})")
    identities = sorted({row["identity"] for row in rows})
    numbers = {name: i for i, name in enumerate(identities)}
    order = {role: i for i, role in enumerate(ROLES)}
    rows.sort(key=lambda row: (row["identity"], order[row["role"]], int(row["index"])))
    samples, missing, unlabelled = [], [], []
    for row in rows:
        name = Path(row["path"]).name
        key = layout.quality_key(row["identity"], name)
        if not (root / row["path"]).is_file():
            missing.append(row["path"])
        label = None
        if row["role"] == "degraded" and quality:
            label = quality.get(key)
            if label is None or not math.isfinite(label):
                unlabelled.append(key)
        extra = {k: v for k, v in row.items() if k not in _STRUCTURAL}
        for k in ("partial", "notes"):
            if k in row:
                extra[k] = row[k]
        samples.append(Sample(key, row["identity"], numbers[row["identity"]], row["role"], int(row["index"]),
                              row["path"], label, dict(row.get("params") or {}), dict(row.get("scores") or {}), extra))
    if missing:
        raise BadInputError("missing-image", f"{len(missing)} image(s) the manifest of {root} lists are missing, "
                            f"e.g. {missing[0]}: the build folder is incomplete; rerun `synfiqa build` on it")
    if unlabelled:
        raise DataFileError(f"{scores_path} has no finite score for {len(unlabelled)} degraded sample(s), e.g. "
                            f"{unlabelled[0]}: the scores and the manifest do not belong together")
    return Build(root, samples, identities, label_name)
