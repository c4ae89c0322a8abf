r"""What branch and bound asks of a batch of domains after bounding it: the linear bound's input coefficients and
the branching choice (ReLU neuron or input coordinate).

**Bounding** (:func:`bound_domains`): alpha-/beta-CROWN (:mod:`.beta_crown`) on D domains of one example, with
their output-row slopes and split multipliers stored *dense*, (D, m, h_k) per ReLU layer, so that domains bounded
in different calls can be stacked and handed back as a warm start (:class:`~.alpha_crown.Slopes`).

**The linear bound** (:func:`linear_pass`): with the domain's pre-activation bounds, slopes and multipliers fixed,
CROWN's backward pass gives :math:`g_r(x') \ge A_r x' + c_r` on the domain. Evaluated on a ball of radius 0 at a
point p it is :math:`A_r p + c_r`, so autograd gives :math:`A_r = \partial/\partial p`, whose minimizer over the
ball (``Ball.support_point(-A_r)``) is the point at which the bound is attained: a counterexample candidate.
The same pass gives, by :math:`\partial/\partial c_{kj}` of the upper relaxations' intercepts
:math:`c_{kj} = -u_{kj} l_{kj} / (u_{kj} - l_{kj})` (:class:`~.crown.ReluRelaxation`), the negative part
:math:`\lambda^-_{kj}` of the backward coefficient on the neuron's output.

**ReLU branching** (:func:`relu_choice`), ``"babsr"``: the intercept score of BaBSR (Bunel et al., JMLR 2020;
the ranking α,β-CROWN's intercept-only heuristic uses),

.. math:: s_{kj} = -\Big(\sum_{r\ \text{open}} \lambda^-_{r,kj}\Big)\, c_{kj} \;\ge 0,

the amount the open rows' bounds lose to neuron (k, j)'s upper relaxation, which a split removes. Domains where
every score is 0 (no open row pays an intercept) fall back to ``"widest"``: the unstable neuron with the largest
:math:`\min(u, -l)`. Only unstable neurons (:math:`l < 0 < u`) are candidates; a domain without one is a leaf.

**Input branching** (:func:`input_choice`), ``"babsr"``: the coordinate with the largest
:math:`|A_{r^*j}| (u_j - l_j)` (how much of the linear bound's looseness the coordinate carries; r* the domain's
worst row; ``"fsb"`` ranks as ``"babsr"`` here), ``"widest"``: the widest coordinate.

**Filtered smart branching** (:func:`filtered_choice`), ``"fsb"`` (De Palma et al., ICLR 2021, as α,β-CROWN's
``kfsb``): the :data:`FSB_CANDIDATES` neurons with the best BaBSR scores are each tried: both children are
bounded by one CROWN pass with the parent's pre-activation bounds, slopes and multipliers held (the split
neuron's bounds clamped at 0: its relaxation becomes exact), a child's bound no lower than its parent's; the
candidate whose better child leaves the least open, :math:`\max_{\text{child}} \sum_r \min(\ell_r - \theta_r, 0)`,
is split (α,β-CROWN's ``reduceop: max``; the worse child, De Palma's choice, measured worse here: 855 against
425 domains on an oval21 instance). Held bounds are valid on a child (it is a subset of its parent), so the
estimates are sound; they only rank, and the beta-CROWN pass after the split bounds the children.
"""
from __future__ import annotations

import torch

from ..sets import Ball
from . import beta_crown, crown
from .alpha_crown import Slopes

BRANCHING = ("babsr", "fsb", "widest")
FSB_CANDIDATES = 8  # neurons tried per domain by "fsb"
_POINT = Ball(0.0, "inf", None, None)  # radius 0: a bound pass evaluates the linear bound at the centre


