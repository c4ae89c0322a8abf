r"""CROWN / DeepPoly: backward linear bound propagation.

Each ReLU :math:`a = \sigma(z)` with pre-activation bounds :math:`l \le z \le u` is sandwiched between
two lines. Stable neurons are exact (:math:`a = z` if :math:`l \ge 0`, :math:`a = 0` if :math:`u \le 0`);
an unstable one (:math:`l < 0 < u`) has the chord above, :math:`a \le s (z - l)` with
:math:`s = u / (u - l)`, and a line through the origin below, :math:`a \ge \alpha z`, where the
*relaxation* picks :math:`\alpha \in [0, 1]`:

- ``"adaptive"`` (CROWN, auto_LiRPA's rule): :math:`\alpha = 1` if :math:`u > -l`, else 0;
- ``"same-slope"`` (Wong–Kolter): :math:`\alpha = s`, the chord's slope;
- ``"optimized"``: per example, spec row and neuron, by projected gradient (:mod:`.alpha_crown`).

To bound :math:`\Lambda z_K` from below, go backwards: a coefficient :math:`\lambda` on :math:`a_k`
becomes :math:`\lambda^+ \alpha + \lambda^- s` on :math:`z_k` (plus :math:`\lambda^- \cdot (-s l)`), then
:math:`W_k^\top` on :math:`a_{k-1}` (plus :math:`\lambda \cdot b_k`), down to the input, where the linear
function is minimized exactly over ball ∩ box (:func:`~.methods.minimize_linear`). Intermediate
bounds are computed the same way, layer by layer (rows :math:`\pm I`), unless given.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import check_choice
from .ibp import first_layer_bounds
from .methods import COMMON_OPTIONS, Bounds, minimize_linear

NORMS = ("inf", 2, 1)
OPTIONS = COMMON_OPTIONS | {"relaxation"}
SOLVER = False
RELAXATIONS = ("adaptive", "same-slope", "optimized")
ROW_CHUNK_ENTRIES = 1 << 25  # entries of one (n, rows, width) coefficient tensor (256 MiB in float64)


@dataclass
class ReluRelaxation:
    """Linear bounds on one ReLU layer from its pre-activation bounds (each tensor (n, 1, h), so it
    broadcasts over the rows of a coefficient tensor (n, r, h))."""

    active: torch.Tensor  # 1.0 where l >= 0
    unstable: torch.Tensor  # bool, l < 0 < u
    upper_slope: torch.Tensor  # s: u / (u - l) if unstable, 1 if active, 0 if inactive
    upper_intercept: torch.Tensor  # -s l if unstable, else 0

    @classmethod
    def from_bounds(cls, lower, upper):
        lower, upper = lower.unsqueeze(1), upper.unsqueeze(1)
        active, unstable = lower >= 0, (lower < 0) & (upper > 0)
        width = torch.where(unstable, upper - lower, torch.ones_like(upper))
        slope = torch.where(unstable, upper / width, active.to(lower.dtype))
        intercept = torch.where(unstable, -slope * lower, torch.zeros_like(lower))
        return cls(active.to(lower.dtype), unstable, slope, intercept)

    def rule_slope(self, rule: str, lower, upper):
        """The lower slope alpha of a fixed rule ("adaptive" or "same-slope"), (n, 1, h)."""
        if rule == "same-slope":
            return self.upper_slope
        return (upper > -lower).to(lower.dtype).unsqueeze(1)  # adaptive; stable neurons are masked later

    def lower_slope(self, alpha):
        return torch.where(self.unstable, alpha, self.active)

    def backward(self, coef, bias, alpha):
        """Coefficient on z and accumulated bias, given a coefficient ``coef`` (n, r, h) on a = relu(z)."""
        pos, neg = coef.clamp(min=0), coef.clamp(max=0)
        bias = bias + (neg * self.upper_intercept).sum(-1)
        return pos * self.lower_slope(alpha) + neg * self.upper_slope, bias


def _bias_term(coef, bias_vector):
    """<coef_r, b> for each row: coef (n, r, h), b (h,) or (n, h) -> (n, r)."""
    return (coef @ bias_vector.unsqueeze(-1)).squeeze(-1)


def output_rows(op, both_signs=False):
    """(rows, bias) of an operator as a linear form on its input: rows (1, h, d) shared or (n, h, d), bias
    (1, h) or (n, h); with ``both_signs``, the negated rows appended (2h rows: lower and upper bounds)."""
    rows = op.weight if op.batched else op.dense().unsqueeze(0)
    bias = op.bias.unsqueeze(0) if op.bias.dim() == 1 else op.bias
    if both_signs:
        rows, bias = torch.cat([rows, -rows], 1), torch.cat([bias, -bias], -1)
    return rows, bias


def propagate(net, coef, bias, depth, relaxations, alphas, x, ball):
    """Lower bound of ``coef . a_depth + bias`` over the ball, with a_depth the output of ReLU layer
    ``depth`` (depth = -1: the input itself). ``coef`` (n or 1, r, h), ``bias`` (n or 1, r);
    ``relaxations[k]`` / ``alphas[k]`` for each ReLU layer k <= depth. Returns (n, r)."""
    for k in range(depth, -1, -1):
        coef, bias = relaxations[k].backward(coef, bias, alphas[k])
        op = net.affine[k]
        bias = bias + _bias_term(coef, op.bias)
        coef = op.transpose(coef)
    return bias + minimize_linear(coef, x, ball)


def bound_affine(net, k, relaxations, alphas, x, ball, upper=True):
    """Bounds (lower, upper or None) on z_k = affine[k](a_{k-1}), each (n, h_k)."""
    rows, bias = output_rows(net.affine[k], upper)
    # rows are independent: bound them in chunks so that one coefficient tensor stays below ROW_CHUNK_ENTRIES
    width = max(op.in_features for op in net.affine[:k + 1])
    step = max(1, ROW_CHUNK_ENTRIES // (x.shape[0] * width))
    both = torch.cat([propagate(net, rows[:, i:i + step], bias[:, i:i + step], k - 1, relaxations, alphas, x, ball)
                      for i in range(0, rows.shape[1], step)], 1)
    h = net.affine[k].out_features
    return (both[:, :h], -both[:, h:]) if upper else (both, None)


def intermediate_bounds(net, x, ball, relaxation="adaptive", intermediate=None):
    """Pre-activation bounds of every ReLU layer (computed with ``relaxation`` unless ``intermediate``
    is given), with their relaxations and fixed-rule lower slopes."""
    bounds, relaxations, alphas = [], [], []
    for k in range(len(net.relu_sizes)):
        if intermediate is not None:
            lo, hi = intermediate[k]
        elif k == 0:
            lo, hi = first_layer_bounds(net.affine[0], x, ball)
        else:
            lo, hi = bound_affine(net, k, relaxations, alphas, x, ball)
        bounds.append((lo, hi))
        relaxations.append(ReluRelaxation.from_bounds(lo, hi))
        alphas.append(relaxations[-1].rule_slope(relaxation, lo, hi))
    return bounds, relaxations, alphas


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, relaxation="adaptive") -> Bounds:
    """CROWN bounds on the outputs of ``net`` with the given ReLU ``relaxation``."""
    check_choice(relaxation, RELAXATIONS, "relaxation")
    if relaxation == "optimized":
        from . import alpha_crown
        return alpha_crown.bounds(net, x, ball, compute_upper=compute_upper, intermediate=intermediate,
                                  return_intermediate=return_intermediate)
    used, relaxations, alphas = intermediate_bounds(net, x, ball, relaxation, intermediate)
    lower, upper_bound = bound_affine(net, len(net.affine) - 1, relaxations, alphas, x, ball, compute_upper)
    return Bounds(lower=lower, upper=upper_bound, intermediate=used if return_intermediate else None)
