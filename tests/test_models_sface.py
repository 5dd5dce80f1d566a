"""SFace's torch backend (the ONNX graph translated by onnx_graph.py) against OpenCV's DNN
module on the same file, and the translator's refusals.

Measured here: on the six test photos' aligned crops and on random crops, cosine to OpenCV's
embedding >= 1 - 2e-9 per crop (1 - 1e-11 on the photos) and max |difference| <= 1.4e-5 of
the embedding's norm (1e-6 on the photos; the largest on the all-0 and all-255 crops)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from evaluation_faces import aligned_test_faces
from synfiqa.errors import CheckpointError, ConfigError
from synfiqa_plugins.models.onnx_graph import UnsupportedGraphError, load_onnx_graph
from synfiqa_plugins.models.sface import SFaceEmbedder


@pytest.fixture(scope="module")
def backends():
    return SFaceEmbedder(backend="torch"), SFaceEmbedder(backend="opencv")


def real_crops() -> torch.Tensor:
    return torch.from_numpy(np.stack(list(aligned_test_faces().values()))).permute(0, 3, 1, 2).contiguous()


def random_crops(n: int, seed: int = 0) -> torch.Tensor:
    crops = torch.randint(0, 256, (n, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    crops[0] = 0          # the extremes of the input range
    crops[1] = 255
    return crops


def agreement(torch_out: torch.Tensor, opencv_out: torch.Tensor) -> tuple[float, float]:
    """(lowest cosine, largest max-abs difference over the reference's norm), per crop."""
    a, b = torch_out.double(), opencv_out.double()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=1)
    relative = (a - b).abs().amax(dim=1) / b.norm(dim=1)
    return float(cosine.min()), float(relative.max())


@pytest.mark.parametrize("source", ["photos", "random"])
def test_torch_backend_gives_opencvs_embeddings(backends, source):
    crops = real_crops() if source == "photos" else random_crops(20)
    torch_backend, opencv_backend = backends
    ours, reference = torch_backend.embed(crops), opencv_backend.embed(crops)
    assert ours.shape == reference.shape == (len(crops), 128) and ours.dtype == reference.dtype == torch.float32
    assert ours.is_contiguous() and not ours.requires_grad
    cosine, relative = agreement(ours, reference)
    print(f"{source}: min cosine {cosine:.12f}, max |diff| / norm {relative:.2e}")
    assert cosine >= 1 - 1e-6   # issue 15: the same embeddings to 1e-6 in cosine
    assert relative <= 1e-4


def test_the_eager_translation_alone_matches_too(backends):
    """What embed() falls back to where TorchScript freezing is unavailable."""
    torch_backend, opencv_backend = backends
    crops = real_crops()
    with torch.no_grad():
        eager = torch_backend.graph(crops.float().contiguous(memory_format=torch.channels_last))
    cosine, relative = agreement(eager, opencv_backend.embed(crops))
    assert cosine >= 1 - 1e-6 and relative <= 1e-4


def test_genuine_pairs_keep_their_cosines(backends):
    """The values the real-photo checks and registry.toml's calibration quote."""
    crops = real_crops()
    names = list(aligned_test_faces())
    for embedder in backends:
        e = torch.nn.functional.normalize(embedder.embed(crops).double(), dim=1)
        assert float(e[names.index("ardern_1.jpg")] @ e[names.index("ardern_2.jpg")]) == pytest.approx(0.756, abs=0.02)
        assert float(e[names.index("macron_1.jpg")] @ e[names.index("macron_2.jpg")]) == pytest.approx(0.593, abs=0.02)


def test_a_batch_equals_its_crops_one_by_one(backends):
    crops = random_crops(SFaceEmbedder.chunk * 2 + 3, seed=1)   # full chunks and a partial one
    for embedder in backends:
        batch = embedder.embed(crops)
        singles = torch.cat([embedder.embed(crops[i:i + 1]) for i in range(len(crops))])
        assert torch.equal(batch, singles), embedder.backend
        order = torch.randperm(len(crops), generator=torch.Generator().manual_seed(3))
        assert torch.equal(embedder.embed(crops[order]), batch[order]), embedder.backend


def test_default_backend_is_torch(registry_session):
    embedder = registry_session.create("embedder", "sface")
    assert embedder.backend == "torch"
    assert SFaceEmbedder(backend="auto").backend == "torch"


def test_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="backend must be one of auto, torch, opencv"):
        SFaceEmbedder(backend="onnxruntime")


