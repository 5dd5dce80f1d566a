"""blur-downscale against docs/method.md#41-blur-downscale and the original code: the intensity
mixture, the kernel (l1 and l2 are variances, tap noise, re-centring), and the faithful
mode's numerics checked step by step against independent re-implementations written
here (a direct numpy correlation with scipy's store into uint8, and Pillow's fixed-point
bicubic resampling in numpy)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synfiqa.testing import DegradationConformance, conformance_images
from synfiqa_plugins.degradations import _faithful
from synfiqa_plugins.degradations.blur_downscale import (
    INTENSITY_PROBABILITIES,
    INTENSITY_RANGES,
    BlurDownscale,
    anisotropic_kernel,
    sample_intensity,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def kernel_moments(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass (x, y) and covariance of a kernel's taps."""
    size = kernel.shape[0]
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    mass = kernel.sum()
    mean = np.array([(kernel * xs).sum(), (kernel * ys).sum()]) / mass
    dx, dy = xs - mean[0], ys - mean[1]
    covariance = np.array([[(kernel * dx * dx).sum(), (kernel * dx * dy).sum()],
                           [(kernel * dx * dy).sum(), (kernel * dy * dy).sum()]]) / mass
    return mean, covariance


def rotated_covariance(theta: float, l1: float, l2: float) -> np.ndarray:
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return rotation @ np.diag([l1, l2]) @ rotation.T


# ---------------------------------------------------------------- sampling

def test_intensity_mixture_matches_the_paper():
    values = sample_intensity(40000, seeded(0)).numpy()
    assert values.min() >= 1.0 and values.max() <= 8.0
    # the range (0.82, 1.6) is drawn with p = 0.8, and its part below 1 becomes exactly 1
    assert np.mean(values == 1.0) == pytest.approx(0.8 * (1.0 - 0.82) / (1.6 - 0.82), abs=0.01)
    edges = INTENSITY_RANGES.numpy()
    shares = [np.mean((values > low) & (values <= high)) for low, high in edges]
    assert shares == pytest.approx(INTENSITY_PROBABILITIES.tolist(), abs=0.008)
    # uniform inside a range: the two halves of (4, 8) hold the same share
    assert np.mean((values > 4) & (values <= 6)) == pytest.approx(np.mean(values > 6), abs=0.004)


def test_sample_intensity_of_nothing():
    assert sample_intensity(0, seeded(0)).shape == (0,)


def test_sampled_params_follow_section_4():
    params = BlurDownscale().sample_params(3000, seeded(1))
    low_scale, blur_level = params["low_scale"], params["blur_level"]
    assert bool((params["l1"] >= 0.175 * low_scale).all()) and bool((params["l1"] <= low_scale * blur_level).all())
    assert bool((params["l2"] >= 0.175 * low_scale).all()) and bool((params["l2"] <= low_scale * blur_level).all())
    assert bool((params["theta"] >= 0).all()) and bool((params["theta"] < math.pi).all())
    # low_scale and blur_level are drawn independently
    assert np.corrcoef(low_scale.numpy(), blur_level.numpy())[0, 1] == pytest.approx(0, abs=0.05)
    kernels = params["kernel"].to(torch.float64)
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(3000, dtype=torch.float64), atol=1e-6)
    unblurred = blur_level <= 1.0
    assert int(unblurred.sum()) > 0
    delta = torch.zeros(21, 21, dtype=torch.float64)
    delta[10, 10] = 1.0
    assert all(torch.equal(kernel, delta) for kernel in kernels[unblurred])


def test_l1_and_l2_are_the_variances_of_the_blur():
    theta, l1, l2 = 0.4, 3.0, 0.8
    kernel = anisotropic_kernel(theta, l1, l2, torch.zeros(21, 21, dtype=torch.float64)).numpy()
    mean, covariance = kernel_moments(kernel)
    np.testing.assert_allclose(mean, [10, 10], atol=1e-9)
    np.testing.assert_allclose(covariance, rotated_covariance(theta, l1, l2), atol=0.01)


def test_tap_noise_is_multiplicative_and_the_kernel_recentred():
    noise = (torch.rand(21, 21, generator=seeded(2), dtype=torch.float64) * 2 - 1) * 0.6
    clean = anisotropic_kernel(1.1, 6.0, 2.0, torch.zeros(21, 21, dtype=torch.float64)).numpy()
    noisy = anisotropic_kernel(1.1, 6.0, 2.0, noise).numpy()
    assert noisy.sum() == pytest.approx(1.0, abs=1e-12)
    mean, _ = kernel_moments(noisy)
    np.testing.assert_allclose(mean, [10, 10], atol=1e-3)
    assert not np.allclose(noisy, clean, atol=1e-4)  # the noise is really there
    ratio = (noisy / clean)[8:13, 8:13]  # near the centre the shift is sub-pixel: ratio ~ 1 + noise
    assert ratio.min() > 0.3 and ratio.max() < 1.7


