"""OpenCV's DNN module for ONNX face models, on OpenCV 4.x and 5.x alike.

What differs between releases, measured on SFace's int8 graph:
* 5.0 has two ONNX importers; ``engine=cv2.dnn.ENGINE_CLASSIC`` reads SFace's graph and runs
  a batch as well as its images one by one.
* 5.1 drops that constant; its one importer refuses ``setInput(blob)`` without a name (SFace
  lists weights as graph inputs too), and an image's result changes in the last bits with
  the batch it comes in.
* 4.x (4.12, 4.13) has one importer that runs single images right but returns garbage for
  every image after the first of a batch.
So: the classic engine where it exists, batched; everywhere else the image input fed by its
name, one image at a time, so that an embedding never depends on its batch.
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

        engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)  # 5.0 only
        if engine is None:
            self.net = cv2.dnn.readNetFromONNX(str(model_file))
        else:
            self.net = cv2.dnn.readNetFromONNX(str(model_file), engine=engine)
        self.classic = engine is not None
        self.input_name = None if self.classic else image_input_name(model_file)

    def __call__(self, blob: np.ndarray) -> np.ndarray:
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        if self.classic or len(blob) <= 1:
            return self._forward(blob)
        return np.concatenate([self._forward(blob[i:i + 1]) for i in range(len(blob))])

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        if self.classic:  # the classic importer takes its first input as the image, as before 5.1
            self.net.setInput(blob)
        else:
            self.net.setInput(blob, self.input_name)
        return np.asarray(self.net.forward())
