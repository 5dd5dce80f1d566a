"""CLIP zero-shot attribute filter: glasses, sunglasses and non-neutral expression.

An alternative to the paper's glasses edge heuristic (glasses.py), which flags smiling
faces without glasses on sharp real photos. It uses the CLIP folder a Stage-2 CapHuman
user already has (asset `clip-vit-large-patch14`, a transformers CLIPModel folder).

For each attribute there are two prompt ensembles (e.g. "a photo of a person wearing
glasses" vs "a photo of a person without glasses"). Each ensemble's text embeddings are
L2-normalised, averaged and normalised again (CLIP's prompt ensembling); the image
embedding is normalised; the pair's logits are CLIP's logit scale x cosine, and the
softmax over the pair is the attribute's probability.

The image CLIP sees: the detected face box made square, widened by `margin` of its side
on every side (glasses and mouth stay inside), outside the photo black, resized bicubic
to the model's image size, CLIP mean/std.

Decisions, in the order of `checks`: removed when p(glasses) > max_glasses, when
p(sunglasses) > max_sunglasses, when p(neutral) <= min_neutral. The Decision's value is
the probability of the first failed check (of the first check when all pass); the reason
lists every measured probability. Faces without a detection are kept, not measured.

Its accuracy on real photos is not measured in this repository (the real weights are not
available offline to the tests); see docs/stage2_diffusion.md.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from synfiqa import hookimpl
from synfiqa.errors import ConfigError, WeightsNotFoundError
from synfiqa.filtering import Decision, FaceSubject, not_measured

ASSET = "clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FOLDER_FILES = ("config.json", "vocab.json", "merges.txt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# attribute -> (prompts of the measured class, prompts of its opposite)
PROMPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "glasses": (
        ("a photo of a person wearing glasses.", "a photo of a face with eyeglasses.",
         "a close-up photo of a person wearing spectacles."),
        ("a photo of a person without glasses.", "a photo of a face with no eyeglasses.",
         "a close-up photo of a person with bare eyes."),
    ),
    "sunglasses": (
        ("a photo of a person wearing sunglasses.", "a photo of a face with dark sunglasses.",
         "a close-up photo of a person whose eyes are hidden by sunglasses."),
        ("a photo of a person without sunglasses.", "a photo of a face with visible eyes.",
         "a close-up photo of a person with uncovered eyes."),
    ),
    "neutral": (
        ("a photo of a face with a neutral expression.", "a photo of a person with a blank, relaxed face.",
         "a close-up photo of an expressionless face."),
        ("a photo of a smiling face.", "a photo of a laughing person.", "a photo of a surprised face.",
         "a photo of an angry face.", "a photo of a sad face.", "a photo of a person making a face."),
    ),
}
CHECKS = ("glasses", "sunglasses", "expression")
CHECK_ATTRIBUTE = {"glasses": "glasses", "sunglasses": "sunglasses", "expression": "neutral"}


def find_clip_folder(path: str = "") -> Path:
    """The CLIP folder: `path`, else the asset's places. Missing: one line naming the files."""
    from synfiqa.weights import locate

    needed = ", ".join(FOLDER_FILES) + " and " + " or ".join(WEIGHT_FILES)
    where = f"{path}" if path else f"asset {ASSET!r} ($SYNFIQA_WEIGHTS/{ASSET}/ or ~/.cache/synfiqa/weights/{ASSET}/)"
    try:
        folder = locate(ASSET, explicit=path or None).files["config.json"].parent
    except WeightsNotFoundError:
        raise WeightsNotFoundError(f"clip-attributes: no CLIP folder ({needed}) in {where}; "
                                   f"set filter.params.clip-attributes.path") from None
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise WeightsNotFoundError(f"clip-attributes: no CLIP weights ({' or '.join(WEIGHT_FILES)}) in {folder}; "
                                   f"the folder needs {needed}")
    return folder


def face_square(image: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """The face box made square, widened by `margin` x side on each side, black outside the
    photo, resized bicubic to size x size (RGB uint8)."""
    import cv2

    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    length = max(int(round(side)), 1)
    padded = cv2.copyMakeBorder(np.ascontiguousarray(image), length, length, length, length,
                                cv2.BORDER_CONSTANT, value=(0, 0, 0))
    patch = padded[top + length:top + 2 * length, left + length:left + 2 * length]
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_CUBIC)


