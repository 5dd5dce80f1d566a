"""The arithmetic of the MR-FIQA score (docs/method.md#5-annotation-the-mr-score), free of any model."""
from __future__ import annotations

import re

import numpy as np
import torch
from scipy.stats import rankdata

from synfiqa.layout import sample_index


def reference_cosine(samples: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Cosine of each sample embedding to the plain mean of the reference embeddings
    (the mean is not re-normalised, as in the paper)."""
    mean = references.to(torch.float64).mean(dim=0)
    samples = samples.to(torch.float64)
    return (samples @ mean) / (samples.norm(dim=1) * mean.norm()).clamp_min(1e-12)


def rank_score(values: np.ndarray) -> np.ndarray:
    """r = (N - rank(x)) / N with average ranks (ties share the mean rank), 1-based,
    ascending: the larger the degradation, the smaller r."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return values
    return (n - rankdata(values, method="average")) / n


def spatial_score(columns: list[np.ndarray]) -> np.ndarray:
    """sd = min over severity axes of the rank score."""
    if not columns:
        raise ValueError("the spatial-domain score needs at least one severity axis")
    return np.min(np.stack([rank_score(c) for c in columns]), axis=0)


def combine_mr(fr: np.ndarray, sd: np.ndarray, vl: np.ndarray | None, lam: float) -> np.ndarray:
    """(fr + lam * sd) / (1 - vl); without the vl domain the denominator is dropped."""
    raw = np.asarray(fr, dtype=np.float64) + lam * np.asarray(sd, dtype=np.float64)
    if vl is not None:
        raw = raw / (1.0 - np.asarray(vl, dtype=np.float64))
    return raw


def min_max(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return values
    low, high = values.min(), values.max()
    if high == low:
        return np.ones_like(values)  # a dataset with one distinct score: every sample is "the best"
    return (values - low) / (high - low)


# ---------------------------------------------------------------- the original's label-ordering bug


def natural_key(path: str) -> list:
    """The original's `alphanum_key` (Stage-2/annotation/utils.py): runs of digits compare as
    integers, everything else lower-cased."""
    return [int(token) if token.isdigit() else token.lower() for token in re.split("([0-9]+)", path)]


def original_label_sources(keys: list[str]) -> dict[str, str]:
    """Which sample's score the original writes against each path of Quality-Scores.txt
    (docs/method.md section 11): its scores are computed in generation order (identities in
    Python's `sorted` order, each identity's samples by index) and written against the paths in
    natural order (`natural_key`), the i-th score to the i-th path. Where the two orders differ
    (identities named 1, 2, ..., 10, 11; mixed case) a label lands on another sample, of another
    identity. Keys are "/<identity>/<k>.jpg"; returns {path: the path whose score it gets}."""
    def generation_order(key: str):
        _, identity, name = key.split("/", 2)
        return identity, sample_index(name)

    computed = sorted(keys, key=generation_order)
    written = sorted(keys, key=natural_key)
    return dict(zip(written, computed))
