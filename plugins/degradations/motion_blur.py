"""motion-blur: the smear of a camera or subject moving during the exposure, a straight
line kernel of a given length (pixels) and angle (degrees, counter-clockwise from the
image's x axis as seen on screen).

The line is drawn anti-aliased: across the line a tap weighs max(0, 1 - its distance to
the line), along it the part of a one-pixel step that lies inside the segment (a tap half
a pixel past the end weighs nothing), so lengths between whole pixels change the kernel
smoothly, a horizontal line of length L spans L pixels, and length 0 is no blur.
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


def motion_kernel(length: float, angle_degrees: float) -> torch.Tensor:
    """float64 [K, K], K odd, sums to 1: a segment of `length` pixels through the centre."""
    if not math.isfinite(length) or length < 0:
        raise ValueError(f"motion blur length must be finite and >= 0, got {length}")
    size = odd_size_for_radius(length / 2)
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    angle = math.radians(angle_degrees)
    # y grows downwards in an image: counter-clockwise on screen is -y
    direction = (math.cos(angle), -math.sin(angle))
    along = xs * direction[0] + ys * direction[1]
    across = (xs * direction[1] - ys * direction[0]).abs()
    kernel = (1.0 - across).clamp_min(0) * (length / 2 + 0.5 - along.abs()).clamp(0, 1)
    return kernel / kernel.sum()


class MotionBlur(PerSampleDegradation):
    """Line kernel; length drawn uniformly in pixels, angle uniformly in [0, 180) degrees."""

    severity_axes = ("length",)
    required_params = ("length", "angle")

    def __init__(self, length=(0.0, 15.0)):
        self.length = check_range("length", length, 0.0, 1000.0)

    def sample_params(self, n, generator):
        check_count(n)
        return {"length": uniform(n, generator, *self.length), "angle": uniform(n, generator, 0.0, 180.0)}

    def apply_one(self, image, params, landmarks):
        kernel = motion_kernel(float(params["length"]), float(params["angle"]))
        return to_uint8(filter_image(image, kernel))


@hookimpl
def register_degradations(register):
    register("motion-blur", MotionBlur)