def pixel_values(squares: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images -> float [N, 3, H, W] with CLIP's mean/std."""
    x = torch.from_numpy(np.stack(squares)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def projected(output) -> torch.Tensor:
    """get_*_features' projected embeddings: a tensor (transformers 4) or the output's
    pooler_output (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipAttributesFilter:
    """zero-shot CLIP checks: glasses, sunglasses, non-neutral expression"""

    def __init__(self, checks: list[str] = list(CHECKS), max_glasses: float = 0.5, max_sunglasses: float = 0.5,
                 min_neutral: float = 0.5, margin: float = 0.25, path: str = "", device: str = "auto",
                 batch_size: int = 16):
        from transformers import CLIPModel, CLIPTokenizer

        from synfiqa.models import resolve_device

        self.checks = list(checks)
        unknown = [c for c in self.checks if c not in CHECKS]
        if unknown or not self.checks:
            raise ConfigError(f"clip-attributes: checks must be some of {list(CHECKS)}, got {self.checks}")
        for name, value in (("max_glasses", max_glasses), ("max_sunglasses", max_sunglasses),
                            ("min_neutral", min_neutral)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"clip-attributes: {name} must be a probability, got {value}")
        if not 0.0 <= float(margin) <= 2.0:
            raise ConfigError(f"clip-attributes: margin must be in [0, 2], got {margin}")
        if int(batch_size) < 1:
            raise ConfigError(f"clip-attributes: batch_size must be >= 1, got {batch_size}")
        self.max_glasses, self.max_sunglasses = float(max_glasses), float(max_sunglasses)
        self.min_neutral, self.margin, self.batch_size = float(min_neutral), float(margin), int(batch_size)
        self.device = resolve_device(device)
        self.folder = find_clip_folder(path)
        self.model = CLIPModel.from_pretrained(str(self.folder), local_files_only=True).eval().to(self.device)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.attributes = [CHECK_ATTRIBUTE[c] for c in self.checks]
        self.class_embeddings = {a: self._ensemble_pair(a) for a in self.attributes}   # [2, D] each

    @torch.no_grad()
    def _text_embedding(self, prompts) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), padding=True, return_tensors="pt").to(self.device)
        features = projected(self.model.get_text_features(**tokens))
        features = features / features.norm(dim=-1, keepdim=True)
        mean = features.mean(dim=0)
        return mean / mean.norm()

    def _ensemble_pair(self, attribute: str) -> torch.Tensor:
        positive, negative = PROMPTS[attribute]
        return torch.stack([self._text_embedding(positive), self._text_embedding(negative)])

    @torch.no_grad()
    def probabilities(self, squares: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """attribute -> [N] probability of the attribute's first class, for uint8 squares
        already at the model's image size."""
        out = {a: [] for a in self.attributes}
        scale = self.model.logit_scale.exp()
        for start in range(0, len(squares), self.batch_size):
            batch = pixel_values(squares[start:start + self.batch_size]).to(self.device)
            image = projected(self.model.get_image_features(pixel_values=batch))
            image = image / image.norm(dim=-1, keepdim=True)
            for a in self.attributes:
                logits = scale * image @ self.class_embeddings[a].T
                out[a].append(logits.softmax(dim=-1)[:, 0].float().cpu())
        return {a: torch.cat(v) if v else torch.zeros(0) for a, v in out.items()}

    def decide(self, probs: dict[str, float]) -> Decision:
        failed = None
        for check in self.checks:
            p = probs[CHECK_ATTRIBUTE[check]]
            if check == "glasses" and p > self.max_glasses:
                failed = (check, p, f"glasses {p:.3f} > {self.max_glasses:g}")
            elif check == "sunglasses" and p > self.max_sunglasses:
                failed = (check, p, f"sunglasses {p:.3f} > {self.max_sunglasses:g}")
            elif check == "expression" and p <= self.min_neutral:
                failed = (check, p, f"neutral {p:.3f} <= {self.min_neutral:g}")
            if failed:
                break
        measured = ", ".join(f"p({a}) {probs[a]:.3f}" for a in self.attributes)
        if failed:
            return Decision(False, float(failed[1]), f"{failed[2]} ({measured})")
        return Decision(True, float(probs[self.attributes[0]]), f"CLIP {measured}")

    def judge(self, subjects: list[FaceSubject], context=None) -> list[Decision]:
        measurable = [s for s in subjects if s.has_face and s.box is not None and s.image is not None]
        squares = [face_square(s.image, s.box, self.margin, self.image_size) for s in measurable]
        probs = self.probabilities(squares) if measurable else {}
        row = {id(s): {a: float(probs[a][i]) for a in self.attributes} for i, s in enumerate(measurable)}
        return [self.decide(row[id(s)]) if id(s) in row else not_measured(s) for s in subjects]


@hookimpl
def register_filters(register):
    register("clip-attributes", ClipAttributesFilter)
