"""fr: the face-recognition domain of the MR score (docs/method.md#51-fr).

fr = cosine(E(I), mean_j E(Ref_j)). In the paper E is FaceNet, whose output is unit length,
so the mean is a mean of unit vectors (and is not re-normalised). Embedders that return
raw features (SFace, ArcFace ONNX) are scaled to unit length first: otherwise a reference
with a large feature norm would weigh more in the mean than the others.
"""
from __future__ import annotations

import torch

from synfiqa import hookimpl
from synfiqa.annotation import Annotator


def reference_cosine_op():
    """The compiled `ref_cosine` op when synfiqa.ops provides it (it falls back to its own
    pure-torch twin when it cannot build), else the reference in synfiqa.mr_label."""
    try:
        from synfiqa.ops import ref_cosine
    except ImportError:
        from synfiqa.mr_label import reference_cosine

        return lambda samples, sample_ids, references, reference_ids: reference_cosine(samples, references)
    return ref_cosine


class RecognitionAnnotator(Annotator):
    """Cosine of each degraded sample's embedding to its identity's mean reference embedding."""

    scope = "identity"
    provides = ("fr",)

    def prepare(self, context):
        context.model("embedder")  # a missing or corrupt embedder fails before any sample

    def embed(self, crops: torch.Tensor, context) -> torch.Tensor:
        """Unit-length float64 embeddings, computed run.batch_size crops at a time."""
        embedder = context.model("embedder")
        batch = max(1, int(context.config["run"]["batch_size"]))
        parts = [embedder.embed(crops[i:i + batch]).to(torch.float64).cpu() for i in range(0, len(crops), batch)]
        embeddings = torch.cat(parts) if parts else torch.zeros(0, 1, dtype=torch.float64)
        return torch.nn.functional.normalize(embeddings, dim=1)

    def annotate_identity(self, samples, references, context):
        sample_embeddings = self.embed(samples, context)
        reference_embeddings = self.embed(references, context)
        one_identity = torch.zeros(len(sample_embeddings), dtype=torch.int64)
        fr = reference_cosine_op()(sample_embeddings, one_identity, reference_embeddings,
                                   torch.zeros(len(reference_embeddings), dtype=torch.int64))
        return {"fr": fr}


@hookimpl
def register_annotators(register):
    register("fr", RecognitionAnnotator)
