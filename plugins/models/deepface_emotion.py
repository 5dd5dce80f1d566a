"""DeepFace's facial expression model (serengil/deepface, `facial_expression_model_weights.h5`),
the original MR-FIQA's expression filter, run in torch from its Keras HDF5 weights (h5py; no
TensorFlow).

The network, DeepFace's Keras `Sequential` on a 48x48x1 grey face in [0, 1]:

    Conv2D(64, 5x5) ReLU -> MaxPool(5x5, stride 2)
    Conv2D(64, 3x3) ReLU -> Conv2D(64, 3x3) ReLU -> AveragePool(3x3, stride 2)
    Conv2D(128, 3x3) ReLU -> Conv2D(128, 3x3) ReLU -> AveragePool(3x3, stride 2)
    Flatten -> Dense(1024) ReLU -> Dropout -> Dense(1024) ReLU -> Dropout -> Dense(7) softmax

every convolution and pool 'valid' (no padding). Keras stores a convolution kernel as
[kh, kw, in, out] (torch wants [out, in, kh, kw]) and a Dense kernel as [in, out]; its Flatten
reads the feature map channels-last (row, column, channel), so the first Dense layer's rows
follow that order (at 48 px the map is 1x1x128 and both orders agree; at other sizes they
do not). The outputs are DeepFace's labels, in its order: angry, disgust, fear, happy, sad,
surprise, neutral.

The file is what Keras 2's `save_weights` writes: the root's `layer_names` attribute lists
the layers in model order, each layer's group its `weight_names` (kernel, bias). DeepFace's
`load_weights` assigns them by that order, so the 8 layers that hold weights are taken in
order, whatever their names.

`face_patch` is DeepFace's own preparation of a detected face (`DeepFace.analyze` with
align=True, expand_percentage=0, the original's call): the face box (integer pixels) with half
its size around it (black outside the photo) is rotated about that window's centre so the eyes
are level (cv2 bicubic), the box projected into it and cut out, scaled to [0, 1], fitted into
224x224 with black bars (aspect kept), made grey (BGR -> grey weights) and resized to 48x48.
The box and eyes are the run's detector's (`models.detector`; retinaface-resnet50 in the
paper's configuration), where DeepFace found them with its own detector (serengil/retinaface:
insightface's RetinaFace ResNet-50 ported to TensorFlow, threshold 0.9).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synfiqa.errors import CheckpointError

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 48
# (out channels, kernel) of the five convolutions; the pool after conv 1, 3 and 5
CONVOLUTIONS = ((64, 5), (64, 3), (64, 3), (128, 3), (128, 3))
DENSE_WIDTHS = (1024, 1024, len(LABELS))


def feature_side(input_size: int) -> int:
    """The side of the last feature map (valid convolutions and pools)."""
    side = input_size - 4          # conv 5x5
    side = (side - 5) // 2 + 1     # max pool 5, stride 2
    side = side - 4                # two conv 3x3
    side = (side - 3) // 2 + 1     # average pool 3, stride 2
    side = side - 4                # two conv 3x3
    return (side - 3) // 2 + 1     # average pool 3, stride 2


class EmotionNet(nn.Module):
    """forward(x [N, 1, S, S] grey in [0, 1]) -> [N, 7] probabilities (LABELS order)."""

    def __init__(self, input_size: int = INPUT_SIZE):
        super().__init__()
        channels = 1
        self.convs = nn.ModuleList()
        for out_channels, kernel in CONVOLUTIONS:
            self.convs.append(nn.Conv2d(channels, out_channels, kernel))
            channels = out_channels
        width = channels * feature_side(input_size) ** 2
        self.denses = nn.ModuleList()
        for out_features in DENSE_WIDTHS:
            self.denses.append(nn.Linear(width, out_features))
            width = out_features

    def forward(self, x):
        c1, c2, c3, c4, c5 = self.convs
        x = F.max_pool2d(F.relu(c1(x)), 5, 2)
        x = F.avg_pool2d(F.relu(c3(F.relu(c2(x)))), 3, 2)
        x = F.avg_pool2d(F.relu(c5(F.relu(c4(x)))), 3, 2)
        x = x.permute(0, 2, 3, 1).flatten(1)   # Keras' Flatten is channels-last
        x = F.relu(self.denses[0](x))
        x = F.relu(self.denses[1](x))          # Dropout: nothing at inference
        return torch.softmax(self.denses[2](x), dim=1)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_keras_layers(path: str | Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The layers that hold weights, in model order: (name, {"kernel": ..., "bias": ...})."""
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: does not exist") from None
    except OSError as error:
        raise CheckpointError(f"{path}: not a readable Keras HDF5 weights file "
                              f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    with handle:
        root = handle["model_weights"] if "model_weights" in handle else handle   # a whole-model save holds them there
        if "layer_names" not in root.attrs:
            raise CheckpointError(f"{path}: an HDF5 file without Keras' layer_names attribute "
                                  f"(not a Keras 2 weights file; its top-level keys: {', '.join(list(root)[:6])})")
        layers = []
        for name in map(_text, root.attrs["layer_names"]):
            group = root.get(name)
            names = [_text(n) for n in group.attrs.get("weight_names", [])] if group is not None else []
            if not names:
                continue
            # "conv2d_1/kernel:0" -> "kernel"
            layers.append((name, {n.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[n]) for n in names}))
    return layers


