"""A coarse head-pose estimate from the five landmarks of an aligned crop, needing no
learned pose weights. Yaw comes from how far the nose tip sits from the eyes' midline,
relative to half the inter-ocular distance; roll from the eye line. Pitch is not
observable from five points this way and is reported as 0."""
from __future__ import annotations


import torch

from synfiqa import hookimpl

# Nose-tip depth in front of the eye plane, in units of half the inter-ocular distance
# (anthropometric average, about 1.0): nose offset / half IOD = depth_ratio * tan(yaw).
DEPTH_RATIO = 1.0


class LandmarkPose:
    kind = "pose"

    def __init__(self, depth_ratio: float = DEPTH_RATIO):
        self.depth_ratio = depth_ratio

    def estimate(self, crops: torch.Tensor | None, landmarks: torch.Tensor) -> torch.Tensor:
        landmarks = torch.as_tensor(landmarks, dtype=torch.float64)
        left_eye, right_eye, nose = landmarks[:, 0], landmarks[:, 1], landmarks[:, 2]
        eye_vector = right_eye - left_eye
        half_iod = eye_vector.norm(dim=1) / 2
        roll = torch.rad2deg(torch.atan2(eye_vector[:, 1], eye_vector[:, 0]))
        unit = eye_vector / eye_vector.norm(dim=1, keepdim=True)
        offset = ((nose - (left_eye + right_eye) / 2) * unit).sum(dim=1)
        # nose to the image's left of the midline = face turned to the image's left = positive yaw
        yaw = torch.rad2deg(torch.atan(-offset / (half_iod * self.depth_ratio)))
        pitch = torch.zeros_like(yaw)
        return torch.stack([yaw, pitch, roll], dim=1).to(torch.float32)


@hookimpl
def register_models(register):
    register("landmark5-pose", LandmarkPose)