def test_fast_mode_kernels_are_centred():
    params = BlurDownscale().sample_params(200, seeded(3))
    for kernel, level in zip(params["kernel"].to(torch.float64).numpy(), params["blur_level"]):
        if level > 1:
            np.testing.assert_allclose(kernel_moments(kernel)[0], [10, 10], atol=1e-3)


def test_rejects_bad_construction():
    with pytest.raises(ValueError, match="mode"):
        BlurDownscale(mode="exact")
    with pytest.raises(ValueError, match="kernel_size"):
        BlurDownscale(kernel_size=20)


# ---------------------------------------------------------------- faithful: the kernel

def test_faithful_kernel_keeps_the_original_off_centre_placement():
    params = BlurDownscale(mode="faithful").sample_params(300, seeded(4))
    blurred = params["blur_level"] > 1
    assert int(blurred.sum()) > 20
    assert params["kernel"].dtype == torch.float64
    for kernel, low_scale in zip(params["kernel"][blurred].numpy(), params["low_scale"][blurred].numpy()):
        assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
        # the original moves the centre of mass to shape / 2 + (low_scale - 1) / 2
        np.testing.assert_allclose(kernel_moments(kernel)[0], [10 + low_scale / 2] * 2, atol=0.05)


def test_faithful_kernel_has_the_drawn_covariance():
    # a narrow kernel far from the border: the spline shift moves it without changing its shape
    kernel = _faithful.original_kernel(1.0, 0.7, 2.0, 0.5, np.zeros((21, 21)))
    np.testing.assert_allclose(kernel_moments(kernel)[1], rotated_covariance(0.7, 2.0, 0.5), atol=0.03)


def test_faithful_kernel_can_have_negative_taps():
    """The cubic spline shift rings: the original's kernels have small negative taps (and
    its uint8 store can then wrap around); faithful mode keeps them."""
    params = BlurDownscale(mode="faithful").sample_params(300, seeded(5))
    assert float(params["kernel"].min()) < 0


# ---------------------------------------------------------------- faithful: correlation

