r"""Affine operators on flat vectors: the building blocks of the canonical network form.

Every operator is a map :math:`x \mapsto Wx + b` from :math:`\mathbb{R}^{d_{in}}` to
:math:`\mathbb{R}^{d_{out}}` acting on batches of flat vectors (batch first). Bound methods only
ever need four things from it, each available without forming :math:`W`:

- ``forward(x)``: :math:`Wx + b`, ``x`` of shape (n, d_in) -> (n, d_out);
- ``transpose(y)``: :math:`W^\top` applied to rows, ``y`` of shape (n, r, d_out) -> (n, r, d_in)
  (``n`` may be 1 for a shared operator: the result broadcasts over the batch);
- ``abs_forward(r)``: :math:`|W| r` (interval arithmetic), (n, d_in) -> (n, d_out);
- ``bias``: shape (d_out,), or (n, d_out) for a per-example operator;
- ``rows(idx)``: the rows :math:`W_{idx,:}` as (1, r, d_in) (or (n, r, d_in) when batched), obtained
  by ``transpose`` of one-hot rows (a plain slice for dense operators): the start of every backward
  bound pass.

Solvers get matrices: ``dense()`` (only sensible when small) and ``scipy(example)`` (a
``scipy.sparse.csr_array``, built from the convolution's structure without a dense detour).
``batched`` operators carry one matrix per example; they arise when a specification matrix
C (n, m, k) is folded into the last layer.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

__all__ = ["AffineOp", "Linear", "Conv2d", "Diagonal", "BatchLinear", "Chain"]

DENSE_LIMIT = 50_000_000  # entries: above this, dense() refuses (use transpose / scipy instead)


class AffineOp:
    """Base class. Subclasses set ``in_features``, ``out_features``, ``bias`` and implement ``linear``,
    ``transpose`` and ``abs_forward``."""

    batched = False
    in_features: int
    out_features: int
    bias: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.bias

    def linear(self, x: torch.Tensor) -> torch.Tensor:  # W x, (n, d_in) -> (n, d_out)
        raise NotImplementedError

    def transpose(self, y: torch.Tensor) -> torch.Tensor:  # W^T y on rows, (n, r, d_out) -> (n, r, d_in)
        raise NotImplementedError

    def abs_forward(self, r: torch.Tensor) -> torch.Tensor:  # |W| r, (n, d_in) -> (n, d_out)
        raise NotImplementedError

    @property
    def dtype(self):
        return self.bias.dtype

    @property
    def device(self):
        return self.bias.device

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (a long tensor of r output indices) of W, shape (1, r, d_in) ((n, r, d_in) when
        batched), from ``transpose`` of one-hot rows: no dense matrix is formed."""
        onehot = torch.zeros(1, idx.numel(), self.out_features, dtype=self.dtype, device=self.device)
        onehot[0, torch.arange(idx.numel(), device=self.device), idx] = 1.0
        return self.transpose(onehot)

    def bias_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """b[idx], shape (1, r) ((n, r) when the bias is per example)."""
        return self.bias[..., idx].reshape(-1, idx.numel())

    def cast(self, dtype) -> "AffineOp":
        """A copy with every tensor attribute converted to ``dtype`` (e.g. float32 for a search)."""
        out = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                setattr(out, name, value.to(dtype))
            elif isinstance(value, list) and value and isinstance(value[0], AffineOp):
                setattr(out, name, [op.cast(dtype) for op in value])
        return out

    def dense(self) -> torch.Tensor:
        """W as a dense tensor, (d_out, d_in) (or (n, d_out, d_in) when batched)."""
        _check_dense_size(self.out_features * self.in_features)
        eye = torch.eye(self.in_features, dtype=self.dtype, device=self.device)
        return self.linear(eye).T.contiguous()

    def scipy(self, example: int | None = None):
        """W as a ``scipy.sparse.csr_array`` in float64 (for a batched operator, that of ``example``)."""
        return sp.csr_array(self.dense().detach().cpu().double().numpy())

    def bias_numpy(self, example: int | None = None) -> np.ndarray:
        """b as a float64 numpy vector (for a batched operator, that of ``example``)."""
        b = self.bias[_example_index(self, example)] if self.batched else self.bias
        return b.detach().cpu().double().numpy()

    def __repr__(self):
        return f"{type(self).__name__}({self.in_features} -> {self.out_features})"


def _check_dense_size(entries: int):
    if entries > DENSE_LIMIT:
        raise ValueError(f"refusing to form a dense matrix with {entries} entries (> {DENSE_LIMIT}); "
                         "use transpose() or scipy() instead")


