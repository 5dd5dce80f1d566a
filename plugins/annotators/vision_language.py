"""vl: the vision-language domain of the MR score (BLIP image-text similarity)."""
from __future__ import annotations

from synfiqa import hookimpl
from synfiqa.annotation import Annotator

REFERENCE_PROMPT = (
    "a high-resolution clear frontal face image with natural expression under good lighting condition "
    "without any occlusion"
)


class VisionLanguageAnnotator(Annotator):
    """BLIP ITC similarity between each degraded sample and the reference prompt."""

    scope = "identity"
    provides = ("vl",)

    def __init__(self, prompt: str = REFERENCE_PROMPT):
        self.prompt = prompt

    def prepare(self, context):
        """Load the model before any sample is processed, so missing weights surface early."""
        context.model("vision-language")

    def annotate_identity(self, samples, references, context):
        model = context.model("vision-language")
        return {"vl": model.image_text_similarity(samples, [self.prompt] * len(samples))}


@hookimpl
def register_annotators(register):
    register("vl", VisionLanguageAnnotator)
