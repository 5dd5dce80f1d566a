"""ONNX export of a trained network (DIR/model.onnx): input `input`, float [N, 3, 112, 112]
RGB in [-1, 1] (x / 127.5 - 1, as CR-FIQA scales its input); outputs `embedding` [N, F]
and `quality` [N, 1]; the batch dimension is dynamic. torch's TorchScript-based exporter
(dynamo=False) is used: the torch.export-based one needs onnxscript, which synfiqa does not
depend on. The export is checked under onnxruntime against the torch network before it is
written."""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from synfiqa.errors import SynfiqaError
from synfiqa.store import write_atomic

OPSET = 17


class ExportError(SynfiqaError):
    """The ONNX export failed or does not give the torch network's scores."""


def export_onnx(network: torch.nn.Module, path: str | Path, sample: torch.Tensor, tolerance: float = 1e-3) -> float:
    """Exports `network` (a CPU float32 copy in eval mode), runs it under onnxruntime on
    `sample` (float [N, 3, 112, 112] in [-1, 1]) and writes it atomically when its quality
    scores match the torch network's within `tolerance` (relative to their spread).
    Returns the largest absolute difference of the quality scores."""
    import onnxruntime

    network = copy.deepcopy(network).float().cpu().eval()
    sample = sample.float().cpu()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        try:
            torch.onnx.export(network, (sample,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["embedding", "quality"],
                              dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}, "quality": {0: "batch"}})
        except Exception as error:  # torch raises many kinds for a network it cannot trace
            raise ExportError(f"ONNX export failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}") from None
    data = buffer.getvalue()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    onnx_quality = session.run(["quality"], {"input": sample.numpy()})[0].reshape(-1)
    with torch.inference_mode():
        torch_quality = network(sample)[1].reshape(-1).numpy()
    difference = float(np.max(np.abs(onnx_quality - torch_quality))) if len(sample) else 0.0
    scale = max(1.0, float(np.ptp(torch_quality)) if len(sample) > 1 else 1.0)
    if not difference <= tolerance * scale:
        raise ExportError(f"the ONNX export's quality scores differ from the torch network's by {difference:.3g} "
                          f"(allowed {tolerance * scale:.3g}); model.onnx was not written")
    write_atomic(path, data)
    return difference
