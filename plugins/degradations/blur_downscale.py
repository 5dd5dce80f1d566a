"""The MR-FIQA degradation (docs/method.md#41-blur-downscale): a random anisotropic Gaussian blur,
then downscale by (low_scale + 1) and resize back.

This module holds the sampling and a plain-torch apply; the fused compiled op replaces
the apply in a later step, checked against this one.

mode="faithful" reproduces the original code's numerics instead (its off-centre kernel,
uint8 correlation, Pillow resizes): see _faithful.py for every difference.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from synfiqa import hookimpl
from synfiqa.degradation import Degradation, check_images
from synfiqa.ops import blur_resample
from synfiqa.ops.reference import blur_resample_reference
from synfiqa_plugins.degradations import _faithful
from synfiqa_plugins.degradations._common import check_count, check_landmarks, check_params

INTENSITY_RANGES = torch.tensor([[0.82, 1.6], [1.6, 2.5], [2.5, 4.0], [4.0, 8.0]], dtype=torch.float64)
INTENSITY_PROBABILITIES = torch.tensor([0.8, 0.1, 0.08, 0.02], dtype=torch.float64)
KERNEL_SIZE = 21


def sample_intensity(n: int, generator: torch.Generator) -> torch.Tensor:
    """Pick a range by the mixture probabilities, draw uniformly inside it; values <= 1 become 1."""
    if n == 0:  # torch.multinomial refuses to draw nothing
        return torch.empty(0, dtype=torch.float64)
    which = torch.multinomial(INTENSITY_PROBABILITIES, n, replacement=True, generator=generator)
    low, high = INTENSITY_RANGES[which, 0], INTENSITY_RANGES[which, 1]
    value = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.where(value <= 1.0, torch.ones_like(value), value)


def anisotropic_kernel(theta: float, l1: float, l2: float, tap_noise: torch.Tensor) -> torch.Tensor:
    """21x21 Gaussian with covariance R(theta) diag(l1, l2) R(theta)^T, each tap times
    (1 + noise), re-centred on its centre of mass, normalised to sum 1."""
    size = tap_noise.shape[-1]
    centre = size // 2
    cos, sin = math.cos(theta), math.sin(theta)
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    covariance = rotation @ torch.diag(torch.tensor([l1, l2], dtype=torch.float64)) @ rotation.T
    inverse = torch.linalg.inv(covariance)
    coords = torch.arange(size, dtype=torch.float64) - centre
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    points = torch.stack([xs, ys], dim=-1)
    exponent = torch.einsum("hwi,ij,hwj->hw", points, inverse, points)
    kernel = torch.exp(-0.5 * exponent) * (1.0 + tap_noise)
    kernel = kernel.clamp_min(0)
    kernel = kernel / kernel.sum()
    kernel = shift_to_centre_of_mass(kernel)
    return kernel / kernel.sum()


def shift_to_centre_of_mass(kernel: torch.Tensor) -> torch.Tensor:
    """Sub-pixel (bilinear) shift that moves the kernel's centre of mass to its centre."""
    size = kernel.shape[-1]
    coords = torch.arange(size, dtype=torch.float64)
    mass = kernel.sum()
    cy = (kernel.sum(dim=1) * coords).sum() / mass
    cx = (kernel.sum(dim=0) * coords).sum() / mass
    dy, dx = (size // 2) - cy, (size // 2) - cx
    theta = torch.tensor([[[1.0, 0.0, -2 * float(dx) / size], [0.0, 1.0, -2 * float(dy) / size]]], dtype=torch.float64)
    grid = F.affine_grid(theta, (1, 1, size, size), align_corners=False)
    return F.grid_sample(kernel[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


class BlurDownscale(Degradation):
    """MR-FIQA blur + downscale: intensities from the paper's mixture, 21x21 anisotropic kernel."""

    severity_axes = ("low_scale", "blur_level")

    def __init__(self, kernel_size: int = KERNEL_SIZE, mode: str = "fast"):
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if mode not in ("fast", "reference", "faithful"):
            raise ValueError(f"mode must be 'fast', 'reference' or 'faithful', got {mode!r}")
        self.kernel_size = kernel_size
        self.mode = mode

    def sample_params(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        check_count(n)
        low_scale = sample_intensity(n, generator)
        blur_level = sample_intensity(n, generator)
        theta = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
        unit = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        l_min, l_max = 0.175 * low_scale, low_scale * blur_level
        l1 = l_min + (l_max - l_min) * unit[:, 0]
        l2 = l_min + (l_max - l_min) * unit[:, 1]
        noise_unit = torch.rand(n, self.kernel_size, self.kernel_size, generator=generator, dtype=torch.float64)
        tap_noise = (2 * noise_unit - 1) * (0.1 * blur_level)[:, None, None]
        kernels = torch.zeros(n, self.kernel_size, self.kernel_size, dtype=torch.float64)
        if self.mode == "faithful":  # the original's off-centre spline-shifted kernel, kept in float64
            for i in range(n):
                if blur_level[i] > 1.0:
                    kernels[i] = torch.from_numpy(_faithful.original_kernel(
                        float(low_scale[i]), float(theta[i]), float(l1[i]), float(l2[i]), tap_noise[i].numpy()))
            return {"low_scale": low_scale, "blur_level": blur_level, "theta": theta, "l1": l1, "l2": l2,
                    "kernel": kernels}
        for i in range(n):
            if blur_level[i] > 1.0:
                kernels[i] = anisotropic_kernel(float(theta[i]), float(l1[i]), float(l2[i]), tap_noise[i])
            else:
                kernels[i, self.kernel_size // 2, self.kernel_size // 2] = 1.0  # no blur below level 1
        return {"low_scale": low_scale, "blur_level": blur_level, "theta": theta, "l1": l1, "l2": l2,
                "kernel": kernels.to(torch.float32)}

    def apply(self, images, params, landmarks=None):
        check_images(images)
        check_params(params, images.shape[0], ("low_scale", "blur_level", "kernel"))
        if landmarks is not None:  # unused (the blur is spatially uniform), but checked like any input
            check_landmarks(landmarks, *images.shape[:1], *images.shape[2:])
        if images.shape[0] == 0:
            return images.clone()
        if self.mode == "faithful":
            return self._apply_faithful(images, params)
        # One fused pass (synfiqa.ops.blur_resample); "reference" runs its pure-torch twin.
        impl = "reference" if self.mode == "reference" else "auto"
        return blur_resample(images, params["kernel"], params["low_scale"] + 1.0, impl=impl)

    def _apply_faithful(self, images, params):
        """The original's numerics, sample by sample on the CPU (see _faithful)."""
        pixels = images.detach().to("cpu").permute(0, 2, 3, 1).numpy()
        out = []
        for i in range(images.shape[0]):
            kernel = params["kernel"][i].detach().to("cpu", torch.float64).numpy() if params["blur_level"][i] > 1 else None
            degraded = _faithful.faithful_blur_downscale(np.ascontiguousarray(pixels[i]), kernel,
                                                         float(params["low_scale"][i]))
            out.append(torch.from_numpy(degraded.copy()).permute(2, 0, 1))
        return torch.stack(out).to(images.device)


# The plain-torch definition moved to synfiqa.ops.reference; this name stays for callers.
blur_downscale_reference = blur_resample_reference


@hookimpl
def register_degradations(register):
    register("blur-downscale", BlurDownscale)
