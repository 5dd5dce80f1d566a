"""sensor-noise: what a camera sensor adds, photon shot noise (Poisson) and read noise
(Gaussian).

Shot noise is parameterised by its standard deviation at full white, ``shot_sigma`` grey
levels: a pixel of value v (in [0, 1]) collects Poisson(v * photons) photons with
photons = (255 / shot_sigma)^2, so its noise grows as sqrt(v), as a real sensor's does.
Read noise adds N(0, read_sigma) grey levels everywhere. The noise itself comes from a
per-sample seed drawn in sample_params, so apply is deterministic given the params.
"""
from __future__ import annotations

import torch

from synfiqa import hookimpl
from synfiqa_plugins.degradations._common import (
    PerSampleDegradation,
    check_count,
    check_range,
    draw_seeds,
    to_uint8,
    uniform,
)


class SensorNoise(PerSampleDegradation):
    """Poisson shot noise then Gaussian read noise; sigmas in grey levels (0-255)."""

    severity_axes = ("read_sigma", "shot_sigma")
    required_params = ("read_sigma", "shot_sigma", "noise_seed")

    def __init__(self, read_sigma=(0.0, 12.0), shot_sigma=(0.0, 16.0)):
        self.read_sigma = check_range("read_sigma", read_sigma, 0.0, 255.0)
        self.shot_sigma = check_range("shot_sigma", shot_sigma, 0.0, 255.0)

    def sample_params(self, n, generator):
        check_count(n)
        return {
            "read_sigma": uniform(n, generator, *self.read_sigma),
            "shot_sigma": uniform(n, generator, *self.shot_sigma),
            "noise_seed": draw_seeds(n, generator),
        }

    def apply_one(self, image, params, landmarks):
        generator = torch.Generator().manual_seed(int(params["noise_seed"]))
        x = image.to(torch.float64) / 255.0
        shot = float(params["shot_sigma"])
        if shot > 0:
            photons = (255.0 / shot) ** 2
            x = torch.poisson(x * photons, generator=generator) / photons
        read = float(params["read_sigma"])
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        return to_uint8(x * 255.0 + read * noise)


@hookimpl
def register_degradations(register):
    register("sensor-noise", SensorNoise)
