"""dlib68-pnp head pose: the PnP part against projections of the template at known angles,
and the whole estimator (dlib 68 landmarks on the aligned crop) on the real test photos."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synfiqa_plugins.models.dlib_pose import (
    TEMPLATE_POINTS, angles_from_rotation, camera_matrix, pose_from_points, rotation_matrix,
)

FACES = Path(__file__).parent / "data" / "faces"


def project(yaw, pitch, roll, camera, distance=600.0, shift=(0.0, 0.0)):
    points = TEMPLATE_POINTS @ rotation_matrix(yaw, pitch, roll).T + np.array([shift[0], shift[1], distance])
    pixels = points @ camera.T
    return pixels[:, :2] / pixels[:, 2:]


@pytest.mark.parametrize("angles", [
    (0.0, 0.0, 0.0), (20.0, 0.0, 0.0), (-20.0, 0.0, 0.0), (0.0, 15.0, 0.0), (0.0, -15.0, 0.0),
    (0.0, 0.0, 10.0), (35.0, -10.0, 5.0), (-30.0, 12.0, -8.0), (10.0, 20.0, 15.0), (-45.0, -5.0, 3.0),
])
def test_pnp_recovers_the_angles_the_template_was_projected_at(angles):
    camera = camera_matrix(448, 448, focal_ratio=4.0)
    points = project(*angles, camera, distance=1700.0, shift=(5.0, -8.0))
    assert np.allclose(pose_from_points(points, camera), angles, atol=2.0)


def test_pnp_tolerates_a_different_camera_and_landmark_noise():
    rng = np.random.default_rng(0)
    true_camera = camera_matrix(448, 448, focal_ratio=2.5)   # closer than the estimator assumes
    assumed = camera_matrix(448, 448, focal_ratio=4.0)
    for angles in [(25.0, 5.0, -4.0), (-15.0, -10.0, 2.0)]:
        points = project(*angles, true_camera, distance=1000.0) + rng.normal(0, 1.0, (len(TEMPLATE_POINTS), 2))
        assert np.allclose(pose_from_points(points, assumed), angles, atol=3.0)


def test_sign_convention_of_the_angles():
    camera = camera_matrix(448, 448, 4.0)
    nose, eyes = 4, [6, 9]   # rows of TEMPLATE_POINTS: 30 (nose tip); 36 and 45 (outer eye corners)

    def nose_from_eyes(points):
        return points[nose] - points[eyes].mean(0)

    frontal = nose_from_eyes(project(0, 0, 0, camera, 1700.0))
    # positive yaw: the face turns to the image's left, its nose tip moves left of the eyes
    assert nose_from_eyes(project(20, 0, 0, camera, 1700.0))[0] < frontal[0] - 5
    # positive pitch: looking up, the nose tip comes closer to the eye line (smaller y)
    assert nose_from_eyes(project(0, 15, 0, camera, 1700.0))[1] < frontal[1] - 2
    # positive roll: clockwise in the image (y down), the image-right eye goes down
    rolled = project(0, 0, 10, camera, 1700.0)
    assert rolled[eyes[1], 1] > rolled[eyes[0], 1]
    rotation = rotation_matrix(12.0, -7.0, 3.0)
    assert np.allclose(angles_from_rotation(rotation), (12.0, -7.0, 3.0))
    assert math.isclose(np.linalg.det(rotation), 1.0)


@pytest.fixture(scope="module")
def aligned_photos():
    from synfiqa.align import align_face, apply_transform
    from synfiqa.images import read_rgb
    from synfiqa.models import pick_main_face
    from synfiqa_plugins.models.mtcnn import MTCNNDetector

    detector = MTCNNDetector(device="cpu")
    photos = {}
    for path in sorted(FACES.glob("*.jpg")):
        image = read_rgb(path)
        face = pick_main_face(detector.detect(image))
        crop, matrix = align_face(image, face.landmarks)
        photos[path.stem] = (crop, apply_transform(matrix, face.landmarks))
    return photos


@pytest.fixture(scope="module")
def pose_model():
    from synfiqa_plugins.models.dlib_pose import Dlib68PnPPose

    return Dlib68PnPPose()


def batch(photos):
    crops = torch.from_numpy(np.stack([c for c, _ in photos])).permute(0, 3, 1, 2).contiguous()
    return crops, torch.from_numpy(np.stack([l for _, l in photos]))


def flipped(crop, landmarks):
    mirror = landmarks.copy()
    mirror[:, 0] = crop.shape[1] - 1 - mirror[:, 0]
    return np.ascontiguousarray(crop[:, ::-1]), mirror[[1, 0, 2, 4, 3]]   # left/right swap roles


def test_the_six_photos_are_near_frontal(aligned_photos, pose_model):
    angles = pose_model.estimate(*batch(list(aligned_photos.values())))
    assert angles.shape == (6, 3) and angles.dtype == torch.float32
    assert torch.isfinite(angles).all()
    assert (angles[:, 0].abs() < 25).all(), angles
    assert (angles[:, 2].abs() < 5).all(), angles   # aligned crops: the eye line is level


def test_a_mirrored_face_turns_the_other_way(aligned_photos, pose_model):
    names = ["macron_2", "obama_1", "ardern_2"]
    original = pose_model.estimate(*batch([aligned_photos[n] for n in names]))
    mirrored = pose_model.estimate(*batch([flipped(*aligned_photos[n]) for n in names]))
    assert original[0, 0] > 5   # macron_2 turns towards the image's left
    assert (torch.sign(original[:, 0]) == -torch.sign(mirrored[:, 0])).all()
    assert torch.allclose(original[:, 0], -mirrored[:, 0], atol=2.0)
    assert torch.allclose(original[:, 1], mirrored[:, 1], atol=3.0)   # pitch does not care


def test_a_crop_rotated_in_plane_reads_as_roll(aligned_photos, pose_model):
    import cv2

    crop, landmarks = aligned_photos["sunak_1"]
    matrix = cv2.getRotationMatrix2D((55.5, 55.5), -12.0, 1.0)   # negative angle: clockwise, y down
    rotated = cv2.warpAffine(crop, matrix, (112, 112), flags=cv2.INTER_LINEAR)
    moved = landmarks @ matrix[:, :2].T + matrix[:, 2]
    base = pose_model.estimate(*batch([(crop, landmarks)]))[0]
    turned = pose_model.estimate(*batch([(rotated, moved)]))[0]
    assert turned[2] - base[2] == pytest.approx(12.0, abs=2.0)
    assert turned[0] == pytest.approx(base[0], abs=3.0)


def test_registered_and_reads_a_missing_file_clearly(tmp_path):
    from synfiqa.errors import WeightsNotFoundError
    from synfiqa.registry import Registry
    from synfiqa_plugins.models.dlib_pose import Dlib68PnPPose

    assert "dlib68-pnp" in Registry().names("pose")
    bad = tmp_path / "shape_predictor_68_face_landmarks.dat"
    bad.write_bytes(b"not a model")
    with pytest.raises(WeightsNotFoundError, match="dlib-shape-68"):
        Dlib68PnPPose(path=str(bad))
