r"""Backward bounds of convolutional neurons through windows ("patches", as auto_LiRPA calls them).

A neuron (c, i, j) of a convolution only sees a window of the layer before it, and through a stack of
convolutions a window of the input: with strides :math:`s_m`, kernels :math:`k_m` and top padding
:math:`p_m`, the window of the rows at output position i, in the coordinates of the input of
convolution m, starts at :math:`T_m(i) = i S_m + O_m` and has size :math:`h_m`, where going one
convolution back maps :math:`(S, O, h) \mapsto (S s_m, O s_m - p_m, (h - 1) s_m + k_m)` (likewise for
columns). CROWN's backward pass for such rows (:mod:`.crown`) is then carried on windows instead of
whole layers: the ReLU relaxation's slopes and intercepts are gathered at the window's positions (zero
outside the layer: padding is a constant 0, not a neuron), the convolution's transpose maps each window
to its preimage (one small window-to-window matrix, the same for every window), and at the input the linear function is minimized over the box
gathered the same way. The values equal the whole-layer pass (:func:`~.crown.bound_rows`); the work per
row is the window's size instead of the layer's.

Used by CROWN / alpha-CROWN / beta-CROWN for the intermediate bounds of a convolution preceded only by
convolutions (groups 1, no dilation), on l_inf balls; anything else takes the whole-layer pass.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .backward import FeatureSlopes
from .operators import Conv2d


def applies(net, k, ball) -> bool:
    """Whether rows of layer k can be bounded on windows: affine[0..k] plain convolutions, an l_inf ball."""
    return ball.norm == "inf" and k > 0 and all(
        isinstance(op, Conv2d) and op.groups == 1 and tuple(op.dilation) == (1, 1) and not op.batched
        for op in net.affine[:k + 1])


def _window_index(pos, start, size, shape):
    """Flat indices (R, C*h*w) of each row's window in a (C, H, W) map, H*W*C (a zero slot) outside it.
    ``pos`` = (i, j) long tensors (R,), ``start`` = ((S_y, O_y), (S_x, O_x)), ``size`` = (h, w)."""
    (sy, oy), (sx, ox) = start
    c, height, width = shape
    ys = pos[0].view(-1, 1) * sy + oy + torch.arange(size[0], device=pos[0].device).view(1, -1)  # (R, h)
    xs = pos[1].view(-1, 1) * sx + ox + torch.arange(size[1], device=pos[0].device).view(1, -1)  # (R, w)
    inside = ((ys >= 0) & (ys < height)).unsqueeze(2) & ((xs >= 0) & (xs < width)).unsqueeze(1)  # (R, h, w)
    flat = ys.clamp(0, height - 1).unsqueeze(2) * width + xs.clamp(0, width - 1).unsqueeze(1)
    chans = torch.arange(c, device=flat.device).view(1, c, 1, 1) * (height * width)
    index = torch.where(inside.unsqueeze(1), flat.unsqueeze(1) + chans, c * height * width)
    return index.flatten(1)


def _gather(values, index):
    """values (n, 1 or R, d) -> (n, R, len window): each row's window, 0 at the zero slot."""
    ext = torch.cat([values, values.new_zeros(*values.shape[:-1], 1)], -1)
    if ext.shape[1] == 1:
        return ext[:, 0][:, index]
    return torch.gather(ext, 2, index.unsqueeze(0).expand(ext.shape[0], -1, -1))


