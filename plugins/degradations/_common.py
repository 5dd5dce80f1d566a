"""What the built-in degradations share: input checks that name the bad argument, the
face landmarks to use when none are given, seeded draws, and a base class that applies
a degradation one sample at a time.

Applying sample by sample makes "a batch of N equals N single applications" true by
construction (no batch-size-dependent reduction order can change a rounding), and at
112x112 the loop costs little next to the work per image.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from synfiqa.align import ARCFACE_TEMPLATE_112
from synfiqa.degradation import Degradation, check_images

# Seeds drawn for per-sample noise stay below 2**53 so that the manifest, which stores
# every 1-D parameter as a float, records them exactly.
SEED_LIMIT = 2**53


def check_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int (the number of samples), got {n!r}")
    return n


def check_range(name: str, value, minimum: float = -math.inf, maximum: float = math.inf) -> tuple[float, float]:
    """A [low, high] parameter range from the config: two finite numbers, low <= high,
    inside [minimum, maximum]."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a range [low, high], got {value!r}")
    try:
        low, high = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a range of two numbers, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {value!r}")
    if low < minimum or high > maximum:
        raise ValueError(f"{name} must lie inside [{minimum}, {maximum}], got {value!r}")
    return low, high


def uniform(n: int, generator: torch.Generator, low: float, high: float) -> torch.Tensor:
    """n float64 draws from U(low, high)."""
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def draw_seeds(n: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample seeds for the noise an apply draws (int64, exact as float64)."""
    return torch.randint(0, SEED_LIMIT, (n,), generator=generator, dtype=torch.int64)


def template_landmarks(n: int, height: int, width: int) -> torch.Tensor:
    """The ArcFace 112 template scaled to the image: float64 [n, 5, 2]."""
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)
    template[:, 0] *= width / 112.0
    template[:, 1] *= height / 112.0
    return template.expand(n, 5, 2).clone()


def check_params(params, n: int, required: Sequence[str]) -> None:
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of tensors (from sample_params), got {type(params).__name__}")
    for key in required:
        if key not in params:
            raise ValueError(f"params is missing {key!r} (present: {sorted(params)}); "
                             f"pass what this degradation's sample_params returned")
        value = params[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"params[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() == 0 or value.shape[0] != n:
            raise ValueError(f"params[{key!r}] has shape {tuple(value.shape)} but images has {n} samples; "
                             f"params and images must have the same length")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"params[{key!r}] contains NaN or infinity")


def check_landmarks(landmarks, n: int, height: int, width: int) -> torch.Tensor:
    """float64 [n, 5, 2] on the CPU: the given landmarks, or the template when None."""
    if landmarks is None:
        return template_landmarks(n, height, width)
    if not isinstance(landmarks, torch.Tensor):
        raise TypeError(f"landmarks must be a torch.Tensor [N, 5, 2] or None, got {type(landmarks).__name__}")
    if tuple(landmarks.shape) != (n, 5, 2):
        raise ValueError(f"landmarks must be [N, 5, 2] = [{n}, 5, 2] (left eye, right eye, nose, left and "
                         f"right mouth corner, in pixels), got shape {tuple(landmarks.shape)}")
    if not landmarks.is_floating_point():
        raise TypeError(f"landmarks must be floating point (pixels), got {landmarks.dtype}")
    landmarks = landmarks.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(landmarks).all()):
        raise ValueError("landmarks contain NaN or infinity")
    return landmarks


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
