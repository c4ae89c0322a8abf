"""The graph walk behind :func:`robustopt.onnx.load`: one data tensor, its shape, and the layers so far."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..layers import Normalize
from .fold import FOLD

__all__ = ["Converter", "SUPPORTED_OPS"]

SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Sub", "Div", "Relu", "Flatten", "Reshape", "Conv", "BatchNormalization",
                 "Identity")
_BATCH = 2 ** 40 + 7  # stands for the batch size inside folded shape computations


class Converter:
    """Walks the graph's nodes in order, keeping the one data tensor and its shape."""

    def __init__(self, graph, source):
        from onnx import helper, numpy_helper
        self.graph, self.source, self.helper = graph, source, helper
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.derived = set()  # constants computed from the input's shape (contain _BATCH)
        self.layers, self.convolutional = [], False  # convolutional: a layer needing (C, H, W) was emitted
        self.pos, self.node = None, None
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(f"{source}: the network must have exactly one input; got {len(inputs)} "
                             f"({', '.join(i.name for i in inputs) or 'none'})")
        tensor_type = inputs[0].type.tensor_type
        dtypes = {1: torch.float32, 11: torch.float64}
        if tensor_type.elem_type not in dtypes:
            raise ValueError(f"{source}: input {inputs[0].name!r} must be float32 or float64; got ONNX element "
                             f"type {tensor_type.elem_type}")
        self.dtype = dtypes[tensor_type.elem_type]
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        self.current = inputs[0].name
        self.batch_axis = _input_batch_axis(graph, self.current) if len(dims) == 2 else 0
        per_example = dims[:self.batch_axis] + dims[self.batch_axis + 1:]
        if len(dims) < 2 or any(d is None or d <= 0 for d in per_example):
            raise ValueError(f"{source}: input {self.current!r} must have a batch dimension and fixed positive "
                             f"sizes otherwise; got shape {dims}")
        self.batch = dims[self.batch_axis] or 1  # a symbolic batch broadcasts like 1
        self.per_example = self.input_shape = tuple(per_example)

    # ----------------------------------------------------------------------------------------- the walk
    def run(self) -> nn.Sequential:
        handlers = {"Gemm": self._gemm, "MatMul": self._matmul, "Add": self._affine_constant,
                    "Sub": self._affine_constant, "Div": self._affine_constant, "Relu": self._relu,
                    "Flatten": self._flatten, "Reshape": self._reshape, "Conv": self._conv,
                    "BatchNormalization": self._batchnorm, "Identity": lambda: None}
        for self.pos, self.node in enumerate(self.graph.node):
            op = self.node.op_type
            if self.node.domain not in ("", "ai.onnx"):
                raise self.error(f"custom operator domain {self.node.domain!r} is not supported")
            data = [name for name in self.node.input if name and name not in self.consts]
            if op == "Shape" and data == [self.current]:
                self._shape_of_data()
            elif not data:
                self._fold()
            elif data != [self.current]:
                raise self.error(f"reads {data}, but robustopt loads only chains: each node may read the previous "
                                 f"node's output {self.current!r} (once) and constants; branches, residual "
                                 f"connections and multiple inputs are not supported")
            elif op not in handlers:
                raise self.error(f"unsupported ONNX node type {op!r}; supported: {', '.join(SUPPORTED_OPS)}")
            else:
                handlers[op]()
                self.current = self.node.output[0]
        outputs = [o.name for o in self.graph.output]
        if outputs != [self.current]:
            raise ValueError(f"{self.source}: the network must have one output, the end of its chain "
                             f"{self.current!r}; got outputs {outputs}")
        layers = [layer for layer in self.layers if not _is_identity_normalize(layer)] or [nn.Identity()]
        model = nn.Sequential(*layers).to(self.dtype).eval()
        model.input_shape = self.input_shape
        return model

    def error(self, message) -> ValueError:
        name = f" {self.node.name!r}" if self.node.name else ""
        return ValueError(f"{self.source}: {self.node.op_type} node{name} at position {self.pos}: {message}")

    def attr(self, name, default=None):
        for a in self.node.attribute:
            if a.name == name:
                return self.helper.get_attribute_value(a)
        return default

    def const(self, index) -> np.ndarray:
        name = self.node.input[index] if index < len(self.node.input) else ""
        if not name:
            return None
        if name in self.derived and self.node.op_type != "Reshape":
            raise self.error(f"input {name!r} is computed from the input's shape, which only Reshape may use")
        return self.consts[name]

    def tensor(self, array) -> torch.Tensor:
        if isinstance(array, torch.Tensor):
            return array.to(self.dtype)
        return torch.as_tensor(np.array(array, dtype=np.float64), dtype=self.dtype)

    @property
    def full_shape(self):
        shape = list(self.per_example)
        shape.insert(self.batch_axis if self.batch_axis == 0 else len(shape), self.batch)
        return tuple(shape)

    def data_position(self):
        return [i for i, name in enumerate(self.node.input) if name == self.current][0]

    # ------------------------------------------------------------------------------------ constants
    def _shape_of_data(self):
        shape = np.array([_BATCH if i == self.batch_axis else s
                          for i, s in enumerate(self.full_shape)], dtype=np.int64)
        self.consts[self.node.output[0]] = shape[self.attr("start", 0):self.attr("end", len(shape))]
        self.derived.add(self.node.output[0])

    def _fold(self):
        """Evaluate a node whose inputs are all constants (Constant nodes, shape arithmetic, weight transposes)."""
        op, args = self.node.op_type, [self.consts[n] if n else None for n in self.node.input]
        if op not in FOLD:
            raise self.error(f"unsupported ONNX node type {op!r} on constants; supported: "
                             f"{', '.join(SUPPORTED_OPS)} and the constant folding of {', '.join(FOLD)}")
        self.consts[self.node.output[0]] = np.asarray(FOLD[op](self, *args))
        if any(n in self.derived for n in self.node.input):
            self.derived.add(self.node.output[0])

    def per_example_constant(self, value) -> np.ndarray:
        """A constant operand of an elementwise node, as one example's tensor (same for every example)."""
        full, value = self.full_shape, np.asarray(value, dtype=np.float64)
        if value.ndim > len(full):
            raise self.error(f"constant of shape {value.shape} has more dimensions than the data {full}")
        value = value.reshape((1,) * (len(full) - value.ndim) + value.shape)
        try:
            expanded = np.broadcast_to(value, full)
        except ValueError:
            raise self.error(f"constant of shape {value.shape} does not broadcast to the data's shape {full}") from None
        per = np.take(expanded, 0, axis=self.batch_axis)
        if value.shape[self.batch_axis] != 1 and not (np.moveaxis(expanded, self.batch_axis, 0) == per).all():
            raise self.error("constant differs between examples of the batch")
        return per

    # ------------------------------------------------------------------------------------- layers
    def _relu(self):
        self.layers.append(nn.ReLU())

    def _linear(self, weight, bias, out_axis):
        weight = np.asarray(weight, dtype=np.float64)
        if len(self.per_example) != 1 or weight.ndim != 2 or weight.shape[1] != self.per_example[0]:
            raise self.error(f"weight of shape {weight.shape} does not fit data of shape {self.full_shape} "
                             f"(batch axis {self.batch_axis}); expected a 2-D (batch, features) input")
        layer = nn.Linear(weight.shape[1], weight.shape[0], dtype=self.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.tensor(weight))
            layer.bias.copy_(self.tensor(np.zeros(weight.shape[0]) if bias is None else bias))
        self.layers.append(layer)
        self.per_example, self.batch_axis = (weight.shape[0],), out_axis

    def _gemm(self):
        """Y = alpha op(A) op(B) + beta C, with the data as A (rows = examples) or B (columns = examples)."""
        trans_a, trans_b = self.attr("transA", 0), self.attr("transB", 0)
        alpha, beta = self.attr("alpha", 1.0), self.attr("beta", 1.0)
        if len(self.full_shape) != 2:
            raise self.error(f"Gemm needs 2-D data; got shape {self.full_shape}")
        if self.data_position() == 0:  # Y = op(X) op(B): examples along Y's rows
            expected_axis, out_axis, other = (1 if trans_a else 0), 0, self.const(1)
            weight = other if trans_b else other.T
        else:  # Y = op(A) op(X): examples along Y's columns
            expected_axis, out_axis, other = (0 if trans_b else 1), 1, self.const(0)
            weight = other.T if trans_a else other
        if self.batch_axis != expected_axis:
            raise self.error("the data's batch axis does not match transA/transB")
        c = self.const(2)
        out_shape = (self.batch, weight.shape[0]) if out_axis == 0 else (weight.shape[0], self.batch)
        bias = None
        if c is not None:
            c = np.asarray(c, dtype=np.float64).reshape((1,) * (2 - np.ndim(c)) + np.shape(c))
            fits = c.ndim == 2 and c.shape[out_axis] == 1 and all(a in (1, b) for a, b in zip(c.shape, out_shape))
            if not fits:
                raise self.error(f"bias C of shape {c.shape} does not broadcast to the output {out_shape} "
                                 f"as one vector per example")
            bias = beta * np.broadcast_to(c, out_shape).take(0, axis=out_axis)
        self._linear(alpha * np.asarray(weight, dtype=np.float64), bias, out_axis)

    def _matmul(self):
        if len(self.full_shape) != 2:
            raise self.error(f"MatMul needs 2-D data (batch, features) or (features, batch); got {self.full_shape}")
        if self.data_position() == 0:  # X @ W, examples in rows
            expected_axis, out_axis, weight = 0, 0, self.const(1).T
        else:  # W @ X, examples in columns
            expected_axis, out_axis, weight = 1, 1, self.const(0)
        if self.batch_axis != expected_axis:
            raise self.error("the data's batch axis does not match the MatMul operand order")
        self._linear(weight, None, out_axis)

    def _affine_constant(self):
        """Add / Sub / Div by a constant: folded into the preceding layer's bias, else a Normalize layer."""
        op, position = self.node.op_type, self.data_position()
        if op != "Add" and position != 0:
            raise self.error(f"only data {'-' if op == 'Sub' else '/'} constant is supported, not the reverse")
        value = self.per_example_constant(self.const(1 - position))
        previous = self.layers[-1] if self.layers else None
        if op != "Div" and isinstance(previous, (nn.Linear, nn.Conv2d)):
            per_output = value if isinstance(previous, nn.Linear) else value[:, :1, :1]
            if (np.broadcast_to(per_output, value.shape) == value).all():
                with torch.no_grad():
                    previous.bias += (1 if op == "Add" else -1) * self.tensor(per_output.reshape(-1))
                return
        value = _compact(value)
        if op == "Div" and isinstance(previous, Normalize) and bool((previous.std == 1).all()):
            self.layers[-1] = self.normalize(previous.mean, value)
        elif op == "Div":
            self.layers.append(self.normalize(0.0, value))
        else:
            self.layers.append(self.normalize(-value if op == "Add" else value, 1.0))

    def normalize(self, mean, std) -> Normalize:
        mean, std = self.tensor(mean), self.tensor(std)
        try:
            layer = Normalize(mean, std)
        except ValueError as err:
            raise self.error(str(err)) from None
        layer.mean, layer.std = mean, std  # keep the model's dtype (Normalize builds in the default one)
        return layer

    def _flatten(self):
        axis = self.attr("axis", 1)
        if axis < 0:
            axis += len(self.full_shape)
        if axis != 1 or self.batch_axis != 0:
            raise self.error(f"only Flatten(axis=1) on batch-first data is supported; got axis {axis} on data "
                             f"of shape {self.full_shape}")
        self.to_flat()

    def _reshape(self):
        target, allow_zero = [int(v) for v in self.const(1)], self.attr("allowzero", 0)
        full = (_BATCH,) + self.per_example
        target = [full[i] if v == 0 and not allow_zero and i < len(full) else v for i, v in enumerate(target)]
        size = math.prod(self.per_example)
        rest = target[1:]
        if -1 in rest and rest.count(-1) == 1 and target[0] != -1:
            known = math.prod(v for v in rest if v != -1)
            rest = [size // known if v == -1 and known and size % known == 0 else v for v in rest]
        if self.batch_axis != 0 or target[0] not in (_BATCH, -1, self.batch) or tuple(rest) not in (
                (size,), self.per_example):
            raise self.error(f"only a Reshape to a flat vector (batch, {size}) is supported; data of shape "
                             f"{self.full_shape} to {[('batch' if v == _BATCH else v) for v in target]}")
        if tuple(rest) == (size,):
            self.to_flat()

    def to_flat(self):
        """Flatten one example to a vector: at the front of the model when no layer needs (C, H, W) yet."""
        if len(self.per_example) == 1:
            return
        if self.convolutional:
            self.layers.append(nn.Flatten())
        else:  # the layers so far are elementwise: store their constants flat and flatten the input
            for layer in self.layers:
                if isinstance(layer, Normalize):
                    layer.mean, layer.std = (_flat(t, self.per_example) for t in (layer.mean, layer.std))
            self.layers.insert(0, nn.Flatten())
        self.per_example = (math.prod(self.per_example),)

    def _conv(self):
        weight, bias = self.const(1), self.const(2)
        if len(self.per_example) != 3 or self.batch_axis != 0 or weight.ndim != 4:
            raise self.error(f"only 2-D convolutions on (batch, C, H, W) data are supported; data {self.full_shape}, "
                             f"weight {weight.shape}")
        if self.attr("group", 1) != 1 or weight.shape[1] != self.per_example[0]:
            raise self.error(f"only group=1 with {self.per_example[0]} input channels is supported; got group "
                             f"{self.attr('group', 1)}, weight {weight.shape}")
        kernel, size = weight.shape[2:], self.per_example[1:]
        if tuple(self.attr("kernel_shape", kernel)) != kernel:
            raise self.error(f"kernel_shape {self.attr('kernel_shape')} does not match the weight {weight.shape}")
        strides, dilations = self.attr("strides", [1, 1]), self.attr("dilations", [1, 1])
        pads = _conv_pads(self.attr("auto_pad", b"NOTSET"), self.attr("pads", [0, 0, 0, 0]), size, kernel, strides,
                          dilations)
        if pads is None:
            raise self.error("asymmetric padding is not supported (nn.Conv2d pads both sides alike)")
        layer = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(kernel), stride=tuple(strides), padding=pads,
                          dilation=tuple(dilations), dtype=self.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.tensor(weight))
            layer.bias.copy_(self.tensor(np.zeros(weight.shape[0]) if bias is None else bias))
        self.layers.append(layer)
        self.convolutional = True
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(size, pads, dilations, kernel, strides)]
        self.per_example = (weight.shape[0], *out)

    def _batchnorm(self):
        if self.attr("training_mode", 0) or self.attr("spatial", 1) != 1 or len(self.per_example) not in (1, 3) \
                or self.batch_axis != 0:
            raise self.error(f"only eval-mode BatchNormalization on (batch, C) or (batch, C, H, W) data is "
                             f"supported; data {self.full_shape}")
        channels = self.per_example[0]
        cls = nn.BatchNorm1d if len(self.per_example) == 1 else nn.BatchNorm2d
        layer = cls(channels, eps=float(self.attr("epsilon", 1e-5)), dtype=self.dtype)
        with torch.no_grad():
            for target, index in ((layer.weight, 1), (layer.bias, 2), (layer.running_mean, 3), (layer.running_var, 4)):
                target.copy_(self.tensor(np.broadcast_to(self.const(index), (channels,))))
        self.layers.append(layer)
        self.convolutional = self.convolutional or len(self.per_example) == 3


