"""illumination: bad light and bad exposure. Four effects, in the order a camera meets
them: exposure (a gain of 2**exposure stops, clipping at white), a gamma curve, a contrast
squeeze towards mid-grey (veiling glare: blacks lift, whites dim), and a directional
shading ramp, light falling off across the face from one side (side or top lighting).

The first three make one tone curve T, the same for every pixel and every image:
T(v) = 0.5 + contrast * (min(1, v * 2**exposure) ** gamma - 0.5), v in [0, 1].
The ramp is placed from the face: it runs through the centre of the five landmarks along
`shading_angle` (degrees, counter-clockwise on screen from the x axis), from no darkening
one inter-eye distance behind the centre to a factor (1 - shading) one inter-eye distance
ahead of it.

Severity axes (larger is worse):
  tone_error  the mean of |T(v) - v| over the 256 grey levels, in grey levels: how far the
              tone curve moves an image whose levels are spread evenly. One axis for the
              three tone effects because they can cancel (a darkening exposure and a
              brightening gamma leave mid-tones almost untouched), which separate axes
              would misjudge;
  shading     the ramp's depth.
exposure, gamma and contrast are recorded too.
"""
from __future__ import annotations

import math

import torch

from synfiqa import hookimpl
from synfiqa_plugins.degradations._common import (
    PerSampleDegradation,
    check_count,
    check_range,
    to_uint8,
    uniform,
)


def shading_ramp(height: int, width: int, landmarks: torch.Tensor, angle_degrees: float) -> torch.Tensor:
    """float64 [H, W] in [0, 1]: 0 behind the face, 1 ahead of it along the angle."""
    centre = landmarks.mean(dim=0)
    eye_distance = float(torch.linalg.vector_norm(landmarks[1] - landmarks[0]).clamp_min(1.0))
    angle = math.radians(angle_degrees)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    along = (xs - centre[0]) * math.cos(angle) - (ys - centre[1]) * math.sin(angle)
    return (0.5 + along / (2 * eye_distance)).clamp(0, 1)


def tone_curve(values: torch.Tensor, exposure: float, gamma: float, contrast: float) -> torch.Tensor:
    """T(v) for v in [0, 1] (float64)."""
    return 0.5 + contrast * ((values * 2.0 ** exposure).clamp(0, 1).pow(gamma) - 0.5)


GREY_LEVELS = torch.arange(256, dtype=torch.float64) / 255.0


def tone_error(exposure: float, gamma: float, contrast: float) -> float:
    """Mean |T(v) - v| over the 256 grey levels, in grey levels."""
    return float((tone_curve(GREY_LEVELS, exposure, gamma, contrast) - GREY_LEVELS).abs().mean()) * 255.0


class Illumination(PerSampleDegradation):
    """A tone curve (exposure, gamma, contrast) and a shading ramp, each drawn independently."""

    severity_axes = ("tone_error", "shading")
    required_params = ("exposure", "gamma", "contrast", "shading", "shading_angle")

    def __init__(self, exposure=(-1.5, 1.5), gamma=(0.6, 1.6), contrast=(0.4, 1.0), shading=(0.0, 0.7)):
        self.exposure = check_range("exposure", exposure, -10.0, 10.0)
        self.gamma = check_range("gamma", gamma, 0.05, 20.0)
        self.contrast = check_range("contrast", contrast, 0.0, 1.0)
        self.shading = check_range("shading", shading, 0.0, 1.0)

    def sample_params(self, n, generator):
        check_count(n)
        exposure = uniform(n, generator, *self.exposure)
        # gamma is drawn uniformly in log2 so that darkening and brightening curves are alike
        gamma = torch.exp2(uniform(n, generator, math.log2(self.gamma[0]), math.log2(self.gamma[1])))
        contrast = uniform(n, generator, *self.contrast)
        shading = uniform(n, generator, *self.shading)
        shading_angle = uniform(n, generator, 0.0, 360.0)
        errors = torch.tensor([tone_error(float(e), float(g), float(c)) for e, g, c in zip(exposure, gamma, contrast)],
                              dtype=torch.float64)
        return {"exposure": exposure, "gamma": gamma, "contrast": contrast, "tone_error": errors,
                "shading": shading, "shading_angle": shading_angle}

    def apply_one(self, image, params, landmarks):
        gamma, contrast = float(params["gamma"]), float(params["contrast"])
        if gamma <= 0 or not 0 <= contrast <= 1:
            raise ValueError(f"params: gamma must be > 0 and contrast in [0, 1], got gamma={gamma}, contrast={contrast}")
        x = tone_curve(image.to(torch.float64) / 255.0, float(params["exposure"]), gamma, contrast)
        ramp = shading_ramp(x.shape[1], x.shape[2], landmarks, float(params["shading_angle"]))
        x = x * (1.0 - float(params["shading"]) * ramp)
        return to_uint8(x * 255.0)


@hookimpl
def register_degradations(register):
    register("illumination", Illumination)
