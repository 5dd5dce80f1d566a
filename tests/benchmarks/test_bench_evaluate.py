"""Throughput of the evaluation on a million pairs (run with --benchmark-enable to time it;
by default each runs once as a plain test). The curves of a million pairs are checked
against the expected shape, so a fast wrong answer fails."""
from __future__ import annotations

import numpy as np
import pytest

from synfiqa.stages.s8_evaluate.comparison import cosine_scores
from synfiqa.stages.s8_evaluate.edc import protocol_a, protocol_b

PAIRS = 1_000_000


@pytest.fixture(scope="module")
def million_pairs():
    rng = np.random.default_rng(0)
    genuine = rng.random(PAIRS) < 0.1
    quality = rng.random(PAIRS)
    # lower quality, noisier genuine scores: discarding must help
    scores = np.where(genuine, rng.normal(0.6, 0.1 + 0.3 * (1 - quality)), rng.normal(0.0, 0.1, PAIRS))
    return scores, genuine, quality


def test_protocol_a_million_pairs(benchmark, million_pairs):
    scores, genuine, quality = million_pairs
    curves = benchmark.pedantic(protocol_a, args=(scores, genuine, quality), rounds=3, iterations=1)
    assert [c.fmr_target for c in curves] == [1e-2, 1e-3, 1e-4]
    assert all(0.2 < c.pauc < 1.0 and np.all(np.diff(c.fnmr) < 0.01) for c in curves)


def test_protocol_b_million_pairs(benchmark, million_pairs):
    scores, genuine, quality = million_pairs
    curves = benchmark.pedantic(protocol_b, args=(scores, genuine, quality), rounds=3, iterations=1)
    assert all(c.area < c.fnmr0 * c.discard_limit for c in curves)
    assert len(curves[0].discard) == int(genuine.sum()) + 1  # distinct qualities: one step per genuine pair


def test_cosine_scores_million_pairs(benchmark):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(20_000, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows_a, rows_b = rng.integers(0, 20_000, PAIRS), rng.integers(0, 20_000, PAIRS)
    scores = benchmark.pedantic(cosine_scores, args=(vectors, rows_a, rows_b), rounds=3, iterations=1)
    assert scores.shape == (PAIRS,)
    np.testing.assert_allclose(scores[:5], np.sum(vectors[rows_a[:5]] * vectors[rows_b[:5]], axis=1), rtol=1e-5)
