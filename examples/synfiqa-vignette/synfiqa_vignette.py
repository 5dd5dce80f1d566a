"""Lens vignetting: the image darkens towards its corners.

A complete synfiqa degradation plugin: seeded parameter sampling, a deterministic
apply, one declared severity axis (`strength`) that the spatial-domain score ranks, and
input checks with synfiqa's public helpers, so that it passes every check of the
conformance kit (tests/test_vignette.py).
"""
import torch

from synfiqa import hookimpl
from synfiqa.degradation import check_count, check_images, check_landmarks, check_params, check_range


class Vignette:
    """darkens the corners by a radial falloff"""

    severity_axes = ("strength",)  # recorded; larger = worse; ranked by the sd score

    def __init__(self, strength=(0.0, 0.8)):
        self.low, self.high = check_range("vignette strength", strength, 0.0, 1.0)

    def sample_params(self, n, generator):
        n = check_count(n)  # pure, seeded: draw from the generator given, nothing else
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return {"strength": self.low + (self.high - self.low) * u}

    def apply(self, images, params, landmarks=None):
        check_images(images)  # uint8 [N, 3, H, W]
        n, _, height, width = images.shape
        check_params(params, n, ("strength",))
        check_landmarks(landmarks, n, height, width)  # unused here, but malformed ones are refused
        ys = torch.linspace(-1, 1, height, dtype=torch.float64)[:, None]
        xs = torch.linspace(-1, 1, width, dtype=torch.float64)[None, :]
        radius2 = (xs**2 + ys**2) / 2  # 0 at the centre, 1 in the corners
        strength = params["strength"].to("cpu", torch.float64)[:, None, None, None]
        gain = 1 - strength * radius2
        out = (images.to("cpu", torch.float64) * gain).round().clamp(0, 255).to(torch.uint8)
        return out.to(images.device)  # a new tensor, on the input's device


@hookimpl
def register_degradations(register):
    register("vignette", Vignette, summary="lens vignetting: radial darkening towards the corners")
