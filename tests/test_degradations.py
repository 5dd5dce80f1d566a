"""What each capture degradation does, checked against physics or an independent path:
noise statistics, OpenCV's JPEG codec, kernel geometry, the tone curve's values, and
occluders that follow the landmarks. (The contracts every degradation keeps are checked
by the conformance kit in test_conformance.py.)"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from synfiqa.align import ARCFACE_TEMPLATE_112
from synfiqa.testing import conformance_images
from synfiqa_plugins.degradations.defocus_blur import DefocusBlur, disk_kernel
from synfiqa_plugins.degradations.illumination import GREY_LEVELS, Illumination, tone_error
from synfiqa_plugins.degradations.jpeg import JpegCompression
from synfiqa_plugins.degradations.motion_blur import MotionBlur, motion_kernel
from synfiqa_plugins.degradations.occlusion import FACE_CENTRE_Y, FACE_SEMI_X, FACE_SEMI_Y, KINDS, Occlusion
from synfiqa_plugins.degradations.sensor_noise import SensorNoise


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flat(level: int, n: int = 1, size: int = 112) -> torch.Tensor:
    return torch.full((n, 3, size, size), level, dtype=torch.uint8)


def with_values(params: dict, **values) -> dict:
    """params with some 1-D entries set to one value for every sample."""
    n = next(iter(params.values())).shape[0]
    return {**params, **{key: torch.full((n,), float(value), dtype=torch.float64) for key, value in values.items()}}


# ---------------------------------------------------------------- sensor-noise

def test_no_noise_is_the_identity():
    noise = SensorNoise()
    images = conformance_images(3)
    params = with_values(noise.sample_params(3, seeded(0)), read_sigma=0, shot_sigma=0)
    assert torch.equal(noise.apply(images, params), images)


def test_read_noise_has_the_recorded_sigma():
    noise = SensorNoise()
    params = with_values(noise.sample_params(2, seeded(1)), read_sigma=10, shot_sigma=0)
    residual = noise.apply(flat(128, 2), params).to(torch.float64) - 128
    assert float(residual.std()) == pytest.approx(10.0, rel=0.03)
    assert abs(float(residual.mean())) < 0.1


def test_shot_noise_grows_with_the_square_root_of_the_signal():
    noise = SensorNoise()
    params = with_values(noise.sample_params(2, seeded(2)), read_sigma=0, shot_sigma=12)
    for level in (40, 128, 230):
        residual = noise.apply(flat(level, 2), params).to(torch.float64) - level
        assert float(residual.std()) == pytest.approx(12 * math.sqrt(level / 255), rel=0.05)
        assert abs(float(residual.mean())) < 0.15  # Poisson noise is unbiased


def test_noise_comes_from_the_recorded_seed():
    noise = SensorNoise()
    params = with_values(noise.sample_params(2, seeded(3)), read_sigma=8, shot_sigma=8)
    images = flat(100, 2)
    out = noise.apply(images, params)
    assert not torch.equal(out[0], out[1])  # two seeds, two noise fields
    swapped = {key: value.flip(0) for key, value in params.items()}
    assert torch.equal(noise.apply(images, swapped), out.flip(0))


def test_noise_seeds_survive_the_manifest():
    params = SensorNoise().sample_params(50, seeded(4))
    seeds = params["noise_seed"]
    assert torch.equal(seeds.to(torch.float64).to(torch.int64), seeds)  # recorded as floats, exactly


# ---------------------------------------------------------------- jpeg

def opencv_jpeg(image: torch.Tensor, quality: int) -> np.ndarray:
    """Encode and decode through OpenCV's libjpeg (4:2:0 chroma, its default)."""
    bgr = cv2.cvtColor(image.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_jpeg_matches_opencvs_codec():
    jpeg = JpegCompression()
    images = conformance_images(6, seed=2)
    params = jpeg.sample_params(6, seeded(5))
    out = jpeg.apply(images, params)
    for i in range(6):
        np.testing.assert_array_equal(out[i].permute(1, 2, 0).numpy(), opencv_jpeg(images[i], int(params["quality"][i])))


def test_jpeg_quality_is_an_integer_in_range_and_jpeg_loss_its_complement():
    params = JpegCompression(quality=[30, 40]).sample_params(500, seeded(6))
    quality = params["quality"]
    assert torch.equal(quality, quality.round()) and int(quality.min()) == 30 and int(quality.max()) == 40
    assert torch.equal(params["jpeg_loss"], 100 - quality)


def test_jpeg_rejects_bad_settings():
    with pytest.raises(ValueError, match="quality"):
        JpegCompression(quality=[0, 50])
    with pytest.raises(ValueError, match="quality"):
        JpegCompression(quality=[10.5, 50])
    with pytest.raises(ValueError, match="subsampling"):
        JpegCompression(subsampling="4:1:1")
    jpeg = JpegCompression()
    params = with_values(jpeg.sample_params(1, seeded(0)), quality=55.5)
    with pytest.raises(ValueError, match="quality"):
        jpeg.apply(conformance_images(1), params)


# ---------------------------------------------------------------- motion-blur

def test_motion_kernel_geometry():
    delta = torch.tensor([[0, 0, 0], [0, 1.0, 0], [0, 0, 0]], dtype=torch.float64)
    assert torch.allclose(motion_kernel(0.0, 30.0), delta, atol=1e-12)  # length 0: no blur
    horizontal = motion_kernel(6.0, 0.0)
    centre = horizontal.shape[0] // 2
    assert float(horizontal.sum()) == pytest.approx(1.0)
    assert float(horizontal[centre].sum()) == pytest.approx(1.0)  # all weight on the centre row
    # six pixels long: five full taps and two half taps at the ends (x = -3 and 3)
    row = horizontal[centre, centre - 3 : centre + 4] / horizontal[centre, centre]
    assert torch.allclose(row, torch.tensor([0.5, 1, 1, 1, 1, 1, 0.5], dtype=torch.float64))
    assert torch.count_nonzero(horizontal) == 7
    assert torch.allclose(motion_kernel(6.0, 90.0), horizontal.T)
    diagonal = motion_kernel(8.0, 45.0)  # counter-clockwise on screen: up and to the right
    centre = diagonal.shape[0] // 2
    assert torch.allclose(diagonal, diagonal.flip(0).flip(1))  # a line blur is symmetric
    assert float(diagonal[centre - 2, centre + 2]) > 0.05 and float(diagonal[centre - 2, centre - 2]) == 0


def test_motion_blur_smears_only_along_its_direction():
    stripes = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    stripes[..., ::4] = 255  # vertical stripes
    blur = MotionBlur()
    params = with_values(blur.sample_params(1, seeded(7)), length=8.0, angle=90.0)
    assert torch.equal(blur.apply(stripes, params), stripes)  # moving along the stripes changes nothing
    across = blur.apply(stripes, with_values(params, angle=0.0)).to(torch.float64)[..., 8:-8]  # off the edges
    assert float(across.std()) < 0.05 * float(stripes.to(torch.float64).std())  # 8 px average out a 4 px period
    assert float(across.mean()) == pytest.approx(255 / 4, abs=1)


# ---------------------------------------------------------------- defocus-blur

def test_disk_kernel_is_a_round_anti_aliased_disk():
    assert float(disk_kernel(0.0).max()) == 1.0
    kernel = disk_kernel(3.0)
    centre = kernel.shape[0] // 2
    assert torch.allclose(kernel, kernel.T) and torch.allclose(kernel, kernel.flip(0))
    full = float(kernel[centre, centre])
    assert float(kernel[centre + 2, centre + 1]) == pytest.approx(full)  # r = 2.2: inside
    assert float(kernel[centre, centre + 3]) == pytest.approx(0.5 * full)  # r = 3: on the edge
    assert float(kernel[centre + 1, centre + 3]) == pytest.approx((3.5 - math.sqrt(10)) * full)
    assert float(kernel[centre, centre + 4]) == 0 and float(kernel[centre + 2, centre + 3]) == 0  # outside
    # the weights add up to about the disk's area
    assert float(kernel.sum() / full) == pytest.approx(math.pi * 3**2, rel=0.04)


def test_defocus_spreads_a_point_into_its_disk():
    point = torch.zeros(1, 3, 31, 31, dtype=torch.uint8)
    point[..., 15, 15] = 255
    blur = DefocusBlur()
    params = with_values(blur.sample_params(1, seeded(8)), radius=4.0)
    out = blur.apply(point, params)[0, 0].to(torch.float64)
    kernel = disk_kernel(4.0)
    k = kernel.shape[0] // 2
    expected = torch.zeros(31, 31, dtype=torch.float64)
    expected[15 - k : 15 + k + 1, 15 - k : 15 + k + 1] = kernel * 255
    assert float((out - expected.round()).abs().max()) <= 1


# ---------------------------------------------------------------- illumination

def test_neutral_illumination_is_the_identity():
    light = Illumination()
    images = conformance_images(2)
    params = with_values(light.sample_params(2, seeded(9)), exposure=0, gamma=1, contrast=1, shading=0)
    assert torch.equal(light.apply(images, params), images)


@pytest.mark.parametrize("setting,level,expected", [
    ({"exposure": 1.0}, 50, 100), ({"exposure": 1.0}, 200, 255), ({"exposure": -2.0}, 200, 50),
    ({"gamma": 2.0}, 128, 64), ({"contrast": 0.5}, 0, 64), ({"contrast": 0.5}, 255, 191),
])
def test_tone_curve_values(setting, level, expected):
    light = Illumination()
    values = {"exposure": 0, "gamma": 1, "contrast": 1, "shading": 0, **setting}
    params = with_values(light.sample_params(1, seeded(10)), **values)
    assert int(light.apply(flat(level), params)[0, 0, 0, 0]) == expected


def test_tone_error_is_the_mean_move_of_the_grey_levels():
    assert tone_error(0.0, 1.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    levels = np.arange(256) / 255.0
    curve = 0.5 + 0.7 * (np.clip(levels * 2**0.5, 0, 1) ** 1.3 - 0.5)
    assert tone_error(0.5, 1.3, 0.7) == pytest.approx(np.abs(curve - levels).mean() * 255, rel=1e-12)
    # a darkening exposure and a brightening gamma cancel in the mid-tones: a smaller error
    assert tone_error(-1.0, 0.5, 1.0) < 0.5 * tone_error(-1.0, 1.0, 1.0)
    params = Illumination().sample_params(20, seeded(11))
    for i in range(20):
        assert float(params["tone_error"][i]) == pytest.approx(
            tone_error(float(params["exposure"][i]), float(params["gamma"][i]), float(params["contrast"][i])))
    assert GREY_LEVELS.shape == (256,)


def test_shading_falls_across_the_face_and_follows_the_landmarks():
    light = Illumination()
    params = with_values(light.sample_params(1, seeded(12)), exposure=0, gamma=1, contrast=1, shading=0.6,
                         shading_angle=0.0)
    out = light.apply(flat(200), params)[0, 0].to(torch.float64)
    assert float(out[:, :20].mean()) == 200  # behind the face: untouched
    assert float(out[:, 100:].mean()) == pytest.approx(80, abs=1)  # ahead: times (1 - 0.6)
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float32)[None]
    moved = light.apply(flat(200), params, landmarks=template - torch.tensor([30.0, 0.0]))[0, 0].to(torch.float64)
    assert float(moved[:, 60:80].mean()) < float(out[:, 60:80].mean()) - 20  # the ramp moved left with the face


# ---------------------------------------------------------------- occlusion

def occlusion_params(kind: str, seed: int = 13, **values) -> tuple[Occlusion, dict]:
    occlusion = Occlusion(kinds=[kind], probability=1.0)
    params = occlusion.sample_params(1, seeded(seed))
    assert int(params["kind"][0]) == KINDS[kind]
    return occlusion, with_values(params, offset_x=0, offset_y=0, rotation=0, **values)


def pixel(image: torch.Tensor, point) -> list[int]:
    x, y = int(round(float(point[0]))), int(round(float(point[1])))
    return image[0, :, y, x].tolist()


def test_sunglasses_cover_the_eyes_and_follow_them():
    occlusion, params = occlusion_params("sunglasses", size=1.0, aspect=1.0)
    colour = params["colour"][0].round().to(torch.int64).tolist()
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float32)
    out = occlusion.apply(flat(150), params)
    assert pixel(out, template[0]) == colour and pixel(out, template[1]) == colour
    assert pixel(out, template[2]) == [150] * 3 and pixel(out, template[3]) == [150] * 3
    shifted = template + torch.tensor([12.0, 15.0])
    moved = occlusion.apply(flat(150), params, landmarks=shifted[None])
    assert pixel(moved, shifted[0]) == colour and pixel(moved, shifted[1]) == colour
    assert pixel(moved, template[0]) == [150] * 3  # nothing left where the eyes were


