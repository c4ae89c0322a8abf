r"""The canonical network form every bound method works on.

A :class:`Network` is :math:`f(x) = A_K(\sigma(A_{K-1}(\cdots \sigma(A_1 x))))`, optionally followed by
one more ReLU :math:`\sigma`: a list of affine operators (:mod:`robustopt.verify.operators`)
alternating with ReLUs, on flat vectors with the batch first. Writing :math:`z_k = A_k(a_{k-1})`,
:math:`a_k = \sigma(z_k)`, :math:`a_0 = x`, the ReLU layers are :math:`k = 1 .. K-1` (plus
:math:`k = K` with a trailing ReLU); "intermediate bounds" are bounds on their pre-activations
:math:`z_k`, one (lower, upper) pair of shape (n, h_k) per ReLU layer.

:func:`network` builds it from an ``nn.Sequential`` (nested ones too) of ``Linear``, ``Conv2d``,
``ReLU``, ``Flatten``, ``Identity``, :class:`robustopt.layers.Normalize` and eval-mode
``BatchNorm1d`` / ``BatchNorm2d``. Consecutive affine layers are merged into one operator where that
is exact (BatchNorm into the neighbouring Linear / Conv2d, Normalize into a following Linear or
unpadded Conv2d), else kept as a :class:`~robustopt.verify.operators.Chain`. Weights are copied in
``dtype`` (float64 by default) on the model's device.

:meth:`Network.with_spec` folds a specification matrix C into the last affine layer, so that a method
bounding the outputs bounds :math:`C f(x)` directly (tighter than differencing bounds on f).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import Normalize, flat_layers
from .operators import BatchLinear, Conv2d, Diagonal, Linear, compose

__all__ = ["Network", "network", "SUPPORTED_LAYERS", "RELU"]

SUPPORTED_LAYERS = ("Linear", "Conv2d", "ReLU", "Flatten", "Identity", "robustopt.layers.Normalize",
                    "BatchNorm1d (eval mode)", "BatchNorm2d (eval mode)", "Sequential (nested)")


class _ReLU:
    """Marker for a ReLU in :attr:`Network.layers`."""

    def __repr__(self):
        return "ReLU"


RELU = _ReLU()


class Network:
    """Affine operators ``affine[0..K]`` with a ReLU between consecutive ones (and after the last one
    when ``ends_with_relu``). ``in_shape`` is the shape of one input example."""

    def __init__(self, affine, ends_with_relu: bool, in_shape):
        if not affine:
            raise ValueError("a network needs at least one affine layer")
        self.affine = list(affine)
        self.ends_with_relu = bool(ends_with_relu)
        self.in_shape = tuple(in_shape)
        for a, b in zip(self.affine, self.affine[1:]):
            if a.out_features != b.in_features:
                raise ValueError(f"layer sizes do not chain: {a} then {b}")

    # ------------------------------------------------------------------ description
    @property
    def layers(self) -> list:
        """The alternating list [A_1, ReLU, A_2, ..., A_K(, ReLU)]."""
        out = []
        for op in self.affine:
            out += [op, RELU]
        return out if self.ends_with_relu else out[:-1]

    @property
    def in_features(self) -> int:
        return self.affine[0].in_features

    @property
    def out_features(self) -> int:
        return self.affine[-1].out_features

    @property
    def relu_sizes(self) -> list:
        """Widths h_k of the ReLU layers, in order."""
        return [op.out_features for op in (self.affine if self.ends_with_relu else self.affine[:-1])]

    @property
    def batch_size(self):
        """n when some operator holds one matrix per example (a folded spec), else None."""
        sizes = {op.batch_size for op in self.affine if op.batched}
        return sizes.pop() if sizes else None

    @property
    def dtype(self):
        return self.affine[0].dtype

    @property
    def device(self):
        return self.affine[0].device

    def cast(self, dtype) -> "Network":
        """The same network computing in ``dtype`` (a float32 copy for a search, say)."""
        if dtype == self.dtype:
            return self
        return Network([op.cast(dtype) for op in self.affine], self.ends_with_relu, self.in_shape)

    def __repr__(self):
        return f"Network(in_shape={self.in_shape}, layers={self.layers})"

    # ------------------------------------------------------------------ evaluation
    def flatten_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Check that x is a batch (n, *in_shape) (or already flat, (n, in_features)) and return it flat,
        in the network's dtype and on its device."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"{name} must be a tensor of shape (n, {', '.join(map(str, self.in_shape))}); "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        if tuple(x.shape[1:]) not in (self.in_shape, (self.in_features,)):
            raise ValueError(f"{name} has shape {tuple(x.shape)}, but the network takes examples of shape "
                             f"{self.in_shape} (batch first)")
        n = self.batch_size
        if n is not None and x.shape[0] != n:
            raise ValueError(f"{name} has {x.shape[0]} examples but the network's folded specification has {n}")
        return x.reshape(x.shape[0], -1).to(dtype=self.dtype, device=self.device)

    def pre_activations(self, x: torch.Tensor) -> list:
        """[z_1, ..., z_K] for a batch x, each (n, h_k)."""
        a, zs = self.flatten_input(x), []
        for op in self.affine:
            zs.append(op.forward(a))
            a = torch.relu(zs[-1])
        return zs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x), shape (n, out_features)."""
        z = self.pre_activations(x)[-1]
        return torch.relu(z) if self.ends_with_relu else z

    __call__ = forward

    # ------------------------------------------------------------------ specifications
    def with_spec(self, C: torch.Tensor) -> "Network":
        """The network x -> C f(x): C (n, m, k) per example (or (m, k) shared) folded into the last affine
        layer (or appended as its own layer when the network ends with a ReLU). The result ends with an
        affine layer; its hidden layers are the same objects as this network's."""
        if not isinstance(C, torch.Tensor) or C.dim() not in (2, 3) or C.shape[-1] != self.out_features:
            raise ValueError(f"C must be a tensor of shape (n, m, {self.out_features}) or (m, {self.out_features}); "
                             f"got {getattr(C, 'shape', type(C).__name__)}")
        C = C.to(dtype=self.dtype, device=self.device)
        if self.ends_with_relu:
            last = BatchLinear(C, C.new_zeros(C.shape[:2])) if C.dim() == 3 else Linear(C)
            return Network(self.affine + [last], False, self.in_shape)
        op = self.affine[-1]
        if C.dim() == 2 and not op.batched:
            folded = Linear(op.transpose(C.unsqueeze(0))[0], C @ op.bias)
        else:
            if op.batched and C.dim() == 3 and C.shape[0] != op.batch_size:
                raise ValueError(f"C has {C.shape[0]} examples but the network's last layer has {op.batch_size}")
            C3 = C if C.dim() == 3 else C.unsqueeze(0).expand(op.batch_size, -1, -1)
            bias = torch.einsum("nmk,...k->nm", C3, op.bias) if not op.batched else torch.einsum("nmk,nk->nm", C3, op.bias)
            folded = BatchLinear(op.transpose(C3), bias)
        return Network(self.affine[:-1] + [folded], False, self.in_shape)

    # ------------------------------------------------------------------ matrices for solvers
    def matrices(self, example: int | None = None, sparse: bool = True) -> list:
        """[(W_k, b_k)] in float64 numpy for one example (scipy.sparse csr W_k when ``sparse``)."""
        out = []
        for op in self.affine:
            w = op.scipy(example if op.batched else None)
            out.append((w if sparse else w.toarray(), op.bias_numpy(example if op.batched else None)))
        return out


