r"""The branch-and-bound loop shared by ReLU splitting (:mod:`.bab_relu`) and input splitting (:mod:`.bab_input`).

One :class:`Search` per example: the spec-folded network :math:`g` (m rows, the last operator shared by every
domain), the centre x (1, d), the ball B and the clock. It keeps

- the **incumbent**: per row r the smallest replayed value :math:`U_r = g_r(p_r)` over every candidate point
  p of B offered so far (:meth:`Search.offer`: projected onto B, replayed in the network's dtype), an upper
  bound on :math:`\min_B g_r`, and the point;
- the **threshold** :math:`\theta_r` a domain's row must exceed to be closed: ``stop_at`` when given (the
  question is whether :math:`\min_B g_r > t`; a point with :math:`g_r \le t` answers it, ties included), else
  :math:`U_r - \mathrm{gap} \cdot \max(1, |U_r|)` (``gap``: :data:`GAP` by default; the bound is then the minimum
  within the gap), and at most ``enough`` when given (a bound above it is all the caller needs);
- the open domains (:class:`Domains`), best first: the domain whose worst row is furthest below its threshold;
  once they fill half of ``max_domains``, nearest to closing first (the open set then shrinks where children
  close, as α,β-CROWN's depth-first order keeps it small, instead of stopping at the cap).

The lower bound returned for row r is the minimum of the row's bound over the open domains and over every
domain discarded (closed, infeasible, or a leaf the LP could not settle): the domains always cover B, so it is
a proven bound on :math:`\min_B g_r`, whenever the search stops.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

GAP = 1e-6  # relative gap closing a row without stop_at: lower > U - GAP * max(1, |U|)
PGD_STEPS = 10
DESCENT_BACKOFF = 16  # a descent that finds nothing waits twice as many calls before the next, up to this many


class Domains:
    """Open domains: bound rows ``lower`` (N, m) and named fields (tensors with the domain first), stored with
    spare capacity so that adding and removing k domains costs O(k). ``closed`` (m,): the smallest bound of
    every row over the domains discarded so far. ``capacity``: the most domains ever held (None: no cap), so that
    the doubling storage never allocates past it; ``memory`` (bytes, with ``capacity=None``): the cap is set at
    the first push to what fits, from the bytes of one domain's bound row and fields."""

    def __init__(self, m, like, capacity=None, memory=None):
        self.size, self.fields, self.names, self.capacity, self.memory = 0, [], None, capacity, memory
        self.lower = like.new_zeros(0, m)
        self.closed = like.new_full((m,), float("inf"))

    def __len__(self):
        return self.size

    def bound(self):
        """(m,) proven lower bound over every domain, open or discarded."""
        return torch.minimum(self.closed, self.lower[:self.size].amin(0)) if self.size else self.closed.clone()

    def discard(self, lower):
        """Record the bounds (k, m) of domains leaving the search."""
        if len(lower):
            self.closed = torch.minimum(self.closed, lower.amin(0))

    def push(self, lower, threshold, **fields):
        """Add domains (rows of ``lower`` and of every field); those whose every row exceeds ``threshold`` (m,)
        (proven, or infeasible: +inf) are discarded instead."""
        done = (lower > threshold).all(1)
        self.discard(lower[done])
        keep = ~done
        if not bool(keep.any()):
            return
        lower, fields = lower[keep], {k: v[keep] for k, v in fields.items()}
        if self.names is None:
            self.names = list(fields)
            self.fields = [v.new_empty(0, *v.shape[1:]) for v in fields.values()]
            if self.capacity is None and self.memory is not None:
                row = lower[0].nbytes + sum(v[0].nbytes for v in fields.values())
                self.capacity = max(1, self.memory // row)
        k, end = len(lower), self.size + len(lower)
        if end > len(self.lower):
            grow = max(end, 2 * len(self.lower), 64)
            grow = grow if self.capacity is None else max(end, min(grow, self.capacity))
            self.lower = _grow(self.lower, grow)
            self.fields = [_grow(v, grow) for v in self.fields]
        self.lower[self.size:end] = lower
        for store, name in zip(self.fields, self.names):
            store[self.size:end] = fields[name]
        self.size = end

    def pop(self, k, threshold, nearest=False):
        """Discard the open domains now proven above ``threshold``, then remove and return the k whose worst row
        is furthest below it (``nearest``: closest to it): (lower (k, m), {name: (k, ...)})."""
        lower = self.lower[:self.size]
        self._remove(torch.nonzero((lower > threshold).all(1)).flatten(), discard=True)
        k = min(k, self.size)
        key = (self.lower[:self.size] - threshold).amin(1)
        idx = torch.topk(key, k, largest=nearest).indices
        out = self.lower[idx].clone(), {n: v[idx].clone() for n, v in zip(self.names or [], self.fields)}
        self._remove(idx, discard=False)
        return out

    def _remove(self, idx, discard):
        """Remove rows idx, moving the last rows into the holes."""
        if idx.numel() == 0:
            return
        if discard:
            self.discard(self.lower[idx])
        end = self.size - idx.numel()
        gone = torch.zeros(self.size, dtype=torch.bool, device=idx.device)
        gone[idx] = True
        holes = torch.nonzero(gone[:end]).flatten()
        movers = torch.nonzero(~gone[end:]).flatten() + end
        for store in [self.lower] + self.fields:
            store[holes] = store[movers]
        self.size = end


def _grow(t, rows):
    out = t.new_empty(rows, *t.shape[1:])
    out[:len(t)] = t
    return out


class Search:
    """The state of one example's branch and bound (see the module docstring). ``deadline``: a
    ``time.perf_counter()`` value or None; ``max_domains``: the most open domains kept (None: as many as fit in
    ``memory`` bytes, :class:`Domains`); ``gap``: the relative gap closing a row without ``stop_at``; ``enough``:
    None, or a value above which a row is closed in any case;
    ``search_dtype``: the dtype of the descents' gradients (None: the network's; points are replayed in it)."""

    def __init__(self, net, x, ball, stop_at, deadline, max_domains, progress, gap=GAP, enough=None,
                 search_dtype=None, memory=None):
        self.net, self.x, self.ball, self.stop_at, self.gap, self.enough = net, x, ball, stop_at, gap, enough
        self.fast = net.cast(search_dtype or net.dtype)
        self.deadline = deadline
        m = net.out_features
        self.best = x.new_full((m,), float("inf"))
        self.points = x.new_full((m, x.shape[1]), float("nan"))
        self.domains = Domains(m, x, max_domains, memory)
        self.undecided = 0  # leaves discarded without being settled (see bab_relu)
        self.bounded = 0
        self.descent_every, self.descent_wait = 1, 0  # descent back-off: see descend
        self.bar = tqdm(desc="bab", disable=not progress, leave=False)

    def threshold(self):
        """(m,) the value a domain's row must exceed to be closed (+inf for a row without a point yet)."""
        if self.stop_at is not None:
            return torch.full_like(self.best, self.stop_at)
        gap = torch.where(torch.isinf(self.best), self.best, self.best - self.gap * self.best.abs().clamp(min=1.0))
        return gap if self.enough is None else gap.clamp(max=self.enough)

    def falsified(self) -> bool:
        return self.stop_at is not None and bool((self.best <= self.stop_at).any())

    @property
    def max_domains(self):
        """The cap on open domains (``max_domains``, or what fits in ``memory``; inf until the root is stored)."""
        return float("inf") if self.domains.capacity is None else self.domains.capacity

    def left(self):
        """Seconds left (None: no limit)."""
        return None if self.deadline is None else self.deadline - time.perf_counter()

    @torch.no_grad()
    def offer(self, points):
        """Candidate points (k, d): projected onto the ball, replayed; the incumbent keeps each row's best."""
        if len(points) == 0:
            return
        points = self.ball.project(points.to(self.x), self.x.expand(len(points), -1))
        values = self.net(points)
        low, at = values.min(0)
        better = low < self.best
        self.best = torch.where(better, low, self.best)
        self.points[better] = points[at[better]]

    def descend(self, starts, ball, centre):
        """A short projected descent on min_r g_r from ``starts`` (k, d) inside ``ball`` around ``centre`` (k, d),
        offering every iterate: the step is a quarter of the box's width (l_inf) or of eps (l_1), shrinking
        linearly to zero. Skipped once the time is up, and backed off: after a descent that improves no row's
        incumbent, the next 1, 2, 4, ... (up to :data:`DESCENT_BACKOFF`) calls are skipped (one that improves
        resets it); the bound minimizers are still offered every step by the strategies."""
        left = self.left()
        if len(starts) == 0 or (left is not None and left <= 0):
            return
        self.descent_wait -= 1
        if self.descent_wait > 0:
            return
        before = self.best.clone()
        lo, hi = ball.box(centre)
        scale = (hi - lo) / 4 if ball.norm == "inf" else torch.as_tensor(ball.eps).to(centre).reshape(-1, 1) / 4
        point = starts.detach()
        for t in range(PGD_STEPS):
            with torch.enable_grad():
                point = point.detach().requires_grad_(True)
                grad, = torch.autograd.grad(self.fast(point.to(self.fast.dtype)).amin(1).sum(), point)
            point = ball.project(point.detach() - scale * (1 - t / PGD_STEPS) * ball.steepest_ascent(grad), centre)
            self.offer(point)
        improved = bool((self.best < before).any())
        self.descent_every = 1 if improved else min(2 * self.descent_every, DESCENT_BACKOFF)
        self.descent_wait = self.descent_every

    def lower(self):
        return self.domains.bound()

    def finish(self, status):
        self.bar.close()
        return status

    def extend(self, deadline):
        """A later deadline for a search that stopped (see :func:`run`'s ``root``)."""
        self.deadline = deadline
        self.bar = tqdm(desc="bab", disable=self.bar.disable, leave=False, initial=self.bounded)

    def tick(self, bounded):
        self.bounded += bounded
        self.bar.update(bounded)
        if not self.bar.disable:
            low = float(self.lower().min())
            self.bar.set_postfix(domains=len(self.domains), lower=f"{low:.4g}", best=f"{float(self.best.min()):.4g}")


def run(search, strategy, batch_size, root=True):
    """Branch and bound until decided, out of time or out of domains (best first; nearest to closing first past
    half of ``search.max_domains``); returns the status ("optimal": decided,
    "time_limit": stopped early, the bound still sound; "error": a leaf could not be settled). Near the time limit
    a step takes only the domains that the last step's seconds per domain say fit in the time left.
    ``root=False`` goes on with the domains ``search`` has (after a stop, with a later ``search.deadline``)."""
    if root:
        strategy.root(search)
    rate = None  # seconds per domain of the last step
    while True:
        if search.falsified():
            return search.finish("optimal")
        threshold = search.threshold()
        if len(search.domains) == 0:
            return search.finish("error" if search.undecided else "optimal")
        left = search.left()
        if (left is not None and left <= 0) or len(search.domains) + batch_size > search.max_domains:
            return search.finish("time_limit")
        count = max(1, batch_size // 2)
        if left is not None and rate is not None:
            count = min(count, int(left / rate))
            if count < 1:
                return search.finish("time_limit")
        tic = time.perf_counter()
        # past half the cap on open domains, the domains nearest to closing go first: their children close
        # and the open set shrinks (the order never matters for soundness)
        crowded = 2 * (len(search.domains) + batch_size) > search.max_domains
        lower, fields = search.domains.pop(count, threshold, nearest=crowded)
        if len(lower):
            strategy.expand(search, lower, fields)
            rate = (time.perf_counter() - tic) / len(lower)