def test_face_mask_covers_nose_tip_mouth_and_chin_but_not_the_eyes():
    occlusion, params = occlusion_params("mask", size=1.0, aspect=1.0)
    colour = params["colour"][0].round().to(torch.int64).tolist()
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)
    out = occlusion.apply(flat(150), params)
    mouth = (template[3] + template[4]) / 2
    for point in (template[2], template[3], template[4], mouth + torch.tensor([0.0, 15.0])):
        assert pixel(out, point) == colour
    for point in (template[0], template[1]):
        assert pixel(out, point) == [150] * 3


def test_hand_covers_its_anchor_landmark():
    for anchor in range(5):
        occlusion, params = occlusion_params("hand", anchor=anchor)
        out = occlusion.apply(flat(150), params)
        assert pixel(out, ARCFACE_TEMPLATE_112[anchor]) == params["colour"][0].round().to(torch.int64).tolist()


def test_coverage_is_the_hidden_part_of_the_face():
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)
    d = float(torch.linalg.vector_norm(template[1] - template[0]))
    centre = (template[0] + template[1]) / 2 + torch.tensor([0.0, FACE_CENTRE_Y * d])
    # render on a canvas large enough to hold the whole face ellipse, with the face in its middle
    offset = torch.tensor([60.0, 60.0])
    ys, xs = torch.meshgrid(torch.arange(232.0), torch.arange(232.0), indexing="ij")
    face = ((xs - centre[0] - offset[0]) / (FACE_SEMI_X * d)) ** 2 + \
           ((ys - centre[1] - offset[1]) / (FACE_SEMI_Y * d)) ** 2 <= 1
    for kind in ("sunglasses", "mask", "hand"):
        occlusion = Occlusion(kinds=[kind], probability=1.0)
        params = occlusion.sample_params(4, seeded(14))
        params["colour"] = torch.zeros_like(params["colour"])
        out = occlusion.apply(flat(255, 4, 232), params, landmarks=(template + offset).expand(4, 5, 2).float())
        hidden = 1 - out[:, 0].to(torch.float64) / 255
        measured = (hidden * face).sum(dim=(1, 2)) / face.sum()
        assert torch.allclose(measured, params["coverage"], atol=0.01), (kind, measured, params["coverage"])
    assert 0.05 < float(Occlusion(kinds=["sunglasses"], probability=1.0).sample_params(20, seeded(15))["coverage"].mean()) < 0.2
    assert float(Occlusion(kinds=["hand"], probability=1.0).sample_params(20, seeded(15))["coverage"].mean()) > 0.2


