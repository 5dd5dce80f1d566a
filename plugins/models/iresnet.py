"""The CR-FIQA network (docs/method.md#6-scoring-with-cr-fiqa-networks): an IResNet body with a quality head, and
the loader that reads which variant a checkpoint holds from its keys.

Body: conv3x3(3->64) -> BN -> PReLU -> four stages of improved basic blocks (64, 128, 256,
512 channels, each stage halving the resolution: 112 -> 7) -> BN2d -> flatten (512*7*7)
-> dropout -> Linear(25088 -> 512) -> BN1d = the 512-d embedding.
Heads:
* ``linear`` (CR-FIQA): ``qs`` = Linear(512 -> 1) on the embedding.
* ``mlp`` (SynFIQA++, "fix_qs"): ``qs`` = an MLP on the last stage's feature map, taken
  before the body's final BN: AdaptiveAvgPool(1), Flatten, Linear(512 -> 256), BN1d, ReLU,
  Dropout(0.5), Linear(256 -> 256), BN1d, ReLU, Linear(256 -> 1). Its Sequential indices
  (qs.2, qs.3, qs.6, qs.7, qs.9) are the checkpoint's key names, so the layout must stay.
* ``none``: a recognition-only checkpoint (no ``qs`` keys): usable as an embedder only.

Module and parameter names follow the checkpoints (conv1, bn1, prelu, layerN.i.{bn1, conv1,
bn2, prelu, conv2, bn3, downsample.0/1, se_block.fc1/fc2}, bn2, fc, features, qs), so a
state dict loads with strict=True once a DataParallel ``module.`` prefix is stripped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from synfiqa.errors import CheckpointError
from synfiqa.checkpoints import load_state_dict_strictly

NAMED_DEPTHS = {(2, 2, 2, 2): "iresnet18", (3, 4, 6, 3): "iresnet34", (3, 4, 14, 3): "iresnet50",
                (3, 13, 30, 3): "iresnet100"}
DEPTHS = {name: blocks for blocks, name in NAMED_DEPTHS.items()}   # "iresnet50" -> (3, 4, 14, 3)
CONV_INIT_STD = 0.1  # CR-FIQA's IResNet.__init__: every Conv2d weight ~ N(0, 0.1)
HEADS = ("linear", "mlp", "none")
STAGE_WIDTHS = (64, 128, 256, 512)
FEATURE_MAP_SIDE = 7  # 112 / 2**4


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class ImprovedBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN [-> SE], plus the shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, squeeze_excitation: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        if squeeze_excitation:
            self.se_block = SqueezeExcitation(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels, eps=1e-5))

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if hasattr(self, "se_block"):
            out = self.se_block(out)
        shortcut = self.downsample(x) if self.downsample is not None else x
        return out + shortcut


def mlp_quality_head(channels: int = 512, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, 1),
    )


class CRFIQANet(nn.Module):
    """forward(x in [-1, 1], [N, 3, 112, 112]) -> (embedding [N, F], quality [N, 1] or None)."""

    def __init__(self, blocks=(3, 4, 14, 3), head: str = "linear", num_features: int = 512,
                 squeeze_excitation: bool = False, dropout: float = 0.0):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.head = head
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        in_channels = 64
        for stage, (count, width) in enumerate(zip(blocks, STAGE_WIDTHS), start=1):
            layers = [ImprovedBasicBlock(in_channels, width, stride=2, squeeze_excitation=squeeze_excitation)]
            layers += [ImprovedBasicBlock(width, width, squeeze_excitation=squeeze_excitation) for _ in range(count - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
            in_channels = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * FEATURE_MAP_SIDE ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        if head == "linear":
            self.qs = nn.Linear(num_features, 1)
        elif head == "mlp":
            self.qs = mlp_quality_head(512)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        feature_map = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        embedding = self.features(self.fc(self.dropout(torch.flatten(self.bn2(feature_map), 1))))
        if self.head == "linear":
            return embedding, self.qs(embedding)
        if self.head == "mlp":
            return embedding, self.qs(feature_map)  # SynFIQA++: before the body's BN2d
        return embedding, None


def crfiqa_init(network: nn.Module) -> nn.Module:
    """The initialisation of CR-FIQA's `IResNet.__init__` (fdbtrs/CR-FIQA backbones/iresnet.py):
    conv weights ~ N(0, 0.1), BatchNorm weight 1 and bias 0 (torch's default for BatchNorm,
    set again for clarity); Linear layers keep torch's default, as there."""
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, CONV_INIT_STD)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
    return network


# ---------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Variant:
    blocks: tuple[int, int, int, int]
    head: str
    num_features: int
    squeeze_excitation: bool

    @property
    def depth_name(self) -> str:
        return NAMED_DEPTHS.get(self.blocks, "iresnet" + "-".join(map(str, self.blocks)))

    def describe(self) -> str:
        head = {"linear": "linear qs head (CR-FIQA)", "mlp": "MLP qs head (SynFIQA++)",
                "none": "no quality head"}[self.head]
        return f"{self.depth_name}, {head}" + (", SE blocks" if self.squeeze_excitation else "")


def strip_prefix(state_dict: dict) -> dict:
    """Drop DataParallel's 'module.' prefix (at the start of every key) where present."""
    return {key[len("module."):] if key.startswith("module.") else key: value for key, value in state_dict.items()}


def detect_variant(state_dict: dict, source: str = "checkpoint") -> Variant:
    """Depth from the highest block index of each stage, head from the qs keys, embedding
    size from fc.weight. Never from the file name."""
    keys = list(state_dict)
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not indices:
            raise CheckpointError(f"{source}: no keys for layer{stage}; not a CR-FIQA/IResNet checkpoint "
                                  f"(first keys: {', '.join(keys[:5])})")
        blocks.append(max(indices) + 1)
    if "qs.weight" in state_dict:
        head = "linear"
    elif any(k.startswith("qs.") for k in keys):
        head = "mlp"
    else:
        head = "none"
    if "fc.weight" not in state_dict:
        raise CheckpointError(f"{source}: no fc.weight; not a CR-FIQA/IResNet checkpoint")
    num_features = int(state_dict["fc.weight"].shape[0])
    squeeze_excitation = any(".se_block." in k for k in keys)
    return Variant(tuple(blocks), head, num_features, squeeze_excitation)


def read_state_dict(path: str | Path) -> dict:
    from synfiqa.checkpoints import read_payload

    path = Path(path)
    payload = read_payload(path)  # tensors only, every failure one line
    for wrapper in ("state_dict", "model", "backbone"):
        if isinstance(payload, dict) and isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{path}: expected a state dict (parameter name -> tensor), got {type(payload).__name__}")
    return strip_prefix(payload)


def build_from_state_dict(state_dict: dict, source: str = "checkpoint") -> tuple[CRFIQANet, Variant]:
    """Builds the variant the keys describe and loads it strictly: any missing or unexpected
    key is an error that names it (BatchNorm's num_batches_tracked counter excepted: older
    checkpoints lack it and it plays no part in inference)."""
    variant = detect_variant(state_dict, source)
    model = CRFIQANet(variant.blocks, variant.head, variant.num_features, variant.squeeze_excitation)
    load_state_dict_strictly(model, state_dict, source, description=variant.describe())
    return model.eval(), variant


def load_checkpoint(path: str | Path) -> tuple[CRFIQANet, Variant]:
    return build_from_state_dict(read_state_dict(path), str(path))
