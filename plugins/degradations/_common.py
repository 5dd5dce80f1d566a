"""What the built-in degradations share: input checks that name the bad argument, the
face landmarks to use when none are given, seeded draws, and a base class that applies
a degradation one sample at a time.

Applying sample by sample makes "a batch of N equals N single applications" true by
construction (no batch-size-dependent reduction order can change a rounding), and at
112x112 the loop costs little next to the work per image.
"""
from __future__ import annotations

import math

import torch

# the input checks are public (synfiqa.degradation), so a third-party plugin checks its input
# exactly as the built-ins do
from synfiqa.degradation import (Degradation, check_count, check_images, check_landmarks,  # noqa: F401
                                 check_params, check_range, template_landmarks)

# Seeds drawn for per-sample noise stay below 2**53 so that the manifest, which stores
# every 1-D parameter as a float, records them exactly.
SEED_LIMIT = 2**53


def uniform(n: int, generator: torch.Generator, low: float, high: float) -> torch.Tensor:
    """n float64 draws from U(low, high)."""
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def draw_seeds(n: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample seeds for the noise an apply draws (int64, exact as float64)."""
    return torch.randint(0, SEED_LIMIT, (n,), generator=generator, dtype=torch.int64)


class PerSampleDegradation(Degradation):
    """Validates a batch, then calls ``apply_one`` on each sample.

    Subclasses set ``required_params`` (the keys apply reads) and implement
    ``apply_one(image uint8 [3, H, W] on the CPU, params {key: that sample's row},
    landmarks float64 [5, 2]) -> uint8 [3, H, W]``. Images on another device are
    degraded on the CPU and returned on their device.
    """

    required_params: tuple[str, ...] = ()

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor],
              landmarks: torch.Tensor | None = None) -> torch.Tensor:
        check_images(images)
        n, _, height, width = images.shape
        check_params(params, n, self.required_params)
        landmarks = check_landmarks(landmarks, n, height, width)
        device = images.device
        source = images.detach().to("cpu").contiguous()
        if n == 0:
            return source.clone().to(device)
        rows = [{key: params[key][i].detach().to("cpu") for key in self.required_params} for i in range(n)]
        out = torch.stack([self.apply_one(source[i], rows[i], landmarks[i]) for i in range(n)])
        return out.to(device)

    def apply_one(self, image: torch.Tensor, params: dict[str, torch.Tensor],
                  landmarks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in grey levels -> uint8: round half to even, clamp to [0, 255]."""
    return x.round().clamp(0, 255).to(torch.uint8)


def odd_size_for_radius(radius: float) -> int:
    """The smallest odd kernel side that holds a footprint of this radius plus one pixel
    of anti-aliased edge."""
    return 2 * (math.ceil(radius) + 1) + 1


def filter_image(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate each channel of a uint8 [3, H, W] image with a float [K, K] kernel (K odd),
    edges replicated (a scene continues past the frame); float32 grey levels out (float32
    runs on the fast convolution kernels and is exact enough for uint8 output)."""
    pad = kernel.shape[-1] // 2
    x = image.to(torch.float32)[:, None]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    return torch.nn.functional.conv2d(padded, kernel.to(torch.float32)[None, None])[:, 0]
