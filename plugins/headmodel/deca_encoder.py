"""DECA's coarse encoder ``E_flame`` in plain torch: a ResNet-50 body (torchvision's layout,
no ``fc``; global average of the last 7x7 map) and an MLP ``2048 -> 1024 -> ReLU -> 236``
split into DECA's codes in its ``param_list`` order: shape 100, tex 50, exp 50, pose 6
(global + jaw axis-angle), cam 3 (s, tx, ty), light 27 (9 x 3 SH).

Input: DECA's 224x224 crop, RGB in [0, 1] (:func:`deca_crop`: the face box made square with
DECA's ``bbox2point`` rule, side 1.1 x the mean of width and height, centre moved down by 0.12
of that side, times ``scale`` = 1.25, warped bilinearly as skimage's ``warp``).

Weights: the ``E_flame`` state dict inside the user's ``deca_model.tar`` (asset ``deca-model``),
read by torch's weights-only loader (``synfiqa.checkpoints.read_payload``: tensors and plain
containers only) and loaded strictly; the tar's other parts (``E_detail``, ``D_detail``) are not
used. The network is built from the checkpoint's shapes (block counts and widths), so the
tests can use a small state dict in the real key layout.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from synfiqa.errors import CheckpointError

PARAMS = (("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27))
CROP_SIZE = 224
CROP_SCALE = 1.25


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, out: int, stride: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
                           if downsample else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNetBody(nn.Module):
    """conv1 7x7/2, bn, relu, maxpool 3/2, layer1..4 of Bottlenecks, global average."""

    def __init__(self, stem: int, layers: list[list[tuple[int, int, int, int, bool]]]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        for i, blocks in enumerate(layers, 1):
            setattr(self, f"layer{i}", nn.Sequential(*[Bottleneck(*b) for b in blocks]))
        self.depth = len(layers)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for i in range(1, self.depth + 1):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))      # DECA's AvgPool2d(7) on the 7x7 map of a 224 crop


class DecaEncoder(nn.Module):
    def __init__(self, state: dict, source: str = "E_flame"):
        super().__init__()
        try:
            stem = int(state["encoder.conv1.weight"].shape[0])
            layers = []
            inplanes = stem
            for i in range(1, 5):
                count = 1 + max(int(m.group(1)) for k in state if (m := re.match(rf"encoder\.layer{i}\.(\d+)\.", k)))
                blocks = []
                for j in range(count):
                    planes = int(state[f"encoder.layer{i}.{j}.conv1.weight"].shape[0])
                    out = int(state[f"encoder.layer{i}.{j}.conv3.weight"].shape[0])
                    stride = 2 if (i > 1 and j == 0) else 1
                    blocks.append((inplanes, planes, out, stride, f"encoder.layer{i}.{j}.downsample.0.weight" in state))
                    inplanes = out
                layers.append(blocks)
            hidden, features = (int(s) for s in state["layers.0.weight"].shape)
            outputs = int(state["layers.2.weight"].shape[0])
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"{source}: not DECA's E_flame (ResNet-50 'encoder.*' + MLP 'layers.0/2'): "
                                  f"{type(error).__name__} {error}") from None
        if outputs != sum(n for _, n in PARAMS):
            raise CheckpointError(f"{source}: E_flame outputs {outputs} numbers, DECA's codes are {sum(n for _, n in PARAMS)}")
        self.encoder = ResNetBody(stem, layers)
        self.layers = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, outputs))
        from synfiqa.checkpoints import load_state_dict_strictly

        load_state_dict_strictly(self, state, source, description="DECA's E_flame")
        self.eval()

    @torch.no_grad()
    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, 224, 224) RGB in [0, 1] -> DECA's code dict (light as (N, 9, 3))."""
        flat = self.layers(self.encoder(crops))
        codes, start = {}, 0
        for name, size in PARAMS:
            codes[name] = flat[:, start:start + size]
            start += size
        codes["light"] = codes["light"].reshape(-1, 9, 3)
        return codes


def load_deca_encoder(path: str | Path | None = None) -> DecaEncoder:
    """E_flame from the user's deca_model.tar (asset ``deca-model``, or `path`)."""
    from synfiqa.checkpoints import read_payload

    from .assets import ASSETS, locate_file

    path = locate_file(ASSETS["deca"], path)
    payload = read_payload(path, ASSETS["deca"])
    if not isinstance(payload, dict) or not isinstance(payload.get("E_flame"), dict):
        keys = ", ".join(map(str, list(payload)[:6])) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: no 'E_flame' state dict (found: {keys}); not DECA's deca_model.tar")
    return DecaEncoder(payload["E_flame"], f"{path} [E_flame]")


def deca_box(box, scale: float = CROP_SCALE) -> tuple[float, float, float]:
    """(centre x, centre y, side) of DECA's square crop of a face box (x1, y1, x2, y2):
    ``bbox2point`` for a detector box, then ``size = int(old_size * scale)``."""
    left, top, right, bottom = (float(v) for v in box)
    old = (right - left + bottom - top) / 2 * 1.1
    cx, cy = right - (right - left) / 2.0, bottom - (bottom - top) / 2.0 + old * 0.12
    return cx, cy, float(int(old * scale))


def deca_crop(image: torch.Tensor, box, size: int = CROP_SIZE, scale: float = CROP_SCALE) -> torch.Tensor:
    """The (3, size, size) crop in [0, 1] of an image (3, H, W) uint8 or float in [0, 1]: the
    similarity taking the square's corners (top-left, bottom-left, top-right) to (0, 0),
    (0, size - 1), (size - 1, 0) in pixel-index coordinates, bilinear, 0 outside (skimage's
    ``warp(image, tform.inverse)``)."""
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    cx, cy, side = deca_box(box, scale)
    h, w = image.shape[-2:]
    k = side / (size - 1)                               # input pixels per output pixel
    index = torch.arange(size, dtype=torch.float64)
    xs = cx - side / 2 + k * index                      # input x of output column j
    ys = cy - side / 2 + k * index
    grid_x = (2 * xs / (w - 1) - 1)[None, :].expand(size, size)
    grid_y = (2 * ys / (h - 1) - 1)[:, None].expand(size, size)
    grid = torch.stack([grid_x, grid_y], -1).float()[None]
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