def correlate_like_scipy(channel: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A direct correlation (edge-repeating reflection, float64 sums), and the exact sums,
    to compare with the uint8 that scipy stores (truncated toward zero, wrapped modulo 256)."""
    radius = kernel.shape[0] // 2
    height, width = channel.shape
    padded = np.pad(channel.astype(np.float64), radius, mode="symmetric")
    sums = np.zeros((height, width))
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            sums += kernel[i, j] * padded[i : i + height, j : j + width]
    return np.trunc(sums).astype(np.int64) % 256, sums


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faithful_correlation_matches_a_direct_loop(seed):
    rng = np.random.default_rng(seed)
    image = np.asarray(conformance_images(1, 61, 47, seed=seed)[0].permute(1, 2, 0))
    image = np.where(rng.random(image.shape) < 0.02, 255, image).astype(np.uint8)  # bright specks: negative taps bite
    kernel = _faithful.original_kernel(float(rng.uniform(1, 4)), float(rng.uniform(0, np.pi)), float(rng.uniform(0.2, 3)),
                                       float(rng.uniform(0.2, 3)), rng.uniform(-0.4, 0.4, (21, 21)))
    out = _faithful.correlate_uint8(image, kernel)
    assert out.dtype == np.uint8 and out.shape == image.shape
    for channel in range(3):
        expected, sums = correlate_like_scipy(image[:, :, channel], kernel)
        # where a sum lies within rounding error of an integer, either side is right
        ambiguous = np.abs(sums - np.round(sums)) < 1e-8
        lower = np.trunc(np.round(sums) - 0.5).astype(np.int64) % 256
        upper = np.round(sums).astype(np.int64) % 256
        got = out[:, :, channel].astype(np.int64)
        assert np.array_equal(got[~ambiguous], expected[~ambiguous])
        assert np.all((got[ambiguous] == lower[ambiguous]) | (got[ambiguous] == upper[ambiguous]))


def test_uint8_store_wraps_like_the_original():
    image = np.zeros((5, 9, 3), np.uint8)
    image[:, 4] = 255
    kernel = np.zeros((3, 3))
    kernel[1] = [-0.02, 0.52, 0.5]  # a dark pixel left of the bright column ends at -5.1 -> wraps to 251
    out = _faithful.correlate_uint8(image, kernel)
    assert out[2, 5, 0] == 251 and out[2, 4, 0] == 132 and out[2, 3, 0] == 127


# ---------------------------------------------------------------- faithful: Pillow resizes

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point coefficients for 8-bit images


def keys_cubic(x: float) -> float:
    """Pillow's bicubic filter: Keys' cubic with a = -0.5, support 2."""
    a, x = -0.5, abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def pillow_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] integer weights, as Pillow computes them: the filter stretched by the
    scale when downscaling, clipped at the border, normalised in float, rounded to fixed
    point away from zero."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 2.0 * filter_scale
    weights = np.zeros((out_size, in_size), dtype=np.int64)
    for out in range(out_size):
        centre = (out + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), in_size)
        taps = [keys_cubic((x - centre + 0.5) / filter_scale) for x in range(first, last)]
        total = sum(taps)
        for x, tap in zip(range(first, last), taps):
            value = tap / total if total != 0 else tap
            weights[out, x] = int(value * (1 << PRECISION_BITS) + (0.5 if value >= 0 else -0.5))
    return weights


def pillow_bicubic(image: np.ndarray, out_width: int, out_height: int) -> np.ndarray:
    """HxWx3 uint8 resized like Image.resize(BICUBIC): a horizontal pass, stored as 8 bits
    (rounded by adding half, floored by the shift, clamped), then a vertical pass."""

    def one_pass(pixels: np.ndarray, weights: np.ndarray) -> np.ndarray:  # along axis 1
        sums = np.einsum("oi,hic->hoc", weights, pixels.astype(np.int64)) + (1 << (PRECISION_BITS - 1))
        return np.clip(sums >> PRECISION_BITS, 0, 255).astype(np.uint8)

    height, width = image.shape[:2]
    wide = one_pass(image, pillow_weights(width, out_width)) if out_width != width else image
    tall = one_pass(wide.transpose(1, 0, 2), pillow_weights(height, out_height)) if out_height != height \
        else wide.transpose(1, 0, 2)
    return tall.transpose(1, 0, 2)


@pytest.mark.parametrize("size,factor", [((112, 112), 2.0), ((112, 112), 3.37), ((112, 112), 9.0),
                                         ((61, 47), 2.6), ((40, 73), 5.1)])
def test_faithful_resizes_match_pillows_fixed_point_arithmetic(size, factor):
    height, width = size
    image = np.ascontiguousarray(conformance_images(1, height, width, seed=3)[0].permute(1, 2, 0).numpy())
    small_size = (int(width / factor), int(height / factor))  # the original truncates
    assert _faithful.downscaled_size(width, height, factor) == small_size
    expected = pillow_bicubic(pillow_bicubic(image, *small_size), width, height)
    np.testing.assert_array_equal(_faithful.resize_down_and_back(image, factor), expected)


# ---------------------------------------------------------------- faithful: the whole degradation

def test_faithful_apply_is_the_original_pipeline():
    degradation = BlurDownscale(mode="faithful")
    params = degradation.sample_params(12, seeded(6))
    params["blur_level"][:2] = 1.0  # the original skips the blur at level 1: cover both branches
    images = conformance_images(12, seed=5)
    out = degradation.apply(images, params)
    assert int((params["blur_level"] > 1).sum()) >= 5
    for i in range(12):
        pixels = np.ascontiguousarray(images[i].permute(1, 2, 0).numpy())
        if params["blur_level"][i] > 1:
            pixels = _faithful.correlate_uint8(pixels, params["kernel"][i].numpy())
        factor = float(params["low_scale"][i]) + 1.0
        small = pillow_bicubic(pixels, int(112 / factor), int(112 / factor))
        np.testing.assert_array_equal(out[i].permute(1, 2, 0).numpy(), pillow_bicubic(small, 112, 112))


def test_faithful_and_reference_modes_draw_the_same_degradation():
    """Same draws, different numerics (the original's shift, uint8 and Pillow arithmetic):
    how much a sample is damaged must agree across the modes."""
    from synfiqa.testing import image_changes, spearman

    image = conformance_images(1, seed=6)
    faithful, reference = BlurDownscale(mode="faithful"), BlurDownscale(mode="reference")
    params_faithful, params_reference = faithful.sample_params(32, seeded(7)), reference.sample_params(32, seeded(7))
    for key in ("low_scale", "blur_level", "theta", "l1", "l2"):
        assert torch.equal(params_faithful[key], params_reference[key])
    batch = image.expand(32, -1, -1, -1).contiguous()
    damage_faithful = image_changes(image, faithful.apply(batch, params_faithful))["structure"]
    damage_reference = image_changes(image, reference.apply(batch, params_reference))["structure"]
    assert spearman(damage_faithful, damage_reference) > 0.8


class TestFaithfulConformance(DegradationConformance):
    factory = BlurDownscale
    factory_params = {"mode": "faithful"}
    severity_samples = 48


class TestReferenceConformance(DegradationConformance):
    factory = BlurDownscale
    factory_params = {"mode": "reference"}
    severity_samples = 48


def test_bad_params_name_what_is_wrong():
    degradation = BlurDownscale(mode="reference")
    images = conformance_images(2)
    params = degradation.sample_params(2, seeded(0))
    with pytest.raises(ValueError, match="missing 'kernel'"):
        degradation.apply(images, {k: v for k, v in params.items() if k != "kernel"})
    with pytest.raises(ValueError, match=r"params\['low_scale'\] has shape \(1,\)"):
        degradation.apply(images, {**params, "low_scale": params["low_scale"][:1]})
