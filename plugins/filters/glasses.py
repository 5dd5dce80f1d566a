"""Glasses filter: the landmark + edge heuristic of the original pipeline (no learned model).

The grey photo is turned and scaled so the eyes are level, d = 128 px apart and centred in
a 256x256 crop; after an 11x11 Gaussian blur, the absolute vertical Scharr derivative is
binarised with Otsu's threshold. Glasses frames make horizontal edges on the nose bridge
(x = 6d/7, y = 3d/4, w = 2d/7, h = d/2) and under the eyes (x = d/4 and 5d/4, y = 8d/7,
w = h = d/2): measure = 0.3 * bridge edge density + 0.7 * under-eye edge density, glasses
when measure > threshold (0.15). Faces without landmarks are kept.

Known limit (measured, see tests/test_filters.py): Otsu binarises relative edge strength,
so on sharp real photos of smiling faces the lower eyelids and smile lines alone reach
0.15-0.25 under the eyes; the heuristic was made for soft 256x256 generated faces.
"""
from __future__ import annotations

import math

import numpy as np

from synfiqa import hookimpl
from synfiqa.filtering import Decision, FaceSubject, not_measured

CROP = 256
EYE_DISTANCE = CROP // 2   # d


def eye_level_crop(gray: np.ndarray, left_eye, right_eye) -> np.ndarray:
    """The 256x256 grey crop with the eyes level, d apart, their midpoint at the centre."""
    import cv2

    (lx, ly), (rx, ry) = left_eye, right_eye
    centre = ((lx + rx) / 2.0, (ly + ry) / 2.0)
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    scale = EYE_DISTANCE / max(math.hypot(rx - lx, ry - ly), 1e-6)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[0, 2] += CROP / 2.0 - centre[0]
    matrix[1, 2] += CROP / 2.0 - centre[1]
    return cv2.warpAffine(gray, matrix, (CROP, CROP))


def glasses_measure(face: np.ndarray) -> float:
    """The edge-density measure on an eye-levelled 256x256 grey crop."""
    import cv2

    blurred = cv2.GaussianBlur(face, (11, 11), 0)
    vertical = cv2.convertScaleAbs(cv2.Sobel(blurred, cv2.CV_64F, 0, 1, ksize=-1))  # ksize -1: Scharr
    _, edges = cv2.threshold(vertical, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    d = CROP / 2.0
    x, y, w, h = int(d * 6 / 7), int(d * 3 / 4), int(d * 2 / 7), int(d / 2)
    bridge = edges[y:y + h, x:x + w]
    px1, px2, pw, py, ph = int(d / 4), int(d * 5 / 4), int(d / 2), int(d * 8 / 7), int(d / 2)
    patches = np.hstack([edges[py:py + ph, px1:px1 + pw], edges[py:py + ph, px2:px2 + pw]])
    return 0.3 * float(bridge.mean()) / 255.0 + 0.7 * float(patches.mean()) / 255.0


def measure_photo(image: np.ndarray, landmarks: np.ndarray) -> float:
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return glasses_measure(eye_level_crop(gray, landmarks[0], landmarks[1]))


class GlassesFilter:
    def __init__(self, threshold: float = 0.15):
        self.threshold = float(threshold)

    def judge(self, subjects: list[FaceSubject], context=None) -> list[Decision]:
        decisions = []
        for subject in subjects:
            if not subject.has_face:
                decisions.append(not_measured(subject))
                continue
            value = measure_photo(subject.image, subject.landmarks)
            if value > self.threshold:
                decisions.append(Decision(False, value, f"glasses: edge measure {value:.3f} > {self.threshold:g}"))
            else:
                decisions.append(Decision(True, value, f"edge measure {value:.3f} <= {self.threshold:g}"))
        return decisions


@hookimpl
def register_filters(register):
    register("glasses", GlassesFilter)
