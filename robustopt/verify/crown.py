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
function is minimized exactly over ball ∩ box (:func:`~.methods.minimize_linear`). Every step goes
through the operator's ``transpose`` (``conv_transpose2d`` for a convolution): no dense matrix is formed.

Intermediate bounds are computed layer by layer, unless given (``intermediate=``; with ``splits``, the layers
after the first split one are bounded again, or those from ``recompute_from`` on): a bound on neuron j of layer
k starts from row j of :math:`W_k` (``op.rows``: the transpose of a one-hot row) and runs the same backward
pass. Only the neurons that one IBP step from the previous layer leaves unstable get a pass, chunked
under the ``memory`` budget (:mod:`.backward`; ``skip_stable=False`` bounds every neuron); ``splits=``
clamps each layer's bounds before the next layer is bounded, and flags the domains it proves empty.

``skip_stable=None`` (default) means True for the adaptive and optimized relaxations (auto_LiRPA's
practice: on the test networks the bounds are then equal to or tighter than bounding every neuron, never
looser) and False for ``"same-slope"``: its slope :math:`u/(u-l)` depends on the bound values, and taking
stability from IBP loosened the Wong–Kolter bound on some networks (so it stays the published method).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import check_choice
from .backward import (FeatureSlopes, apply_split, both_signs, check_memory, check_skip_stable, finish,
                       first_recomputed, intersect, refine, rows_per_chunk)
from . import patches
from .ibp import first_layer_bounds, interval_forward
from .methods import COMMON_OPTIONS, Bounds, minimize_linear

NORMS = ("inf", 2, 1)
OPTIONS = COMMON_OPTIONS | {"relaxation", "splits", "memory", "skip_stable", "recompute_from"}
SOLVER = False
EXACT = False
TAKES_TIME_LIMIT = False
TAKES_STOP_AT = False
TAKES_SPLITS = True
RELAXATIONS = ("adaptive", "same-slope", "optimized")


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
        if isinstance(alpha, FeatureSlopes):
            alpha = alpha.full()
        return torch.where(self.unstable, alpha, self.active)

    def backward(self, coef, bias, alpha):
        """Coefficient on z and accumulated bias, given a coefficient ``coef`` (n, r, h) on a = relu(z)."""
        lower, neg = self.lower_slope(alpha), coef.clamp(max=0)
        bias = bias + (neg @ self.upper_intercept.transpose(1, 2)).squeeze(-1)
        # coef⁺ alpha + coef⁻ s, as coef alpha + coef⁻ (s - alpha): fewer passes over (n, r, h)
        return torch.addcmul(coef * lower, neg, self.upper_slope - lower), bias


def _bias_term(coef, bias_vector):
    """<coef_r, b> for each row: coef (n, r, h), b (h,) or (n, h) -> (n, r)."""
    return (coef @ bias_vector.unsqueeze(-1)).squeeze(-1)


def backsubstitute(net, coef, bias, depth, relaxations, alphas, betas=None):
    r"""The linear lower bound :math:`A x + c \le` ``coef . a_depth + bias`` on the inputs x where the
    relaxations hold, with a_depth the output of ReLU layer ``depth`` (depth = -1: the input itself).
    ``coef`` (n or 1, r, h), ``bias`` (n or 1, r); ``relaxations[k]`` / ``alphas[k]`` for each ReLU layer
    k <= depth. ``betas``: None, or per ReLU layer None or a term (n, r, h_k) added to the coefficient on z_k
    (beta-CROWN's split multipliers, already signed). Returns (A (n, r, d), c (n, r))."""
    for k in range(depth, -1, -1):
        coef, bias = relaxations[k].backward(coef, bias, alphas[k])
        if betas is not None and betas[k] is not None:
            coef = coef + betas[k]
        op = net.affine[k]
        bias = bias + _bias_term(coef, op.bias)
        coef = op.transpose(coef)
    return coef, bias


def propagate(net, coef, bias, depth, relaxations, alphas, x, ball, betas=None):
    """Lower bound of ``coef . a_depth + bias`` over the ball: :func:`backsubstitute`'s linear bound minimized
    over the ball. Returns (n, r)."""
    coef, bias = backsubstitute(net, coef, bias, depth, relaxations, alphas, betas)
    return bias + minimize_linear(coef, x, ball)


def path_width(net, k):
    """The widest coefficient a backward pass from layer k carries (for chunking)."""
    return max(op.in_features for op in net.affine[:k + 1])


