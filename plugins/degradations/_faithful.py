"""The MR-FIQA degradation with the original pipeline's numerics (blur-downscale, mode
"faithful"), for reproducing the published dataset's statistics.

The original (MR-FIQA, Utilities/add_noise.py, after KernelGAN's kernel generator) differs
from synfiqa's default in these ways, all reproduced here on purpose:

* kernel placement: the Gaussian's mean sits at 10 + (low_scale - 1) / 2, and the kernel is
  then shifted, by a cubic-spline shift (scipy.ndimage.shift, order 3, zeros outside), so
  that its centre of mass lands at shape / 2 + (low_scale - 1) / 2 = 10 + low_scale / 2
  (a float division where KernelGAN has an integer one). The blur therefore also moves
  the image by low_scale / 2 pixels up and left (0.5 to 4 pixels); synfiqa's default
  centres the kernel instead. The spline can leave small negative taps.
* correlation on uint8: scipy.ndimage.correlate per channel, 'reflect' borders (edge
  repeated), result stored into uint8 by C truncation: fractions are dropped, and a
  value pushed below 0 or above 255 by negative taps wraps around modulo 256 (a dark
  pixel next to a bright edge can turn white).
* resizes: Pillow's bicubic (its default filter) down to int(side / (low_scale + 1))
  (truncated, not rounded), then back to the input size.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage


def original_kernel(low_scale: float, theta: float, l1: float, l2: float, tap_noise: np.ndarray) -> np.ndarray:
    """The original's blur kernel (float64 [K, K], sums to 1) for the recorded draws:
    eigenvalues l1, l2 (variances) rotated by theta, taps times (1 + tap_noise)."""
    size = tap_noise.shape[-1]
    cos, sin = math.cos(theta), math.sin(theta)
    rotation = np.array([[cos, -sin], [sin, cos]])
    inverse = np.linalg.inv(rotation @ np.diag([l1, l2]) @ rotation.T)
    mean = size // 2 + 0.5 * (low_scale - size % 2)
    xs, ys = np.meshgrid(np.arange(size), np.arange(size))
    # column vectors (x, y) - mean, and the quadratic form as two matrix products: the
    # original's order of operations, so the taps agree to the last bit
    offsets = (np.stack([xs, ys], axis=2) - mean)[:, :, :, None]
    exponent = np.squeeze(offsets.transpose(0, 1, 3, 2) @ inverse[None, None] @ offsets)
    raw = np.exp(-0.5 * exponent) * (1.0 + tap_noise)
    wanted = np.array(raw.shape) / 2 + 0.5 * (low_scale - raw.shape[0] % 2)
    shifted = ndimage.shift(raw, wanted - np.array(ndimage.center_of_mass(raw)))
    return shifted / shifted.sum()


def correlate_uint8(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 correlated channel by channel as the original does (scipy semantics:
    reflect borders, truncating and wrapping store into uint8)."""
    out = np.zeros_like(image)
    for channel in range(image.shape[2]):
        out[:, :, channel] = ndimage.correlate(image[:, :, channel], kernel)
    return out


def downscaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """(width, height) after the original's downscale: int() truncation; at least 1 pixel
    (where the original would fail on an image smaller than the factor)."""
    return max(1, int(width / factor)), max(1, int(height / factor))


def resize_down_and_back(image: np.ndarray, factor: float) -> np.ndarray:
    """HxWx3 uint8 -> Pillow bicubic to the downscaled size -> Pillow bicubic back."""
    height, width = image.shape[:2]
    picture = Image.fromarray(image, "RGB")
    small = picture.resize(downscaled_size(width, height, factor), Image.Resampling.BICUBIC)
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC))


def faithful_blur_downscale(image: np.ndarray, kernel: np.ndarray | None, low_scale: float) -> np.ndarray:
    """One HxWx3 uint8 image through the original pipeline; kernel None means no blur
    (the original blurs only when blur_level > 1)."""
    if kernel is not None:
        image = correlate_uint8(image, kernel)
    return resize_down_and_back(np.ascontiguousarray(image), low_scale + 1.0)
