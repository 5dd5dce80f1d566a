"""A real ArcFace-aligned face crop for the degradation tests: one test photo detected
(MTCNN) and aligned once per test session, with the landmarks the crop was aligned to."""
from __future__ import annotations

import functools

import numpy as np
import torch

from conftest import FACES


@functools.cache
def aligned_face(photo: str = "obama_1") -> np.ndarray:
    """112x112x3 uint8 aligned crop of the photo's main face (read-only)."""
    from synfiqa.align import align_face
    from synfiqa.images import read_rgb
    from synfiqa.models import pick_main_face
    from synfiqa.registry import Registry

    detector = Registry().create("detector", "mtcnn")
    image = read_rgb(FACES / f"{photo}.jpg")
    crop = align_face(image, pick_main_face(detector.detect(image)).landmarks)[0]
    crop.setflags(write=False)
    return crop


def face_batch(n: int, height: int = 112, width: int = 112, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, H, W]: the aligned face, mirrored on every other sample so that the
    samples of a batch differ, resized (Pillow bicubic) when another size is asked for."""
    from PIL import Image

    crop = aligned_face()
    if (height, width) != crop.shape[:2]:
        crop = np.asarray(Image.fromarray(crop).resize((width, height), Image.Resampling.BICUBIC))
    face = torch.from_numpy(crop.copy()).permute(2, 0, 1)
    return torch.stack([face.flip(-1) if (i + seed) % 2 else face for i in range(n)]).contiguous()
