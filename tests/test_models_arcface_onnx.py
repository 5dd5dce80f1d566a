"""arcface-onnx: tiny ONNX graphs in the shape of InsightFace's recognition files (one
[N, 3, 112, 112] input, one [N, D] output; with or without the Sub/Mul normalisation
nodes of the old MXNet exports), built with the onnx package, run through the real loader
with onnxruntime and with OpenCV, against a numpy reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synfiqa.errors import CheckpointError, WeightsNotFoundError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

DIM = 64


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.2, (8, 3, 8, 8)).astype(np.float32),
            rng.normal(0, 0.2, (DIM, 8)).astype(np.float32),
            rng.normal(0, 0.1, DIM).astype(np.float32))


def build_model(path, batch="N", with_normalisation_nodes=False, side=112, flatten_output=True):
    """conv 8x8 stride 8 -> global average pool -> flatten -> Gemm: [batch, DIM]."""
    conv_w, fc_w, fc_b = weights()
    inits = [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(fc_w, "fc_w"),
             numpy_helper.from_array(fc_b, "fc_b")]
    nodes, source = [], "data"
    if with_normalisation_nodes:   # MXNet exports: (x - 127.5) * 0.0078125 inside the graph
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                  numpy_helper.from_array(np.array(0.0078125, np.float32), "scale")]
        nodes += [helper.make_node("Sub", ["data", "mean"], ["centred"], name="_minus0"),
                  helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="_mul0")]
        source = "scaled"
    nodes += [helper.make_node("Conv", [source, "conv_w"], ["c"], name="conv0", strides=[8, 8]),
              helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool0")]
    if flatten_output:
        nodes += [helper.make_node("Flatten", ["p"], ["f"], name="flat0"),
                  helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["fc1"], name="fc0", transB=1)]
        out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, DIM])
    else:   # a feature map, not an embedding
        nodes += [helper.make_node("Identity", ["c"], ["fc1"], name="id0")]
        out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, 8, side // 8, side // 8])
    graph = helper.make_graph(nodes, "tiny-arcface", [helper.make_tensor_value_info(
        "data", TensorProto.FLOAT, [batch, 3, side, side])], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference(x: np.ndarray) -> np.ndarray:
    """The graph's numbers on an already normalised NCHW float input."""
    conv_w, fc_w, fc_b = weights()
    n = x.shape[0]
    patches = x.reshape(n, 3, 14, 8, 14, 8).transpose(0, 2, 4, 1, 3, 5).reshape(n, 196, 192)
    pooled = (patches @ conv_w.reshape(8, 192).T).mean(axis=1)
    return pooled @ fc_w.T + fc_b


def crops(n=5, seed=0):
    return torch.randint(0, 256, (n, 3, 112, 112), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("backend", ["onnxruntime", "opencv"])
def test_rgb_crops_scaled_by_127_5_give_the_graphs_embedding(isolated, backend):
    from synfiqa_plugins.models.arcface_onnx import ArcFaceONNXEmbedder

    path = build_model(isolated / "w600k_r50.onnx")
    embedder = ArcFaceONNXEmbedder(path=str(path), backend=backend)
    assert (embedder.input_mean, embedder.input_std, embedder.dimension) == (127.5, 127.5, DIM)
    x = crops()
    out = embedder.embed(x)
    assert out.shape == (5, DIM) and out.dtype == torch.float32
    expected = reference((x.numpy().astype(np.float32) - 127.5) / 127.5)   # RGB, no channel swap
    assert np.allclose(out.numpy(), expected, atol=1e-4)
    bgr = reference((x.flip(1).numpy().astype(np.float32) - 127.5) / 127.5)
    assert not np.allclose(out.numpy(), bgr, atol=1e-3)
    assert embedder.embed(torch.zeros(0, 3, 112, 112, dtype=torch.uint8)).shape == (0, DIM)
    with pytest.raises(ValueError, match=r"uint8 \[N, 3, 112, 112\]"):
        embedder.embed(torch.zeros(1, 3, 96, 96, dtype=torch.uint8))


def test_graphs_with_their_own_normalisation_take_raw_pixels(isolated, monkeypatch):
    import sys

    from synfiqa_plugins.models.arcface_onnx import ArcFaceONNXEmbedder

    path = build_model(isolated / "old.onnx", with_normalisation_nodes=True)
    embedder = ArcFaceONNXEmbedder(path=str(path))
    assert (embedder.input_mean, embedder.input_std) == (0.0, 1.0)
    x = crops(2)
    assert np.allclose(embedder.embed(x).numpy(), reference((x.numpy().astype(np.float32) - 127.5) * 0.0078125), atol=1e-4)
    # given explicitly, the values win; without the onnx package the default is 127.5
    assert ArcFaceONNXEmbedder(path=str(path), input_mean=127.5, input_std=127.5).input_mean == 127.5
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert ArcFaceONNXEmbedder(path=str(path)).input_std == 127.5


def test_a_fixed_batch_model_runs_in_padded_chunks(isolated):
    from synfiqa_plugins.models.arcface_onnx import ArcFaceONNXEmbedder

    path = build_model(isolated / "fixed.onnx", batch=2)
    embedder = ArcFaceONNXEmbedder(path=str(path), batch_size=64)
    assert embedder.batch_size == 2
    x = crops(5)
    assert np.allclose(embedder.embed(x).numpy(), reference((x.numpy().astype(np.float32) - 127.5) / 127.5), atol=1e-4)


def test_the_file_is_found_in_the_insightface_cache(isolated):
    from synfiqa.registry import Registry

    folder = isolated / "home" / ".insightface" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    build_model(folder / "w600k_r50.onnx")
    embedder = Registry().create("embedder", "arcface-onnx")
    assert embedder.model_file == str(folder / "w600k_r50.onnx") and embedder.backend == "onnxruntime"


def test_wrong_models_and_bad_files_fail_before_any_sample(isolated):
    from synfiqa_plugins.models.arcface_onnx import ArcFaceONNXEmbedder

    with pytest.raises(CheckpointError, match=r"input shape \['N', 3, 64, 64\]"):
        ArcFaceONNXEmbedder(path=str(build_model(isolated / "small.onnx", side=64)))
    with pytest.raises(CheckpointError, match=r"output shape \(1, 8, 14, 14\)"):
        ArcFaceONNXEmbedder(path=str(build_model(isolated / "map.onnx", flatten_output=False)), backend="onnxruntime")
    corrupt = isolated / "w600k_r50.onnx"
    corrupt.write_bytes(b"\x08\x07 not a model")
    for backend in ("onnxruntime", "opencv"):
        with pytest.raises(WeightsNotFoundError, match=r"'arcface-onnx': .* cannot load .*buffalo_l.zip"):
            ArcFaceONNXEmbedder(path=str(corrupt), backend=backend)
    with pytest.raises(WeightsNotFoundError) as caught:
        ArcFaceONNXEmbedder()
    message = str(caught.value)
    assert "w600k_r50.onnx" in message and str(isolated / "home" / ".insightface" / "models" / "buffalo_l") in message
