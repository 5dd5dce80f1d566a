"""mr: the MR-FIQA combination of the recognition, spatial and vision-language domains."""
from __future__ import annotations

from synfiqa import hookimpl
from synfiqa.annotation import Annotator
from synfiqa.scoring import combine_mr, min_max


class MultiReferenceAnnotator(Annotator):
    """(fr + lam * sd) / (1 - vl), min-max normalised over the dataset."""

    scope = "dataset"
    provides = ("mr",)

    def __init__(self, lam: float = 0.5):
        self.lam = lam

    def annotate_dataset(self, table, context):
        for needed in ("fr", "sd"):
            if needed not in table.scores:
                raise KeyError(f"the mr annotator needs the {needed!r} score; put its annotator before mr in the chain")
        vl = table.scores.get("vl")
        return {"mr": min_max(combine_mr(table.scores["fr"], table.scores["sd"], vl, self.lam))}


@hookimpl
def register_annotators(register):
    register("mr", MultiReferenceAnnotator)
