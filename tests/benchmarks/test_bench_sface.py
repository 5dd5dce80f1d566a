"""SFace's two backends side by side in one process: a batch of 64 random 112x112 crops.

    .venv/bin/python -m pytest tests/benchmarks/test_bench_sface.py --benchmark-enable

ms per crop = the reported time / 64. On a shared machine compare the minimums and note
the load average (printed with -s). Both backends' outputs are checked against each other
first, so a fast wrong answer fails. Without --benchmark-enable each runs once."""
from __future__ import annotations

import os

import pytest
import torch

from synfiqa_plugins.models.sface import SFaceEmbedder

BATCH = 64


@pytest.fixture(scope="module")
def crops():
    return torch.randint(0, 256, (BATCH, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def embedders(crops):
    loaded = {backend: SFaceEmbedder(backend=backend) for backend in ("opencv", "torch")}
    reference, ours = (loaded[b].embed(crops).double() for b in ("opencv", "torch"))
    assert float(torch.nn.functional.cosine_similarity(reference, ours).min()) >= 1 - 1e-6
    return loaded


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_sface_batch_of_64(benchmark, embedders, crops, backend):
    benchmark.group = f"sface embed, batch {BATCH} (ms per crop = time / {BATCH})"
    benchmark.extra_info["load average"] = os.getloadavg()
    out = benchmark.pedantic(embedders[backend].embed, args=(crops,), rounds=5, iterations=1, warmup_rounds=1)
    assert out.shape == (BATCH, 128)
    if benchmark.stats:
        print(f"\n{backend}: min {benchmark.stats.stats.min / BATCH * 1e3:.2f} ms/crop, "
              f"load average {os.getloadavg()[0]:.2f}")
