"""vl: the vision-language domain of the MR score (docs/method.md#53-vl): BLIP ITC
similarity between each degraded sample and the reference prompt, through the configured
vision-language model (models.vision_language; BLIP resizes to 384x384 bicubic itself)."""
from __future__ import annotations

import torch

from synfiqa import hookimpl
from synfiqa.annotation import Annotator
from synfiqa.errors import ConfigError

REFERENCE_PROMPT = (
    "a high-resolution clear frontal face image with natural expression under good lighting condition "
    "without any occlusion"
)


class VisionLanguageAnnotator(Annotator):
    """Similarity of each degraded sample to the reference prompt."""

    scope = "identity"
    provides = ("vl",)

    def __init__(self, prompt: str = REFERENCE_PROMPT):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"vl: prompt must be a non-empty string, got {prompt!r}")
        self.prompt = prompt

    def prepare(self, context):
        """Load the model before any sample is processed, so missing weights surface early."""
        context.model("vision-language")

    def annotate_identity(self, samples, references, context):
        model = context.model("vision-language")
        vl = torch.as_tensor(model.image_text_similarity(samples, [self.prompt] * len(samples)), dtype=torch.float64)
        if vl.shape != (len(samples),):
            raise ValueError(f"the vision-language model returned shape {tuple(vl.shape)} for {len(samples)} samples")
        return {"vl": vl.cpu()}


@hookimpl
def register_annotators(register):
    register("vl", VisionLanguageAnnotator)
