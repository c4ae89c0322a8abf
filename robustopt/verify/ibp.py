r"""Interval bound propagation (IBP).

Pre-activation bounds are pushed forward one layer at a time: with post-activation interval
:math:`[\underline a, \overline a]` (centre c, radius r), the next pre-activation lies in
:math:`W c + b \pm |W| r`, and :math:`[\sigma(l), \sigma(u)]` bounds the ReLU. The first layer is
bounded exactly over ball ∩ box (for l_inf that is the interval of ``ball.box(x)``; for l_2 / l_1 the
support function of the set). The specification is already folded into the last layer, so margins are
bounded through :math:`|C W|` rather than by differencing logit intervals.
"""
from __future__ import annotations

import torch

from .methods import COMMON_OPTIONS, Bounds, minimize_linear

NORMS = ("inf", 2, 1)
OPTIONS = COMMON_OPTIONS
SOLVER = False


def first_layer_bounds(op, x, ball):
    """Exact bounds (l, u) on op(x') over the ball, each (n, d_out)."""
    if ball.norm == "inf":
        lo, hi = ball.box(x)
        centre, radius = op.forward((hi + lo) / 2), op.abs_forward((hi - lo) / 2)
        return centre - radius, centre + radius
    rows = op.dense() if not op.batched else op.weight
    rows = rows.unsqueeze(0) if rows.dim() == 2 else rows
    both = minimize_linear(torch.cat([rows, -rows], 1), x, ball)
    h = op.out_features
    return both[:, :h] + op.bias, -both[:, h:] + op.bias


def interval_forward(op, lower, upper):
    """Bounds on op(a) for a in [lower, upper] (interval arithmetic), each (n, d_out)."""
    centre, radius = op.forward((upper + lower) / 2), op.abs_forward((upper - lower) / 2)
    return centre - radius, centre + radius


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False) -> Bounds:
    """IBP bounds on the outputs of ``net``; ``intermediate`` replaces the computed pre-activation bounds."""
    lo, hi = first_layer_bounds(net.affine[0], x, ball)
    used = []
    for k, op in enumerate(net.affine[1:]):
        if intermediate is not None:
            lo, hi = intermediate[k]
        used.append((lo, hi))
        lo, hi = interval_forward(op, torch.relu(lo), torch.relu(hi))
    return Bounds(lower=lo, upper=hi if compute_upper else None, intermediate=used if return_intermediate else None)
