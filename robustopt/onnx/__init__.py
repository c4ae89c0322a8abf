"""ONNX networks in: a chain of supported nodes becomes an ``nn.Sequential`` robustopt can attack, certify
and save (needs the ``onnx`` package, the ``onnx`` extra; no onnxruntime).

Supported nodes (:data:`SUPPORTED_OPS`): ``Gemm`` (any ``transA``/``transB``, ``alpha``/``beta``, weights as
either operand), ``MatMul`` (+ ``Add``: the constant becomes the bias), ``Relu`` (also a final one: it stays in
the model), ``Flatten`` and ``Reshape`` to a flat ``(batch, d)`` vector, 2-D ``Conv`` (pads, strides,
dilations, ``group=1``), ``Add`` / ``Sub`` / ``Div`` by constants (a :class:`robustopt.layers.Normalize`, or
folded into the bias of a directly preceding ``Gemm`` / ``MatMul`` / ``Conv`` when it is a per-output
constant), eval-mode ``BatchNormalization`` and ``Identity``. Constants come from initializers or ``Constant``
nodes; shape computations (``Shape``, ``Gather``, ``Concat``, ... as the TorchScript exporter writes for
``x.view(x.size(0), -1)``) are folded. The data must flow along a single path; anything else raises a
``ValueError`` naming the node type and its position in the graph.

Input shape: the first dimension of the ONNX input is the batch (any size, static or symbolic), except for a
2-D input that the first ``Gemm`` / ``MatMul`` reads as a column ``(features, batch)``. The returned model has
``model.input_shape``, the ONNX input's shape without the batch dimension, and takes a batch
``(n, *input_shape)``. When the network flattens its input before any convolution (every MLP, e.g. VNN-COMP's
``mnist-net_256x2`` with input ``[1, 784, 1]``), the model starts with ``nn.Flatten`` and also takes the flat
batch ``(n, prod(input_shape))``; VNNLIB's ``X_i`` index that flat vector (C order).
"""
from __future__ import annotations

import os

from torch import nn

from .convert import SUPPORTED_OPS, Converter

__all__ = ["load", "SUPPORTED_OPS"]


def load(path) -> nn.Sequential:
    """Read an ONNX network (a path, or an ``onnx.ModelProto``) into an ``nn.Sequential`` in eval mode.

    Layers: ``Linear``, ``Conv2d``, ``ReLU``, ``Flatten``, ``Normalize``, ``BatchNorm1d/2d`` (all saveable
    with :func:`robustopt.models.save`), in the ONNX input's dtype (float32 or float64). The attribute
    ``input_shape`` gives the shape of one input example (see the module docstring).
    """
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - onnx is an extra
        raise ImportError("robustopt.onnx needs the onnx package: pip install 'robustopt[onnx]'") from err
    if isinstance(path, onnx.ModelProto):
        model, source = path, "<ModelProto>"
    else:
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"ONNX file not found: {source}")
        try:
            model = onnx.load(source)
        except Exception as err:  # protobuf's DecodeError and friends: not an ONNX file
            raise ValueError(f"{source}: not a readable ONNX model ({type(err).__name__}: {err})") from None
    return Converter(model.graph, source).run()
