r"""A property's output condition as a network: one output per disjunct, ``<= 0`` exactly where it holds.

For a property ``OR_i (A_i Y <= b_i)`` and a model f, disjunct i is satisfied at x iff

.. math:: h_i(x) = \max_r \big(A_{ir} f(x) - b_{ir}\big) \le 0,

so the property is **sat** iff :math:`\min_{x \in \text{box}} \min_i h_i(x) \le 0` (a tie, ``h_i = 0``,
is a counterexample) and **unsat** iff every :math:`\min_x h_i(x) > 0`. :func:`objective_model` appends
h to the model as plain layers (``Linear`` and ``ReLU``), so that every tool of the package applies to
it unchanged: PGD minimizes it, the bound methods and the MILP bound it. The maximum over the rows of a
conjunction is a tree of exact ReLU identities, with :math:`\sigma(t) = \max(t, 0)`:

.. math:: \max(a, b) = \sigma(a - b) + \sigma(b) - \sigma(-b), \qquad c = \sigma(c) - \sigma(-c),

one ReLU layer halving every conjunction (a lone entry passes through), ``ceil(log2 m)`` layers for m
rows. A property of single-row disjuncts (local robustness) needs no tree: h is one ``Linear`` layer
``A Y - b``. All weights are the float64 values of A and b (and ±1), so h is the property's function
exactly; witnesses are still replayed on the original model (:meth:`Property.check_witness`).
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


def _max_step(groups):
    """One ReLU layer of the max tree. ``groups``: lists of positions in the current vector (one per
    disjunct). Returns (pre (p, width), post (g, p), new groups): the pre-activations are a - b, b, -b
    per pair and c, -c per lone entry; ``post`` recombines them after the ReLU."""
    width = sum(len(g) for g in groups)
    pre_rows, post_rows, new_groups = [], [], []
    for group in groups:
        new = []
        for t in range(0, len(group), 2):
            pair = group[t:t + 2]
            if len(pair) == 2:
                a, b = pair
                rows, signs = [{a: 1.0, b: -1.0}, {b: 1.0}, {b: -1.0}], [1.0, 1.0, -1.0]
            else:
                rows, signs = [{pair[0]: 1.0}, {pair[0]: -1.0}], [1.0, -1.0]
            post_rows.append({len(pre_rows) + s: sign for s, sign in enumerate(signs)})
            pre_rows += rows
            new.append(len(post_rows) - 1)
        new_groups.append(new)
    pre = np.zeros((len(pre_rows), width))
    for r, row in enumerate(pre_rows):
        for c, v in row.items():
            pre[r, c] = v
    post = np.zeros((len(post_rows), len(pre_rows)))
    for r, row in enumerate(post_rows):
        for c, v in row.items():
            post[r, c] = v
    return pre, post, new_groups


def objective_model(model: nn.Module, prop: Property, disjuncts=None) -> nn.Sequential:
    """``nn.Sequential(model, ...)`` computing :math:`h_i(x)` (see the module docstring) for the disjuncts
    ``disjuncts`` (indices, default all), shape (n, len(disjuncts)), in float64 on the model's device.
    The model itself is copied in float64 (``model.double()`` on a copy), so the whole network is float64."""
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
    while any(len(g) > 1 for g in groups):
        pre, post, groups = _max_step(groups)
        layers += [_linear(pre, np.zeros(len(pre)), device), nn.ReLU(),
                   _linear(post, np.zeros(len(post)), device)]
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
