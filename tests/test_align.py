"""Alignment to the ArcFace template and the seeding scheme."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from synfiqa.align import ARCFACE_TEMPLATE_112, align_face, apply_transform, similarity_transform, warp_affine
from synfiqa.seeding import derive_seed, torch_generator


def test_similarity_transform_recovers_a_known_transform():
    angle, scale, shift = np.deg2rad(17.0), 2.3, np.array([40.0, -12.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = (ARCFACE_TEMPLATE_112 - shift) @ np.linalg.inv(scale * rotation).T
    matrix = similarity_transform(source, ARCFACE_TEMPLATE_112)
    assert np.allclose(apply_transform(matrix, source), ARCFACE_TEMPLATE_112, atol=1e-9)
    assert np.allclose(matrix[:, :2], scale * rotation)


def test_similarity_transform_is_least_squares_not_exact_fit():
    rng = np.random.default_rng(0)
    noisy = ARCFACE_TEMPLATE_112 + rng.normal(0, 2.0, ARCFACE_TEMPLATE_112.shape)
    matrix = similarity_transform(noisy, ARCFACE_TEMPLATE_112)
    estimate = cv2.estimateAffinePartial2D(noisy, ARCFACE_TEMPLATE_112, method=cv2.LMEDS)[0]
    residual = np.linalg.norm(apply_transform(matrix, noisy) - ARCFACE_TEMPLATE_112)
    residual_cv = np.linalg.norm(apply_transform(estimate, noisy) - ARCFACE_TEMPLATE_112)
    assert residual <= residual_cv + 1e-9  # the least-squares optimum is never beaten


def test_warp_matches_opencv_bilinear():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (150, 130, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (5, 5), 2)  # smooth, so interpolation rounding is the only gap
    matrix = cv2.getRotationMatrix2D((60, 70), 23, 0.8)
    expected = cv2.warpAffine(image, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0)
    got = warp_affine(torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(matrix)[None])
    got = got[0].permute(1, 2, 0).numpy()
    inner = (slice(10, 100), slice(10, 100))
    difference = np.abs(got[inner].astype(int) - expected[inner].astype(int))
    # OpenCV 4.x interpolates in fixed point (1/32-pixel positions): up to 2 levels apart on
    # 59 of 24,300 values (mean 0.08); OpenCV 5 at most 1 (mean 4e-5)
    assert difference.max() <= 2 and difference.mean() < 0.1


def test_align_face_puts_the_landmarks_on_the_template():
    image = np.zeros((300, 300, 3), dtype=np.uint8)
    landmarks = ARCFACE_TEMPLATE_112 * 2 + 30
    for x, y in landmarks:
        cv2.circle(image, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    crop, matrix = align_face(image, landmarks)
    assert crop.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE_112:
        assert crop[int(round(y)), int(round(x))].min() > 200


def test_seeds_depend_on_every_part_and_only_on_it():
    base = derive_seed(0, "ardern", 3, "degrade/blur-downscale")
    assert base == derive_seed(0, "ardern", 3, "degrade/blur-downscale")
    others = {derive_seed(1, "ardern", 3, "degrade/blur-downscale"), derive_seed(0, "macron", 3, "degrade/blur-downscale"),
              derive_seed(0, "ardern", 4, "degrade/blur-downscale"), derive_seed(0, "ardern", 3, "degrade/jpeg")}
    assert base not in others and len(others) == 4
    a = torch.rand(5, generator=torch_generator(0, "x", 1, "s"))
    b = torch.rand(5, generator=torch_generator(0, "x", 1, "s"))
    assert torch.equal(a, b)
