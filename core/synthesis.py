"""The Stage-2 contract: a *backend* turns an identity and its plan into face images.

The core drives every backend the same way (synfiqa.stages.s3_synthesize):

1. it detects and aligns each photo of the identity once (:class:`IdentityPhoto`: the photo,
   its main face, the aligned crop, the measured |yaw| and sharpness);
2. it draws the identity's plan (:class:`Plan`: R reference and D degraded
   :class:`~synfiqa.stages.s3_synthesize.plan.Spec`, seeded by run seed, identity and index);
3. ``backend.render(identity, plan, context)`` yields one :class:`Rendered` per image it makes:
   a picture with one face in it (a 512x512 diffusion sample, a real photo, a warp);
4. for each, the core finds the face (``Rendered.face`` when the backend knows it, else the
   configured detector), aligns a reference to the ArcFace template, and for a degraded sample
   cuts the detector crop, degrades it and aligns it (or degrades the aligned crop:
   ``stage2.degrade_on``); |yaw| is measured on the clean aligned crop.

A backend may make fewer images than planned (a folder with three photos cannot give ten
references): the manifest and the summary say how many were made. An image without a face is
recorded as skipped (the original drops it silently). ``Rendered.spec`` says which plan entry
an image realises: its controls go to the manifest as ``control.*``; a backend that does not
follow the plan (real photos) leaves it None. ``Rendered.source`` names the photo whose pixels
the image is made of: when a degraded sample's source is also a reference's, the core marks
the sample ``circular`` (its clean version sits inside the reference mean of fr).

The helpers here are public so that a third-party backend can do what the built-ins do:
:func:`split_photos` (the documented reference / sample-source rule) and :func:`sharpness`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synfiqa.models import DetectedFace

ROLES = ("reference", "degraded")
#: photos with |yaw| at most this (degrees) count as frontal when references are chosen: the
#: paper's Stage-1 yaw filter keeps identities below 20 degrees
FRONTAL_YAW = 20.0


@dataclass(frozen=True)
class IdentityPhoto:
    """One usable photo of an identity, detected and aligned once by the core."""

    key: str                      # its name inside the identity (the generator's key)
    image: np.ndarray             # HxWx3 uint8, the whole photo (turned upright when it was not)
    face: DetectedFace            # the main face, in `image` pixels
    crop: np.ndarray              # the ArcFace-aligned crop, run.image_size square
    abs_yaw: float                # |yaw| in degrees, measured on `crop`
    sharpness: float              # :func:`sharpness` of `crop`
    notes: tuple[str, ...] = ()   # what a person should know about the photo (manifest "notes")


@dataclass(frozen=True)
class IdentityInput:
    """What a backend gets of an identity: its name, its usable photos in the generator's
    order (photos without a face were recorded as skipped and are not here) and the
    generator's metadata."""

    name: str
    photos: tuple[IdentityPhoto, ...]
    metadata: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Plan:
    """The identity's plan: reference specs 0..R-1 and degraded specs 0..D-1."""

    references: tuple[Any, ...]
    degraded: tuple[Any, ...]

    def __iter__(self):
        yield from self.references
        yield from self.degraded


@dataclass(frozen=True)
class Rendered:
    """One image a backend made."""

    role: str                          # "reference" or "degraded"
    index: int                         # Ref-<index> or sample <index>
    image: np.ndarray                  # HxWx3 uint8 RGB with one face
    source: str                        # the photo (key) whose pixels it is made of; "" for none
    spec: Any = None                   # the plan entry it realises (a Spec); None: no plan followed
    face: DetectedFace | None = None   # where the face is, when the backend knows (no detection then)
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"Rendered.role must be one of {ROLES}, not {self.role!r}")
        image = self.image
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("Rendered.image must be an HxWx3 uint8 RGB array")


def sharpness(crop: np.ndarray) -> float:
    """The variance of the 4-neighbour Laplacian of the crop's grey levels (ITU-R 601 luma, on
    the interior pixels): larger is sharper. A blurry or upscaled photo scores low."""
    grey = np.asarray(crop, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    laplacian = (grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1])
    return float(laplacian.var())


def split_photos(photos, references: int) -> tuple[tuple, tuple]:
    """(reference photos, sample-source photos) of an identity: disjoint whenever it has two
    photos or more, so that no degraded sample is a copy of a reference.

    The rule: rank the photos frontal first (|yaw| <= FRONTAL_YAW), then by sharpness
    (descending), then by key; the first ``min(references, max(1, n // 2))`` are the
    references, in that rank; every other photo is a sample source, in the input order. With a
    single photo it is both (the caller marks those samples circular).

    >>> from types import SimpleNamespace as P
    >>> photos = [P(key="a", abs_yaw=35.0, sharpness=90.0), P(key="b", abs_yaw=3.0, sharpness=20.0),
    ...           P(key="c", abs_yaw=8.0, sharpness=60.0), P(key="d", abs_yaw=2.0, sharpness=10.0)]
    >>> refs, sources = split_photos(photos, references=10)
    >>> [p.key for p in refs], [p.key for p in sources]
    (['c', 'b'], ['a', 'd'])
    """
    photos = tuple(photos)
    if references < 1:
        raise ValueError(f"references must be >= 1, not {references}")
    if len(photos) <= 1:
        return photos, photos
    ranked = sorted(photos, key=lambda p: (p.abs_yaw > FRONTAL_YAW, -p.sharpness, p.key))
    chosen = ranked[: min(references, max(1, len(photos) // 2))]
    keys = {p.key for p in chosen}
    return tuple(chosen), tuple(p for p in photos if p.key not in keys)
