"""OpenCV's DNN module for ONNX face models, on OpenCV 4.x and 5.x alike.

OpenCV 4.10+ has two ONNX importers and needs ``engine=cv2.dnn.ENGINE_CLASSIC`` to take
the one that reads older graphs such as SFace's; OpenCV 5 drops that constant (its one
importer reads them) but refuses ``setInput(blob)`` without a name when a graph lists its
initializers as inputs, as SFace's does, and its results for one image change (in the last
bits) with the batch it comes in. So: take the classic engine where it exists, always feed
the image input by its name, read from the graph, and without the classic engine run one
image at a time, so that an embedding never depends on its batch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def image_input_name(model_file: str | Path) -> str:
    """The graph input that is fed from outside: old exporters also list weights as inputs,
    stored as initializers, or left dangling beside their quantised copies (SFace's)."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    internal = {initializer.name for initializer in graph.initializer}
    internal |= {output for node in graph.node for output in node.output}
    consumed = {name for node in graph.node for name in node.input}
    names = [value.name for value in graph.input if value.name not in internal and value.name in consumed]
    if len(names) != 1:
        from synfiqa.errors import CheckpointError

        raise CheckpointError(f"{model_file}: {len(names)} image inputs ({', '.join(names[:4])}); expected one")
    return names[0]


class OpenCVNet:
    """One ONNX graph in cv2.dnn; ``net(blob)`` runs a float32 NCHW blob."""

    def __init__(self, model_file: str | Path):
        import cv2

        engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)  # 4.10+: the importer that reads older graphs
        if engine is None:
            self.net = cv2.dnn.readNetFromONNX(str(model_file))
        else:
            self.net = cv2.dnn.readNetFromONNX(str(model_file), engine=engine)
        self.batch_invariant = engine is not None or not hasattr(cv2.dnn, "ENGINE_AUTO")
        self.input_name = image_input_name(model_file)

    def __call__(self, blob: np.ndarray) -> np.ndarray:
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        if self.batch_invariant or len(blob) <= 1:
            return self._forward(blob)
        return np.concatenate([self._forward(blob[i:i + 1]) for i in range(len(blob))])

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        self.net.setInput(blob, self.input_name)
        return np.asarray(self.net.forward())
