"""The filter contract and the chain that runs filters over identities.

A filter judges identities and never touches files: it receives one `FaceSubject` per
identity still kept (the identity's first photo in which a face was found, with its five
landmarks and its ArcFace-aligned crop) and returns one `Decision` per subject, carrying
the value it measured. Filters run in the configured order, each seeing only the
identities the ones before it kept, as the original pipeline (which deleted files between
steps) did. A filter that cannot measure a subject (no face found) keeps it and says so;
the build skips faceless identities later with its own reason.

    class MyFilter:
        def judge(self, subjects: list[FaceSubject], context: RunContext) -> list[Decision]: ...
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from synfiqa.align import align_face, apply_transform
from synfiqa.config import component_params
from synfiqa.errors import BadInputError
from synfiqa.generation import Identity
from synfiqa.models import pick_main_face


@dataclass
class FaceSubject:
    identity: str
    source: str | None = None             # the photo judged (its key inside the identity)
    image: np.ndarray | None = None       # that photo, HxWx3 uint8 RGB
    landmarks: np.ndarray | None = None   # [5, 2] in photo pixels; None: no face found
    box: np.ndarray | None = None         # x1, y1, x2, y2 of the face in photo pixels
    crop: np.ndarray | None = None        # 112x112x3 ArcFace-aligned crop
    crop_landmarks: np.ndarray | None = None
    problem: str = ""                     # why there is no face, when there is none

    @property
    def has_face(self) -> bool:
        return self.landmarks is not None


@dataclass(frozen=True)
class Decision:
    keep: bool
    value: float | None = None   # what the filter measured (None: not measured)
    reason: str = ""             # one line, e.g. "|yaw| 27.1 >= 20"


class Filter(Protocol):
    def judge(self, subjects: list[FaceSubject], context) -> list[Decision]: ...


@dataclass
class Verdict:
    """The chain's outcome for one identity."""

    identity: str
    kept: bool = True
    removed_by: str | None = None
    reason: str = ""
    source: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def not_measured(subject: FaceSubject) -> Decision:
    return Decision(True, None, f"kept, not measured: {subject.problem or 'no face found'}")


def face_subject(identity: Identity, detector, size: int = 112) -> FaceSubject:
    """The identity's first photo with a detectable face, landmarks and aligned crop."""
    subject = FaceSubject(identity.name)
    problems = []
    for source in identity.images:
        try:
            image = source.load()
        except BadInputError as error:
            problems.append(f"{source.key}: {error.reason}")
            continue
        if subject.image is None:
            subject.image, subject.source = image, source.key
        smallest = int(getattr(detector, "min_face_size", 20))
        if min(image.shape[:2]) < smallest:
            problems.append(f"{source.key}: too small for a face ({image.shape[1]}x{image.shape[0]})")
            continue
        face = pick_main_face(detector.detect(image))
        if face is None:
            problems.append(f"{source.key}: no face")
            continue
        crop, matrix = align_face(image, face.landmarks, size)
        subject.image, subject.source = image, source.key
        subject.landmarks = np.asarray(face.landmarks, dtype=np.float64)
        subject.box = np.asarray(face.box, dtype=np.float64)
        subject.crop, subject.crop_landmarks = crop, apply_transform(matrix, face.landmarks)
        return subject
    subject.problem = "; ".join(problems) or "no photo"
    return subject


def build_filters(names: list[str], config: dict, registry) -> list[tuple[str, Filter]]:
    return [(name, registry.create("filter", name, **component_params(config, "filter", name))) for name in names]


def run_filters(filters: list[tuple[str, Filter]], identities: list[Identity], context,
                progress=None) -> list[Verdict]:
    """Judge every identity with the chain; returns one Verdict per identity, in order."""
    detector = context.model("detector")
    items = identities if progress is None else progress(identities)
    subjects = [face_subject(identity, detector) for identity in items]
    verdicts = [Verdict(s.identity, source=s.source, images=[i.key for i in identity.images])
                for s, identity in zip(subjects, identities)]
    alive = list(range(len(subjects)))
    for name, component in filters:
        decisions = component.judge([subjects[i] for i in alive], context)
        if len(decisions) != len(alive):
            raise RuntimeError(f"filter {name!r} returned {len(decisions)} decisions for {len(alive)} identities")
        survivors = []
        for i, decision in zip(alive, decisions):
            verdicts[i].values[name] = decision.value
            if decision.keep:
                survivors.append(i)
            else:
                verdicts[i].kept, verdicts[i].removed_by, verdicts[i].reason = False, name, decision.reason
        alive = survivors
    return verdicts


def summary_counts(names: list[str], verdicts: list[Verdict]) -> dict[str, int]:
    removed = Counter(v.removed_by for v in verdicts if not v.kept)
    return {name: removed.get(name, 0) for name in names}


# ---------------------------------------------------------------- the build's filter stage

def filter_for_build(pipeline, identities: list[Identity], dataset, echo=print) -> list[Identity]:
    """Run `filter.chain` over the build's identities. Removed identities get a record (and
    so a manifest row) with the filter's reason; the kept ones are returned. Decisions are
    stored in the build folder so a resumed build does not judge again."""
    from synfiqa.images import write_text_atomic

    names = list(pipeline.config["filter"]["chain"])
    if not names:
        return identities
    cache = dataset.root / ".synfiqa" / "filter.json"
    wanted = {"chain": names, "identities": [i.name for i in identities]}
    verdicts = None
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if {k: stored.get(k) for k in wanted} == wanted:
            verdicts = [Verdict(**v) for v in stored["verdicts"]]
    if verdicts is None:
        filters = build_filters(names, pipeline.config, pipeline.registry)
        verdicts = run_filters(filters, identities, pipeline.context)
        write_text_atomic(cache, json.dumps({**wanted, "verdicts": [v.to_dict() for v in verdicts]}, indent=1) + "\n")
    for verdict in verdicts:
        if verdict.kept or dataset.has_record(verdict.identity):
            continue
        row = {"identity": verdict.identity, "role": "identity", "status": "removed",
               "reason": f"filter:{verdict.removed_by}", "detail": verdict.reason,
               "source": verdict.source, "filters": verdict.values}
        dataset.write_record(verdict.identity, {"identity": verdict.identity, "status": "removed",
                                                "reason": row["reason"], "rows": [row]})
    counts = summary_counts(names, verdicts)
    kept = {v.identity for v in verdicts if v.kept}
    echo(f"filter: kept {len(kept)} of {len(identities)} identities ("
         + ", ".join(f"{name} removed {count}" for name, count in counts.items()) + ")")
    return [identity for identity in identities if identity.name in kept]
