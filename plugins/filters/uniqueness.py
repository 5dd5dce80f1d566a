"""Uniqueness filter: greedy identity de-duplication over face embeddings. In order, each
kept identity removes every later kept identity whose cosine similarity to it exceeds the
threshold. The threshold belongs to the embedder (the paper's 0.3 is AdaFace IR-18's): by
default it is the embedder's calibrated value from registry.toml ([[identity_threshold]]).

The kept set is synfiqa.ops.greedy_unique's, on the embeddings as the embedder gives them:
the compiled op, or with impl="reference" (or no compiler) its pure-torch twin, which on
the CPU agree bit for bit, even for a cosine at the threshold (float64 "ordered cosines",
see synfiqa.ops.reference). This filter keeps no copy of the rule. The cosine it reports
for each identity is computed the same way (synfiqa.ops.reference.greedy_cosines), so a
reported value is over the threshold exactly when the identity was removed (with embeddings
on a GPU, up to a cosine within ~1e-13 of the threshold: see synfiqa.ops)."""
from __future__ import annotations


import numpy as np
import torch

from synfiqa import hookimpl
from synfiqa.errors import ConfigError
from synfiqa.protocols import same_identity_threshold
from synfiqa.filtering import Decision, FaceSubject, not_measured
from synfiqa.ops import greedy_unique
from synfiqa.ops.reference import greedy_cosines, unit_rows

# Rows whose reported cosines are computed at a time (memory O(REPORT_BLOCK x kept)).
REPORT_BLOCK = 1024


def closest_kept_earlier(embeddings: torch.Tensor, kept: torch.Tensor, threshold: float):
    """For each row: the position of the kept earlier row with the largest cosine to it, and
    that cosine (-1 and nan when no earlier row is kept). Cosines as greedy_unique judges
    them, so a removed row's value is > threshold and a kept row's is <= threshold. A block
    of rows at a time against the kept rows: never N x N."""
    unit = unit_rows(embeddings.detach().cpu())
    kept = kept.cpu()
    kept_positions = kept.nonzero().flatten()
    kept_unit = unit[kept_positions]
    closest = torch.full((unit.shape[0],), -1, dtype=torch.long)
    values = torch.full((unit.shape[0],), float("nan"), dtype=torch.float64)
    for start in range(0, unit.shape[0], REPORT_BLOCK):
        stop = min(start + REPORT_BLOCK, unit.shape[0])
        columns = int(torch.searchsorted(kept_positions, stop))  # kept rows before the block's end
        if columns == 0:
            continue
        cosines = greedy_cosines(unit[start:stop], kept_unit[:columns], threshold)
        earlier = kept_positions[:columns][None, :] < torch.arange(start, stop)[:, None]
        cosines = cosines.masked_fill(~earlier, float("-inf"))
        best, which = cosines.max(dim=1)
        has = earlier.any(dim=1)
        closest[start:stop] = torch.where(has, kept_positions[which], closest[start:stop])
        values[start:stop] = torch.where(has, best, values[start:stop])
    return closest, values


class UniquenessFilter:
    def __init__(self, threshold: float | None = None, embedder: str = "", impl: str = "auto"):
        if impl not in ("auto", "native", "reference"):
            raise ConfigError(f"uniqueness filter: impl must be auto, native or reference, got {impl!r}")
        self.threshold, self.embedder, self.impl = threshold, embedder, impl

    def embedder_name(self, context) -> str:
        return self.embedder or context.model_name("embedder")

    def resolve_threshold(self, name: str, model=None) -> float:
        """This filter's threshold, else the one the embedder declares (`same_identity_threshold`,
        built-in or third-party alike; without the model, its registered factory's)."""
        if self.threshold is not None:
            return float(self.threshold)
        if model is None:
            from synfiqa.registry import get_registry

            model = get_registry().get("embedder", name).factory
        own = same_identity_threshold(model)
        if own is not None:
            return float(own)
        raise ConfigError(f"uniqueness filter: embedder {name!r} declares no same-identity threshold; "
                          "set filter.params.uniqueness.threshold")

    def judge(self, subjects: list[FaceSubject], context) -> list[Decision]:
        measurable = [i for i, s in enumerate(subjects) if s.has_face]
        decisions = [not_measured(s) for s in subjects]
        if not measurable:
            return decisions
        name = self.embedder_name(context)
        model = context.create("embedder", name) if self.embedder else context.model("embedder")
        threshold = self.resolve_threshold(name, model)
        crops = torch.from_numpy(np.stack([subjects[i].crop for i in measurable])).permute(0, 3, 1, 2).contiguous()
        embeddings = model.embed(crops)
        kept = greedy_unique(embeddings, threshold, impl=self.impl).cpu()
        closest, values = closest_kept_earlier(embeddings, kept, threshold)
        for position, index in enumerate(measurable):
            if int(closest[position]) < 0:
                decisions[index] = Decision(True, None, "first of its kind")
                continue
            value = float(values[position])
            other = subjects[measurable[int(closest[position])]].identity
            if kept[position]:
                decisions[index] = Decision(True, value, f"max cosine {value:.3f} <= {threshold:g} (to {other})")
            else:
                decisions[index] = Decision(False, value, f"same identity as {other}: cosine {value:.3f} > {threshold:g}")
        return decisions


@hookimpl
def register_filters(register):
    register("uniqueness", UniquenessFilter)