@pytest.mark.parametrize("backend", ["torch", "opencv"])
@pytest.mark.parametrize("shape,dtype", [
    ((2, 3, 112, 112), torch.float32),
    ((2, 3, 112, 112), torch.int16),
    ((3, 112, 112), torch.uint8),
    ((2, 112, 112, 3), torch.uint8),
    ((2, 1, 112, 112), torch.uint8),
    ((2, 3, 96, 112), torch.uint8),
])
def test_bad_crops_are_refused(backends, backend, shape, dtype):
    embedder = backends[0] if backend == "torch" else backends[1]
    with pytest.raises(ValueError, match=r"uint8 \[N, 3, 112, 112\]"):
        embedder.embed(torch.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("backend", ["torch", "opencv"])
def test_no_crops_no_embeddings(backends, backend):
    embedder = backends[0] if backend == "torch" else backends[1]
    out = embedder.embed(torch.zeros(0, 3, 112, 112, dtype=torch.uint8))
    assert out.shape == (0, 128) and out.dtype == torch.float32


# ------------------------------------------------------------------ the translator alone


def model(nodes, initializers, inputs=(("x", [None, 4]),), output=("y", [None, 3])) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        initializer=[numpy_helper.from_array(value, name) for name, value in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_blocked_dequantisation_and_folded_batchnorm_follow_the_onnx_definitions():
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (3, 5), dtype=np.int8)
    scale = rng.uniform(0.01, 0.1, (3, 3)).astype(np.float32)     # blocks of 2 along axis 1: 2, 2, 1
    zero = rng.integers(-20, 20, (3, 3), dtype=np.int8)
    bias_q = np.array([5, -7, 100], dtype=np.int8)
    bias_scale = np.array([0.5, 0.25, 0.125], dtype=np.float32)    # per axis, no zero point
    gamma, beta = rng.uniform(0.5, 2, 3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    mean, var = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["w"], axis=1, block_size=2),
        helper.make_node("DequantizeLinear", ["bq", "bscale"], ["b"], axis=0),
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
        helper.make_node("BatchNormalization", ["g", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3),
    ]
    net = load_onnx_graph(model(nodes, {"q": q, "scale": scale, "zero": zero, "bq": bias_q, "bscale": bias_scale,
                                        "gamma": gamma, "beta": beta, "mean": mean, "var": var},
                                inputs=(("x", [None, 5]),)))
    assert [type(layer).__name__ for layer in net.layers] == ["_Linear"]   # BN folded, weights constant
    x = rng.normal(size=(4, 5)).astype(np.float32)
    expanded = lambda t: np.repeat(t, 2, axis=1)[:, :5]                     # noqa: E731
    w = (q.astype(np.float64) - expanded(zero)) * expanded(scale).astype(np.float64)
    g = x.astype(np.float64) @ w.T + bias_q.astype(np.float64) * bias_scale
    expected = (g - mean) / np.sqrt(var.astype(np.float64) + 1e-3) * gamma + beta
    out = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_an_unsupported_op_is_an_error_naming_it():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="the_relu"),
             helper.make_node("Gemm", ["r", "w"], ["y"], transB=1)]
    with pytest.raises(UnsupportedGraphError, match=r"'the_relu' \(Relu\): unsupported op 'Relu'"):
        load_onnx_graph(model(nodes, {"w": np.ones((3, 4), np.float32)}))


def test_an_unsupported_attribute_or_value_is_an_error_naming_it():
    weight = {"w": np.ones((3, 4), np.float32)}
    unknown = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, fancy=2)]
    with pytest.raises(UnsupportedGraphError, match=r"\(Gemm\): unsupported attribute\(s\) fancy"):
        load_onnx_graph(model(unknown, weight))
    conv_input = (("x", [None, 1, 5, 5]),)
    same_pad = [helper.make_node("Conv", ["x", "k"], ["y"], auto_pad="SAME_UPPER")]
    with pytest.raises(UnsupportedGraphError, match="auto_pad 'SAME_UPPER' is not implemented"):
        load_onnx_graph(model(same_pad, {"k": np.ones((1, 1, 3, 3), np.float32)}, inputs=conv_input,
                              output=("y", [None, 1, 5, 5])))
    training = [helper.make_node("Gemm", ["x", "w"], ["g"], transB=1),
                helper.make_node("BatchNormalization", ["g", "s", "s", "s", "s"], ["y"], training_mode=1)]
    with pytest.raises(UnsupportedGraphError, match="training_mode=1"):
        load_onnx_graph(model(training, {**weight, "s": np.ones(3, np.float32)}))
    wide = [helper.make_node("DequantizeLinear", ["q", "qs"], ["w"]),
              helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
    with pytest.raises(UnsupportedGraphError, match=r"\(DequantizeLinear\): x has type torch.int64"):
        load_onnx_graph(model(wide, {"q": np.ones((3, 4), np.int64), "qs": np.ones(1, np.float32)}))


def test_a_weight_computed_at_run_time_is_refused():
    nodes = [helper.make_node("Gemm", ["x", "x"], ["y"], transB=1)]
    with pytest.raises(UnsupportedGraphError, match=r"B \('x'\) must be a constant"):
        load_onnx_graph(model(nodes, {}))


def test_unsupported_graph_error_is_a_checkpoint_error():
    assert issubclass(UnsupportedGraphError, CheckpointError)


def test_parallel_chunks_leave_torchs_thread_count_alone(backends):
    """The chunks run on worker threads of one torch thread each; the caller's count, and the
    default a thread started later takes up, stay as they were."""
    import threading

    torch_backend = backends[0]
    crops = random_crops(3 * SFaceEmbedder.chunk, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        parallel = torch_backend.embed(crops)
        assert torch.get_num_threads() == 2
        seen = []
        later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        later.start()
        later.join()
        assert seen == [2]
        torch.set_num_threads(1)
        serial = torch_backend.embed(crops)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(parallel, serial)   # the same chunks through the same single-thread kernels
