"""The ``folder`` Stage-2 backend: an identity's own photos, references and sample sources
disjoint (synfiqa.synthesis.split_photos), so that no degraded sample is a copy of a reference.

Reference i is the i-th chosen reference photo (an identity with fewer photos than
``run.references`` gets fewer references); degraded sample k is sample-source photo
``k % len(sources)``, degraded by the chain. Real photos do not follow the plan's pose, light
or prompt, so no ``control.*`` is recorded. With a single usable photo that photo is both
reference and sample source: the core marks those samples ``circular`` and the build summary
counts them.
"""
from __future__ import annotations

from synfiqa import hookimpl
from synfiqa.synthesis import Rendered, split_photos


class FolderBackend:
    """the identity's own photos: the most frontal and sharpest as references, the others as the sources of its samples"""

    def render(self, identity, plan, context):
        references, sources = split_photos(identity.photos, max(1, len(plan.references)))
        for spec, photo in zip(plan.references, references):
            yield Rendered("reference", spec.index, photo.image, source=photo.key, face=photo.face)
        for spec in plan.degraded:
            photo = sources[spec.index % len(sources)]
            yield Rendered("degraded", spec.index, photo.image, source=photo.key, face=photo.face)


@hookimpl
def register_stage2_backends(register):
    register("folder", FolderBackend)
