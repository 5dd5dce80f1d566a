"""The six test photos detected (MTCNN) and aligned once per test session, shared by the
scoring and evaluation tests (the detector dominates their run time)."""
from __future__ import annotations

import functools

import numpy as np

from conftest import FACES

PHOTOS = ("ardern_1", "ardern_2", "macron_1", "macron_2", "obama_1", "sunak_1")


@functools.cache
def aligned_test_faces() -> dict[str, np.ndarray]:
    """File name -> 112x112x3 uint8 ArcFace-aligned crop of its main face."""
    from synfiqa.align import align_face
    from synfiqa.images import read_rgb
    from synfiqa.models import pick_main_face
    from synfiqa.registry import Registry

    detector = Registry().create("detector", "mtcnn")
    crops = {}
    for photo in PHOTOS:
        image = read_rgb(FACES / f"{photo}.jpg")
        crop = align_face(image, pick_main_face(detector.detect(image)).landmarks)[0]
        crop.setflags(write=False)
        crops[f"{photo}.jpg"] = crop
    return crops