# ---------------------------------------------------------------------- building from torch
def _model_device(model: nn.Module):
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _unsupported(layer) -> ValueError:
    return ValueError(f"unsupported layer {type(layer).__name__} ({layer!r}); the canonical network form supports "
                      f"{', '.join(SUPPORTED_LAYERS)}")


def _infer_input_shape(layers) -> tuple:
    for layer in layers:
        if isinstance(layer, nn.Linear):
            return (layer.in_features,)
        if isinstance(layer, (nn.ReLU, nn.Identity, nn.Flatten)):
            continue
        if isinstance(layer, Normalize) and layer.mean.numel() == 1 and layer.std.numel() == 1:
            continue
        break
    raise ValueError("cannot infer the input shape of this model: pass input_shape=(shape of one example), "
                     "e.g. (1, 28, 28)")


def _copy(t: torch.Tensor, dtype, device, keep_graph: bool) -> torch.Tensor:
    """A weight in the computation dtype / device: detached, unless ``keep_graph`` (for training on bounds)."""
    return (t if keep_graph else t.detach()).to(dtype=dtype, device=device)


def _conv_op(layer: nn.Conv2d, shape, dtype, device, keep_graph=False) -> Conv2d:
    if layer.padding_mode != "zeros":
        raise ValueError(f"Conv2d with padding_mode={layer.padding_mode!r} is not supported (only 'zeros')")
    if len(shape) != 3 or shape[0] != layer.in_channels:
        raise ValueError(f"{layer!r} expects inputs of shape ({layer.in_channels}, H, W); got shape {shape}")
    kh, kw = layer.kernel_size
    if layer.padding == "valid":
        pad = (0, 0, 0, 0)
    elif layer.padding == "same":  # PyTorch puts the odd pixel on the right / bottom
        th, tw = layer.dilation[0] * (kh - 1), layer.dilation[1] * (kw - 1)
        pad = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = layer.padding
        pad = (pw, pw, ph, ph)
    weight = _copy(layer.weight, dtype, device, keep_graph)
    bias = None if layer.bias is None else _copy(layer.bias, dtype, device, keep_graph)
    return Conv2d(weight, bias, shape, tuple(layer.stride), pad, tuple(layer.dilation), layer.groups)