def load_emotion_net(path: str | Path, input_size: int = INPUT_SIZE) -> EmotionNet:
    """EmotionNet with the weights of a DeepFace-layout Keras file; every layer's shapes checked,
    a mismatch one CheckpointError naming the layer."""
    layers = read_keras_layers(path)
    model = EmotionNet(input_size)
    modules = [*model.convs, *model.denses]
    if len(layers) != len(modules):
        raise CheckpointError(f"{path}: {len(layers)} layers with weights, DeepFace's emotion model has "
                              f"{len(modules)} (5 Conv2D, 3 Dense): {', '.join(n for n, _ in layers[:10])}")
    state = {}
    for index, ((name, weights), module) in enumerate(zip(layers, modules)):
        if set(weights) != {"kernel", "bias"}:
            raise CheckpointError(f"{path}: layer {name!r} holds {', '.join(sorted(weights))}, expected kernel and bias")
        kernel, bias = torch.from_numpy(weights["kernel"]).float(), torch.from_numpy(weights["bias"]).float()
        if isinstance(module, nn.Conv2d):
            kernel = kernel.permute(3, 2, 0, 1)    # [kh, kw, in, out] -> [out, in, kh, kw]
        else:
            kernel = kernel.T                      # [in, out] -> [out, in]
        prefix = f"convs.{index}" if index < len(model.convs) else f"denses.{index - len(model.convs)}"
        for key, value in (("weight", kernel), ("bias", bias)):
            expected = getattr(module, key).shape
            if value.shape != expected:
                raise CheckpointError(f"{path}: layer {name!r} {key} has shape {tuple(value.shape)} in torch's "
                                      f"layout, DeepFace's emotion model needs {tuple(expected)}")
            state[f"{prefix}.{key}"] = value.contiguous()
    model.load_state_dict(state, strict=True)
    return model.eval()


def face_patch(image: np.ndarray, box: np.ndarray, landmarks: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """DeepFace's [size, size] float32 grey face in [0, 1] (see the module docstring).
    image HxWx3 uint8 RGB; box x1, y1, x2, y2 and landmarks [5, 2] (synfiqa's order) in its pixels."""
    import cv2

    x1, y1, x2, y2 = (int(v) for v in box[:4])
    w, h = x2 - x1, y2 - y1
    # DeepFace's eyes are the person's: its left eye is synfiqa's image-right one (index 1)
    left_eye = tuple(int(v) for v in landmarks[1])
    right_eye = tuple(int(v) for v in landmarks[0])

    # the box with half its size around it, black outside the photo
    margin_x, margin_y = int(0.5 * w), int(0.5 * h)
    window = np.zeros((h + 2 * margin_y, w + 2 * margin_x, 3), dtype=np.uint8)
    top, left = y1 - margin_y, x1 - margin_x
    src_y, src_x = slice(max(top, 0), min(top + window.shape[0], image.shape[0])), \
        slice(max(left, 0), min(left + window.shape[1], image.shape[1]))
    if src_y.start < src_y.stop and src_x.start < src_x.stop:
        window[src_y.start - top:src_y.stop - top, src_x.start - left:src_x.stop - left] = image[src_y, src_x]

    angle = float(np.degrees(np.arctan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])))
    wh, ww = window.shape[:2]
    rotation = cv2.getRotationMatrix2D((ww // 2, wh // 2), angle, 1.0)
    window = cv2.warpAffine(window, rotation, (ww, wh), flags=cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    fx1, fy1, fx2, fy2 = _project_box((margin_x, margin_y, margin_x + w, margin_y + h), angle, (wh, ww))
    face = window[fy1:fy2, fx1:fx2].astype(np.float64) / 255.0

    fitted = _fit_with_bars(face[:, :, ::-1], 224)           # DeepFace works in BGR from here
    grey = cv2.cvtColor(fitted.astype(np.float32), cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (size, size))


def _project_box(box, angle: float, shape) -> tuple[int, int, int, int]:
    """DeepFace's project_facial_area: the box's centre rotated with the window, size kept,
    clipped to the window (integer pixels)."""
    direction = 1 if angle >= 0 else -1
    angle = abs(angle) % 360
    if angle == 0:
        return tuple(int(v) for v in box)
    radians = angle * np.pi / 180
    height, width = shape
    x = (box[0] + box[2]) / 2 - width / 2
    y = (box[1] + box[3]) / 2 - height / 2
    x_new = x * np.cos(radians) + y * direction * np.sin(radians) + width / 2
    y_new = -x * direction * np.sin(radians) + y * np.cos(radians) + height / 2
    half_w, half_h = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    return (max(int(x_new - half_w), 0), max(int(y_new - half_h), 0),
            min(int(x_new + half_w), width), min(int(y_new + half_h), height))


def _fit_with_bars(face: np.ndarray, side: int) -> np.ndarray:
    """DeepFace's resize_image: scaled to fit side x side (cv2 bilinear, sizes truncated),
    centred between black bars."""
    import cv2

    factor = min(side / face.shape[0], side / face.shape[1])
    face = cv2.resize(face, (int(face.shape[1] * factor), int(face.shape[0] * factor)))
    pad_h, pad_w = side - face.shape[0], side - face.shape[1]
    face = np.pad(face, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    if face.shape[:2] != (side, side):
        face = cv2.resize(face, (side, side))
    return face


class DeepFaceEmotion:
    """DeepFace's emotion model from its weights file (asset deepface-emotion)."""

    asset = "deepface-emotion"
    labels = LABELS

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.model = load_emotion_net(self.path)

    @torch.no_grad()
    def probabilities(self, faces: torch.Tensor) -> torch.Tensor:
        """faces: [N, 48, 48] grey in [0, 1] (face_patch) -> [N, 7] probabilities (LABELS order)."""
        return self.model(faces.to(torch.float32)[:, None])
