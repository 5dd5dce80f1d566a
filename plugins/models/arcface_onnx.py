"""ArcFace face embedders from InsightFace's ONNX model files (e.g. buffalo_l's w600k_r50.onnx,
an IResNet-50 trained on WebFace600K), run through onnxruntime, or OpenCV's DNN module when
onnxruntime is not installed.

Input normalisation, as InsightFace's own ArcFaceONNX applies it: RGB channel order,
(x - input_mean) / input_std on 112x112 ArcFace-aligned crops. Most files (the buffalo
packs, the antelopev2 glintr100) take mean = std = 127.5; older MXNet exports carry their
own Sub/Mul normalisation nodes at the start of the graph and take raw pixels
(mean 0, std 1). With input_mean/input_std left empty this is read from the graph as
InsightFace does (first 8 nodes named Sub/_minus and Mul/_mul), when the `onnx` package is
installed; otherwise 127.5 / 127.5. Output: the raw embedding (not normalised), as
InsightFace returns it; compare by cosine.
"""
from __future__ import annotations

import numpy as np
import torch

from synfiqa import hookimpl
from synfiqa.errors import CheckpointError, WeightsNotFoundError


def graph_normalisation(model_file) -> tuple[float, float] | None:
    """(mean, std) read from the graph as InsightFace does; None without the onnx package."""
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load(str(model_file), load_external_data=False).graph
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith("Sub") or n.startswith("_minus") for n in names)
    has_mul = any(n.startswith("Mul") or n.startswith("_mul") for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


class _OrtRunner:
    def __init__(self, model_file: str, device: str):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model_file, sess_options=options, providers=providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{model_file}: {len(inputs)} inputs; an ArcFace embedder has one image input")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.output_name = self.session.get_outputs()[0].name

    def fixed_batch(self) -> int | None:
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None

    def __call__(self, blob: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: blob})[0]


class _OpenCVRunner:
    def __init__(self, model_file: str):
        from synfiqa_plugins.models.opencv_dnn import OpenCVNet

        self.net = OpenCVNet(model_file)
        self.input_shape = []

    def fixed_batch(self) -> int | None:
        return None

    def __call__(self, blob: np.ndarray) -> np.ndarray:
        return self.net(blob)


class ArcFaceONNXEmbedder:
    kind = "embedder"
    asset = "arcface-onnx"

    def __init__(self, path: str = "", input_mean: float | None = None, input_std: float | None = None,
                 backend: str = "auto", device: str = "auto", batch_size: int = 32):
        from synfiqa.weights import locate

        location = locate(self.asset, explicit=path or None)
        self.model_file = str(next(iter(location.files.values())))
        if backend == "auto":
            try:
                import onnxruntime  # noqa: F401
                backend = "onnxruntime"
            except ImportError:
                backend = "opencv"
        if backend not in ("onnxruntime", "opencv"):
            raise ValueError(f"backend must be auto, onnxruntime or opencv, got {backend!r}")
        self.backend = backend
        try:
            self._run = _OrtRunner(self.model_file, device) if backend == "onnxruntime" else _OpenCVRunner(self.model_file)
        except CheckpointError:
            raise
        except Exception as error:   # onnxruntime and OpenCV raise their own types for a bad file
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise WeightsNotFoundError(
                f"model asset {self.asset!r}: {backend} cannot load {self.model_file} (corrupt or not an ONNX "
                f"model: {first}). Get it again: {location_source(self.asset)}") from None
        shape = self._run.input_shape
        if shape and (len(shape) != 4 or shape[1] != 3 or any(isinstance(s, int) and s != 112 for s in shape[2:])):
            raise CheckpointError(f"{self.model_file}: input shape {shape}; an ArcFace embedder takes [N, 3, 112, 112]")
        if input_mean is None or input_std is None:
            mean_std = graph_normalisation(self.model_file) or (127.5, 127.5)
            input_mean = mean_std[0] if input_mean is None else input_mean
            input_std = mean_std[1] if input_std is None else input_std
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self.batch_size = self._run.fixed_batch() or int(batch_size)
        # probe once: a model of another kind fails here, before any sample is processed
        probe = self._forward(np.zeros((self._run.fixed_batch() or 1, 3, 112, 112), np.float32))
        if probe.ndim != 2 or probe.shape[1] < 32:
            raise CheckpointError(f"{self.model_file}: output shape {tuple(probe.shape)}; an ArcFace embedder "
                                  f"returns one embedding row per image")
        self.dimension = int(probe.shape[1])

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        out = np.asarray(self._run(blob), dtype=np.float32)
        if out.ndim > 2 and all(side == 1 for side in out.shape[2:]):   # [N, D, 1, 1] from a 1x1 head
            out = out.reshape(out.shape[:2])
        return out

    def preprocess(self, crops: torch.Tensor) -> np.ndarray:
        x = crops.cpu().numpy().astype(np.float32)   # NCHW RGB, as InsightFace feeds it
        return np.ascontiguousarray((x - self.input_mean) / self.input_std)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.dim() != 4 or crops.shape[1:] != (3, 112, 112) or crops.dtype != torch.uint8:
            raise ValueError(f"arcface-onnx takes uint8 [N, 3, 112, 112] aligned crops, got {crops.dtype} {tuple(crops.shape)}")
        if crops.shape[0] == 0:
            return torch.zeros(0, self.dimension)
        blob = self.preprocess(crops)
        fixed = self._run.fixed_batch()
        out = []
        for i in range(0, len(blob), self.batch_size):
            chunk = blob[i:i + self.batch_size]
            real = len(chunk)
            if fixed and real < fixed:   # a model exported with a fixed batch: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((fixed - real, *chunk.shape[1:]), np.float32)])
            out.append(self._forward(chunk)[:real])
        return torch.from_numpy(np.concatenate(out))


def location_source(asset: str) -> str:
    from synfiqa.weights import asset_entry

    return asset_entry(asset).source


@hookimpl
def register_models(register):
    register("arcface-onnx", ArcFaceONNXEmbedder)
