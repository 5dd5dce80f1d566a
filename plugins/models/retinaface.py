"""RetinaFace ResNet-50 face detector with 5 landmarks, the original MR-FIQA's detector
(Deng et al. 2020; the PyTorch network of biubug6/Pytorch_Retinaface, which ternaus/retinaface
and MR-FIQA's copy of it, `Stage-2/libs/decalib/datasets/retinaface`, keep unchanged).

Network (parameter names are the checkpoints'):

* `body`: torchvision's ResNet-50 (conv1, bn1, layer1..layer4; no fc), whose layer2, layer3
  and layer4 outputs (512, 1024, 2048 channels, strides 8, 16, 32) feed
* `fpn`: a 1x1 conv+BN+ReLU per level to 256 channels (`output1..3`); the coarser level,
  upsampled (nearest) to the finer one's size, is added and smoothed by a 3x3 conv+BN+ReLU
  (`merge2` on stride 16, then `merge1` on stride 8);
* `ssh1..3`: per level, three branches concatenated (3x3 -> 128; 3x3 -> 64 -> 3x3 -> 64; the
  same 64 -> 3x3 -> 64 -> 3x3 -> 64), ReLU after the concatenation only;
* `ClassHead`, `BboxHead`, `LandmarkHead`: per level a 1x1 conv with 2 anchors x (2 logits,
  4 box offsets, 10 landmark offsets), read position by position (row-major), anchor inside.

Anchors ("priors"): per level of stride s (8, 16, 32) and its two sizes ((16, 32), (64, 128),
(256, 512) pixels), one square anchor per size at every cell centre ((j + 0.5) s, (i + 0.5) s)
of a ceil(H / s) x ceil(W / s) grid, in image-normalised units. Decoding with variances
(0.1, 0.2): centre = prior centre + offset x 0.1 x prior size, size = prior size x
exp(offset x 0.2); a landmark = prior centre + offset x 0.1 x prior size.

Two published weights, trained on differently prepared pictures, so each is run as its own
code runs it (two models, each with its original's thresholds as defaults):

* model `retinaface-resnet50` (asset `retinaface-resnet50`, `Retinaface_Resnet50.pth`): what
  MR-FIQA loads into its `FaceDetector` (ternaus/retinaface's network and inference): a photo
  larger than `max_size` = 250 px is shrunk (cv2 INTER_AREA, sizes truncated) so its longer
  side is 250; RGB / 255, ImageNet mean and std; faces with confidence > 0.7; NMS at IoU 0.4
  (torchvision's areas); boxes and landmarks mapped back by the height ratio (the original's);
  a box that lies wholly right of or below the picture is dropped. MR-FIQA keeps the
  best-scoring face (`keep = "best"`). Its file is not biubug6's: MR-FIQA loads it strictly
  without removing DataParallel's "module." prefix, which every key of Resnet50_Final.pth has,
  and ternaus's released weights (the same network, no prefix) were trained on ImageNet-
  normalised RGB, the input MR-FIQA gives it.
* model `retinaface-resnet50-biubug6` (asset of that name, `Resnet50_Final.pth`): biubug6's
  detect.py: the photo at its own size, BGR minus (104, 117, 123); confidence > 0.02, the
  5000 best, NMS at 0.4 with the "+1 pixel" areas of py_cpu_nms, at most 750 faces.

The landmarks come in synfiqa's order already (image-left eye, image-right eye, nose,
image-left mouth corner, image-right mouth corner: the WIDER FACE annotation order).
Faces narrower or shorter than `min_face_size` photo pixels are dropped, as MTCNN's and
YuNet's are (before the best is chosen). MR-FIQA's FaceDetector then squares the box and raises its top to the forehead
for its own crop; synfiqa aligns from the landmarks, so the box is passed on as detected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synfiqa import hookimpl
from synfiqa.errors import ConfigError
from synfiqa.models import DetectedFace, resolve_device

PRIOR_STEPS = (8, 16, 32)
PRIOR_SIZES = ((16, 32), (64, 128), (256, 512))
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BGR_MEAN = (104.0, 117.0, 123.0)
BODY_MODULES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
FEATURES = 256


@dataclass(frozen=True)
class Release:
    """How one published checkpoint was trained to be run."""
    asset: str
    normalisation: str          # "imagenet-rgb" or "bgr-mean"
    nms_pixel_offset: float     # 0: torchvision's IoU; 1: py_cpu_nms's (x2 - x1 + 1) areas
    top_k: int | None           # the best scores kept before NMS (None: all)
    keep_top_k: int | None      # the faces kept after NMS (None: all)


RELEASES = {
    "mr-fiqa": Release("retinaface-resnet50", "imagenet-rgb", 0.0, None, None),
    "biubug6": Release("retinaface-resnet50-biubug6", "bgr-mean", 1.0, 5000, 750),
}



# ---------------------------------------------------------------- the network

def conv_bn(in_channels: int, out_channels: int, kernel: int, relu: bool) -> nn.Sequential:
    """Conv (no bias) + BN, and ReLU when asked: the original's conv_bn / conv_bn1X1 /
    conv_bn_no_relu (its LeakyReLU has slope 0 at 256 channels, i.e. ReLU). The activation
    sits at index 2, so the parameters keep the checkpoints' `.0.` and `.1.` names."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Body(nn.Module):
    """torchvision's ResNet-50 up to layer4 (built without weights: the checkpoint holds them);
    returns the stride-8, 16 and 32 features."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import Bottleneck, ResNet

        resnet = ResNet(Bottleneck, [3, 4, 6, 3])
        for name in BODY_MODULES:
            setattr(self, name, getattr(resnet, name))

    def forward(self, x):
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return c3, c4, self.layer4(c4)


class FPN(nn.Module):
    def __init__(self, in_channels=(512, 1024, 2048), out_channels: int = FEATURES):
        super().__init__()
        self.output1, self.output2, self.output3 = (conv_bn(c, out_channels, 1, relu=True) for c in in_channels)
        self.merge1 = conv_bn(out_channels, out_channels, 3, relu=True)
        self.merge2 = conv_bn(out_channels, out_channels, 3, relu=True)

    def forward(self, features):
        c3, c4, c5 = features
        p5 = self.output3(c5)
        p4 = self.merge2(self.output2(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest"))
        p3 = self.merge1(self.output1(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest"))
        return p3, p4, p5


class SSH(nn.Module):
    """The context module: a 3x3 view and, through shared first convolutions, 5x5 and 7x7
    views (two and three stacked 3x3 convolutions); ReLU only after joining them."""

    def __init__(self, channels: int = FEATURES):
        super().__init__()
        self.conv3X3 = conv_bn(channels, channels // 2, 3, relu=False)
        self.conv5X5_1 = conv_bn(channels, channels // 4, 3, relu=True)
        self.conv5X5_2 = conv_bn(channels // 4, channels // 4, 3, relu=False)
        self.conv7X7_2 = conv_bn(channels // 4, channels // 4, 3, relu=True)
        self.conv7x7_3 = conv_bn(channels // 4, channels // 4, 3, relu=False)   # sic: lower-case x

    def forward(self, x):
        shared = self.conv5X5_1(x)
        view5 = self.conv5X5_2(shared)
        view7 = self.conv7x7_3(self.conv7X7_2(shared))
        return F.relu(torch.cat([self.conv3X3(x), view5, view7], dim=1))


class Head(nn.Module):
    """A 1x1 convolution read as [N, H x W x anchors, values]: position-major, anchor inside."""

    def __init__(self, values: int, anchors: int = 2, channels: int = FEATURES):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, anchors * values, 1)

    def forward(self, x):
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFaceNet(nn.Module):
    """forward(x [N, 3, H, W], normalised) -> (box offsets [N, P, 4], class logits [N, P, 2],
    landmark offsets [N, P, 10]) for the P priors of `prior_boxes(H, W)`, in their order."""

    def __init__(self):
        super().__init__()
        self.body = Body()
        self.fpn = FPN()
        self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
        self.ClassHead = nn.ModuleList(Head(2) for _ in range(3))
        self.BboxHead = nn.ModuleList(Head(4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(Head(10) for _ in range(3))

    def forward(self, x):
        levels = [ssh(p) for ssh, p in zip((self.ssh1, self.ssh2, self.ssh3), self.fpn(self.body(x)))]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, levels)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, levels)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, levels)], dim=1)
        return boxes, logits, landmarks


# ---------------------------------------------------------------- anchors, decoding, NMS

def prior_boxes(height: int, width: int) -> torch.Tensor:
    """[P, 4] anchors (centre x, centre y, width, height), as fractions of the image, in the
    heads' order: level by level, cell by cell (row-major), the level's sizes inside."""
    priors = []
    for step, sizes in zip(PRIOR_STEPS, PRIOR_SIZES):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy, cx = torch.meshgrid((torch.arange(rows, dtype=torch.float64) + 0.5) * step / height,
                                (torch.arange(cols, dtype=torch.float64) + 0.5) * step / width, indexing="ij")
        per_size = [torch.stack([cx, cy, torch.full_like(cx, size / width), torch.full_like(cy, size / height)], dim=-1)
                    for size in sizes]
        priors.append(torch.stack(per_size, dim=2).reshape(-1, 4))   # [rows, cols, sizes, 4], row-major
    return torch.cat(priors).float()


def decode_boxes(offsets: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """[P, 4] offsets -> [P, 4] boxes (x1, y1, x2, y2) in image fractions."""
    centre = priors[:, :2] + offsets[:, :2] * CENTRE_VARIANCE * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(offsets[:, 2:] * SIZE_VARIANCE)
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def decode_landmarks(offsets: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """[P, 10] offsets -> [P, 5, 2] points in image fractions."""
    return priors[:, None, :2] + offsets.reshape(-1, 5, 2) * CENTRE_VARIANCE * priors[:, None, 2:]


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, pixel_offset: float = 0.0) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first; a box goes
    when its IoU with a kept one is > threshold. `pixel_offset` = 1 counts the pixels a box
    covers inclusively, (x2 - x1 + 1), as Fast R-CNN's py_cpu_nms does."""
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes.double()
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + pixel_offset) * (y2 - y1 + pixel_offset)
    keep = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = (torch.minimum(x2[best], x2[rest]) - torch.maximum(x1[best], x1[rest]) + pixel_offset).clamp_min(0)
        h = (torch.minimum(y2[best], y2[rest]) - torch.maximum(y1[best], y1[rest]) + pixel_offset).clamp_min(0)
        inter = w * h
        order = rest[inter / (areas[best] + areas[rest] - inter) <= threshold]
    return torch.tensor(keep, dtype=torch.long)


