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


def test_tinyface_sized_pairs_to_rows(benchmark):
    """3,728 probes x 4,443 gallery images (16.6 M pairs, TinyFace's size) as index arrays,
    resolved against an embedding table's names."""
    from synfiqa.stages.s8_evaluate.inputs import NameIndex
    from synfiqa.stages.s8_evaluate.pairs import PairList

    probes, gallery = 3728, 4443
    names = [f"Probe/{i}_1.jpg" for i in range(probes)] + [f"Gallery_Match/{i}_2.jpg" for i in range(gallery)]
    index = NameIndex(list(reversed(names)), "emb.npz")  # rows in another order than the pair list's names

    def build():
        pairs = PairList.from_indices(names, np.repeat(np.arange(probes), gallery),
                                      np.tile(np.arange(probes, probes + gallery), probes),
                                      np.zeros(probes * gallery, dtype=bool), "tinyface", "tinyface")
        return index.rows_for_pairs(pairs)

    rows_a, rows_b = benchmark.pedantic(build, rounds=1, iterations=1)
    total = len(names)
    assert len(rows_a) == probes * gallery
    assert (rows_a[gallery + 5], rows_b[gallery + 5]) == (total - 1 - 1, total - 1 - (probes + 5))
