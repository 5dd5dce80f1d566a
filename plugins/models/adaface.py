"""AdaFace IR-18 / IR-50 face embedders from the official checkpoints (mk-minchul/AdaFace).

The network (the "IR" ResNet of InsightFace as AdaFace's net.py builds it):
input_layer = conv3x3(3 -> 64, no bias), BN, PReLU; body = four stages of basic IR blocks
(64, 128, 256, 512 channels; IR-18: 2,2,2,2 blocks, IR-50: 3,4,14,3), the first block of
each stage with stride 2; output_layer = BN2d(512), Dropout, Flatten, Linear(512*7*7 -> 512),
BN1d(512, no affine). Block: res_layer = BN, conv3x3, BN, PReLU, conv3x3 (stride), BN;
shortcut_layer = MaxPool2d(1, stride) when the width stays (no weights), else
conv1x1 (stride) + BN. Module names match the checkpoint's keys, so a state dict loads
with strict=True once the "model." prefix is stripped.

Checkpoint: a PyTorch Lightning file whose "state_dict" holds the network under "model."
and the AdaFace margin head under "head." (training only, dropped).

Input normalisation (AdaFace's own inference code): BGR channel order, (x / 255 - 0.5) / 0.5,
112x112 ArcFace-aligned crops. Output: the L2-normalised 512-d embedding; the norm before
normalisation (AdaFace's quality proxy) is available from `embed_with_norm`.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from synfiqa import hookimpl
from synfiqa.errors import CheckpointError
from synfiqa.models import resolve_device

STAGE_WIDTHS = (64, 128, 256, 512)
DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
EMBEDDING_SIZE = 512


class BasicBlockIR(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        if in_channels == channels:
            self.shortcut_layer = nn.MaxPool2d(1, stride)   # a strided pick, no weights
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                                nn.BatchNorm2d(channels))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IRNet(nn.Module):
    """forward(x [N, 3, 112, 112], BGR, in [-1, 1]) -> (unit embedding [N, 512], norm [N, 1])."""

    def __init__(self, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.blocks = tuple(blocks)
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, in_channels = [], 64
        for count, width in zip(self.blocks, STAGE_WIDTHS):
            units.append(BasicBlockIR(in_channels, width, 2))
            units += [BasicBlockIR(width, width, 1) for _ in range(count - 1)]
            in_channels = width
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
            nn.Linear(512 * 7 * 7, EMBEDDING_SIZE), nn.BatchNorm1d(EMBEDDING_SIZE, affine=False),
        )

    def forward(self, x):
        features = self.output_layer(self.body(self.input_layer(x)))
        norm = features.norm(p=2, dim=1, keepdim=True)
        return features / norm, norm


def network_state_dict(state_dict: dict) -> dict:
    """The network's keys of an AdaFace checkpoint: those under "model." (the margin head's
    "head." keys are training only); a bare state dict as it is."""
    from synfiqa.checkpoints import strip_prefix

    if any(key.startswith("model.") for key in state_dict):
        return strip_prefix(state_dict, "model.")
    return strip_prefix(state_dict, "module.")


def blocks_of(state_dict: dict, source: str) -> tuple[int, ...]:
    """Blocks per stage, read from the body's keys: each block's first conv
    (res_layer.1) says its output width, i.e. its stage."""
    widths = {}
    for key, value in state_dict.items():
        if (m := re.fullmatch(r"body\.(\d+)\.res_layer\.1\.weight", key)) and value.dim() == 4:
            widths[int(m.group(1))] = int(value.shape[0])
    if not widths:
        raise CheckpointError(f"{source}: no body.N.res_layer keys; not an AdaFace IR network "
                              f"(first keys: {', '.join(list(state_dict)[:5])})")
    return tuple(sum(1 for w in widths.values() if w == width) for width in STAGE_WIDTHS)


def build_adaface(state_dict: dict, source: str, depth: int | None = None) -> IRNet:
    """An IRNet of the depth the keys describe, loaded strictly. With `depth`, a checkpoint
    of another depth is an error before anything runs."""
    from synfiqa.checkpoints import load_state_dict_strictly

    state_dict = network_state_dict(state_dict)
    blocks = blocks_of(state_dict, source)
    found = next((d for d, b in DEPTHS.items() if b == blocks), None)
    if depth is not None and blocks != DEPTHS[depth]:
        described = f"IR-{found}" if found else f"an IR net with {blocks} blocks per stage"
        raise CheckpointError(f"{source} holds {described}, not the IR-{depth} this embedder expects "
                              f"(blocks per stage {DEPTHS[depth]})")
    model = IRNet(blocks)
    load_state_dict_strictly(model, state_dict, source)
    return model.eval()


class AdaFaceEmbedder:
    """AdaFace IR embedder. Input: uint8 RGB ArcFace-aligned crops [N, 3, 112, 112]; fed to the
    network as BGR, (x / 255 - 0.5) / 0.5 (`bgr_input=False` keeps RGB, for re-trained models
    that expect it)."""

    kind = "embedder"
    dimension = EMBEDDING_SIZE
    depth = 18
    asset = "adaface-ir18"

    def __init__(self, path: str = "", device: str = "auto", batch_size: int = 64, bgr_input: bool = True):
        from synfiqa.weights import locate
        from synfiqa.checkpoints import find_state_dict, read_payload

        location = locate(self.asset, explicit=path or None)
        self.path = next(iter(location.files.values()))
        state_dict = find_state_dict(read_payload(self.path, self.asset), self.path)
        self.device = resolve_device(device)
        self.model = build_adaface(state_dict, str(self.path), self.depth).to(self.device)
        self.batch_size = int(batch_size)
        self.bgr_input = bool(bgr_input)

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.to(self.device, torch.float32)
        if x.shape[-2:] != (112, 112):
            x = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
        if self.bgr_input:
            x = x.flip(1)
        return (x / 255.0 - 0.5) / 0.5

    @torch.no_grad()
    def embed_with_norm(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit embeddings [N, 512], feature norms [N]) for uint8 RGB crops."""
        if crops.dim() != 4 or crops.shape[1] != 3 or crops.dtype != torch.uint8:
            raise ValueError(f"{self.asset} takes uint8 [N, 3, H, W] aligned crops, got {crops.dtype} {tuple(crops.shape)}")
        embeddings, norms = [], []
        for i in range(0, crops.shape[0], self.batch_size):
            unit, norm = self.model(self.preprocess(crops[i:i + self.batch_size]))
            embeddings.append(unit.float().cpu())
            norms.append(norm[:, 0].float().cpu())
        if not embeddings:
            return torch.zeros(0, self.dimension), torch.zeros(0)
        return torch.cat(embeddings), torch.cat(norms)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.embed_with_norm(crops)[0]


class AdaFaceIR18(AdaFaceEmbedder):
    depth = 18
    asset = "adaface-ir18"
    # the original MR-FIQA / DCFace identity-uniqueness threshold, set for this model; not
    # re-measured here (the checkpoint cannot be fetched offline)
    same_identity_threshold = 0.3


class AdaFaceIR50(AdaFaceEmbedder):
    depth = 50
    asset = "adaface-ir50"


@hookimpl
def register_models(register):
    register("adaface-ir18", AdaFaceIR18)
    register("adaface-ir50", AdaFaceIR50)