# ---------------------------------------------------------------- the detector

class RetinaFaceDetector:
    """The detector of one release; the registered models are its two subclasses below, each
    with its original's settings as defaults."""
    kind = "detector"

    def __init__(self, release: str, path: str, confidence: float, nms_threshold: float, max_size: int,
                 keep: str, min_face_size: int, device: str):
        from synfiqa.checkpoints import find_state_dict, load_state_dict_strictly, read_payload, strip_prefix
        from synfiqa.weights import locate

        if keep not in ("best", "all"):
            raise ConfigError(f"retinaface: keep must be 'best' (the original's) or 'all', got {keep!r}")
        self.release = RELEASES[release]
        self.confidence = float(confidence)
        self.nms_threshold = float(nms_threshold)
        self.max_size = int(max_size)
        self.keep = keep
        self.min_face_size = int(min_face_size)
        self.device = resolve_device(device)
        asset = self.release.asset
        self.path = next(iter(locate(asset, explicit=path or None).files.values()))
        # the published files: a plain state dict, with "module." from DataParallel (biubug6's) or without
        state_dict = strip_prefix(find_state_dict(read_payload(self.path, asset), self.path), "module.")
        self.model = RetinaFaceNet()
        load_state_dict_strictly(self.model, state_dict, str(self.path), description="RetinaFace ResNet-50")
        self.model = self.model.to(self.device).eval()

    def network_input(self, image: np.ndarray) -> tuple[torch.Tensor, float]:
        """The normalised [1, 3, h, w] tensor and the factor from its pixels back to the photo's."""
        import cv2

        height, width = image.shape[:2]
        ratio = 1.0
        if self.max_size and max(height, width) > self.max_size:
            scale = self.max_size / max(height, width)
            small_h, small_w = int(height * scale), int(width * scale)
            image = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
            ratio = height / small_h   # the original maps both axes back by the height ratio
        if self.release.normalisation == "imagenet-rgb":
            pixels = (image.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        else:
            pixels = image[:, :, ::-1].astype(np.float32) - np.array(BGR_MEAN, dtype=np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float()[None]
        return tensor.to(self.device), ratio

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"RetinaFace takes HxWx3 uint8 RGB images, got {image.dtype} {image.shape}")
        x, ratio = self.network_input(image)
        offsets, logits, landmark_offsets = (t[0].float().cpu() for t in self.model(x))
        return self.select(offsets, logits, landmark_offsets, x.shape[-2:], image.shape[:2], ratio)

    def select(self, offsets, logits, landmark_offsets, network_size, photo_size, ratio) -> list[DetectedFace]:
        """From the heads' outputs to the photo's faces: decode, threshold, NMS, map back."""
        (net_h, net_w), (height, width) = network_size, photo_size
        priors = prior_boxes(net_h, net_w)
        scores = torch.softmax(logits, dim=-1)[:, 1]
        boxes = decode_boxes(offsets, priors) * torch.tensor([net_w, net_h, net_w, net_h])
        points = decode_landmarks(landmark_offsets, priors) * torch.tensor([net_w, net_h])
        chosen = torch.nonzero(scores > self.confidence).flatten()
        if self.release.top_k is not None:
            chosen = chosen[torch.argsort(scores[chosen], descending=True, stable=True)[:self.release.top_k]]
        chosen = chosen[nms(boxes[chosen], scores[chosen], self.nms_threshold, self.release.nms_pixel_offset)]
        if self.release.keep_top_k is not None:
            chosen = chosen[:self.release.keep_top_k]
        faces = []
        for index in chosen.tolist():
            box = boxes[index].double().numpy() * ratio
            # the original drops a box whose clipped extent is empty (wholly right of / below the photo)
            if min(box[0], width - 1) >= width - 1 or min(box[1], height - 1) >= height - 1:
                continue
            face = DetectedFace(box=box, score=float(scores[index]), landmarks=points[index].double().numpy() * ratio)
            if face.size >= self.min_face_size:
                faces.append(face)
        if self.keep == "best" and faces:
            return [faces[0]]   # NMS keeps the best score first: MR-FIQA's argmax over the scores
        return faces


class RetinaFaceMRFIQA(RetinaFaceDetector):
    """MR-FIQA's Retinaface_Resnet50.pth as its FaceDetector runs it."""

    def __init__(self, path: str = "", confidence: float = 0.7, nms_threshold: float = 0.4, max_size: int = 250,
                 keep: str = "best", min_face_size: int = 10, device: str = "auto"):
        super().__init__("mr-fiqa", path, confidence, nms_threshold, max_size, keep, min_face_size, device)


class RetinaFaceBiubug6(RetinaFaceDetector):
    """biubug6's Resnet50_Final.pth as its detect.py runs it."""

    def __init__(self, path: str = "", confidence: float = 0.02, nms_threshold: float = 0.4, max_size: int = 0,
                 keep: str = "best", min_face_size: int = 10, device: str = "auto"):
        super().__init__("biubug6", path, confidence, nms_threshold, max_size, keep, min_face_size, device)


@hookimpl
def register_models(register):
    register("retinaface-resnet50", RetinaFaceMRFIQA)
    register("retinaface-resnet50-biubug6", RetinaFaceBiubug6)
