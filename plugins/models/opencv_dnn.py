"""OpenCV's DNN module for ONNX face models, on OpenCV 4.x and 5.x alike.

OpenCV 4.10+ has two ONNX importers and needs ``engine=cv2.dnn.ENGINE_CLASSIC`` to take
the one that reads older graphs such as SFace's; OpenCV 5 drops that constant (its one
importer reads them) but refuses ``setInput(blob)`` without a name when a graph lists its
initializers as inputs, as SFace's does. So: take the classic engine where it exists, and
always feed the image input by its name, read from the graph.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def image_input_name(model_file: str | Path) -> str:
    """The graph input that is not an initializer (old exporters list weights as inputs too)."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    names = [value.name for value in graph.input if value.name not in weights]
    if len(names) != 1:
        from synfiqa.errors import CheckpointError

        raise CheckpointError(f"{model_file}: {len(names)} image inputs ({', '.join(names)}); expected one")
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
        self.input_name = image_input_name(model_file)

    def __call__(self, blob: np.ndarray) -> np.ndarray:
        self.net.setInput(np.ascontiguousarray(blob, dtype=np.float32), self.input_name)
        return np.asarray(self.net.forward())
