"""Comparison scores of verification pairs from per-image embeddings."""
from __future__ import annotations

import numpy as np

CHUNK_PAIRS = 1 << 14  # pairs per step: the gathered rows (2 * 16384 * D floats) stay cache-friendly


def cosine_scores(unit_vectors: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray,
                  chunk: int = CHUNK_PAIRS) -> np.ndarray:
    """Cosine similarity of each pair, from L2-normalised rows (higher = more alike),
    accumulated in the rows' precision (float32 embeddings: errors of ~1e-7) and returned
    as float64. Clipped to [-1, 1] so rounding never leaves the range.
    Memory-bound: each pair gathers two rows."""
    rows_a, rows_b = np.asarray(rows_a), np.asarray(rows_b)
    scores = np.empty(len(rows_a), dtype=np.float64)
    for start in range(0, len(rows_a), chunk):
        stop = start + chunk
        left = unit_vectors[rows_a[start:stop]]
        right = unit_vectors[rows_b[start:stop]]
        scores[start:stop] = np.einsum("ij,ij->i", left, right)
    return np.clip(scores, -1.0, 1.0, out=scores)


def angular_distance(cosine: np.ndarray) -> np.ndarray:
    """arccos(cos) / pi in [0, 1], lower = more alike (CR-FIQA's comparison score). It orders
    pairs exactly opposite to the cosine, so every EDC computed from either is the same."""
    return np.arccos(np.clip(cosine, -1.0, 1.0)) / np.pi
