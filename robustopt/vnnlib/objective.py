r"""A property's output condition as a network: one output per disjunct, ``<= 0`` exactly where it holds.

For a property ``OR_i (A_i Y <= b_i)`` and a model f, disjunct i is satisfied at x iff

.. math:: h_i(x) = \max_r \big(A_{ir} f(x) - b_{ir}\big) \le 0,

so the property is **sat** iff :math:`\min_{x \in \text{box}} \min_i h_i(x) \le 0` (a tie, ``h_i = 0``,
is a counterexample) and **unsat** iff every :math:`\min_x h_i(x) > 0`. :func:`objective_model` appends
h to the model as plain layers (``Linear`` and ``ReLU``), so that every tool of the package applies to
it unchanged: PGD minimizes it, the bound methods and the MILP bound it. The maximum over the rows of a
conjunction is a tree of ReLU identities, with :math:`\sigma(t) = \max(t, 0)`,

.. math:: \max(a, b) = \sigma(a - b) + \sigma(b + M_b) - M_b, \qquad c = \sigma(c + M_c) - M_c,

one ReLU layer halving every conjunction (a lone entry passes through), ``ceil(log2 m)`` layers for m
rows. The offsets :math:`M \ge 0` come from interval bounds over the property's box (:math:`b + M_b \ge 1`
there), so the pass-through neurons are stable: the identities are exact on the box and a bound method
loses nothing on them. What it relaxes is :math:`\sigma(a - b)`, whose lower line :math:`\alpha (a - b)`
makes the bound one on :math:`\alpha a + (1 - \alpha) b`: a convex combination of the rows, which
alpha-CROWN optimizes (down the tree, every combination of the conjunction's rows). So a conjunction is
refuted when one row is, or a non-negative combination of its rows is. A property of single-row disjuncts
(local robustness) needs no tree: h is one ``Linear`` layer ``A Y - b``. All weights are the float64 values
of A and b (and ±1, the offsets), so h is the property's function on its box; witnesses are still replayed
on the original model (:meth:`Property.check_witness`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models import model_device
from .property import Property

__all__ = ["objective_model", "ObjectiveView"]


def _linear(weight, bias, device) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64, device=device)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float64))
        layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float64))
    return layer.requires_grad_(False)


def _max_step(groups, offsets):
    """One ReLU layer of the max tree. ``groups``: lists of positions in the current vector (one per
    disjunct); ``offsets`` (width,): M per position (the entry + M >= 0 on the box). Returns (pre (p, width),
    pre bias (p,), post (g, p), post bias (g,), new groups): the pre-activations are a - b, b + M_b per pair
    and c + M_c per lone entry; ``post`` recombines them after the ReLU."""
    width = sum(len(g) for g in groups)
    pre_rows, pre_bias, post_rows, post_bias, new_groups = [], [], [], [], []
    for group in groups:
        new = []
        for t in range(0, len(group), 2):
            pair = group[t:t + 2]
            last = pair[-1]  # b of a pair, c of a lone entry: passed through
            rows = [{pair[0]: 1.0, last: -1.0}] if len(pair) == 2 else []
            post_rows.append({len(pre_rows) + s: 1.0 for s in range(len(rows) + 1)})
            post_bias.append(-offsets[last])
            pre_rows += rows + [{last: 1.0}]
            pre_bias += [0.0] * len(rows) + [offsets[last]]
            new.append(len(post_rows) - 1)
        new_groups.append(new)
    return _matrix(pre_rows, width), np.array(pre_bias), _matrix(post_rows, len(pre_rows)), np.array(post_bias), \
        new_groups


def _matrix(rows, width):
    out = np.zeros((len(rows), width))
    for r, row in enumerate(rows):
        for c, v in row.items():
            out[r, c] = v
    return out


def _offsets(layers, prop, shape):
    """M >= 0 per output of ``nn.Sequential(*layers)`` with output + M >= 1 over the property's box (interval
    bounds; the margin of 1 absorbs rounding)."""
    from ..verify import logit_bounds

    x, eps, lower, upper = prop.ball(shape, torch.float64, model_device(layers[0]))
    low, _ = logit_bounds(nn.Sequential(*layers), x, eps, "inf", "ibp", lower, upper)
    return np.maximum(0.0, 1.0 - low[0].detach().cpu().numpy())


def objective_model(model: nn.Module, prop: Property, disjuncts=None, input_shape=None) -> nn.Sequential:
    """``nn.Sequential(model, ...)`` computing :math:`h_i(x)` (see the module docstring) for the disjuncts
    ``disjuncts`` (indices, default all), shape (n, len(disjuncts)), in float64 on the model's device, exactly
    on the property's box. The model itself is copied in float64 (``model.double()`` on a copy), so the whole
    network is float64. ``input_shape``: of one input (default ``model.input_shape``, else flat)."""
    import copy

    disjuncts = range(len(prop.disjuncts)) if disjuncts is None else [int(i) for i in disjuncts]
    parts = [prop.disjuncts[i] for i in disjuncts]
    if not parts:
        raise ValueError("disjuncts must name at least one disjunct of the property")
    device = model_device(model)
    base = copy.deepcopy(model).to(dtype=torch.float64).eval().requires_grad_(False)
    A = np.concatenate([a for a, _ in parts])
    b = np.concatenate([bb for _, bb in parts])
    layers = [base, _linear(A, -b, device)]
    starts = np.cumsum([0] + [len(bb) for _, bb in parts])
    groups = [list(range(s, e)) for s, e in zip(starts[:-1], starts[1:])]
    shape = tuple(input_shape or getattr(model, "input_shape", (prop.num_inputs,)))
    while any(len(g) > 1 for g in groups):
        pre, pre_bias, post, post_bias, groups = _max_step(groups, _offsets(layers, prop, shape))
        layers += [_linear(pre, pre_bias, device), nn.ReLU(), _linear(post, post_bias, device)]
    out = nn.Sequential(*layers)
    if hasattr(model, "input_shape"):
        out.input_shape = tuple(model.input_shape)
    return out


class ObjectiveView(nn.Module):
    """Logits ``[0, -h_1(x), ..., -h_D(x)]`` (n, D + 1) for an objective model h: with label 0 the
    attack margin :math:`f_0 - \\max_{j \\ne 0} f_j` is :math:`\\min_i h_i(x)`, and the pairwise
    margin against class i is :math:`h_i(x)`. So ``robustopt.attacks.pgd(view, x, 0, ..., loss="margin")``
    minimizes the property's objective, and its multi-targeted mode attacks each disjunct."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        self.objective = objective

    def forward(self, x):
        h = self.objective(x)
        return torch.cat([torch.zeros_like(h[:, :1]), -h], dim=1)
