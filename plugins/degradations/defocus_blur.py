"""defocus-blur: an out-of-focus lens spreads each point into its aperture's image, a
uniform disk of a given radius (pixels).

The disk is anti-aliased: a tap at distance r from the centre weighs clamp(radius + 0.5 - r,
0, 1), roughly the part of that pixel inside the circle, so radius 0 is no blur.
"""
from __future__ import annotations

import math

import torch

from synfiqa import hookimpl
from synfiqa_plugins.degradations._common import (
    PerSampleDegradation,
    check_count,
    check_range,
    filter_image,
    odd_size_for_radius,
    to_uint8,
    uniform,
)


def disk_kernel(radius: float) -> torch.Tensor:
    """float64 [K, K], K odd, sums to 1: a disk of `radius` pixels."""
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"defocus radius must be finite and >= 0, got {radius}")
    size = odd_size_for_radius(radius)
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    kernel = (radius + 0.5 - torch.hypot(xs, ys)).clamp(0, 1)
    return kernel / kernel.sum()


class DefocusBlur(PerSampleDegradation):
    """Disk kernel; radius drawn uniformly in pixels."""

    severity_axes = ("radius",)
    required_params = ("radius",)

    def __init__(self, radius=(0.0, 5.0)):
        self.radius = check_range("radius", radius, 0.0, 500.0)

    def sample_params(self, n, generator):
        check_count(n)
        return {"radius": uniform(n, generator, *self.radius)}

    def apply_one(self, image, params, landmarks):
        return to_uint8(filter_image(image, disk_kernel(float(params["radius"]))))


@hookimpl
def register_degradations(register):
    register("defocus-blur", DefocusBlur)
