"""Training throughput on this CPU: IResNet-50's recipe at IResNet-18 depth (the built-in
CR-FIQA network, full width), batch 64, CR target, through `synfiqa.stages.s6_train.train`
(data loading, loss, clipping, SGD). Run with `make bench`; by default each runs once as a
plain test. The images/s of the steady state is the metrics row's; the benchmark's time also
holds the start (dataset listing, network build, writing model.pt)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BATCH = 64
STEPS = 3


@pytest.fixture(scope="module")
def noise_identities(tmp_path_factory) -> Path:
    """128 random 112x112 crops in 8 identity folders."""
    root = tmp_path_factory.mktemp("bench-train") / "folder"
    rng = np.random.default_rng(0)
    for identity in range(8):
        (root / f"id{identity}").mkdir(parents=True)
        for k in range(16):
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(root / f"id{identity}/{k}.png")
    return root


def test_train_iresnet18_batch64_cpu(benchmark, noise_identities, tmp_path):
    from synfiqa.stages.s6_train import load_settings, train
    from synfiqa_plugins.models.cr_fiqa import CRFIQAScorer

    settings = load_settings(None, [f"batch_size={BATCH}", "arch='iresnet18'", "workers=1", "device='cpu'",
                                    "log_every=1", "cr_offset=1.0"])
    runs = iter(range(100))

    def run():
        return train([noise_identities], tmp_path / f"run{next(runs)}", settings, CRFIQAScorer.training_network,
                     max_steps=STEPS)

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    assert result.end_step == STEPS and len(result.rows) == STEPS
    assert all(np.isfinite(r["loss"]) for r in result.rows)
    rate = result.rows[-1]["images_per_s"]
    benchmark.extra_info["images_per_s"] = rate
    print(f"\nIResNet-18, batch {BATCH}, CPU ({torch.get_num_threads()} threads): {rate:.1f} images/s")