def _batchnorm_op(layer, shape, dtype, device, keep_graph=False) -> Diagonal:
    if layer.training:
        raise ValueError(f"{type(layer).__name__} must be in eval mode (call model.eval()): in training mode it "
                         "normalizes with batch statistics, which is not a fixed affine map")
    if layer.running_mean is None or layer.running_var is None:
        raise ValueError(f"{type(layer).__name__} without running statistics (track_running_stats=False) is not "
                         "supported")
    c = layer.num_features
    ok = (len(shape) == 3 and shape[0] == c) if isinstance(layer, nn.BatchNorm2d) else (len(shape) in (1, 2) and shape[0] == c)
    if not ok:
        raise ValueError(f"{layer!r} does not match the input shape {shape}")
    kw = dict(dtype=dtype, device=device)
    scale = 1.0 / torch.sqrt(layer.running_var.detach().to(**kw) + layer.eps)
    if layer.weight is not None:
        scale = scale * _copy(layer.weight, dtype, device, keep_graph)
    shift = -layer.running_mean.detach().to(**kw) * scale
    if layer.bias is not None:
        shift = shift + _copy(layer.bias, dtype, device, keep_graph)
    spread = [c] + [1] * (len(shape) - 1)
    return Diagonal(scale.view(spread).expand(shape), shift.view(spread).expand(shape), shape)


def _normalize_op(layer: Normalize, shape, dtype, device) -> Diagonal:
    kw = dict(dtype=dtype, device=device)
    like = torch.zeros((1, *shape), **kw)
    try:
        mean = torch.broadcast_to(layer._view(layer.mean.to(**kw), like), like.shape)
        std = torch.broadcast_to(layer._view(layer.std.to(**kw), like), like.shape)
    except RuntimeError:
        raise ValueError(f"{layer!r}: mean / std do not broadcast to the input shape {shape}") from None
    return Diagonal(1.0 / std, -mean / std, shape)


def network(model: nn.Module, input_shape=None, dtype=torch.float64, keep_graph=False) -> Network:
    """The canonical form of ``model`` (see the module docstring).

    ``input_shape`` is the shape of one example, e.g. (1, 28, 28); it can be left out when the first
    layer with weights is a Linear. ``dtype`` is the computation dtype of the copy (float64 default).
    ``keep_graph=True`` keeps the weights attached to the model's parameters, so that bounds computed
    on the network are differentiable with respect to them (certified training); the default copies
    detached weights.
    Raises ``ValueError`` on unsupported layers, listing the supported ones.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    layers = list(flat_layers(model))
    for layer in layers:
        if not isinstance(layer, (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Identity, Normalize,
                                  nn.BatchNorm1d, nn.BatchNorm2d)):
            raise _unsupported(layer)
    in_shape = tuple(int(s) for s in input_shape) if input_shape is not None else _infer_input_shape(layers)
    device = _model_device(model)
    shape, segment, affine, relu_pending = in_shape, None, [], False

    def emit(op):
        nonlocal segment
        segment = op if segment is None else compose(segment, op)

    for layer in layers:
        if isinstance(layer, nn.ReLU):
            if segment is None and not affine:  # a ReLU on the raw input: identity first
                segment = Diagonal(torch.ones(math.prod(shape), dtype=dtype, device=device),
                                   torch.zeros(math.prod(shape), dtype=dtype, device=device), shape)
            if segment is not None:
                affine.append(segment)
                segment = None
            relu_pending = True  # ReLU(ReLU(z)) = ReLU(z)
            continue
        if isinstance(layer, nn.Identity):
            continue
        if isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise ValueError(f"only Flatten(start_dim=1, end_dim=-1) is supported; got {layer!r}")
            shape = (math.prod(shape),)
        elif isinstance(layer, nn.Linear):
            if shape != (layer.in_features,):
                raise ValueError(f"{layer!r} expects inputs of shape ({layer.in_features},) but receives shape "
                                 f"{shape} (a Flatten missing, or the wrong input_shape?)")
            bias = None if layer.bias is None else _copy(layer.bias, dtype, device, keep_graph)
            emit(Linear(_copy(layer.weight, dtype, device, keep_graph), bias))
            shape = (layer.out_features,)
        elif isinstance(layer, nn.Conv2d):
            op = _conv_op(layer, shape, dtype, device, keep_graph)
            emit(op)
            shape = op.out_shape
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            emit(_batchnorm_op(layer, shape, dtype, device, keep_graph))
        else:  # Normalize
            emit(_normalize_op(layer, shape, dtype, device))
        if not isinstance(layer, nn.Flatten):
            relu_pending = False
    if segment is not None:
        affine.append(segment)
    if not affine:
        raise ValueError("the model has no affine layer (Linear / Conv2d / Normalize / BatchNorm); nothing to bound")
    ends_with_relu = relu_pending
    return Network(affine, ends_with_relu, in_shape)
