"""CapHuman's face parser: BiSeNet (ResNet-18 context path, 19 CelebAMask-HQ classes), as
``libs/face_parsing/face_parser.py`` uses it before CLIP-vision encodes the identity photo.

The network is the one of zllrunning/face-parsing.PyTorch, whose ``79999_iter.pth`` the
MR-FIQA bundle ships as ``FaceParser.pth`` (asset ``caphuman-face-parser``); the module names
below are that checkpoint's keys (``cp.resnet.layer1.0.conv1.weight``, ``cp.arm16.conv_atten``,
``ffm.convblk.conv``, ``conv_out.conv_out``, ...), and the checkpoint is read strictly through
the weights-only reader: a missing or unexpected key is an error naming it.

``whiten(image, parser)`` is the original's ``FaceParser.parse``: the photo at its own size,
``ToTensor`` then ImageNet normalisation, the network's first output upsampled to the photo
(bilinear, ``align_corners=True``), the argmax class per pixel, and every pixel of background
(0), ears (7, 8), earring (9), neck (14), necklace (15), cloth (16), hair (17) or hat (18) set
to white.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synfiqa.errors import CheckpointError

ASSET = "caphuman-face-parser"
CLASSES = 19
#: the classes the original whitens before CLIP vision (CelebAMask-HQ labels)
WHITENED = (0, 7, 8, 9, 14, 15, 16, 17, 18)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, inputs: int, outputs: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(outputs)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.downsample = None
        if inputs != outputs or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x):
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """ResNet-18 without its classifier; returns the stride-8, -16 and -32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.conv = ConvBNReLU(inputs, outputs)
        self.conv_atten = nn.Conv2d(outputs, outputs, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(outputs)

    def forward(self, x):
        feat = self.conv(x)
        attention = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))
        return feat * attention


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel=1, padding=0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        average = self.conv_avg(feat32.mean((2, 3), keepdim=True))
        feat32_sum = self.arm32(feat32) + F.interpolate(average, feat32.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusion(nn.Module):
    def __init__(self, inputs: int = 256, outputs: int = 256):
        super().__init__()
        self.convblk = ConvBNReLU(inputs, outputs, kernel=1, padding=0)
        self.conv1 = nn.Conv2d(outputs, outputs // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(outputs // 4, outputs, 1, bias=False)

    def forward(self, spatial, context):
        feat = self.convblk(torch.cat([spatial, context], 1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * attention + feat


class Head(nn.Module):
    def __init__(self, inputs: int, middle: int, classes: int):
        super().__init__()
        self.conv = ConvBNReLU(inputs, middle)
        self.conv_out = nn.Conv2d(middle, classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The face parser; ``forward`` returns the class logits (N, 19, H, W) at the input's size
    (the main head only: the two auxiliary heads of training are kept for the checkpoint)."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Head(256, 256, classes)
        self.conv_out16 = Head(128, 64, classes)
        self.conv_out32 = Head(128, 64, classes)

    def forward(self, x):
        feat8, context8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


def load_face_parser(path: str | Path) -> BiSeNet:
    """FaceParser.pth (79999_iter.pth), read tensors-only, every key used and none missing."""
    from synfiqa.checkpoints import read_payload

    state = read_payload(path, ASSET)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (the BiSeNet face parser's FaceParser.pth)")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    network = BiSeNet()
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: not the BiSeNet face parser: " + "; ".join(
            part for part in (f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "") if missing else "",
                              f"unexpected {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
                              if unexpected else "") if part))
    wrong = [key for key in expected if expected[key].shape != state[key].shape]
    if wrong:
        raise CheckpointError(f"{path}: shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, "
                              f"expected {tuple(expected[wrong[0]].shape)}")
    network.load_state_dict(state)
    return network.eval()


@torch.no_grad()
def parse(image: np.ndarray, parser: BiSeNet, device="cpu") -> np.ndarray:
    """(H, W) int64 class map of an HxWx3 uint8 photo, at the photo's size."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    pixels = (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    logits = parser(pixels[None].to(device))
    return logits[0].argmax(0).cpu().numpy()


def whiten(image: np.ndarray, parser: BiSeNet, device="cpu") -> np.ndarray:
    """The photo with background, ears, earrings, neck, necklace, cloth, hair and hat white."""
    out = np.array(image, copy=True)
    out[np.isin(parse(image, parser, device), WHITENED)] = 255
    return out
