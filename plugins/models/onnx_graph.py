"""A small, strict ONNX-to-torch translator for inference graphs made of a fixed set of ops
(those of OpenCV Zoo's block-quantised SFace, and nothing more).

Why not onnxruntime: it cannot run the int8 SFace file, whose weight names are declared as
graph inputs without values. Why not a hand-written network: the layer list,
strides, groups, epsilons and quantisation blocks all come from the file itself, so another
export of the same family translates without code changes, and a file the translator does
not understand stops with an error rather than running as something else.

Load-time work:
* the nodes that only compute weights (DequantizeLinear, Reshape, Sub / Mul of constants) are
  evaluated once, so the quantised weights are dequantised exactly once, as DequantizeLinear
  defines it: (q - zero_point) * scale, with the scale and zero point expanded per tensor,
  per axis or per block as the file's axis / block_size attributes say;
* a BatchNormalization whose only input is a Conv's or Gemm's output (used nowhere else) is
  folded into that layer's weight and bias (in float64, then rounded once to float32);
* an inference-mode Dropout is the identity and is removed.

Every op, attribute and attribute value is checked against what this module implements; any
other one raises UnsupportedGraphError naming the node, so nothing is silently approximated.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synfiqa.errors import CheckpointError

SUPPORTED_OPS = ("BatchNormalization", "Constant", "Conv", "DequantizeLinear", "Dropout", "Flatten",
                 "Gemm", "Mul", "PRelu", "Reshape", "Sub")


class UnsupportedGraphError(CheckpointError):
    """The ONNX graph uses an op, attribute or layout that the torch translation does not implement."""


class _Node:
    """One ONNX node with its attributes decoded, and the error helper that names it."""

    def __init__(self, proto, index: int):
        import onnx

        self.op = proto.op_type
        self.name = proto.name or f"#{index}"
        self.domain = proto.domain
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}

    def fail(self, what: str) -> UnsupportedGraphError:
        return UnsupportedGraphError(f"ONNX node {self.name!r} ({self.op}): {what}")

    def check_attributes(self, allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(self.attrs) - set(allowed))
        if unknown:
            raise self.fail(f"unsupported attribute(s) {', '.join(unknown)} (this translation implements "
                            f"{', '.join(allowed) or 'none'})")

    def attr(self, name: str, default):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def present_inputs(self) -> list[str]:
        """Input names with trailing optional inputs left empty ('') removed."""
        names = list(self.inputs)
        while names and not names[-1]:
            names.pop()
        return names


# ---------------------------------------------------------------------------- steps
# Each step is a module mapping its runtime input tensors to one output tensor. Constant
# operands are buffers, so .to(device) / .to(memory_format=...) carries them along.


class _Conv(nn.Module):
    def __init__(self, weight, bias, stride, padding, dilation, groups, extra_pad):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        # torch pads symmetrically; ONNX allows begin != end, padded with zeros beforehand
        self.extra_pad = extra_pad
        self.conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]

    def forward(self, x):
        if self.extra_pad is not None:
            x = F.pad(x, self.extra_pad)
        return self.conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _Linear(nn.Module):
    """Gemm as F.linear: weight (out, in) with alpha folded in, bias = beta * C."""

    def __init__(self, weight, bias, trans_a: bool):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.trans_a = trans_a

    def forward(self, a):
        if a.dim() != 2:
            raise ValueError(f"Gemm takes a 2-D input, got shape {tuple(a.shape)}")
        return F.linear(a.t() if self.trans_a else a, self.weight, self.bias)


class _ChannelAffine(nn.Module):
    """Inference BatchNormalization: x * scale + shift per channel (axis 1)."""

    def __init__(self, scale, shift):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.scale.numel():
            raise ValueError(f"BatchNormalization over {self.scale.numel()} channels got shape {tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


class _PRelu(nn.Module):
    def __init__(self, slope):
        super().__init__()
        self.register_buffer("slope", slope)

    def forward(self, x):
        slope = self.slope
        # ONNX broadcasts the slope right-aligned; when that makes it one value per channel
        # of axis 1, F.prelu gives the same numbers through the faster fused kernel
        aligned = (1,) * (x.dim() - slope.dim()) + tuple(slope.shape)
        if x.dim() >= 2 and len(aligned) == x.dim() and aligned[1] in (1, x.shape[1]) \
                and all(s == 1 for i, s in enumerate(aligned) if i != 1):
            return F.prelu(x, slope.reshape(-1))
        return torch.where(x >= 0, x, x * slope)


class _Binary(nn.Module):
    """Sub / Mul with numpy broadcasting; a constant operand is a buffer (`side` says which)."""

    def __init__(self, fn: Callable, constant: torch.Tensor | None, side: int):
        super().__init__()
        self.fn, self.side = fn, side
        self.register_buffer("constant", constant)

    def forward(self, *xs):
        if self.constant is None:
            return self.fn(*xs)
        return self.fn(self.constant, xs[0]) if self.side == 0 else self.fn(xs[0], self.constant)


class _Flatten(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


class _Reshape(nn.Module):
    def __init__(self, shape: list[int], allowzero: bool):
        super().__init__()
        self.shape, self.allowzero = shape, allowzero

    def forward(self, x):
        return x.reshape(_reshape_target(x.shape, self.shape, self.allowzero))


def _reshape_target(shape, target: list[int], allowzero: bool) -> list[int]:
    # ONNX: 0 copies the input's dimension (unless allowzero), -1 is inferred (torch does that)
    return [shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]


# ---------------------------------------------------------------------------- translation

_FLOAT_TYPES = (torch.float32,)
_QUANT_TYPES = (torch.int8, torch.uint8, torch.int16, torch.int32)


class _Builder:
    def __init__(self, model):
        from onnx import numpy_helper

        graph = model.graph
        for opset in model.opset_import:
            if opset.domain not in ("", "ai.onnx"):
                raise UnsupportedGraphError(f"ONNX opset domain {opset.domain!r} is not supported")
        self.constants: dict[str, torch.Tensor] = {}
        for init in graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype == object:
                raise UnsupportedGraphError(f"ONNX initializer {init.name!r}: non-numeric tensor")
            self.constants[init.name] = torch.from_numpy(np.array(array, copy=True))
        self.nodes = [_Node(p, i) for i, p in enumerate(graph.node)]
        consumed = {name for node in self.nodes for name in node.inputs if name}
        # a declared input that has an initializer is a default the caller may override: ONNX
        # allows it, but nothing here feeds it, so the initializer is the value. Inputs that
        # no node reads (the SFace file lists its unquantised weight names so) play no part.
        runtime = [i for i in graph.input if i.name not in self.constants and i.name in consumed]
        if len(runtime) != 1:
            raise UnsupportedGraphError(
                f"the graph needs {len(runtime)} runtime inputs ({', '.join(i.name for i in runtime)}); "
                "this translation runs graphs with exactly one")
        self.input_name = runtime[0].name
        dims = runtime[0].type.tensor_type.shape.dim
        self.input_shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        self.output_names = [o.name for o in graph.output]
        self.consumers: dict[str, int] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    self.consumers[name] = self.consumers.get(name, 0) + 1
        for name in self.output_names:
            self.consumers[name] = self.consumers.get(name, 0) + 1
        self.steps: list[tuple[nn.Module, list[str], str]] = []
        self.produced_by: dict[str, int] = {}   # runtime value -> index of the step that made it
        self.alias: dict[str, str] = {}         # removed identity ops: output -> its input

    # -- helpers
    def value_name(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def constant(self, node: _Node, name: str, role: str) -> torch.Tensor:
        if name not in self.constants:
            raise node.fail(f"{role} ({name!r}) must be a constant (an initializer or folded at load); "
                            "it is computed at run time")
        return self.constants[name]

    def float_constant(self, node: _Node, name: str, role: str) -> torch.Tensor:
        value = self.constant(node, name, role)
        if value.dtype not in _FLOAT_TYPES:
            raise node.fail(f"{role} ({name!r}) has type {value.dtype}; only float32 is implemented")
        return value

    def add_step(self, node: _Node, module: nn.Module, inputs: list[str]):
        inputs = [self.value_name(n) for n in inputs]
        for name in inputs:
            if name != self.input_name and name not in self.produced_by:
                raise node.fail(f"input {name!r} is neither a graph input, a constant nor an earlier node's output "
                                "(the nodes must be in topological order)")
        self.produced_by[node.outputs[0]] = len(self.steps)
        self.steps.append((module, inputs, node.outputs[0]))

    # -- the walk
    def build(self) -> "OnnxGraphModule":
        for node in self.nodes:
            if node.domain not in ("", "ai.onnx"):
                raise node.fail(f"op domain {node.domain!r} is not supported")
            handler = getattr(self, f"op_{node.op}", None)
            if node.op not in SUPPORTED_OPS or handler is None:
                raise node.fail(f"unsupported op {node.op!r}; this translation implements {', '.join(SUPPORTED_OPS)}")
            handler(node)
        for name in self.output_names:
            resolved = self.value_name(name)
            if resolved != self.input_name and resolved not in self.produced_by:
                raise UnsupportedGraphError(f"graph output {name!r} is a constant or never produced")
        return OnnxGraphModule(self.steps, self.input_name, [self.value_name(n) for n in self.output_names],
                               self.input_shape)

    def single_output(self, node: _Node):
        if len(node.outputs) != 1:
            raise node.fail(f"{len(node.outputs)} outputs; only the first (inference) output is implemented")

    # -- ops
    def op_Constant(self, node: _Node):
        node.check_attributes(("value",))
        if "value" not in node.attrs:
            raise node.fail("no 'value' attribute")
        from onnx import numpy_helper

        self.single_output(node)
        value = numpy_helper.to_array(node.attrs["value"])
        self.constants[node.outputs[0]] = torch.from_numpy(np.array(value, copy=True))

    def op_DequantizeLinear(self, node: _Node):
        node.check_attributes(("axis", "block_size", "output_dtype"))
        self.single_output(node)
        names = node.present_inputs()
        if len(names) not in (2, 3):
            raise node.fail(f"{len(names)} inputs; expected x, x_scale[, x_zero_point]")
        x = self.constant(node, names[0], "x")
        scale = self.float_constant(node, names[1], "x_scale")
        if len(names) == 3:
            zero = self.constant(node, names[2], "x_zero_point")
        else:
            zero = torch.zeros(scale.shape, dtype=x.dtype)
        if x.dtype not in _QUANT_TYPES:
            raise node.fail(f"x has type {x.dtype}; implemented: {', '.join(map(str, _QUANT_TYPES))}")
        if zero.dtype != x.dtype:
            raise node.fail(f"x_zero_point type {zero.dtype} differs from x's {x.dtype}")
        if zero.shape != scale.shape:
            raise node.fail(f"x_zero_point shape {tuple(zero.shape)} differs from x_scale's {tuple(scale.shape)}")
        output_dtype = node.attr("output_dtype", 0)
        if output_dtype not in (0, 1):   # 1 = FLOAT, the scale's type
            raise node.fail(f"output_dtype {output_dtype} is not implemented (only float32)")
        block = node.attr("block_size", 0)
        axis = node.attr("axis", 1)
        if block < 0:
            raise node.fail(f"block_size {block} < 0")
        per_tensor = block == 0 and scale.numel() == 1 and scale.dim() <= 1
        if not per_tensor:
            if x.dim() == 0 or not -x.dim() <= axis < x.dim():
                raise node.fail(f"axis {axis} out of range for x of shape {tuple(x.shape)}")
            axis %= x.dim()
            length = x.shape[axis]
        if block > 0:
            expected = list(x.shape)
            expected[axis] = -(-length // block)
            if list(scale.shape) != expected:
                raise node.fail(f"blocked x_scale must have shape {tuple(expected)} for x {tuple(x.shape)}, "
                                f"axis {axis}, block_size {block}; got {tuple(scale.shape)}")

            def expand(t):
                return t.repeat_interleave(block, dim=axis).narrow(axis, 0, length)
        elif per_tensor:
            def expand(t):
                return t.reshape(())
        elif scale.dim() == 1:
            if scale.numel() != length:
                raise node.fail(f"per-axis x_scale has {scale.numel()} values for axis {axis} of length {length}")
            shape = [1] * x.dim()
            shape[axis] = length

            def expand(t):
                return t.reshape(shape)
        else:
            raise node.fail(f"x_scale of shape {tuple(scale.shape)} with block_size 0 is neither per-tensor "
                            "nor per-axis")

        # once, at load: the integer difference is exact in int64, then one float32 rounding
        # in the multiply, as the definition's (x - x_zero_point) * x_scale has it
        difference = (x.to(torch.int64) - expand(zero).to(torch.int64)).to(scale.dtype)
        self.constants[node.outputs[0]] = difference * expand(scale)

    def op_Reshape(self, node: _Node):
        node.check_attributes(("allowzero",))
        self.single_output(node)
        data, shape_name = node.present_inputs()
        shape = self.constant(node, shape_name, "shape")
        if shape.dtype != torch.int64 or shape.dim() != 1:
            raise node.fail(f"shape must be a 1-D int64 tensor, got {shape.dtype} {tuple(shape.shape)}")
        target = [int(d) for d in shape]
        allowzero = bool(node.attr("allowzero", 0))
        if self.is_constant(data):
            value = self.constants[data]
            self.constants[node.outputs[0]] = value.reshape(_reshape_target(value.shape, target, allowzero))
        else:
            self.add_step(node, _Reshape(target, allowzero), [data])

    def op_Sub(self, node: _Node):
        self.binary(node, torch.sub)

    def op_Mul(self, node: _Node):
        self.binary(node, torch.mul)

    def binary(self, node: _Node, fn: Callable):
        node.check_attributes(())
        self.single_output(node)
        names = node.present_inputs()
        if len(names) != 2:
            raise node.fail(f"{len(names)} inputs; expected 2")
        constant = [self.is_constant(n) for n in names]
        if all(constant):
            self.constants[node.outputs[0]] = fn(self.constants[names[0]], self.constants[names[1]])
        elif any(constant):
            side = constant.index(True)
            value = self.constants[names[side]]
            if value.dtype not in _FLOAT_TYPES:
                raise node.fail(f"constant operand {names[side]!r} has type {value.dtype}; only float32 is implemented")
            self.add_step(node, _Binary(fn, value, side), [names[1 - side]])
        else:
            self.add_step(node, _Binary(fn, None, -1), names)

    def op_Conv(self, node: _Node):
        node.check_attributes(("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"))
        self.single_output(node)
        names = node.present_inputs()
        if len(names) not in (2, 3):
            raise node.fail(f"{len(names)} inputs; expected X, W[, B]")
        weight = self.float_constant(node, names[1], "W")
        k = weight.dim() - 2
        if k not in (1, 2, 3):
            raise node.fail(f"weight of shape {tuple(weight.shape)}: only 1-, 2- and 3-D convolutions are implemented")
        bias = self.float_constant(node, names[2], "B") if len(names) == 3 else None
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise node.fail(f"bias shape {tuple(bias.shape)} does not match {weight.shape[0]} output channels")
        auto_pad = node.attr("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID"):
            raise node.fail(f"auto_pad {auto_pad!r} is not implemented (NOTSET or VALID only)")
        kernel = list(node.attr("kernel_shape", weight.shape[2:]))
        if kernel != list(weight.shape[2:]):
            raise node.fail(f"kernel_shape {kernel} does not match the weight's {list(weight.shape[2:])}")
        strides = list(node.attr("strides", [1] * k))
        dilations = list(node.attr("dilations", [1] * k))
        pads = list(node.attr("pads", [0] * (2 * k)))
        if auto_pad == "VALID" and any(pads):
            raise node.fail("auto_pad VALID together with non-zero pads")
        if len(strides) != k or len(dilations) != k or len(pads) != 2 * k:
            raise node.fail(f"strides {strides}, dilations {dilations}, pads {pads} do not fit a {k}-D convolution")
        groups = node.attr("group", 1)
        begin, end = pads[:k], pads[k:]
        symmetric = [min(b, e) for b, e in zip(begin, end)]
        extra = None
        if begin != end:
            # F.pad lists the last dimension first, (begin, end) each
            extra = [v for b, e, s in reversed(list(zip(begin, end, symmetric))) for v in (b - s, e - s)]
        if self.is_constant(names[0]):
            raise node.fail("a Conv of constants is not implemented")
        self.add_step(node, _Conv(weight, bias, strides, symmetric, dilations, groups, extra), [names[0]])

    def op_Gemm(self, node: _Node):
        node.check_attributes(("alpha", "beta", "transA", "transB"))
        self.single_output(node)
        names = node.present_inputs()
        if len(names) not in (2, 3):
            raise node.fail(f"{len(names)} inputs; expected A, B[, C]")
        if self.is_constant(names[0]):
            raise node.fail("a Gemm with a constant A is not implemented")
        b = self.float_constant(node, names[1], "B")
        if b.dim() != 2:
            raise node.fail(f"B must be 2-D, got {tuple(b.shape)}")
        alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
        weight = b if node.attr("transB", 0) else b.t()       # F.linear takes (out, in)
        if alpha != 1.0:
            weight = weight * alpha
        bias = None
        if len(names) == 3:
            c = self.float_constant(node, names[2], "C")
            if c.numel() == 1 or tuple(c.shape) in ((weight.shape[0],), (1, weight.shape[0])):
                bias = c.reshape(-1).expand(weight.shape[0])
                if beta != 1.0:
                    bias = bias * beta
            else:
                raise node.fail(f"C of shape {tuple(c.shape)} is not implemented "
                                f"(a bias of length {weight.shape[0]} only)")
        self.add_step(node, _Linear(weight.contiguous(), None if bias is None else bias.contiguous(),
                                    bool(node.attr("transA", 0))), [names[0]])

    def op_BatchNormalization(self, node: _Node):
        node.check_attributes(("epsilon", "momentum", "training_mode", "spatial"))
        if node.attr("training_mode", 0):
            raise node.fail("training_mode=1 is not implemented (inference only)")
        if node.attr("spatial", 1) != 1:
            raise node.fail("spatial=0 is not implemented")
        self.single_output(node)
        names = node.present_inputs()
        if len(names) != 5:
            raise node.fail(f"{len(names)} inputs; expected X, scale, B, mean, var")
        gamma, beta, mean, var = (self.float_constant(node, n, role).to(torch.float64)
                                  for n, role in zip(names[1:], ("scale", "B", "input_mean", "input_var")))
        if not gamma.shape == beta.shape == mean.shape == var.shape or gamma.dim() != 1:
            raise node.fail("scale, B, mean and var must be 1-D of one length")
        # momentum only matters in training
        scale = gamma / torch.sqrt(var + float(node.attr("epsilon", 1e-5)))
        shift = beta - mean * scale
        source = self.value_name(names[0])
        if self.is_constant(names[0]):
            raise node.fail("a BatchNormalization of a constant is not implemented")
        producer = self.produced_by.get(source)
        layer = self.steps[producer][0] if producer is not None else None
        if isinstance(layer, (_Conv, _Linear)) and self.consumers.get(source, 0) == 1 \
                and layer.weight.shape[0] == scale.numel():
            w = layer.weight.to(torch.float64)
            b = layer.bias.to(torch.float64) if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
            layer.weight = (w * scale.view((-1,) + (1,) * (w.dim() - 1))).to(torch.float32).contiguous()
            layer.bias = (b * scale + shift).to(torch.float32)
            # the layer now produces the normalised value under the BatchNormalization's name
            module, inputs, _ = self.steps[producer]
            self.steps[producer] = (module, inputs, node.outputs[0])
            del self.produced_by[source]
            self.produced_by[node.outputs[0]] = producer
            return
        self.add_step(node, _ChannelAffine(scale.to(torch.float32), shift.to(torch.float32)), [names[0]])

    def op_PRelu(self, node: _Node):
        node.check_attributes(())
        self.single_output(node)
        names = node.present_inputs()
        if len(names) != 2:
            raise node.fail(f"{len(names)} inputs; expected X, slope")
        if self.is_constant(names[0]):
            raise node.fail("a PRelu of a constant is not implemented")
        self.add_step(node, _PRelu(self.float_constant(node, names[1], "slope")), [names[0]])

    def op_Dropout(self, node: _Node):
        node.check_attributes(("seed",))
        names = node.present_inputs()
        if len(node.outputs) > 1 and any(node.outputs[1:]):
            raise node.fail("the mask output is not implemented")
        if len(names) == 3:
            mode = self.constant(node, names[2], "training_mode")
            if bool(mode.reshape(-1)[0]):
                raise node.fail("training_mode=true is not implemented (inference only)")
        if self.is_constant(names[0]):
            raise node.fail("a Dropout of a constant is not implemented")
        # inference: the identity, whatever the ratio
        self.alias[node.outputs[0]] = names[0]
        self.consumers[names[0]] = self.consumers.get(names[0], 0) + self.consumers.get(node.outputs[0], 0) - 1

    def op_Flatten(self, node: _Node):
        node.check_attributes(("axis",))
        self.single_output(node)
        (data,) = node.present_inputs()
        if self.is_constant(data):
            raise node.fail("a Flatten of a constant is not implemented")
        self.add_step(node, _Flatten(int(node.attr("axis", 1))), [data])


class OnnxGraphModule(nn.Module):
    """The translated graph: its steps run in the file's (topological) order."""

    def __init__(self, steps, input_name: str, output_names: list[str], input_shape: list[int | None]):
        super().__init__()
        self.layers = nn.ModuleList(module for module, _, _ in steps)
        self.wiring = [(inputs, output) for _, inputs, output in steps]
        self.input_name, self.output_names = input_name, output_names
        self.input_shape = input_shape
        last_use: dict[str, int] = {}
        for i, (inputs, _) in enumerate(self.wiring):
            for name in inputs:
                last_use[name] = i
        # values dropped after their last reader, so a batch does not hold every activation
        self.release = [sorted({n for n in inputs if last_use[n] == i and n not in output_names})
                        for i, (inputs, _) in enumerate(self.wiring)]

    def check_input(self, x: torch.Tensor) -> None:
        """Rank and every declared dimension but the batch (OpenCV runs any batch too)."""
        declared = self.input_shape
        if x.dim() != len(declared) or any(d and d != s for d, s in zip(declared[1:], x.shape[1:])):
            raise ValueError(f"input {self.input_name!r} must have shape {['N', *declared[1:]]}, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        values = {self.input_name: x}
        for layer, (inputs, output), release in zip(self.layers, self.wiring, self.release):
            values[output] = layer(*(values[n] for n in inputs))
            for name in release:
                del values[name]
        outputs = tuple(values[n] for n in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs


def load_onnx_graph(source) -> OnnxGraphModule:
    """An ONNX file (path) or ModelProto as an eval-mode torch module on the CPU."""
    import onnx

    if isinstance(source, (str, Path)):
        try:
            model = onnx.load(str(source))
        except Exception as error:   # protobuf raises several types for a foreign file
            raise CheckpointError(f"{source}: not a readable ONNX file ({error})") from None
    else:
        model = source
    return _Builder(model).build().eval()