def bound_domains(net, x, ball, *, steps, splits=None, intermediate=None, slopes=None, betas=None, **options):
    """beta-CROWN on the domains (rows of x); ``slopes`` / ``betas``: dense warm starts (D, m, h_k) per layer.
    Returns (Bounds with ``intermediate``, dense slopes, dense multipliers), the dense tensors in float32."""
    L, m = len(net.relu_sizes), net.out_features
    features = {i: torch.arange(h, device=x.device) for i, h in enumerate(net.relu_sizes)}
    alphas = None
    if slopes is not None:
        alphas = Slopes({}, features, {(L, i): s.to(x) for i, s in enumerate(slopes)}, [b.to(x) for b in betas])
    res = beta_crown.bounds(net, x, ball, splits=splits, intermediate=intermediate, alphas=alphas, steps=steps,
                            return_intermediate=True, **options)
    dense, found = [], res.alphas
    for i, h in enumerate(net.relu_sizes):
        values = found.values[(L, i)][:, :m].to(torch.float32)  # the lower-bound rows (upper ones follow)
        dense.append(values.new_zeros(len(x), m, h).index_copy(2, found.features[i], values))
    multipliers = [torch.zeros(len(x), m, h, dtype=torch.float32, device=x.device) if b is None or b.shape[1] != m
                   else b.to(torch.float32) for b, h in zip(found.betas or [None] * L, net.relu_sizes)]
    return res, dense, multipliers


def linear_pass(net, x, intermediate, slopes, betas, weights, rows):
    r"""The output rows' linear lower bounds on D domains with fixed relaxations (see the module docstring).

    ``intermediate``: per ReLU layer (lower, upper) (D, h_k); ``slopes``: per layer (D, m, h_k) lower slopes;
    ``betas``: per layer None or the signed multiplier terms (D, m, h_k) added to the coefficient on z_k;
    ``weights`` (D, m): the rows whose intercept losses count; ``rows`` (D,): the row whose input coefficient is
    wanted. Returns (A (D, d): coefficient of row ``rows[i]`` on the input, per layer the intercept losses (D, h_k)).
    """
    relaxations = []
    for lo, hi in intermediate:
        relaxation = crown.ReluRelaxation.from_bounds(lo, hi)
        relaxation.upper_intercept = relaxation.upper_intercept.detach().requires_grad_(True)
        relaxations.append(relaxation)
    op, top = net.affine[-1], len(net.affine) - 1
    everything = torch.arange(op.out_features, device=x.device)
    with torch.enable_grad():
        point = x.detach().clone().requires_grad_(True)
        value = crown.propagate(net, op.rows(everything), op.bias_rows(everything), top - 1, relaxations, slopes,
                                point, _POINT, betas)
        intercepts = [r.upper_intercept for r in relaxations]
        grads = torch.autograd.grad((value * weights).sum(), intercepts, retain_graph=True, allow_unused=True) \
            if intercepts else []
        A, = torch.autograd.grad(value.gather(1, rows.view(-1, 1)).sum(), point)
    losses = [torch.zeros_like(lo) if g is None else (-g * r.upper_intercept.detach())[:, 0]
              for g, r, (lo, _) in zip(grads, relaxations, intermediate)]
    return A, losses


def linear_bounds(net, intermediate, slopes):
    r"""The output rows' linear lower bounds :math:`g_r(x') \ge A_r x' + c_r` on D domains, from their
    pre-activation bounds ``intermediate`` (per ReLU layer (lower, upper), each (D, h_k)) and lower ``slopes``
    (per layer (D, m, h_k)): (A (D, m, d), c (D, m)). They hold wherever the pre-activation bounds do."""
    relaxations = [crown.ReluRelaxation.from_bounds(lo, hi) for lo, hi in intermediate]
    op, top = net.affine[-1], len(net.affine) - 1
    everything = torch.arange(op.out_features, device=op.bias.device)
    A, c = crown.backsubstitute(net, op.rows(everything), op.bias_rows(everything), top - 1, relaxations, slopes)
    return A, c.expand(A.shape[:2])


def relu_scores(intermediate, losses, branching):
    """Per domain and neuron (flat over the ReLU layers in order) the branching score, -1 where the neuron is
    stable; ``intermediate`` and ``losses`` per layer (D, h_k). Returns (scores (D, H), unstable (D, H))."""
    lo = torch.cat([b[0] for b in intermediate], 1)
    hi = torch.cat([b[1] for b in intermediate], 1)
    unstable = (lo < 0) & (hi > 0)
    widest = torch.where(unstable, torch.minimum(hi, -lo), -1.0)
    if branching == "widest":
        return widest, unstable
    babsr = torch.where(unstable, torch.cat(losses, 1), -1.0)
    return torch.where((babsr.amax(1, keepdim=True) > 0), babsr, widest), unstable


