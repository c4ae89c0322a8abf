r"""Interval bound propagation (IBP).

Pre-activation bounds are pushed forward one layer at a time: with post-activation interval
:math:`[\underline a, \overline a]` (centre c, radius r), the next pre-activation lies in
:math:`W c + b \pm |W| r`, and :math:`[\sigma(l), \sigma(u)]` bounds the ReLU. Both products go through
the operator (``forward`` / ``abs_forward``: a convolution stays a convolution), never a dense matrix.
The first layer is bounded exactly over ball ∩ box (for l_inf that is the interval of ``ball.box(x)``;
for l_2 / l_1 the support function of the set, row by row in chunks). The specification is already
folded into the last layer, so margins are bounded through :math:`|C W|` rather than by differencing
logit intervals. ``splits=`` clamps each layer's bounds (:mod:`.backward`).
"""
from __future__ import annotations

import torch

from .backward import apply_split, check_memory, finish, first_recomputed, intersect, rows_per_chunk
from .methods import COMMON_OPTIONS, Bounds, minimize_linear

NORMS = ("inf", 2, 1)
OPTIONS = COMMON_OPTIONS | {"splits", "memory"}
SOLVER = False
EXACT = False
TAKES_TIME_LIMIT = False
TAKES_STOP_AT = False
TAKES_SPLITS = True


def first_layer_bounds(op, x, ball, memory=None):
    """Exact bounds (l, u) on op(x') over the ball, each (n, d_out)."""
    if ball.norm == "inf":
        lo, hi = ball.box(x)
        return interval_forward(op, lo, hi)
    h, n = op.out_features, x.shape[0]
    step = max(1, rows_per_chunk(n, op.in_features, x.element_size(), check_memory(memory)) // 2)
    lows, ups = [], []
    for idx in torch.arange(h, device=x.device).split(step):
        rows, bias = op.rows(idx), op.bias_rows(idx)
        both = minimize_linear(torch.cat([rows, -rows], 1), x, ball)
        lows.append(both[:, :idx.numel()] + bias)
        ups.append(-both[:, idx.numel():] + bias)
    return torch.cat(lows, 1), torch.cat(ups, 1)


def interval_forward(op, lower, upper):
    """Bounds on op(a) for a in [lower, upper] (interval arithmetic), each (n, d_out)."""
    centre, radius = op.forward((upper + lower) / 2), op.abs_forward((upper - lower) / 2)
    return centre - radius, centre + radius


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, splits=None,
           memory=None) -> Bounds:
    """IBP bounds on the outputs of ``net``; ``intermediate`` replaces the computed pre-activation bounds."""
    start = first_recomputed(intermediate, splits, len(net.relu_sizes))
    used, infeasible = [], torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    lo = hi = None
    for k, op in enumerate(net.affine):
        given = None if intermediate is None or k == len(net.affine) - 1 else intermediate[k]
        if k < start and given is not None:
            lo, hi = given
        else:
            lo, hi = first_layer_bounds(op, x, ball, memory) if k == 0 else \
                interval_forward(op, torch.relu(lo), torch.relu(hi))
            lo, hi = intersect((lo, hi), given)
        if k == len(net.affine) - 1:
            break
        lo, hi, empty = apply_split(lo, hi, None if splits is None else splits[k], given is not None)
        infeasible |= empty
        used.append((lo, hi))
    lo, hi = finish(lo, hi if compute_upper else None, infeasible)
    return Bounds(lower=lo, upper=hi, intermediate=used if return_intermediate else None, infeasible=infeasible)
