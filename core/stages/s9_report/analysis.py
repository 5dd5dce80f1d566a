"""The report's findings for one build: per sample its recorded severity, per identity the
agreement of its labels with severity, per reference whether it is itself of low quality."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from synfiqa.stages.s9_report.checks import (SeverityAgreement, leave_one_out_similarity, recorded_severity,
                                             reference_problems, severity_agreement, severity_axes)
from synfiqa.stages.s9_report.data import BuildView


@dataclass
class ReferenceFinding:
    path: str
    source: str | None
    source_size: tuple[int, int] | None
    similarity: float                       # cosine to the identity's other references; NaN when alone
    problems: list[str]


@dataclass
class Findings:
    axes: list[str]                                      # the degradation axes severity is made of
    severity: dict[str, float]                           # sample key -> recorded severity
    agreements: dict[str, SeverityAgreement]             # identity -> its check
    references: dict[str, list[ReferenceFinding]]        # identity -> its references' checks
    small_sample_sources: dict[str, list[str]] = field(default_factory=dict)  # identity -> notes
    same_identity_threshold: float | None = None
    embedder: str | None = None
    embedder_note: str = ""

    @property
    def flagged(self) -> list[str]:
        """Identities whose labels do not follow severity, the worst (highest rho) first."""
        return sorted((i for i, a in self.agreements.items() if a.flagged), key=lambda i: -self.agreements[i].rho)

    @property
    def flagged_references(self) -> list[ReferenceFinding]:
        return [r for found in self.references.values() for r in found if r.problems]


def analyse(view: BuildView, embed: bool = True) -> Findings:
    degraded = [s for s in view.samples if s.role == "degraded"]
    axes = severity_axes(view.summary.get("severity_axes") or _axes_of(degraded))
    values = recorded_severity([s.params for s in degraded], axes)
    severity = {s.key: float(v) for s, v in zip(degraded, values)}
    agreements = {}
    for identity in view.identities:
        samples = view.of(identity, "degraded")
        if not samples:
            continue
        agreements[identity] = severity_agreement(
            identity, [_label(s) for s in samples], [severity[s.key] for s in samples],
            {axis: [s.params.get(axis, math.nan) for s in samples] for axis in axes})
    findings = Findings(axes, severity, agreements, {})
    embeddings = reference_embeddings(view, findings) if embed else {}
    for identity in view.identities:
        references = view.of(identity, "reference")
        similarity = leave_one_out_similarity(embeddings[identity]) if identity in embeddings \
            else np.full(len(references), np.nan)
        findings.references[identity] = [
            ReferenceFinding(r.path, r.extra.get("source"), _size(view, identity, r.extra.get("source")), float(cos),
                             [])
            for r, cos in zip(references, similarity)]
        for finding in findings.references[identity]:
            finding.problems = reference_problems(finding.source_size, finding.similarity,
                                                  findings.same_identity_threshold)
        notes = []
        for source in sorted({s.extra.get("source") for s in view.of(identity, "degraded")} - {None}):
            problems = reference_problems(_size(view, identity, source), math.nan, None)
            notes += [f"samples made from {source}: {p}" for p in problems]
        if notes:
            findings.small_sample_sources[identity] = notes
    return findings


def _label(sample) -> float:
    return math.nan if sample.label is None else float(sample.label)


def _axes_of(samples) -> list[str]:
    return sorted({axis for s in samples for axis in s.params})


def _size(view: BuildView, identity: str, source: str | None) -> tuple[int, int] | None:
    """Width and height of a source photo, read from its header (EXIF rotation aside: the
    shorter side is what matters)."""
    path = view.sources.get(identity, {}).get(source) if source else None
    if path is None or not path.is_file():
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except OSError:
        return None


def reference_embeddings(view: BuildView, findings: Findings) -> dict[str, np.ndarray]:
    """The build's embedder over the references of every identity that has two or more (the
    aligned crops, as fr sees them); none when no identity has two, so no model is loaded."""
    wanted = {i: view.of(i, "reference") for i in view.identities}
    wanted = {i: refs for i, refs in wanted.items() if len(refs) >= 2}
    if not wanted or not view.config.get("models"):
        return {}
    import torch

    from synfiqa.context import RunContext
    from synfiqa.errors import SynfiqaError
    from synfiqa.images import read_rgb
    from synfiqa.protocols import same_identity_threshold
    from synfiqa.registry import get_registry

    context = RunContext(view.config, get_registry())
    try:
        embedder = context.model("embedder")
    except SynfiqaError as error:
        findings.embedder_note = f"references not compared: {error}"
        return {}
    findings.embedder = context.model_name("embedder")
    findings.same_identity_threshold = same_identity_threshold(embedder)
    embeddings = {}
    with torch.inference_mode():
        for identity, references in wanted.items():
            crops = np.stack([read_rgb(view.root / r.path) for r in references])
            batch = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
            embeddings[identity] = embedder.embed(batch).float().cpu().numpy()
    return embeddings