def relu_choice(intermediate, losses, branching):
    """Per domain the neuron to split as a flat index over the ReLU layers in order, -1 where none is unstable
    (a leaf); ``intermediate`` and ``losses`` per layer (D, h_k). ``"fsb"`` here ranks as ``"babsr"``."""
    score, unstable = relu_scores(intermediate, losses, branching)
    return torch.where(unstable.any(1), score.argmax(1), -1)


def split_bounds(net, x, ball, intermediate, slopes, betas, flat, active):
    """CROWN bounds (D, m) of the output rows on D domains with neuron ``flat`` (D,) (flat indices, see
    :func:`relu_choice`) fixed active (z >= 0) where ``active`` (D,) is True, else inactive (z <= 0), every other
    relaxation held: per ReLU layer ``intermediate`` (lower, upper) (D, h_k), lower ``slopes`` (D, m, h_k),
    ``betas`` signed terms (D, m, h_k) or None."""
    layer, neuron = locate(net, flat)
    held = []
    for k, (lo, hi) in enumerate(intermediate):
        which = torch.nonzero(layer == k).flatten()
        if len(which):
            at, on = (which, neuron[which]), active[which]
            lo, hi = lo.clone(), hi.clone()
            lo[at], hi[at] = torch.where(on, 0.0, lo[at]), torch.where(on, hi[at], 0.0)
        held.append(crown.ReluRelaxation.from_bounds(lo, hi))
    op, top = net.affine[-1], len(net.affine) - 1
    everything = torch.arange(op.out_features, device=x.device)
    return crown.propagate(net, op.rows(everything), op.bias_rows(everything), top - 1, held, slopes, x, ball,
                           betas)


@torch.no_grad()
def filtered_choice(net, x, ball, intermediate, slopes, betas, losses, lower, threshold,
                    candidates=FSB_CANDIDATES):
    """``"fsb"`` (see the module docstring): per domain the neuron to split, -1 for a leaf. ``x`` (D, d) the
    domains' centres, ``lower`` (D, m) their bounds, ``threshold`` (m,); the rest as :func:`split_bounds`."""
    score, unstable = relu_scores(intermediate, losses, "babsr")
    top = torch.topk(score, min(candidates, score.shape[1]), dim=1)
    D = len(x)

    def both(t):  # the two children, stacked: active ones first
        return None if t is None else torch.cat([t, t])

    x2, lower2 = both(x), both(lower)
    inter2 = [(both(lo), both(hi)) for lo, hi in intermediate]
    slopes2, betas2 = [both(s) for s in slopes], [both(b) for b in betas]
    active = torch.arange(2 * D, device=x.device) < D
    best, choice = None, top.indices[:, 0]
    for j, flat in enumerate(top.indices.T.contiguous()):  # (D,) per candidate
        child = torch.maximum(split_bounds(net, x2, ball, inter2, slopes2, betas2, both(flat), active), lower2)
        left = (child - threshold).clamp(max=0).sum(1)
        closer = torch.maximum(left[:D], left[D:])  # of the two children, the one with the least left open
        closer = torch.where(top.values[:, j] >= 0, closer, float("-inf"))  # a stable neuron is no candidate
        better = closer > best if best is not None else torch.ones_like(closer, dtype=torch.bool)
        best = closer if best is None else torch.maximum(best, closer)
        choice = torch.where(better, flat, choice)
    return torch.where(unstable.any(1), choice, -1)


def locate(net, flat):
    """(layer, neuron) of flat indices over the ReLU layers, as long tensors."""
    ends = torch.tensor(net.relu_sizes, device=flat.device).cumsum(0)
    layer = torch.searchsorted(ends, flat, right=True)
    return layer, flat - torch.cat([ends.new_zeros(1), ends])[layer]


def input_choice(A, lo, hi, branching):
    """Per domain the input coordinate to split, -1 where the box is a point; A, lo, hi (D, d)."""
    width = hi - lo
    score = width
    if branching in ("babsr", "fsb"):
        babsr = A.abs() * width
        score = torch.where(babsr.amax(1, keepdim=True) > 0, babsr, width)
    return torch.where((width > 0).any(1), score.argmax(1), -1)