@dataclass
class Window:
    """The windows, in a (C, H, W) map ``shape``, of rows at grid positions ``pos`` = (i, j) (long (R,) each)
    on a grid (rows, columns) ``grid``: row r's window starts at (i S_y + O_y, j S_x + O_x), ``start`` =
    ((S_y, O_y), (S_x, O_x)), and has size ``size`` = (h, w)."""

    pos: tuple
    start: tuple
    size: tuple
    shape: tuple
    grid: tuple

    @functools.cached_property
    def index(self):
        return _window_index(self.pos, self.start, self.size, self.shape)

    def gather(self, values):
        """values (n, 1 or R, C*H*W) -> (n, R, C*h*w), 0 outside the map. One row of values (a map shared by
        all rows) goes through ``unfold`` (every grid position's window once), then each row takes its own."""
        if values.shape[1] != 1:
            return _gather(values, self.index)
        (sy, oy), (sx, ox) = self.start
        (h, w), (c, height, width), (rows, cols) = self.size, self.shape, self.grid
        top, left = max(0, -oy), max(0, -ox)
        bottom = max(0, (rows - 1) * sy + oy + h - height)
        right = max(0, (cols - 1) * sx + ox + w - width)
        maps = F.pad(values.reshape(-1, c, height, width), (left, right, top, bottom))
        maps = maps[:, :, oy + top:, ox + left:]
        windows = F.unfold(maps, (h, w), stride=(sy, sx))  # (n, C*h*w, positions)
        n_cols = (maps.shape[-1] - w) // sx + 1
        return windows.transpose(1, 2).index_select(1, self.pos[0] * n_cols + self.pos[1])


@dataclass
class WindowSlopes:
    """Lower slopes of one ReLU layer stored on the bounded rows' windows: ``values`` (n, R, C*h*w), the slope
    of each window position of each row (alpha-CROWN's slopes for the rows of a convolution: a row only ever
    reads its window, so this is all of them, at a fraction of the (n, R, layer width) a whole-layer copy takes)."""

    values: torch.Tensor


def _lower_slopes(relax, alpha, window):
    """The relaxation's lower slopes on each row's window, (n, R, len window); slopes kept for some neurons
    only (:class:`~.backward.FeatureSlopes`) are gathered from their compact storage, :class:`WindowSlopes`
    are already on the windows."""
    if isinstance(alpha, WindowSlopes):
        compact = alpha.values
    elif isinstance(alpha, FeatureSlopes):
        where = torch.full((alpha.width + 1,), alpha.features.numel(), dtype=torch.long, device=alpha.values.device)
        where[alpha.features] = torch.arange(alpha.features.numel(), device=alpha.values.device)
        compact = _gather(alpha.values, where[window.index])  # the zero slot of `values` is its last column + 1
    else:
        return window.gather(relax.lower_slope(alpha))
    unstable = window.gather(relax.unstable.to(relax.active.dtype)) > 0
    return torch.where(unstable, compact, window.gather(relax.active))


STENCIL_ENTRIES = 1 << 22  # largest window-to-window matrix formed (else conv_transpose2d on the windows)


def _transpose_windows(op, flat, size):
    """W^T of convolution ``op`` on windows: ``flat`` (n, R, C_out*h*w) of size ``size`` = (h, w) ->
    (n, R, C_in*h'*w'), the windows' preimages (h' = (h - 1) s + k).
    The map between a window and its preimage is the same for every window: a small matrix (the
    convolution restricted to the window, built by ``conv_transpose2d`` of one-hot windows and cached on the
    operator), so the step is one matrix product; above STENCIL_ENTRIES, ``conv_transpose2d`` of the windows."""
    (kh, kw), (sy, sx) = op.weight.shape[-2:], op.stride
    d_in, d_out = flat.shape[-1], op.weight.shape[1] * ((size[0] - 1) * sy + kh) * ((size[1] - 1) * sx + kw)
    if d_in * d_out > STENCIL_ENTRIES:
        n, rows = flat.shape[:2]
        windows = F.conv_transpose2d(flat.reshape(n * rows, op.out_shape[0], *size), op.weight, None, op.stride)
        return windows.reshape(n, rows, -1)
    cache = {} if op.weight.requires_grad else op.__dict__.setdefault("_stencils", {})  # no stale graphs
    key = (size, op.weight.dtype, op.weight.device)
    if key not in cache:
        eye = torch.eye(d_in, dtype=op.weight.dtype, device=op.weight.device).view(d_in, op.out_shape[0], *size)
        cache[key] = F.conv_transpose2d(eye, op.weight, None, op.stride).flatten(1)
    return flat @ cache[key]