def test_occlusion_probability_and_kinds():
    never = Occlusion(probability=0.0)
    params = never.sample_params(30, seeded(16))
    assert torch.equal(params["kind"], torch.zeros(30, dtype=torch.float64))
    assert torch.equal(params["coverage"], torch.zeros(30, dtype=torch.float64))
    images = conformance_images(3)
    assert torch.equal(never.apply(images, never.sample_params(3, seeded(17))), images)
    half = Occlusion(kinds=["mask", "hand"], probability=0.5).sample_params(2000, seeded(18))["kind"]
    assert set(half.unique().tolist()) == {0.0, 2.0, 3.0}
    assert float((half == 0).to(torch.float64).mean()) == pytest.approx(0.5, abs=0.04)
    with pytest.raises(ValueError, match="kinds"):
        Occlusion(kinds=["hat"])
    with pytest.raises(ValueError, match="probability"):
        Occlusion(probability=1.5)


def test_occlusion_rejects_a_bad_kind_or_anchor():
    occlusion, params = occlusion_params("hand")
    with pytest.raises(ValueError, match="kind"):
        occlusion.apply(conformance_images(1), with_values(params, kind=7))
    with pytest.raises(ValueError, match="anchor"):
        occlusion.apply(conformance_images(1), with_values(params, anchor=5))


# ---------------------------------------------------------------- configuration errors

@pytest.mark.parametrize("factory,settings", [
    (SensorNoise, {"read_sigma": [5, 1]}), (SensorNoise, {"shot_sigma": [-1, 3]}), (SensorNoise, {"read_sigma": 3}),
    (MotionBlur, {"length": [0, "long"]}), (DefocusBlur, {"radius": [0, float("nan")]}),
    (Illumination, {"contrast": [0.5, 1.5]}), (Illumination, {"gamma": [0, 2]}),
    (Occlusion, {"size": [0.0, 1.0]}),
])
def test_bad_ranges_are_refused_by_name(factory, settings):
    with pytest.raises(ValueError, match=next(iter(settings))):
        factory(**settings)
