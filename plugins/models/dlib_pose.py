"""Head pose from 68 landmarks: dlib's shape predictor on the aligned crop, a generic 3-D
face template and a PnP fit (cv2.solvePnP). No learned pose weights.

The crop is upscaled (to 448 px by default) and dlib is given a face rectangle placed from
the crop's five landmarks (the rectangle dlib's HOG detector draws around an ArcFace-aligned
face, mapped through the similarity between the ArcFace template and the given landmarks),
so it works on any crop whose five landmarks are known, aligned or not.

Angles follow synfiqa.models: yaw > 0 = the face turns towards the image's left (the
subject's right), pitch > 0 = looking up, roll > 0 = the head tilts clockwise in the image.
With the camera frame of OpenCV (x right, y down, z away from the camera) and the template
facing the camera, the fitted rotation is R = Rz(roll) @ Ry(yaw) @ Rx(-pitch).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from synfiqa import hookimpl

# A generic adult face in millimetres, in the camera frame of a frontal face: x to the image's
# right (the subject's left), y down, z away from the camera; origin between the eyes on the
# eye line. Rounded anthropometric means for adults (Farkas' norms): biocular (ex-ex) width
# 88, intercanthal (en-en) width 34, mouth (ch-ch) width 52, alar width 30, face height
# (n-gn) about 120 with the nasion a little above the eye line. The vertical proportions are
# scaled so that the frontal template projects onto the ArcFace 112x112 template (eye
# centres 61 mm apart: nose tip 35 mm, mouth corners 70 mm below the eye line), so a face
# that aligns like the average frontal face reads pitch ~ 0. Depths behind the nose tip:
# nasion 20, endocanthion 32, exocanthion 45, alare 18, subnasale 15, lips 15 and 20,
# cheilion 33, menton 38.
# key: dlib/iBUG 68-point index (0-based) -> (x, y, z)
TEMPLATE_3D: dict[int, tuple[float, float, float]] = {
    8: (0.0, 112.0, 38.0),     # menton (chin, lowest point)
    27: (0.0, -4.0, 20.0),     # nasion (top of the nose bridge)
    30: (0.0, 35.0, 0.0),      # pronasale (nose tip)
    31: (-15.0, 41.0, 18.0),   # alare, image-left nostril wing
    33: (0.0, 45.0, 15.0),     # subnasale
    35: (15.0, 41.0, 18.0),    # alare, image-right nostril wing
    36: (-44.0, 0.0, 45.0),    # exocanthion, image-left eye's outer corner
    39: (-17.0, 1.0, 32.0),    # endocanthion, image-left eye's inner corner
    42: (17.0, 1.0, 32.0),     # endocanthion, image-right eye's inner corner
    45: (44.0, 0.0, 45.0),     # exocanthion, image-right eye's outer corner
    48: (-26.0, 68.0, 33.0),   # cheilion, image-left mouth corner
    51: (0.0, 61.0, 15.0),     # labrale superius (upper lip midpoint)
    54: (26.0, 68.0, 33.0),    # cheilion, image-right mouth corner
    57: (0.0, 80.0, 20.0),     # labrale inferius (lower lip midpoint)
}
TEMPLATE_INDICES = np.array(sorted(TEMPLATE_3D), dtype=np.int64)
TEMPLATE_POINTS = np.array([TEMPLATE_3D[i] for i in TEMPLATE_INDICES], dtype=np.float64)

# The face rectangle for dlib, in ArcFace-template (112 x 112) coordinates: where dlib's HOG
# frontal detector puts its box on ArcFace-aligned crops of the test photos (x1, y1, x2, y2).
DLIB_RECT_112 = (15.0, 32.0, 93.0, 110.0)


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Degrees in synfiqa's convention -> the camera-frame rotation of the template."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(-p), -math.sin(-p)], [0, math.sin(-p), math.cos(-p)]])
    return rz @ ry @ rx


def angles_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """Inverse of rotation_matrix (Z-Y-X decomposition): (yaw, pitch, roll) in degrees."""
    yaw = math.asin(max(-1.0, min(1.0, -rotation[2, 0])))
    pitch = -math.atan2(rotation[2, 1], rotation[2, 2])
    roll = math.atan2(rotation[1, 0], rotation[0, 0])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def camera_matrix(width: float, height: float, focal_ratio: float) -> np.ndarray:
    focal = focal_ratio * max(width, height)
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)


def pose_from_points(points_2d: np.ndarray, camera: np.ndarray,
                     model_points: np.ndarray = TEMPLATE_POINTS) -> tuple[float, float, float]:
    """PnP of the template against its K image points ([K, 2], same order as model_points).
    Returns (yaw, pitch, roll) in degrees."""
    import cv2

    image_points = np.ascontiguousarray(points_2d, dtype=np.float64).reshape(-1, 1, 2)
    objects = np.ascontiguousarray(model_points, dtype=np.float64).reshape(-1, 1, 3)
    # Start from a frontal face at a plausible distance: the iterative solver then cannot
    # land on the mirrored solution behind the camera.
    spread = np.linalg.norm(image_points.reshape(-1, 2) - image_points.reshape(-1, 2).mean(0), axis=1).mean()
    model_spread = np.linalg.norm(model_points[:, :2] - model_points[:, :2].mean(0), axis=1).mean()
    distance = camera[0, 0] * model_spread / max(spread, 1e-6)
    centre = image_points.reshape(-1, 2).mean(0)
    tvec = np.array([[(centre[0] - camera[0, 2]) * distance / camera[0, 0] - model_points[:, 0].mean()],
                     [(centre[1] - camera[1, 2]) * distance / camera[1, 1] - model_points[:, 1].mean()],
                     [distance]], dtype=np.float64)
    rvec = np.zeros((3, 1), dtype=np.float64)
    ok, rvec, tvec = cv2.solvePnP(objects, image_points, camera, None, rvec, tvec,
                                  useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return (math.nan, math.nan, math.nan)
    rotation, _ = cv2.Rodrigues(rvec)
    return angles_from_rotation(rotation)


class Dlib68PnPPose:
    kind = "pose"

    def __init__(self, path: str = "", work_size: int = 448, focal_ratio: float = 4.0):
        import dlib

        from synfiqa.errors import WeightsNotFoundError
        from synfiqa.models import load_once
        from synfiqa.weights import locate

        location = locate("dlib-shape-68", explicit=path or None)
        model_file = next(iter(location.files.values()))
        try:   # ~1 s for the 100 MB file: once per process (synfiqa.models.load_once)
            self._predictor = load_once(model_file, "dlib.shape_predictor", lambda: dlib.shape_predictor(str(model_file)))
        except RuntimeError as error:
            raise WeightsNotFoundError(f"model asset 'dlib-shape-68': dlib cannot load {model_file}: {error}") from None
        self._dlib = dlib
        self.work_size = int(work_size)
        self.focal_ratio = float(focal_ratio)

    def face_rect(self, landmarks_5: np.ndarray, scale: float):
        from synfiqa.align import ARCFACE_TEMPLATE_112, apply_transform, similarity_transform

        matrix = similarity_transform(ARCFACE_TEMPLATE_112, np.asarray(landmarks_5, dtype=np.float64) * scale)
        x1, y1, x2, y2 = DLIB_RECT_112
        corners = apply_transform(matrix, np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]))
        left, top = corners.min(0)
        right, bottom = corners.max(0)
        return self._dlib.rectangle(int(round(left)), int(round(top)), int(round(right)), int(round(bottom)))

    def landmarks68(self, crop: np.ndarray, landmarks_5: np.ndarray) -> np.ndarray:
        """[68, 2] in the coordinates of the given crop (HxWx3 uint8 RGB)."""
        import cv2

        height, width = crop.shape[:2]
        scale = self.work_size / max(height, width)
        big = cv2.resize(crop, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_CUBIC)
        shape = self._predictor(np.ascontiguousarray(big), self.face_rect(landmarks_5, scale))
        points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
        return points / scale

    def estimate(self, crops: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        if crops.dim() != 4 or crops.shape[1] != 3 or crops.dtype != torch.uint8:
            raise ValueError(f"dlib68-pnp takes uint8 [N, 3, H, W] crops, got {crops.dtype} {tuple(crops.shape)}")
        images = crops.permute(0, 2, 3, 1).cpu().numpy()
        landmarks = torch.as_tensor(landmarks, dtype=torch.float64).cpu().numpy()
        out = torch.zeros(len(images), 3, dtype=torch.float32)
        for i, (image, points_5) in enumerate(zip(images, landmarks)):
            points = self.landmarks68(np.ascontiguousarray(image), points_5)
            camera = camera_matrix(image.shape[1], image.shape[0], self.focal_ratio)
            out[i] = torch.tensor(pose_from_points(points[TEMPLATE_INDICES], camera))
        return out


@hookimpl
def register_models(register):
    register("dlib68-pnp", Dlib68PnPPose)
