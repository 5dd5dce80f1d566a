"""jpeg: compression artefacts (blocking, ringing, chroma bleeding) from a real codec:
each sample is encoded with libjpeg through Pillow at its quality and decoded again.

The severity axis is ``jpeg_loss`` = 100 - quality, so larger is worse.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from synfiqa import hookimpl
from synfiqa_plugins.degradations._common import PerSampleDegradation, check_count, check_range

SUBSAMPLING = ("4:4:4", "4:2:2", "4:2:0")


def jpeg_round_trip(pixels: np.ndarray, quality: int, subsampling: str) -> np.ndarray:
    """HxWx3 uint8 -> encoded at `quality` -> decoded HxWx3 uint8."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


class JpegCompression(PerSampleDegradation):
    """Encode and decode through libjpeg at a quality drawn uniformly (integers) from the range."""

    severity_axes = ("jpeg_loss",)
    required_params = ("quality",)

    def __init__(self, quality=(10, 90), subsampling: str = "4:2:0"):
        low, high = check_range("quality", quality, 1, 100)
        if low != int(low) or high != int(high):
            raise ValueError(f"quality must be a range of integers, got {quality!r}")
        if subsampling not in SUBSAMPLING:
            raise ValueError(f"subsampling must be one of {SUBSAMPLING}, got {subsampling!r}")
        self.quality = (int(low), int(high))
        self.subsampling = subsampling

    def sample_params(self, n, generator):
        check_count(n)
        low, high = self.quality
        quality = torch.randint(low, high + 1, (n,), generator=generator).to(torch.float64)
        return {"quality": quality, "jpeg_loss": 100.0 - quality}

    def apply_one(self, image, params, landmarks):
        quality = float(params["quality"])
        if quality != int(quality) or not 1 <= quality <= 100:
            raise ValueError(f"params['quality'] must be an integer in [1, 100], got {quality}")
        pixels = image.permute(1, 2, 0).numpy()
        decoded = jpeg_round_trip(np.ascontiguousarray(pixels), int(quality), self.subsampling)
        return torch.from_numpy(decoded.copy()).permute(2, 0, 1).contiguous()


@hookimpl
def register_degradations(register):
    register("jpeg", JpegCompression)
