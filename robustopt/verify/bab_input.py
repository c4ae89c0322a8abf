r"""Branch and bound on the input box, for inputs with few free coordinates (ReluVal / nnenum's setting; the loop is
:mod:`.bab_search`). l_inf balls only: the ball ∩ box is a box, and so is each half of it.

A domain is a sub-box :math:`[l, u]` of the ball. It is bounded by alpha-CROWN (``steps`` iterations; 0 is CROWN)
over a slightly larger box (each side moved out by :data:`SLACK` relative to its magnitude, so that rounding in
the ball's arithmetic can never leave a sliver of the domain unbounded; a bound over a larger set is still a
bound). A child's box lies inside its parent's, so the parent's bounds hold on it: its pre-activation bounds are
computed again and intersected with its parent's (``intermediate=``, ``recompute_from=0``; a neuron the parent
proved stable needs no backward pass), and its bound is the larger of its own and its parent's. Candidates: the
box's centre, its corners (up to :data:`CORNER_DIMENSIONS` inputs: cheap, and the linear bounds' minimizers are
corners), the minimizer of the worst row's linear bound, then a short descent inside the box from the most
promising domains.
A step halves each popped box at the middle of the coordinate its score chose (:func:`~.branching.input_choice`).

As the boxes shrink the relaxations become exact (every unstable neuron's interval shrinks to its point), so every
row whose minimum is not exactly at the threshold is eventually decided. A box that has shrunk to a point and is
still open is dropped as undecided (``Search.undecided``).
"""
from __future__ import annotations

import torch

from ..sets import Ball
from .branching import bound_domains, input_choice, linear_pass

SLACK = 1e-12
DESCENT_STARTS = 4
CORNER_DIMENSIONS = 6  # up to this many inputs, every corner of every new box is a candidate


def corners(lo, hi):
    """The 2^d corners of each box [lo, hi] (D, d), as (D * 2^d, d)."""
    d = lo.shape[1]
    bits = (torch.arange(2 ** d, device=lo.device).unsqueeze(1) >> torch.arange(d, device=lo.device)) & 1
    return (lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * bits.to(lo)).reshape(-1, d)


def cover(lo, hi):
    """(centres (D, d), Ball) for the boxes [lo, hi] (D, d), each side moved out by SLACK relative."""
    slack = SLACK * (1 + lo.abs() + hi.abs())
    lo, hi = lo - slack, hi + slack
    centre = (lo + hi) / 2
    radius = torch.maximum(hi - centre, centre - lo).amax(1) * (1 + SLACK) + SLACK
    return centre, Ball(radius, "inf", lo, hi)


class InputSplit:
    """The input-split strategy for :func:`~.bab_search.run` (``root`` and ``expand``)."""

    def __init__(self, net, x, ball, *, steps, branching, compute_upper, intermediate):
        self.net, self.x, self.ball, self.steps, self.branching = net, x, ball, steps, branching
        self.compute_upper, self.given = compute_upper, intermediate
        self.upper = self.intermediate = None

    def root(self, search):
        lo, hi = self.ball.box(self.x)
        self.add(search, lo, hi, None, None)

    def expand(self, search, lower, fields):
        """Halve each popped box along its chosen coordinate and bound the halves."""
        P = len(lower)
        first = torch.arange(P, device=lower.device)
        parent, j = first.repeat(2), fields["branch"]
        lo, hi = fields["lo"][parent].clone(), fields["hi"][parent].clone()
        middle = (fields["lo"][first, j] + fields["hi"][first, j]) / 2
        hi[first, j] = middle
        lo[first + P, j] = middle
        inter = [(fields[f"lo{k}"][parent], fields[f"hi{k}"][parent]) for k in range(len(self.net.relu_sizes))]
        self.add(search, lo, hi, lower[parent], inter)

    def add(self, search, lo, hi, parent_lower, parent_inter):
        """Bound new boxes, mine them for counterexamples, choose their split coordinates, keep the open ones."""
        root = parent_lower is None
        centre, ball = cover(lo, hi)
        left = search.left()
        res, slopes, _ = bound_domains(self.net, centre, ball, steps=self.steps, stop_at=search.stop_at,
                                       compute_upper=root and self.compute_upper,
                                       intermediate=self.given if root else parent_inter,
                                       recompute_from=None if root else 0,
                                       optimize_intermediate=root,
                                       time_limit=None if left is None else max(left, 1e-3) / len(lo))
        lower = res.lower if root else torch.maximum(res.lower, parent_lower)
        if root:
            self.upper, self.intermediate = res.upper, res.intermediate
        search.offer(torch.minimum(torch.maximum(centre, lo), hi))
        if lo.shape[1] <= CORNER_DIMENSIONS:
            search.offer(corners(lo, hi))
        theta = search.threshold()
        choice = torch.full((len(lower),), -1, dtype=torch.long, device=lower.device)
        alive = torch.nonzero(~(lower > theta).all(1)).flatten()
        if len(alive):
            gap = lower[alive] - theta
            sub_centre, sub_ball = cover(lo[alive], hi[alive])
            A, _ = linear_pass(self.net, sub_centre, [(a[alive], b[alive]) for a, b in res.intermediate],
                               [s[alive].to(lo) for s in slopes], None, (gap <= 0).to(lo), gap.argmin(1))
            minimizers = sub_ball.support_point(-A.unsqueeze(1), sub_centre)[:, 0]
            search.offer(minimizers)
            best = gap.amin(1).argsort()[:DESCENT_STARTS]
            search.descend(minimizers[best], Ball(sub_ball.eps[best], "inf", sub_ball.lower[best],
                                                  sub_ball.upper[best]), sub_centre[best])
            choice[alive] = input_choice(A, lo[alive], hi[alive], self.branching)
        theta = search.threshold()
        point = choice < 0
        search.domains.discard(lower[point])
        search.undecided += int((~(lower[point] > theta).all(1)).sum())
        keep = ~point
        layers = {}
        for k, (a, b) in enumerate(res.intermediate):
            layers |= {f"lo{k}": a[keep], f"hi{k}": b[keep]}
        search.domains.push(lower[keep], theta, lo=lo[keep], hi=hi[keep], branch=choice[keep], **layers)
        search.tick(len(lower))
