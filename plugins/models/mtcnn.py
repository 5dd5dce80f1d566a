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
        boxes, probs, points = self._detect_on_one_thread(image)
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

    def _detect_on_one_thread(self, image: np.ndarray):
        """MTCNN on one torch thread, whatever the caller's count. Its ops are small (P-Net
        over an image pyramid, R-Net and O-Net over a few dozen crops, ~1100 area resizes per
        photo), too small to split: on this 2-core machine, under other processes' load, the
        six test photos took 9.6-13.9 CPU s with 2 threads (OpenMP threads waiting for each
        other at every op) against 0.8 with one. And the boxes and landmarks, hence every
        aligned crop of a build, no longer depend on torch's thread count."""
        import torch

        if self.device.type != "cpu":
            return self._mtcnn.detect(image, landmarks=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._mtcnn.detect(image, landmarks=True)
        finally:
            torch.set_num_threads(threads)


@hookimpl
def register_models(register):
    register("mtcnn", MTCNNDetector)