def _example_index(op, example):
    if example is None:
        raise ValueError(f"{type(op).__name__} holds one matrix per example: pass example=i")
    return example


class Linear(AffineOp):
    """Dense W (d_out, d_in) and b (d_out,), shared by every example."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.bias = torch.zeros(self.out_features, dtype=weight.dtype, device=weight.device) if bias is None else bias

    def linear(self, x):
        return x @ self.weight.T

    def transpose(self, y):
        return y @ self.weight

    def abs_forward(self, r):
        return r @ self.weight.abs().T

    def rows(self, idx):
        return self.weight[idx].unsqueeze(0)

    def dense(self):
        return self.weight

    def scipy(self, example=None):
        return sp.csr_array(self.weight.detach().cpu().double().numpy())


class BatchLinear(AffineOp):
    """One dense matrix per example: W (n, d_out, d_in), b (n, d_out). Folded specifications."""

    batched = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight, bias
        self.batch_size, self.out_features, self.in_features = weight.shape

    def linear(self, x):
        return torch.einsum("nij,nj->ni", self.weight, x)

    def transpose(self, y):
        return torch.einsum("nri,nij->nrj", y, self.weight)

    def abs_forward(self, r):
        return torch.einsum("nij,nj->ni", self.weight.abs(), r)

    def rows(self, idx):
        return self.weight[:, idx]

    def dense(self):
        return self.weight

    def scipy(self, example=None):
        return sp.csr_array(self.weight[_example_index(self, example)].detach().cpu().double().numpy())


class Diagonal(AffineOp):
    """Elementwise x -> scale * x + shift (input normalization, unfolded BatchNorm). ``shape`` is the
    per-example shape it acts on (for folding per-channel factors into a convolution)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, shape: tuple):
        self.scale, self.bias, self.shape = scale.reshape(-1), shift.reshape(-1), tuple(shape)
        self.in_features = self.out_features = self.scale.numel()

    def linear(self, x):
        return x * self.scale

    def transpose(self, y):
        return y * self.scale

    def abs_forward(self, r):
        return r * self.scale.abs()

    def dense(self):
        return torch.diag(self.scale)

    def scipy(self, example=None):
        return sp.diags_array(self.scale.detach().cpu().double().numpy()).tocsr()

    def channel_factors(self):
        """(scale, shift) per channel, each (C,), if constant over the spatial positions of a (C, H, W)
        shape; else None."""
        if len(self.shape) != 3:
            return None
        s, t = self.scale.view(self.shape[0], -1), self.bias.view(self.shape[0], -1)
        if bool((s == s[:, :1]).all()) and bool((t == t[:, :1]).all()):
            return s[:, 0], t[:, 0]
        return None


class Conv2d(AffineOp):
    """A 2-D convolution on flat (C, H, W) vectors. ``pad`` = (left, right, top, bottom) zero padding,
    applied explicitly so asymmetric ('same') padding is exact; the transpose is ``conv_transpose2d``
    followed by cropping the padding."""

    def __init__(self, weight, bias, in_shape, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1):
        self.weight, self.stride, self.pad, self.dilation, self.groups = weight, stride, tuple(pad), dilation, groups
        self.in_shape = tuple(in_shape)
        c, h, w = self.in_shape
        kh, kw = weight.shape[-2:]
        hp, wp = h + pad[2] + pad[3], w + pad[0] + pad[1]
        ho = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"Conv2d with kernel {tuple(weight.shape[-2:])} does not fit input shape {self.in_shape}")
        self.out_shape = (weight.shape[0], ho, wo)
        # conv_transpose2d produces (ho - 1) * s + d * (k - 1) + 1 + output_padding rows: make it the padded size
        self._output_padding = (hp - ((ho - 1) * stride[0] + dilation[0] * (kh - 1) + 1),
                                wp - ((wo - 1) * stride[1] + dilation[1] * (kw - 1) + 1))
        self.in_features, self.out_features = c * h * w, math.prod(self.out_shape)
        b = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device) if bias is None else bias
        self.channel_bias = b
        self.bias = b.repeat_interleave(ho * wo)

    def _conv(self, x, weight):
        x = F.pad(x.reshape(-1, *self.in_shape), self.pad)
        return F.conv2d(x, weight, None, self.stride, 0, self.dilation, self.groups).flatten(1)

    def linear(self, x):
        return self._conv(x, self.weight)

    def abs_forward(self, r):
        return self._conv(r, self.weight.abs())

    def transpose(self, y):
        lead = y.shape[:-1]
        z = F.conv_transpose2d(y.reshape(-1, *self.out_shape), self.weight, None, self.stride, 0,
                               self._output_padding, self.groups, self.dilation)
        left, _, top, _ = self.pad
        h, w = self.in_shape[1:]
        return z[:, :, top:top + h, left:left + w].reshape(*lead, self.in_features)

    def scipy(self, example=None):
        """Sparse W from the convolution's index pattern (no dense matrix)."""
        c, h, w = self.in_shape
        index = torch.arange(1, c * h * w + 1, dtype=torch.float64).view(1, c, h, w)
        index = F.pad(index, self.pad)  # 0 marks padding
        weight = self.weight.detach().cpu().double()
        out_c, c_group = weight.shape[0], c // self.groups
        per_group = out_c // self.groups
        rows, cols, vals = [], [], []
        for g in range(self.groups):
            patches = F.unfold(index[:, g * c_group:(g + 1) * c_group], weight.shape[-2:], self.dilation, 0,
                               self.stride)[0].long()  # (c_group * kh * kw, L)
            length = patches.shape[1]
            for o in range(g * per_group, (g + 1) * per_group):
                wv = weight[o].reshape(-1, 1).expand(-1, length)
                keep = patches > 0
                rows.append((o * length + torch.arange(length)).expand_as(patches)[keep])
                cols.append(patches[keep] - 1)
                vals.append(wv[keep])
        rows, cols, vals = torch.cat(rows).numpy(), torch.cat(cols).numpy(), torch.cat(vals).numpy()
        return sp.csr_array((vals, (rows, cols)), shape=(self.out_features, self.in_features))


