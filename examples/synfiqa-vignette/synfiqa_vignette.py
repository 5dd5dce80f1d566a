"""Lens vignetting: the image darkens towards its corners.

A complete synfiqa degradation plugin: seeded parameter sampling, a deterministic
apply, and one declared severity axis (`strength`) that the spatial-domain score ranks.
"""
import torch

from synfiqa import hookimpl


class Vignette:
    """darkens the corners by a radial falloff"""

    severity_axes = ("strength",)

    def __init__(self, max_strength: float = 0.8):
        self.max_strength = max_strength

    def sample_params(self, n, generator):
        return {"strength": torch.rand(n, generator=generator, dtype=torch.float64) * self.max_strength}

    def apply(self, images, params, landmarks=None):
        _, _, height, width = images.shape
        ys = torch.linspace(-1, 1, height)[:, None]
        xs = torch.linspace(-1, 1, width)[None, :]
        radius2 = (xs**2 + ys**2) / 2  # 0 at the centre, 1 in the corners
        strength = params["strength"].to(torch.float32)[:, None, None, None]
        gain = 1 - strength * radius2
        return (images.to(torch.float32) * gain).round().clamp(0, 255).to(torch.uint8)


@hookimpl
def register_degradations(register):
    register("vignette", Vignette, summary="lens vignetting: radial darkening towards the corners")
