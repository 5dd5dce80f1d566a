"""The filter contract (the chain that runs filters is the s2 stage: synfiqa.stages.s2_filter).

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

from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np



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
    """The decision of a filter that could not measure a subject (no face): keep it, and say why."""
    return Decision(True, None, f"kept, not measured: {subject.problem or 'no face found'}")