def _input_batch_axis(graph, name) -> int:
    """Batch axis of a 2-D input: 1 when the first Gemm / MatMul on it reads its columns as examples."""
    for node in graph.node:
        if name not in node.input:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type in ("Relu", "Identity", "Add", "Sub", "Div"):
            name = node.output[0]
        elif node.op_type == "Gemm":
            first = list(node.input).index(name) == 0
            return int(bool(attrs.get("transA", 0))) if first else int(not attrs.get("transB", 0))
        elif node.op_type == "MatMul":
            return int(node.input[0] != name)
        else:
            break
    return 0


def _conv_pads(auto_pad, pads, size, kernel, strides, dilations):
    """Symmetric (pad_h, pad_w) from ONNX ``pads``/``auto_pad``, or None when they are asymmetric."""
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
                 for n, k, s, d in zip(size, kernel, strides, dilations)]
        small = [t // 2 for t in total]
        big = [t - h for t, h in zip(total, small)]
        pads = small + big if auto_pad == "SAME_UPPER" else big + small
    begin, end = list(pads[:2]), list(pads[2:])
    return tuple(begin) if begin == end else None


def _compact(value: np.ndarray) -> np.ndarray:
    """A per-example constant as a scalar when uniform, per channel when constant over (H, W), else full."""
    if (value == value.flat[0]).all():
        return np.asarray(value.flat[0])
    if value.ndim == 3 and (value == value[:, :1, :1]).all():
        return value[:, 0, 0]
    return value


def _flat(t: torch.Tensor, shape) -> torch.Tensor:
    if t.dim() == 0:
        return t
    if t.dim() == 1 and len(shape) == 3:  # per channel
        t = t.view(-1, 1, 1)
    return t.expand(shape).reshape(-1).clone()


def _is_identity_normalize(layer) -> bool:
    return isinstance(layer, Normalize) and bool((layer.mean == 0).all()) and bool((layer.std == 1).all())
