"""Evaluation of face image quality: EDC curves and pAUC under the CR-FIQA/MR-FIQA
protocol (A) and ISO/IEC 29794-1 (B), readers for the common benchmark formats, tables in
the MR-FIQA leaderboard's layout and EDC plots. numpy only; models load elsewhere."""
from synfiqa.stages.s8_evaluate.dataset import DatasetResult, MethodResult, evaluate_dataset
from synfiqa.stages.s8_evaluate.edc import (DEFAULT_DISCARD_LIMIT, FMR_TARGETS, PROTOCOLS, QUALITY_SORTS,
                                           THRESHOLD_RULES, TIE_RULES, CurveResult, EvaluationWarning, edc,
                                           pair_quality_of, protocol_a, protocol_b)
from synfiqa.stages.s8_evaluate.inputs import (EmbeddingTable, QualityTable, embedding_table, quality_table,
                                       read_embeddings, read_quality)
from synfiqa.stages.s8_evaluate.pairs import PairList, read_adience, read_pairs, read_tinyface

__all__ = [
    "CurveResult", "DatasetResult", "DEFAULT_DISCARD_LIMIT", "EmbeddingTable", "EvaluationWarning", "FMR_TARGETS",
    "MethodResult", "PairList", "PROTOCOLS", "QualityTable", "edc", "embedding_table", "evaluate_dataset",
    "pair_quality_of", "protocol_a", "protocol_b", "QUALITY_SORTS", "quality_table", "read_adience", "read_embeddings",
    "read_pairs", "read_quality", "read_tinyface", "THRESHOLD_RULES", "TIE_RULES",
]