def _windows(net, k, idx):
    """The windows of the rows ``idx`` of convolution k, both signs (2r rows): one :class:`Window` per
    convolution m = k-1, ..., 0 (in its output map), then the input's."""
    op = net.affine[k]
    _, out_h, out_w = op.out_shape
    rest = idx % (out_h * out_w)
    pos = torch.cat([rest // out_w] * 2), torch.cat([rest % out_w] * 2)
    (sy, sx), (left, _, top, _) = op.stride, op.pad
    start, size = ((sy, -top), (sx, -left)), tuple(op.weight.shape[-2:])
    chain = []
    for m in range(k - 1, -1, -1):
        inner = net.affine[m]
        chain.append(Window(pos, start, size, inner.out_shape, (out_h, out_w)))
        (kh, kw), (s_y, s_x), (left, _, top, _) = inner.weight.shape[-2:], inner.stride, inner.pad
        start = ((start[0][0] * s_y, start[0][1] * s_y - top), (start[1][0] * s_x, start[1][1] * s_x - left))
        size = ((size[0] - 1) * s_y + kh, (size[1] - 1) * s_x + kw)
    return chain + [Window(pos, start, size, net.in_shape, (out_h, out_w))]


def window_slopes(net, k, idx, m, slope):
    """``slope`` (n, 1, h_m) of ReLU layer m gathered on the windows of rows ``idx`` of convolution k (both
    signs): the starting :class:`WindowSlopes` values, (n, 2r, C_m*h*w)."""
    return _windows(net, k, idx)[k - 1 - m].gather(slope)


def window_width(net, k, m) -> int:
    """Positions in the window that a row of convolution k sees of ReLU layer m < k."""
    window = _windows(net, k, torch.zeros(1, dtype=torch.long))[k - 1 - m]
    return window.shape[0] * window.size[0] * window.size[1]


def bound_rows(net, k, idx, relaxations, alphas, x, ball):
    """CROWN bounds (lower, upper), each (n, r), of the neurons ``idx`` of convolution k (see the module
    docstring); ``alphas[m]`` (n, 1 or 2r, h_m) as in :func:`.crown.propagate`, or :class:`WindowSlopes`."""
    op = net.affine[k]
    _, out_h, out_w = op.out_shape
    r = idx.numel()
    c = idx // (out_h * out_w)
    coef = op.weight[c].unsqueeze(0)  # (1, r, C, kh, kw)
    coef = torch.cat([coef, -coef], 1)
    bias = torch.cat([op.channel_bias[c], -op.channel_bias[c]]).unsqueeze(0)
    *chain, at_input = _windows(net, k, idx)
    for m, window in zip(range(k - 1, -1, -1), chain):
        relax, inner = relaxations[m], net.affine[m]
        flat = coef.flatten(2) if coef.dim() > 3 else coef
        pos_part, neg_part = flat.clamp(min=0), flat.clamp(max=0)
        bias = bias + (neg_part * window.gather(relax.upper_intercept)).sum(-1)
        flat = pos_part * _lower_slopes(relax, alphas[m], window) + neg_part * window.gather(relax.upper_slope)
        bias = bias + (flat * window.gather(inner.bias.view(1, 1, -1))).sum(-1)
        coef = _transpose_windows(inner, flat, window.size)
    lo, hi = ball.box(x)
    centre, radius = at_input.gather(((hi + lo) / 2).unsqueeze(1)), at_input.gather(((hi - lo) / 2).unsqueeze(1))
    flat = coef.flatten(2) if coef.dim() > 3 else coef
    both = bias + (flat * centre).sum(-1) - (flat.abs() * radius).sum(-1)
    return both[:, :r], -both[:, r:]
