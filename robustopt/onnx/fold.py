"""Constant folding: nodes whose inputs are all constants (``Constant`` nodes, shape arithmetic such as the
TorchScript exporter writes for ``x.view(x.size(0), -1)``, weight transposes), evaluated with numpy.
Each function takes the converter (for the node's attributes) and the node's inputs."""
from __future__ import annotations

import numpy as np

__all__ = ["FOLD"]


def _unsqueeze(c, x, axes=None):
    axes = c.attr("axes") if axes is None else axes
    return np.expand_dims(x, tuple(int(a) for a in axes))


def _squeeze(c, x, axes=None):
    axes = c.attr("axes") if axes is None else axes
    return np.squeeze(x, None if axes is None else tuple(int(a) for a in axes))


def _slice(c, x, starts=None, ends=None, axes=None, steps=None):
    starts = c.attr("starts") if starts is None else starts  # opset < 10 keeps them as attributes
    ends = c.attr("ends") if ends is None else ends
    axes = c.attr("axes", list(range(len(starts)))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[int(a)] = slice(int(s), int(e), int(st))
    return x[tuple(index)]


def _reshape_constant(c, x, shape):
    shape = [x.shape[i] if v == 0 and not c.attr("allowzero", 0) else int(v) for i, v in enumerate(shape)]
    return x.reshape(shape)


def _constant(c):
    from onnx import numpy_helper
    for a in c.node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(c.helper.get_attribute_value(a))
    raise c.error("only tensor and numeric Constant values are supported")


FOLD = {
    "Constant": _constant,
    "Identity": lambda c, x: x,
    "Cast": lambda c, x: x.astype(c.helper.tensor_dtype_to_np_dtype(c.attr("to"))),
    "Shape": lambda c, x: np.array(x.shape, dtype=np.int64)[c.attr("start", 0):c.attr("end", x.ndim)],
    "Gather": lambda c, x, i: np.take(x, i, axis=c.attr("axis", 0)),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda c, *xs: np.concatenate([np.atleast_1d(x) for x in xs], axis=c.attr("axis")),
    "Slice": _slice,
    "Transpose": lambda c, x: np.transpose(x, c.attr("perm")),
    "Reshape": _reshape_constant,
}
