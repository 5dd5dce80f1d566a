"""Models load once per process (synfiqa.models.load_once): a second embedder, or a second
build's pipeline, reuses the translated and frozen SFace graph and dlib's shape predictor,
and the reused (warm) module gives the same bits as a freshly loaded one."""
from __future__ import annotations

import os

import pytest
import torch

from synfiqa.models import load_once
from synfiqa_plugins.models import onnx_graph
from synfiqa_plugins.models.sface import SFaceEmbedder, translated_for_cpu

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_load_once_keys_on_the_file_and_the_variant(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"1")
    calls = []

    def load():
        calls.append(1)
        return object()

    first = load_once(weights, "a", load)
    assert load_once(weights, "a", load) is first and len(calls) == 1
    assert load_once(tmp_path / "." / "w.bin", "a", load) is first          # same file, other spelling
    assert load_once(weights, "b", load) is not first and len(calls) == 2  # other loader options
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))   # the file replaced
    assert load_once(weights, "a", load) is not first and len(calls) == 3


def test_a_second_embedder_translates_nothing(monkeypatch):
    first = SFaceEmbedder(backend="torch")
    translations = []
    real = onnx_graph.load_onnx_graph
    monkeypatch.setattr(onnx_graph, "load_onnx_graph", lambda *a: translations.append(a) or real(*a))
    second = SFaceEmbedder(backend="torch")
    assert translations == []
    assert second._forward is first._forward and second.graph is first.graph
    assert second._pool is None    # each embedder keeps its own worker threads


def test_the_shared_warm_module_gives_a_fresh_loads_bits():
    embedder = SFaceEmbedder(backend="torch")
    crops = torch.randint(0, 256, (2 * SFaceEmbedder.chunk, 3, 112, 112), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(5))
    for _ in range(3):   # TorchScript's profiling executor re-optimises after the first runs
        warm = embedder.embed(crops)
    _, fresh_forward = translated_for_cpu(embedder.model_file, SFaceEmbedder.chunk)
    with torch.no_grad():
        fresh = torch.cat([fresh_forward(part.float().contiguous(memory_format=torch.channels_last))
                           for part in crops.split(SFaceEmbedder.chunk)])
    assert torch.equal(warm, fresh)


def test_a_second_build_in_the_process_loads_no_model_again():
    from synfiqa.config import load_config
    from synfiqa.stages.build import Pipeline

    config = load_config(None, [])
    first, second = Pipeline(config), Pipeline(config)
    assert second.context.model("embedder")._forward is first.context.model("embedder")._forward
    assert second.pose._predictor is first.pose._predictor
    # MTCNN's networks are built from the wheel's state dicts in milliseconds (its cost is the
    # facenet_pytorch import, once per process anyway): each pipeline has its own
    assert second.detector is not first.detector
