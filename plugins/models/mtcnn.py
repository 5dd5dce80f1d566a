"""MTCNN face detector with 5 landmarks (facenet-pytorch; its weights ship in the wheel).

MTCNN's min_face_size only sets where its image pyramid starts, so it still reports faces
a little smaller; those are dropped here (too few pixels to align and recognise), so the
parameter means what it says, as with YuNet."""
from __future__ import annotations

import numpy as np

from synfiqa import hookimpl
from synfiqa.models import DetectedFace, resolve_device


class MTCNNDetector:
    kind = "detector"

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.7), device: str = "auto"):
        from facenet_pytorch import MTCNN  # heavy import: only when a detector is built

        from synfiqa.weights import locate

        locate("mtcnn")  # the weights inside facenet-pytorch's wheel, checked against registry.toml
        self.min_face_size = min_face_size
        self.device = resolve_device(device)
        self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds), device=self.device)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        boxes, probs, points = self._mtcnn.detect(image, landmarks=True)
        if boxes is None:
            return []
        faces = []
        for box, prob, landmarks in zip(boxes, probs, points):
            if min(box[2] - box[0], box[3] - box[1]) < self.min_face_size:
                continue
            faces.append(DetectedFace(
                box=np.array(np.asarray(box).tolist(), dtype=np.float64),
                score=float(prob),
                landmarks=np.array(np.asarray(landmarks).tolist(), dtype=np.float64),
            ))
        return faces


@hookimpl
def register_models(register):
    register("mtcnn", MTCNNDetector)