class Chain(AffineOp):
    """Consecutive affine operators that cannot be merged exactly into one (e.g. a per-pixel
    normalization before a padded convolution). ``abs_forward`` composes the absolute values, which is
    exact when all but one factor are diagonal and sound otherwise."""

    def __init__(self, ops):
        self.ops = list(ops)
        self.in_features, self.out_features = self.ops[0].in_features, self.ops[-1].out_features
        zero = torch.zeros(1, self.in_features, dtype=self.ops[0].dtype, device=self.ops[0].device)
        self.bias = self._apply(zero, "forward")[0]

    def _apply(self, x, how):
        for op in self.ops:
            x = getattr(op, how)(x)
        return x

    def linear(self, x):
        return self._apply(x, "linear")

    def abs_forward(self, r):
        return self._apply(r, "abs_forward")

    def transpose(self, y):
        for op in reversed(self.ops):
            y = op.transpose(y)
        return y

    def scipy(self, example=None):
        m = self.ops[0].scipy()
        for op in self.ops[1:]:
            m = op.scipy() @ m
        return sp.csr_array(m)

    def __repr__(self):
        return f"Chain({', '.join(map(repr, self.ops))})"


def compose(first: AffineOp, second: AffineOp) -> AffineOp:
    """The operator x -> second(first(x)), merged into one exact operator where that is exact and cheap."""
    if isinstance(first, Chain) or isinstance(second, Chain):
        ops = (first.ops if isinstance(first, Chain) else [first]) + (second.ops if isinstance(second, Chain) else [second])
        return Chain(ops)
    if isinstance(second, Linear) and not second.batched and isinstance(first, (Linear, Diagonal, Conv2d)):
        weight = first.transpose(second.weight.unsqueeze(0))[0]  # W2 W1, computed row-wise
        return Linear(weight, second.weight @ first.bias + second.bias)
    if isinstance(second, Diagonal) and isinstance(first, Linear):
        return Linear(second.scale[:, None] * first.weight, second.scale * first.bias + second.bias)
    if isinstance(second, Diagonal) and isinstance(first, Diagonal):
        return Diagonal(second.scale * first.scale, second.scale * first.bias + second.bias, second.shape)
    if isinstance(second, Diagonal) and isinstance(first, Conv2d) and second.channel_factors() is not None:
        s, t = second.channel_factors()
        return Conv2d(first.weight * s.view(-1, 1, 1, 1), first.channel_bias * s + t, first.in_shape, first.stride,
                      first.pad, first.dilation, first.groups)
    if isinstance(first, Diagonal) and isinstance(second, Conv2d) and not any(second.pad) and second.groups == 1 \
            and first.channel_factors() is not None:  # exact only without padding: padded zeros are not shifted
        s, t = first.channel_factors()
        weight = second.weight * s.view(1, -1, 1, 1)
        bias = second.channel_bias + (second.weight * t.view(1, -1, 1, 1)).sum((1, 2, 3))
        return Conv2d(weight, bias, second.in_shape, second.stride, second.pad, second.dilation, second.groups)
    return Chain([first, second])
