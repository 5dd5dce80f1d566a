"""The annotator contract.

Two scopes:
* ``identity``: ``annotate_identity(samples, references, context) -> {score: Tensor[D]}``
  runs inside the per-identity work on uint8 [D, 3, 112, 112] degraded samples and
  uint8 [R, 3, 112, 112] references of one identity.
* ``dataset``: ``annotate_dataset(table, context) -> {score: ndarray[N]}`` runs once after
  all identities, over every degraded sample of the dataset (ranks, min-max).

``table`` is a ``SampleTable``: the degraded samples' recorded params and the scores the
earlier annotators produced, plus the severity axes the degradation chain declared.
An annotator whose factory raises ``WeightsNotFoundError`` is unavailable; if the config
lists it as optional, the build goes on and marks the affected scores partial.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The |yaw| the build measures on every clean aligned crop: a recorded parameter of every
# sample (references included), which the spatial-domain annotator may rank like a severity axis.
YAW_AXIS = "pose.abs_yaw"


@dataclass
class SampleTable:
    paths: list[str]
    params: list[dict[str, float]]
    scores: dict[str, np.ndarray]
    severity_axes: list[str]
    unavailable: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.paths)

    def column(self, key: str) -> np.ndarray:
        missing = [p for p, row in zip(self.paths, self.params) if key not in row]
        if missing:
            raise KeyError(f"recorded parameter {key!r} is missing for {len(missing)} samples, e.g. {missing[0]}")
        return np.array([row[key] for row in self.params], dtype=np.float64)


class Annotator:
    scope: str = "identity"
    provides: tuple[str, ...] = ()

    def annotate_identity(self, samples, references, context):
        raise NotImplementedError

    def annotate_dataset(self, table: SampleTable, context):
        raise NotImplementedError
