"""fr: the face-recognition domain of the MR score."""
from __future__ import annotations

import torch

from synfiqa import hookimpl
from synfiqa.annotation import Annotator
from synfiqa.scoring import reference_cosine


class RecognitionAnnotator(Annotator):
    """Cosine of each degraded sample's embedding to its identity's mean reference embedding."""

    scope = "identity"
    provides = ("fr",)

    def annotate_identity(self, samples, references, context):
        embedder = context.model("embedder")
        sample_embeddings = embedder.embed(samples)
        reference_embeddings = embedder.embed(references)
        return {"fr": reference_cosine(sample_embeddings, reference_embeddings).to(torch.float64)}


@hookimpl
def register_annotators(register):
    register("fr", RecognitionAnnotator)
