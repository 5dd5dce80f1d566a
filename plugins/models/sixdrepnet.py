"""6DRepNet360 head pose (thohemp/6DRepNet360), the yaw model of the MR-FIQA filters
(its `Pose-LP.pth`).

Network: a torchvision ResNet-50 body (conv1, bn1, layer1..layer4, with the stride on the
3x3 conv of each bottleneck) -> 7x7 average pool -> `linear_reg` = Linear(2048 -> 6), the 6-D
rotation representation: two 3-vectors a, b; x = a/|a|, z = (x cross b)/|x cross b|,
y = z cross x; R = [x y z] (columns). Euler angles from R as the original decomposes it
(R = Rz(roll) Ry(yaw) Rx(pitch)): pitch = atan2(R21, R22), yaw = atan2(-R20, sqrt(R00^2 +
R10^2)), roll = atan2(R10, R00), with the original's gimbal-lock branch. Yaw is the
second angle.

Input: the crop resized to 224x224 (bilinear), RGB in [0, 1], ImageNet mean/std.
The checkpoint is a plain state dict or one under "model_state_dict"; keys are the
torchvision names plus linear_reg.

Sign convention: the original draws its predictions with positive yaw turning the face's
forward axis to the image's left, positive pitch turning it up, and positive roll turning
the face's x axis clockwise in the image (its draw_axis); that is synfiqa's convention
(synfiqa.models), so the angles are passed on unchanged. This is read from the original's
visualisation code; the released weights could not be run here to confirm it on photos.
Only |yaw| enters MR-FIQA (the filter and the spatial-domain score).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from synfiqa import hookimpl
from synfiqa.models import resolve_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BODY_MODULES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def rotation_from_6d(six: torch.Tensor) -> torch.Tensor:
    """[N, 6] -> [N, 3, 3] rotation matrices (Gram-Schmidt on the two 3-vectors)."""
    eps = 1e-8
    x = six[:, 0:3] / six[:, 0:3].norm(dim=1, keepdim=True).clamp_min(eps)
    z = torch.linalg.cross(x, six[:, 3:6], dim=1)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(eps)
    y = torch.linalg.cross(z, x, dim=1)
    return torch.stack([x, y, z], dim=2)


def euler_from_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] -> [N, 3] (pitch, yaw, roll) in radians, the original's decomposition."""
    r = rotation
    sy = torch.sqrt(r[:, 0, 0] ** 2 + r[:, 1, 0] ** 2)
    singular = sy < 1e-6
    pitch = torch.where(singular, torch.atan2(-r[:, 1, 2], r[:, 1, 1]), torch.atan2(r[:, 2, 1], r[:, 2, 2]))
    yaw = torch.atan2(-r[:, 2, 0], sy)
    roll = torch.where(singular, torch.zeros_like(sy), torch.atan2(r[:, 1, 0], r[:, 0, 0]))
    return torch.stack([pitch, yaw, roll], dim=1)


class SixDRepNet360(nn.Module):
    """forward(x [N, 3, 224, 224], ImageNet-normalised) -> rotation matrices [N, 3, 3]."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import Bottleneck, ResNet

        body = ResNet(Bottleneck, [3, 4, 6, 3])
        for name in BODY_MODULES:   # the body's modules under their own names: the checkpoint's keys
            setattr(self, name, getattr(body, name))
        self.linear_reg = nn.Linear(2048, 6)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)   # = the original's AvgPool2d(7) at 224 px
        return rotation_from_6d(self.linear_reg(x))


class SixDRepNet360Pose:
    kind = "pose"
    asset = "6drepnet360"

    def __init__(self, path: str = "", device: str = "auto", input_size: int = 224, batch_size: int = 32):
        from synfiqa.weights import locate
        from synfiqa.checkpoints import find_state_dict, read_payload, strip_prefix
        from synfiqa.checkpoints import load_state_dict_strictly

        location = locate(self.asset, explicit=path or None)
        self.path = next(iter(location.files.values()))
        state_dict = strip_prefix(find_state_dict(read_payload(self.path, self.asset), self.path), "module.")
        self.model = SixDRepNet360()
        load_state_dict_strictly(self.model, state_dict, str(self.path))
        self.device = resolve_device(device)
        self.model = self.model.to(self.device).eval()
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.to(self.device, torch.float32) / 255.0
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                          antialias=max(crops.shape[-2:]) > self.input_size)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=self.device)[:, None, None]
        return (x - mean) / std

    @torch.no_grad()
    def rotations(self, crops: torch.Tensor) -> torch.Tensor:
        out = [self.model(self.preprocess(crops[i:i + self.batch_size])).float().cpu()
               for i in range(0, crops.shape[0], self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 3, 3)

    def estimate(self, crops: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """[N, 3] (yaw, pitch, roll) in degrees; the landmarks are not needed."""
        if crops.dim() != 4 or crops.shape[1] != 3 or crops.dtype != torch.uint8:
            raise ValueError(f"6drepnet360 takes uint8 [N, 3, H, W] crops, got {crops.dtype} {tuple(crops.shape)}")
        euler = euler_from_rotation(self.rotations(crops)) * (180.0 / math.pi)
        return torch.stack([euler[:, 1], euler[:, 0], euler[:, 2]], dim=1)


@hookimpl
def register_models(register):
    register("6drepnet360", SixDRepNet360Pose)