def bound_rows(net, k, idx, relaxations, alphas, x, ball):
    """CROWN bounds (lower, upper), each (n, r), on the neurons ``idx`` ((r,), or (n, r) per example) of
    z_k = affine[k](a_{k-1}) (on windows when layer k is a convolution after convolutions: :mod:`.patches`, the
    same values; shared ``idx`` only)."""
    if patches.applies(net, k, ball):
        return patches.bound_rows(net, k, idx, relaxations, alphas, x, ball)
    coef, bias = both_signs(net.affine[k], idx)
    both = propagate(net, coef, bias, k - 1, relaxations, alphas, x, ball)
    r = idx.shape[-1]
    return both[:, :r], -both[:, r:]


def reference_bounds(net, k, previous, x, ball, memory=None):
    """The bounds of ReLU layer k before any backward pass: exact for k = 0, else one IBP step from the
    bounds ``previous`` = (l, u) of layer k-1."""
    if k == 0:
        return first_layer_bounds(net.affine[0], x, ball, memory)
    return interval_forward(net.affine[k], torch.relu(previous[0]), torch.relu(previous[1]))


def intermediate_bounds(net, x, ball, relaxation="adaptive", intermediate=None, splits=None, memory=None,
                        skip_stable=True, recompute_from=None):
    """Pre-activation bounds of every ReLU layer (computed with ``relaxation`` unless ``intermediate`` is
    given; ``recompute_from``: see :func:`~.backward.first_recomputed`), clamped to ``splits``, with their
    relaxations, fixed-rule lower slopes and the (n,) mask of domains found infeasible."""
    memory, skip_stable = check_memory(memory), check_skip_stable(skip_stable)
    bounds, relaxations, alphas = [], [], []
    infeasible = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    start = first_recomputed(intermediate, splits, len(net.relu_sizes), recompute_from)
    for k in range(len(net.relu_sizes)):
        given = None if intermediate is None else intermediate[k]
        if k < start:
            lo, hi = given
        else:
            lo, hi = intersect(reference_bounds(net, k, bounds[-1] if bounds else None, x, ball, memory), given)
            if k > 0:
                lo, hi = refine((lo, hi), lambda idx: bound_rows(net, k, idx, relaxations, alphas, x, ball),
                                path_width(net, k - 1), memory, skip_stable, not patches.applies(net, k, ball))
                lo, hi = intersect((lo, hi), given)
        lo, hi, empty = apply_split(lo, hi, None if splits is None else splits[k], given is not None)
        infeasible |= empty
        bounds.append((lo, hi))
        relaxations.append(ReluRelaxation.from_bounds(lo, hi))
        alphas.append(relaxations[-1].rule_slope(relaxation, lo, hi))
    return bounds, relaxations, alphas, infeasible


def output_bounds(net, relaxations, alphas, x, ball, compute_upper=True, memory=None):
    """CROWN bounds (lower, upper or None) on every output of ``net``, each (n, m), in chunks of rows."""
    top = len(net.affine) - 1
    op, n = net.affine[top], x.shape[0]
    step = max(1, rows_per_chunk(n, path_width(net, top), x.element_size(), check_memory(memory)) // 2)
    lowers, uppers = [], []
    for idx in torch.arange(op.out_features, device=x.device).split(step):
        if compute_upper:
            low, up = bound_rows(net, top, idx, relaxations, alphas, x, ball)
            uppers.append(up)
        else:
            low = propagate(net, op.rows(idx), op.bias_rows(idx), top - 1, relaxations, alphas, x, ball)
        lowers.append(low)
    return torch.cat(lowers, 1), torch.cat(uppers, 1) if compute_upper else None


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, relaxation="adaptive",
           splits=None, memory=None, skip_stable=None, recompute_from=None) -> Bounds:
    """CROWN bounds on the outputs of ``net`` with the given ReLU ``relaxation``."""
    check_choice(relaxation, RELAXATIONS, "relaxation")
    if skip_stable is None:
        skip_stable = relaxation != "same-slope"
    if relaxation == "optimized":
        from . import alpha_crown
        return alpha_crown.bounds(net, x, ball, compute_upper=compute_upper, intermediate=intermediate,
                                  return_intermediate=return_intermediate, splits=splits, memory=memory,
                                  skip_stable=skip_stable, recompute_from=recompute_from)
    used, relaxations, alphas, infeasible = intermediate_bounds(net, x, ball, relaxation, intermediate, splits, memory,
                                                                skip_stable, recompute_from)
    lower, upper = output_bounds(net, relaxations, alphas, x, ball, compute_upper, memory)
    lower, upper = finish(lower, upper, infeasible)
    return Bounds(lower=lower, upper=upper, intermediate=used if return_intermediate else None, infeasible=infeasible)
