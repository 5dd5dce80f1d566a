"""mr: the MR-FIQA combination of the recognition, spatial and vision-language domains
(docs/method.md#54-mr): (fr + lam * sd) / (1 - vl), min-max normalised over the dataset."""
from __future__ import annotations

import numpy as np

from synfiqa import hookimpl
from synfiqa.annotation import Annotator
from synfiqa.errors import ConfigError
from synfiqa.mr_label import combine_mr, min_max


class MultiReferenceAnnotator(Annotator):
    """fr and sd are required. Without vl (weights missing, or not in the chain) the score
    is (fr + lam * sd) min-max normalised: `missing_domains` tells the caller, which marks
    every score partial and says so in the summary; no constant stands in for vl."""

    scope = "dataset"
    provides = ("mr",)
    requires = ("fr", "sd")
    optional_domains = ("vl",)

    def __init__(self, lam: float = 0.5):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not np.isfinite(lam) or lam < 0:
            raise ConfigError(f"mr: lam must be a finite number >= 0, got {lam!r}")
        self.lam = float(lam)

    def missing_domains(self, table) -> list[str]:
        return [domain for domain in self.optional_domains if domain not in table.scores]

    def annotate_dataset(self, table, context):
        for needed in self.requires:
            if needed not in table.scores:
                raise ConfigError(f"mr needs the {needed!r} score; put its annotator before mr in annotate.chain")
        vl = table.scores.get("vl")
        if vl is not None and np.any(vl >= 1.0):
            raise ConfigError(f"mr: vl = {float(np.max(vl))} for {table.paths[int(np.argmax(vl))]}; "
                              "(fr + lam*sd) / (1 - vl) is undefined at vl >= 1")
        return {"mr": min_max(combine_mr(table.scores["fr"], table.scores["sd"], vl, self.lam))}


@hookimpl
def register_annotators(register):
    register("mr", MultiReferenceAnnotator)
