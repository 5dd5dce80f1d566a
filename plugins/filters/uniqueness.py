"""Uniqueness filter: greedy identity de-duplication over face embeddings. In order, each
kept identity removes every later kept identity whose cosine similarity to it exceeds the
threshold. The threshold belongs to the embedder (the paper's 0.3 is AdaFace IR-18's): by
default it is the embedder's calibrated value from registry.toml ([[identity_threshold]])."""
from __future__ import annotations

import importlib
import tomllib

import numpy as np
import torch

from synfiqa import hookimpl
from synfiqa.errors import ConfigError
from synfiqa.filtering import Decision, FaceSubject, not_measured


def calibrated_thresholds() -> dict[str, dict]:
    from synfiqa.catalogue import catalogue_path

    raw = tomllib.loads(catalogue_path().read_text())
    return {entry["embedder"]: entry for entry in raw.get("identity_threshold", [])}


def greedy_unique_reference(embeddings: torch.Tensor, threshold: float) -> torch.Tensor:
    """bool kept[N]: the pure-torch twin of synfiqa.ops.greedy_unique."""
    unit = torch.nn.functional.normalize(embeddings.to(torch.float32), dim=1)
    similarity = unit @ unit.T
    kept = torch.ones(len(unit), dtype=torch.bool)
    for i in range(len(unit)):
        if kept[i]:
            kept[i + 1:] &= ~(similarity[i, i + 1:] > threshold)
    return kept


def greedy_unique(embeddings: torch.Tensor, threshold: float, impl: str = "auto") -> torch.Tensor:
    """The compiled op when synfiqa.ops offers it, else the reference."""
    if impl != "reference":
        try:
            ops = importlib.import_module("synfiqa.ops")
        except ImportError:
            ops = None
        if ops is not None and hasattr(ops, "greedy_unique"):
            unit = torch.nn.functional.normalize(embeddings.to(torch.float32), dim=1).contiguous()
            return ops.greedy_unique(unit, threshold, impl=impl).to(torch.bool).cpu()
        if impl == "native":
            raise ConfigError("uniqueness filter: impl='native' but synfiqa.ops has no greedy_unique op")
    return greedy_unique_reference(embeddings, threshold)


class UniquenessFilter:
    def __init__(self, threshold: float | None = None, embedder: str = "", impl: str = "auto"):
        if impl not in ("auto", "native", "reference"):
            raise ConfigError(f"uniqueness filter: impl must be auto, native or reference, got {impl!r}")
        self.threshold, self.embedder, self.impl = threshold, embedder, impl

    def embedder_name(self, context) -> str:
        return self.embedder or context.model_name("embedder")

    def resolve_threshold(self, name: str, model=None) -> float:
        """This filter's threshold, else the embedder's calibrated one from registry.toml,
        else the one a (third-party) embedder declares as `same_identity_threshold`."""
        if self.threshold is not None:
            return float(self.threshold)
        table = calibrated_thresholds()
        if name in table:
            return float(table[name]["cosine"])
        own = getattr(model, "same_identity_threshold", None)
        if own is not None:
            return float(own)
        raise ConfigError(f"uniqueness filter: no calibrated identity threshold for embedder {name!r} "
                          f"(calibrated: {', '.join(sorted(table)) or 'none'}); set "
                          "filter.params.uniqueness.threshold")

    def judge(self, subjects: list[FaceSubject], context) -> list[Decision]:
        measurable = [i for i, s in enumerate(subjects) if s.has_face]
        decisions = [not_measured(s) for s in subjects]
        if not measurable:
            return decisions
        name = self.embedder_name(context)
        model = context.create("embedder", name) if self.embedder else context.model("embedder")
        threshold = self.resolve_threshold(name, model)
        crops = torch.from_numpy(np.stack([subjects[i].crop for i in measurable])).permute(0, 3, 1, 2).contiguous()
        embeddings = model.embed(crops).to(torch.float32)
        kept = greedy_unique(embeddings, threshold, self.impl)
        unit = torch.nn.functional.normalize(embeddings, dim=1)
        similarity = unit @ unit.T
        for position, index in enumerate(measurable):
            earlier = [p for p in range(position) if kept[p]]
            if not earlier:
                decisions[index] = Decision(True, None, "first of its kind")
                continue
            closest = max(earlier, key=lambda p: float(similarity[position, p]))
            value = float(similarity[position, closest])
            other = subjects[measurable[closest]].identity
            if kept[position]:
                decisions[index] = Decision(True, value, f"max cosine {value:.3f} <= {threshold:g} (to {other})")
            else:
                decisions[index] = Decision(False, value, f"same identity as {other}: cosine {value:.3f} > {threshold:g}")
        return decisions


@hookimpl
def register_filters(register):
    register("uniqueness", UniquenessFilter)
