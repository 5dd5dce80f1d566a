"""Stage s2: the identity filters, in order, over the identities of a build or a folder.

Each identity is judged on its first photo with a detectable face (`face_subject`); each
filter sees only the identities the ones before it kept, as the original pipeline (which
deleted files between steps) did. The contract a filter implements is `synfiqa.filtering`.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from synfiqa.config import component_params
from synfiqa.context import RunContext
from synfiqa.errors import BadInputError
from synfiqa.faces import detect_and_align
from synfiqa.filtering import FaceSubject, Filter, Verdict
from synfiqa.generation import Identity
from synfiqa.store import RecordSet, write_text_atomic
from synfiqa.weights import MissingAssets


def face_subject(identity: Identity, detector, size: int = 112) -> FaceSubject:
    """The identity's first photo with a detectable face, landmarks and aligned crop (through
    synfiqa.faces, as every command detects); else the reason code of each photo."""
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
        try:
            found = detect_and_align(image, detector, size, source.key)
        except BadInputError as error:
            problems.append(f"{source.key}: {error.reason}")
            continue
        subject.image, subject.source = found.image, source.key
        subject.landmarks = np.asarray(found.face.landmarks, dtype=np.float64)
        subject.box = np.asarray(found.face.box, dtype=np.float64)
        subject.crop, subject.crop_landmarks = found.crop, found.landmarks
        return subject
    subject.problem = "; ".join(problems) or "no photo"
    return subject


def build_filters(names: list[str], config: dict, registry, missing: MissingAssets | None = None
                  ) -> list[tuple[str, Filter]]:
    """The chain's filters. With `missing`, a filter whose weights are missing is noted there
    instead of stopping the run, and so are the models its parameters name (`embedder`, `pose`:
    loaded only when it judges), so that one error names every missing asset."""
    if missing is None:
        return [(name, registry.create("filter", name, **component_params(config, "filter", name))) for name in names]
    filters = []
    for name in names:
        params = component_params(config, "filter", name)
        with missing.need(f"filter {name!r}"):
            filters.append((name, registry.create("filter", name, **params)))
        settings = {**registry.get("filter", name).defaults, **params}
        for kind in ("embedder", "pose"):
            if kind not in settings:
                continue
            # an empty name is the run's model of that kind (models.pose, models.embedder)
            model = settings[kind] or RunContext(config, registry).model_name(kind)
            where = f"filter.params.{name}.{kind}" if settings[kind] else f"filter {name!r} through models.{kind}"
            with missing.need(where):
                registry.create(kind, model, **component_params(config, "models", model))
    return filters


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

def filter_for_build(config: dict, context, identities: list[Identity], cache: Path, records: RecordSet,
                     echo=print) -> list[Identity]:
    """Run `filter.chain` over the build's identities. Removed identities get a record (and
    so a manifest row) with the filter's reason; the kept ones are returned. Decisions are
    stored in `cache` so a resumed build does not judge again."""
    names = list(config["filter"]["chain"])
    if not names:
        return identities
    wanted = {"chain": names, "identities": [i.name for i in identities]}
    verdicts = None
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if {k: stored.get(k) for k in wanted} == wanted:
            verdicts = [Verdict(**v) for v in stored["verdicts"]]
    if verdicts is None:
        filters = build_filters(names, config, context.registry)
        verdicts = run_filters(filters, identities, context)
        write_text_atomic(cache, json.dumps({**wanted, "verdicts": [v.to_dict() for v in verdicts]}, indent=1) + "\n")
    for verdict in verdicts:
        if verdict.kept or records.has(verdict.identity):
            continue
        row = {"identity": verdict.identity, "role": "identity", "status": "removed",
               "reason": f"filter:{verdict.removed_by}", "detail": verdict.reason,
               "source": verdict.source, "filters": verdict.values}
        records.write(verdict.identity, {"identity": verdict.identity, "status": "removed",
                                         "reason": row["reason"], "rows": [row]})
    counts = summary_counts(names, verdicts)
    kept = {v.identity for v in verdicts if v.kept}
    echo(f"filter: kept {len(kept)} of {len(identities)} identities ("
         + ", ".join(f"{name} removed {count}" for name, count in counts.items()) + ")")
    return [identity for identity in identities if identity.name in kept]
