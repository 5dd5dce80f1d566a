"""Contracts of the face models that plugins register with ``register_models``.

* detector: ``detect(image) -> list[DetectedFace]``; image HxWx3 uint8 RGB.
* embedder: ``embed(crops) -> Tensor[N, D]`` float32; crops uint8 [N, 3, 112, 112] RGB,
  aligned to the ArcFace template. Each embedder states its own input normalisation.
* pose: ``estimate(crops, landmarks) -> Tensor[N, 3]`` (yaw, pitch, roll) in degrees;
  landmarks float [N, 5, 2] in crop pixels. Sign convention: positive yaw = the face
  turns towards the image's left (the subject's right), positive pitch = looking up,
  positive roll = the head tilts clockwise in the image.
* vision-language: ``image_text_similarity(crops, texts) -> Tensor[N]``.
* fiqa: ``score(crops) -> Tensor[N]``; higher = better quality.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class DetectedFace:
    box: np.ndarray        # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: np.ndarray  # [5, 2]: left eye, right eye, nose, left mouth, right mouth

    @property
    def size(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def pick_main_face(faces: list[DetectedFace]) -> DetectedFace | None:
    """The face a portrait is about: the largest, ties broken by detector confidence."""
    if not faces:
        return None
    return max(faces, key=lambda face: (face.size, face.score))


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" (CUDA when visible, else CPU), "cpu", "cuda" or "cuda:N". Any other form, or a CUDA
    device this machine does not have, is a ConfigError saying which forms there are."""
    from synfiqa.config import device_problem
    from synfiqa.errors import ConfigError

    if isinstance(device, torch.device):
        device = str(device)
    problem = device_problem(device)
    if problem:
        raise ConfigError(f"device {problem}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_loaded: dict[tuple, object] = {}
_loading = threading.Lock()


def load_once(path: str | os.PathLike, variant: object, load: Callable[[], object]):
    """What `load()` makes of a weights file, made once per process and shared by every later
    build, score or test in it: keyed by the file (resolved path, size, modification time: a
    replaced file loads again) and `variant` (the loader's options). For loaded models that
    are not changed after loading; a component keeps its per-instance state outside."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, variant)
    with _loading:   # two threads building the same model load it once
        if key not in _loaded:
            _loaded[key] = load()
        return _loaded[key]
