"""Evaluate one benchmark: its pairs, one embedding per image and one or more quality
methods (one quality per image each) -> one EDC curve per method and FMR target."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from synfiqa.stages.s8_evaluate.comparison import cosine_scores
from synfiqa.stages.s8_evaluate.edc import (DEFAULT_DISCARD_LIMIT, FMR_TARGETS, CurveResult, EvaluationWarning, edc,
                                    pair_quality_of)
from synfiqa.stages.s8_evaluate.inputs import EmbeddingTable, QualityTable
from synfiqa.stages.s8_evaluate.pairs import PairList


@dataclass
class MethodResult:
    method: str               # the quality method's label (a FIQA model, a quality file)
    curves: list[CurveResult]  # one per FMR target, in the order asked


@dataclass
class DatasetResult:
    name: str
    protocol: str
    pairs: int
    genuine: int
    impostor: int
    methods: list[MethodResult]
    warnings: list[str] = field(default_factory=list)
    conventions: dict[str, str] = field(default_factory=dict)  # the switches of docs/evaluate.md, by name

    @property
    def fmr_targets(self) -> list[float]:
        return [curve.fmr_target for curve in self.methods[0].curves] if self.methods else []


def evaluate_dataset(name: str, pairs: PairList, embeddings: EmbeddingTable, qualities: dict[str, QualityTable],
                     protocol: str = "A", fmr_targets=FMR_TARGETS, discard_limit: float = DEFAULT_DISCARD_LIMIT,
                     subtract_best: bool = False, tie_rule: str = "erc", threshold_rule: str = "iso",
                     quality_sort: str = "stable") -> DatasetResult:
    """Errors (DataFileError) name the pairs file's line for an image that a table lacks.
    Warnings about undefined numbers are collected in the result, prefixed with the dataset
    and method, instead of being emitted; so are the pair reader's notes. ``tie_rule`` and
    ``quality_sort`` belong to protocol A, ``threshold_rule`` to protocol B (see edc.py)."""
    if not qualities:
        raise ValueError("at least one quality method is needed")
    rows_a, rows_b = embeddings.index.rows_for_pairs(pairs)
    scores = cosine_scores(embeddings.vectors, rows_a, rows_b)
    methods, notes = [], [f"{name}: {note}" for note in getattr(pairs, "notes", [])]
    for method, table in qualities.items():
        quality_rows_a, quality_rows_b = table.index.rows_for_pairs(pairs)
        quality_a, quality_b = table.values[quality_rows_a], table.values[quality_rows_b]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EvaluationWarning)
            curves = edc(protocol, scores, pairs.genuine, pair_quality_of(quality_a, quality_b),
                         fmr_targets, discard_limit, subtract_best, tie_rule=tie_rule,
                         threshold_rule=threshold_rule, quality_sort=quality_sort)
        notes += [f"{name} / {method}: {w.message}" for w in caught if issubclass(w.category, EvaluationWarning)]
        methods.append(MethodResult(method, curves))
    genuine = int(np.sum(pairs.genuine))
    conventions = ({"tie_rule": tie_rule, "quality_sort": quality_sort} if protocol.upper() == "A"
                   else {"threshold_rule": threshold_rule})
    return DatasetResult(name, protocol.upper(), len(pairs), genuine, len(pairs) - genuine, methods,
                         list(dict.fromkeys(notes)), conventions)
