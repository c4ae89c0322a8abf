r"""Branch and bound on ReLU splits (Wang et al.'s β-CROWN BaB; the loop is :mod:`.bab_search`).

A domain is the ball with some neurons fixed active (:math:`z_{kj} \ge 0`) or inactive (:math:`\le 0`)
(``splits``, :mod:`.backward`). The root is bounded by alpha-CROWN; a step pops the best domains, splits each on
the neuron its branching score chose when it was bounded (:mod:`.branching`), and bounds the two children by
beta-CROWN, warm-started from the parent: its pre-activation bounds (``intermediate=``, held, the split neuron's
clamped at 0: the split constraint reaches the output rows through its multiplier, as in α,β-CROWN's default),
its output-row slopes and multipliers (``alphas=``). With ``recompute=True`` (bab's ``recompute_intermediate``)
the bounds of the layers after the split are computed again by CROWN and intersected with the parent's
(``recompute_from=``): a pass per later layer, in float64, which on oval21 and MNIST MLPs cost half the time for
about the same number of domains (cifar_wide_kw img19: 1937 domains in 10.5 s held, 1923 in 20.4 s recomputed;
ERAN relu_9_200 idx 9841 decided in 184 s held, undecided at 300 s recomputed). The slope search runs in
``search_dtype`` (float32 by default: each bound is then computed in the network's float64 from the slopes and
multipliers found, :mod:`.alpha_crown`), and so do the heuristics below (candidate points are replayed in
float64; the branching scores only rank). A child's bound
is the larger of its own and its parent's (both are valid on the child). Only the output rows still open in some
popped domain are bounded (a row closed in a parent stays closed in its children: they keep the parent's bound,
slopes and multipliers for it); a vnnlib disjunction or a margin row closes early on most domains, so this cuts
the passes several-fold (oval21 cifar_base_kw img6638: 9 rows, 1 of them open after the first steps, 28 s to
8 s with the same 717 domains). Every bounded domain is mined for
counterexamples: the minimizer of its worst row's linear bound, then a short descent from the most promising ones.

**Leaves.** Each split makes a neuron stable, so a domain ends with no unstable neuron: the network is affine on
it, :math:`g_r(x') = a_r^\top x' + b_r` subject to the split constraints :math:`G x' \le h`, and its minimum over
the ball is a linear program (:func:`settle_leaf`; the l_1 ball as :math:`|x' - x| \le t, \sum t \le \varepsilon`).
HiGHS solves it; its minimizer is replayed as a candidate, and its duals :math:`\lambda` only feed the weak-duality
bound :math:`\min_{x' \in B} (a_r + G^\top \lambda^+)^\top x' - h^\top \lambda^+ + b_r`, computed exactly in the
network's dtype (:func:`~.methods.minimize_linear`), valid for any multipliers: the solver's word is never taken.
A leaf can be empty without beta-CROWN noticing (its split constraints contradict each other only jointly): HiGHS
calls the program infeasible, and the multipliers :math:`\mu \ge 0` of the feasibility problem
:math:`\min s : G x' - s \le h` prove it when :math:`\min_{x' \in B} \mu^\top (G x' - h) > 0` (then every row's
bound is :math:`+\infty`).
So the search is complete: it ends with every domain closed, or a counterexample, or (in exact arithmetic never)
a leaf whose LP bound and best point straddle the threshold within rounding, counted in ``Search.undecided``.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog

from .branching import bound_domains, filtered_choice, linear_pass, locate, relu_choice
from .methods import minimize_linear

DESCENT_STARTS = 4  # domains per bounded batch whose bound minimizers start a descent


def affine_maps(net, active):
    """For one leaf with activation pattern ``active`` (per ReLU layer a (h_k,) bool: 1 where the neuron is
    active), the affine maps :math:`x' \\mapsto x' M_k + c_k` of every layer's pre-activation and of the
    output: a list of (M (d, h_k), c (h_k,)), the output last."""
    M = torch.eye(net.in_features, dtype=net.dtype, device=net.device)
    c = M.new_zeros(net.in_features)
    maps = []
    for k, op in enumerate(net.affine):
        if k:
            mask = active[k - 1].to(M)
            M, c = M * mask, c * mask
        M, c = op.linear(M), op.forward(c.unsqueeze(0))[0]
        maps.append((M, c))
    return maps


def _solve(cost, G, h, x, ball):
    """HiGHS on min cost . x' over the ball s.t. G x' <= h; ``cost=None``: the feasibility problem
    min s s.t. G x' - s <= h. Returns (x' (d,) numpy, multipliers of the G rows clamped >= 0) or (None, None)."""
    d, m = x.shape[1], len(h)
    lo, hi = (b[0].cpu().numpy() for b in ball.box(x))
    A, b = G.cpu().numpy(), h.cpu().numpy()
    bounds = list(zip(lo, hi))
    if ball.norm == 1:  # (x', t): |x' - x| <= t, sum t <= eps
        eye, x0 = np.eye(d), x[0].cpu().numpy()
        A = np.block([[A, np.zeros((m, d))], [eye, -eye], [-eye, -eye], [np.zeros((1, d)), np.ones((1, d))]])
        b = np.concatenate([b, x0, -x0, [float(ball.eps if isinstance(ball.eps, float) else ball.eps[0])]])
        bounds += [(0, None)] * d
    objective = np.zeros(len(bounds))
    if cost is None:
        A = np.hstack([A, np.concatenate([-np.ones(m), np.zeros(len(A) - m)])[:, None]])
        objective = np.append(objective, 1.0)
        bounds.append((None, None))
    else:
        objective[:d] = cost.cpu().numpy()
    res = linprog(objective, A_ub=A if len(A) else None, b_ub=b if len(b) else None, bounds=bounds, method="highs")
    if res.status != 0:
        return None, None
    multipliers = torch.as_tensor(-res.ineqlin.marginals[:m], dtype=x.dtype, device=x.device).clamp(min=0) \
        if m else h
    return res.x[:d], multipliers


def settle_leaf(net, x, ball, active, splits, rows):
    """LP bounds on the rows ``rows`` of one leaf (see the module docstring): (bounds (len(rows),), -inf where
    the solver failed, +inf where the leaf is proven empty, and the minimizers found (k, d)). A program HiGHS
    calls infeasible is proven empty by the multipliers mu of the feasibility problem: min over the ball of
    mu . (G x' - h) > 0."""
    maps = affine_maps(net, active)
    G, h = [], []
    for (M, c), s in zip(maps, splits):
        j = torch.nonzero(s).flatten()
        sign = s[j].to(M)
        G.append(-(M[:, j] * sign).T)
        h.append(c[j] * sign)
    G, h = torch.cat(G) if G else x.new_zeros(0, x.shape[1]), torch.cat(h) if h else x.new_zeros(0)
    M, c = maps[-1]

    def dual_value(coef, constant):  # min over the ball of coef . x' + constant, exactly
        return float(minimize_linear(coef.view(1, 1, -1), x, ball)[0, 0] + constant)

    bounds, points = [], []
    for r in rows.tolist():
        point, lam = _solve(M[:, r], G, h, x, ball)
        if point is None:
            _, mu = _solve(None, G, h, x, ball)
            if mu is not None and dual_value(G.T @ mu, -h @ mu) > 0:
                return torch.full((len(rows),), float("inf"), dtype=x.dtype, device=x.device), x[:0]
            bounds.append(float("-inf"))
            continue
        bounds.append(dual_value(M[:, r] + G.T @ lam, c[r] - h @ lam))
        points.append(torch.as_tensor(point, dtype=x.dtype, device=x.device))
    return torch.tensor(bounds, dtype=x.dtype, device=x.device), (torch.stack(points) if points else x[:0])


class ReluSplit:
    """The ReLU-split strategy for :func:`~.bab_search.run` (``root`` and ``expand``)."""

    def __init__(self, net, x, ball, *, steps, branching, compute_upper, intermediate, search_dtype=None,
                 recompute=False):
        self.net, self.x, self.ball, self.steps, self.branching = net, x, ball, steps, branching
        self.recompute = recompute
        self.compute_upper, self.given = compute_upper, intermediate
        self.search_dtype = search_dtype or net.dtype
        self.upper = self.intermediate = None
        self.layers = range(len(net.relu_sizes))
        self._restricted = None, None, None

    def _bound(self, search, net=None, **kw):
        left = search.left()
        n = len(kw["splits"][0]) if kw.get("splits") else 1
        return bound_domains(self.net if net is None else net, self.x.expand(n, -1), self.ball, steps=self.steps,
                             stop_at=search.stop_at, time_limit=None if left is None else max(left, 1e-3) / n,
                             search_dtype=self.search_dtype, **kw)

    def _rows_net(self, rows, fast=False):
        """The network restricted to the output rows ``rows`` (a long tensor; the last affine layer's rows);
        ``fast``: its copy in the search dtype (for the heuristics)."""
        if self._restricted[0] != tuple(rows.tolist()):  # the last one is kept: consecutive batches share rows
            net = self.net
            if len(rows) < self.net.out_features:
                net = net.with_spec(torch.eye(net.out_features, dtype=net.dtype, device=self.x.device)[rows])
            self._restricted = tuple(rows.tolist()), net, net.cast(self.search_dtype)
        return self._restricted[2 if fast else 1]

    def root(self, search):
        res, slopes, betas = self._bound(search, intermediate=self.given, compute_upper=self.compute_upper)
        self.upper, self.intermediate = res.upper, res.intermediate
        self.unstable = [torch.nonzero((lo[0] < 0) & (hi[0] > 0)).flatten() for lo, hi in res.intermediate]
        splits = [torch.zeros(1, h, dtype=torch.int8, device=self.x.device) for h in self.net.relu_sizes]
        self.add(search, res.lower, res.intermediate, slopes, betas, splits)

    def expand(self, search, lower, fields):
        """Split each popped domain on its chosen neuron and bound the children, on the rows still open in
        some popped domain (the others keep their parents' bounds, slopes and multipliers)."""
        P = len(lower)
        rows = torch.nonzero((lower <= search.threshold()).any(0)).flatten()
        net = self._rows_net(rows)
        parents = torch.arange(P, device=lower.device).repeat(2)
        layer, neuron = locate(self.net, fields["branch"][parents])
        sign = torch.cat([torch.ones(P), -torch.ones(P)]).to(device=lower.device, dtype=torch.int8)
        # held bounds: every child at once; recomputed ones: per layer of the split (the parents' bounds hold up to it)
        groups = [torch.nonzero(layer == k).flatten() for k in layer.unique().tolist()] if self.recompute \
            else [torch.arange(2 * P, device=lower.device)]
        stored = self._unpack(fields)
        for child in groups:
            parent = parents[child]
            splits = [s[parent] for s in stored["split"]]
            for j in layer[child].unique().tolist():
                at = torch.nonzero(layer[child] == j).flatten()
                splits[j][at, neuron[child][at]] = sign[child][at]
            inter = [(lo[parent], hi[parent]) for lo, hi in zip(stored["lo"], stored["hi"])]
            slopes, betas = [s[parent] for s in stored["slope"]], [b[parent] for b in stored["beta"]]
            first = int(layer[child[0]]) + 1 if self.recompute else len(self.layers)
            res, found, multipliers = self._bound(search, net, splits=splits, intermediate=inter,
                                                  recompute_from=first, compute_upper=False, floor=False,
                                                  optimize_intermediate=False, slopes=[s[:, rows] for s in slopes],
                                                  betas=[b[:, rows] for b in betas])
            bound = lower[parent].clone()
            bound[:, rows] = torch.maximum(res.lower, bound[:, rows])
            for full, part in zip(slopes + betas, found + multipliers):
                full[:, rows] = part
            self.add(search, bound, res.intermediate, slopes, betas, splits)

    def add(self, search, lower, inter, slopes, betas, splits):
        """Mine new domains for counterexamples, choose their branching neurons, settle the leaves, keep the rest."""
        theta = search.threshold()
        choice = torch.full((len(lower),), -1, dtype=torch.long, device=lower.device)
        alive = torch.nonzero(~(lower > theta).all(1)).flatten()
        if len(alive):
            # the heuristics (candidate points, branching) in the search dtype: they only rank and propose
            rows = torch.nonzero((lower[alive] <= theta).any(0)).flatten()  # open in some domain
            net, gap = self._rows_net(rows, fast=True), lower[alive][:, rows] - theta[rows]
            like = fast_centre = self.x.to(self.search_dtype).expand(len(alive), -1)
            bounds = [(lo[alive].to(like), hi[alive].to(like)) for lo, hi in inter]
            terms = [-b[alive][:, rows].to(like) * s[alive].to(like).unsqueeze(1) for b, s in zip(betas, splits)]
            held = [s[alive][:, rows].to(like) for s in slopes]
            A, losses = linear_pass(net, fast_centre, bounds, held, terms, (gap <= 0).to(like), gap.argmin(1))
            centre = self.x.expand(len(alive), -1)
            minimizers = self.ball.support_point(-A.to(self.x).unsqueeze(1), centre)[:, 0]
            search.offer(minimizers)
            best = gap.amin(1).argsort()[:DESCENT_STARTS]
            search.descend(minimizers[best], self.ball, centre[best])
            if len(self.layers):  # without ReLU layers every domain is a leaf
                choice[alive] = filtered_choice(net, fast_centre, self.ball, bounds, held, terms, losses,
                                                lower[alive][:, rows].to(like), theta[rows].to(like)) \
                    if self.branching == "fsb" else relu_choice(bounds, losses, self.branching)
            for i in alive[choice[alive] < 0].tolist():
                lower[i] = self.settle(search, lower[i], [(lo[i], hi[i]) for lo, hi in inter], [s[i] for s in splits])
        theta = search.threshold()
        leaf = torch.zeros(len(lower), dtype=torch.bool, device=lower.device)
        leaf[alive[choice[alive] < 0]] = True
        search.domains.discard(lower[leaf])
        search.undecided += int((~(lower[leaf] > theta).all(1)).sum())
        keep = ~leaf
        fields = {"branch": choice[keep]}
        for k, at in zip(self.layers, self.unstable):  # only the root's unstable neurons: see _unpack
            fields |= {f"split{k}": splits[k][keep][:, at], f"lo{k}": inter[k][0][keep][:, at],
                       f"hi{k}": inter[k][1][keep][:, at], f"slope{k}": slopes[k][keep][..., at],
                       f"beta{k}": betas[k][keep][..., at]}
        search.domains.push(lower[keep], theta, **fields)
        search.tick(len(lower))

    def _unpack(self, fields):
        """Popped domains' stored fields back at full width: {"split", "lo", "hi", "slope", "beta"}: per ReLU
        layer (P, h_k) or (P, m, h_k). A domain stores only the neurons unstable at the root: the others are
        stable in every domain (bounds only tighten), so they are never split (split 0, multiplier 0), their
        slopes are unused and only their bounds' sign matters, which the root's bounds give. On oval21 that is
        448 of cifar_base_kw's 3,172 neurons (img4631) and 455 of cifar_deep_kw's 6,756 (img5533)."""
        out = {name: [] for name in ("split", "lo", "hi", "slope", "beta")}
        for k, at in zip(self.layers, self.unstable):
            lo, hi = self.intermediate[k]
            for name, base in (("split", torch.zeros_like(lo, dtype=torch.int8)), ("lo", lo), ("hi", hi),
                               ("slope", None), ("beta", None)):
                part = fields[f"{name}{k}"]
                if base is None:  # (P, m, h_k) in the stored dtype
                    base = part.new_zeros(1, 1, lo.shape[1])
                full = base.expand(*part.shape[:-1], base.shape[-1]).clone()
                full[..., at] = part
                out[name].append(full)
        return out

    def settle(self, search, lower, inter, splits):
        """A leaf's open rows by LP (:func:`settle_leaf`); returns its improved bounds (m,)."""
        rows = torch.nonzero(lower <= search.threshold()).flatten()
        active = [lo >= 0 for lo, _ in inter]
        found, points = settle_leaf(self.net, self.x, self.ball, active, splits, rows)
        search.offer(points)
        lower = lower.clone()
        lower[rows] = torch.maximum(lower[rows], found)
        return lower
