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
promising domains (only boxes not yet proven: a proven box holds no counterexample).
A box still open is then **clipped** (:func:`clip`) to the smallest box that holds every point where one of its
open rows' linear bounds can reach the threshold; the rest of it needs nothing more. A step halves each popped
box at the middle of the coordinate its score chose (:func:`~.branching.input_choice`).

As the boxes shrink the relaxations become exact (every unstable neuron's interval shrinks to its point), so every
row whose minimum is not exactly at the threshold is eventually decided. A box that has shrunk to a point and is
still open is dropped as undecided (``Search.undecided``).
"""
from __future__ import annotations

import torch

from ..sets import Ball
from .branching import bound_domains, input_choice, linear_bounds

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


def clip(lo, hi, A, c, theta, open_rows):
    r"""Shrink each box [lo, hi] (D, d) to the smallest box holding every point where an open row can still be
    at or below its threshold: on the box :math:`g_r(x) \ge A_r x + c_r` (A (D, m, d), c (D, m)), so a point
    with :math:`g_r(x) \le \theta_r` (theta (m,)) has, for each coordinate j,

    .. math:: A_{rj} x_j \le \theta_r - c_r - \sum_{i \ne j} \min(A_{ri} l_i, A_{ri} u_i),

    a bound on :math:`x_j` above (:math:`A_{rj} > 0`) or below (:math:`A_{rj} < 0`). The box kept is the hull
    over the open rows (``open_rows`` (D, m)) of each row's box, moved out by a relative
    :math:`\sqrt{\epsilon}` of the dtype against rounding. Rows found above their threshold on the rest of the
    box need nothing there, so the bounds already proven on [lo, hi] stay true of the domain.
    (Input-domain clipping, as in α,β-CROWN's input split.)"""
    low, high = A * lo.unsqueeze(1), A * hi.unsqueeze(1)
    smallest = torch.minimum(low, high)
    scale = 1 + c.abs() + torch.maximum(low.abs(), high.abs()).sum(2) + theta.abs()
    room = theta - c - smallest.sum(2) + scale * torch.finfo(A.dtype).eps ** 0.5  # (D, m)
    limit = (room.unsqueeze(2) + smallest) / A  # (D, m, d): x_j <= limit where A > 0, >= limit where A < 0
    row_lo = torch.where(A < 0, torch.maximum(limit, lo.unsqueeze(1)), lo.unsqueeze(1))
    row_hi = torch.where(A > 0, torch.minimum(limit, hi.unsqueeze(1)), hi.unsqueeze(1))
    opened = open_rows.unsqueeze(2)
    new_lo = torch.where(opened, row_lo, torch.inf).amin(1)
    new_hi = torch.where(opened, row_hi, -torch.inf).amax(1)
    new_lo, new_hi = torch.maximum(new_lo, lo), torch.minimum(new_hi, hi)
    keep = (new_lo > new_hi).any(1, keepdim=True)  # only by rounding (an open row's minimizer is in its box)
    return torch.where(keep, lo, new_lo), torch.where(keep, hi, new_hi)


class InputSplit:
    """The input-split strategy for :func:`~.bab_search.run` (``root`` and ``expand``)."""

    def __init__(self, net, x, ball, *, steps, branching, compute_upper, intermediate, search_dtype=None):
        self.net, self.x, self.ball, self.steps, self.branching = net, x, ball, steps, branching
        self.search_dtype = search_dtype
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
                                       time_limit=None if left is None else max(left, 1e-3) / len(lo),
                                       search_dtype=self.search_dtype)
        lower = res.lower if root else torch.maximum(res.lower, parent_lower)
        if root:
            self.upper, self.intermediate = res.upper, res.intermediate
        alive = torch.nonzero(~(lower > search.threshold()).all(1)).flatten()  # a proven box holds no candidate
        search.offer(torch.minimum(torch.maximum(centre[alive], lo[alive]), hi[alive]))
        if lo.shape[1] <= CORNER_DIMENSIONS:
            search.offer(corners(lo[alive], hi[alive]))
        theta = search.threshold()
        choice = torch.full((len(lower),), -1, dtype=torch.long, device=lower.device)
        alive = alive[~(lower[alive] > theta).all(1)]
        if len(alive):
            gap = lower[alive] - theta
            sub_centre, sub_ball = cover(lo[alive], hi[alive])
            A, c = linear_bounds(self.net, [(a[alive], b[alive]) for a, b in res.intermediate],
                                 [s[alive].to(lo) for s in slopes])
            A_worst = A[torch.arange(len(alive), device=A.device), gap.argmin(1)]
            minimizers = sub_ball.support_point(-A_worst.unsqueeze(1), sub_centre)[:, 0]
            search.offer(minimizers)
            best = gap.amin(1).argsort()[:DESCENT_STARTS]
            search.descend(minimizers[best], Ball(sub_ball.eps[best], "inf", sub_ball.lower[best],
                                                  sub_ball.upper[best]), sub_centre[best])
            lo[alive], hi[alive] = clip(lo[alive], hi[alive], A, c, theta, gap <= 0)
            choice[alive] = input_choice(A_worst, lo[alive], hi[alive], self.branching)
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
