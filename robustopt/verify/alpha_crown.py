r"""alpha-CROWN: CROWN with the ReLU lower slopes optimized (Xu et al., ICLR 2021), as auto_LiRPA does it.

The lower line :math:`a \ge \alpha z` of every unstable neuron is sound for any :math:`\alpha \in [0, 1]`,
so each choice of slopes gives a valid CROWN bound. The slopes are free parameters, one set per pair
(bounded layer j, ReLU layer i < j): for the output rows, and for the lower and upper bounds of every
neuron of an intermediate layer j that CROWN left unstable; each set has shape (n, R_j, u_i), u_i the
neurons of layer i that CROWN left unstable (:class:`Slopes`). They start at CROWN's adaptive rule (or at ``alphas=``, the slopes of an earlier
call: a warm start) and move by projected Adam steps (clamped to [0, 1]) to maximize the sum of the
output lower bounds; the intermediate bounds are recomputed from their own slopes at every step, and
each is the elementwise best seen so far (all of them are sound, so their intersection is), which
feeds the next step (its gradient is the new value's, as in auto_LiRPA, so that slopes behind the best
still move). The best output bound per row is kept, so the result is never looser than
CROWN (step 0 *is* CROWN).

With ``intermediate=`` (and no ``splits=``) the intermediate bounds are held fixed and only the output
slopes move (with splits, the layers after the first split one are optimized too): then
the bound is at most the triangle LP with those bounds, and equals it at the optimum on
one-hidden-layer networks.

``search_dtype=torch.float32`` runs the search in float32 (faster, half the memory); the bound
returned is then one final pass in the network's dtype (float64 by default) with the slopes found,
and never below CROWN's there (a second pass, with the starting slopes; ``floor=False`` skips it, as branch and
bound does: a child's bound is at least its parent's anyway): every number returned is computed in the
requested dtype.

Options: ``steps`` (Adam iterations, default 20), ``lr`` (step size, default 0.5), ``lr_decay`` (factor
per step, default 0.98; the bound is piecewise linear in the slopes, so reaching the LP value to 1e-5
takes a few hundred steps, e.g. ``steps=300, lr=1.0``), ``stop_at`` (stop once every example's
smallest lower bound exceeds it), ``time_limit`` (seconds per example; the batch stops after
``time_limit * n``), ``alphas``, ``search_dtype``, ``splits`` and ``memory`` (the CROWN pass that starts
the search, :mod:`.crown`). An intermediate layer whose slopes would not fit in :data:`SLOPE_MEMORY`
(8 GiB, :func:`affordable`; on the tutorial's MNIST CNN a batch of 10 would need 25 GiB) keeps its CROWN
bounds, listed in ``info["fixed_layers"]``. The search keeps its autograd graph, so it is not chunked.
``optimize_intermediate=False`` optimizes the output rows' slopes only: the intermediate bounds are CROWN's (or
the given ones, recomputed after the first split layer, or from ``recompute_from``), computed once (what branch
and bound uses per domain).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .._validation import check_positive_int
from . import crown, patches
from .backward import FeatureSlopes, apply_split, both_signs, finish, first_recomputed, unstable_index
from .methods import COMMON_OPTIONS, Bounds, check_stop_at, check_time_limit

NORMS = ("inf", 2, 1)
OPTIONS = COMMON_OPTIONS | {"steps", "lr", "lr_decay", "stop_at", "time_limit", "splits", "memory", "alphas",
                            "search_dtype", "skip_stable", "optimize_intermediate", "recompute_from", "floor"}
SOLVER = False
EXACT = False
TAKES_TIME_LIMIT = True
TAKES_STOP_AT = True
TAKES_SPLITS = True


@dataclass
class Slopes:
    """Lower ReLU slopes of alpha-/beta-CROWN, to pass back as ``alphas=`` (warm start).

    ``rows[j]``: the neurons (long tensor, r_j) of ReLU layer j whose bounds are optimized (rows 0..r_j-1
    of ``values[(j, i)]`` for their lower bounds, r_j..2r_j-1 for their upper bounds); key ``j = L``
    (the number of ReLU layers) stands for the output rows, ``rows[L] = None``.
    ``features[i]``: the neurons (long tensor, u_i) of ReLU layer i that have slopes (those CROWN left
    unstable in some domain; the others are stable and keep their exact line).
    ``values[(j, i)]``: (n, R_j, u_i) slopes on those neurons of layer i < j for the R_j rows of layer j; for a
    layer j in ``windowed`` (a convolution bounded on windows, :mod:`.patches`), (n, R_j, w_ji) slopes on each
    row's window of layer i instead (:class:`~.patches.WindowSlopes`).
    ``betas``: beta-CROWN's split multipliers per ReLU layer ((n, R_L, h_i) or None), else None.
    """

    rows: dict
    features: dict
    values: dict
    betas: list | None = None
    windowed: frozenset = frozenset()

    def select(self, idx) -> "Slopes":
        """The slopes of the domains ``idx`` (a batch index)."""
        betas = None if self.betas is None else [None if b is None else b[idx] for b in self.betas]
        return Slopes(self.rows, self.features, {key: v[idx] for key, v in self.values.items()}, betas,
                      self.windowed)

    def slope(self, net, key, values):
        """The slope object of pair ``key`` = (j, i) holding ``values`` (this storage's layout)."""
        j, i = key
        if j in self.windowed:
            return patches.WindowSlopes(values)
        return FeatureSlopes(values, self.features[i], net.relu_sizes[i])


class ProjectedAdam:
    """Adam ascent steps on tensors kept in [low, high] (projection by clamping), step size decayed."""

    def __init__(self, params, lr, limits, betas=(0.9, 0.999), eps=1e-8, decay=0.98):
        self.params, self.lr, self.limits, self.betas, self.eps, self.decay = params, lr, limits, betas, eps, decay
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.denom = [torch.empty_like(p) for p in params]  # scratch: no large allocation per step
        self.t = 0

    @torch.no_grad()
    def ascend(self, grads):
        self.t += 1
        b1, b2 = self.betas
        lr = self.lr * self.decay ** (self.t - 1)
        for p, g, m, v, denom, (low, high) in zip(self.params, grads, self.m, self.v, self.denom, self.limits):
            if g is None:  # a parameter the bound does not depend on
                continue
            g = g.nan_to_num_()
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            torch.sqrt(v, out=denom).div_(math.sqrt(1 - b2 ** self.t)).add_(self.eps)
            p.addcdiv_(m, denom, value=lr / (1 - b1 ** self.t)).clamp_(low, high)


def check_search_options(steps, lr, lr_decay, stop_at, time_limit, search_dtype):
    steps = check_positive_int(steps, "steps", minimum=0)
    for value, name, top in ((lr, "lr", float("inf")), (lr_decay, "lr_decay", 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= top:
            raise ValueError(f"{name} must be a number in (0, {top}]; got {value!r}")
    if search_dtype is not None and search_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"search_dtype must be torch.float32, torch.float64 or None; got {search_dtype!r}")
    return steps, float(lr), float(lr_decay), check_stop_at(stop_at), check_time_limit(time_limit)


def _positions(new, old, size, device):
    """(where_new, where_old): positions in ``new`` and ``old`` (long index tensors over range(size)) of
    their common elements."""
    pos = torch.full((size,), -1, dtype=torch.long, device=device)
    pos[old.to(device)] = torch.arange(old.numel(), device=device)
    p = pos[new]
    hit = p >= 0
    return hit.nonzero().flatten(), p[hit]


def _initial_slopes(net, x, rule, layout, out_rows, alphas):
    """Slopes for every pair (the shapes of :class:`Slopes` ``layout``), from the rule slopes or the warm
    start ``alphas``."""
    n, L, rows, features = x.shape[0], len(rule), layout.rows, layout.features
    counts = {j: 2 * idx.numel() for j, idx in rows.items()} | {L: out_rows}
    values = {(j, i): patches.window_slopes(net, j, rows[j], i, rule[i]).expand(n, -1, -1).clone()
              if j in layout.windowed else rule[i][..., features[i]].expand(n, R, -1).clone()
              for j, R in counts.items() if R for i in range(j)}
    if alphas is None:
        return values
    if not isinstance(alphas, Slopes):
        raise ValueError(f"alphas must be the Slopes of an earlier alpha-/beta-CROWN call (Bounds.alphas); "
                         f"got {type(alphas).__name__}")
    for (j, i), v in values.items():
        old = alphas.values.get((j, i))
        if old is None or (j in layout.windowed) != (j in alphas.windowed):
            continue
        if old.shape[0] != n or i not in alphas.features:
            raise ValueError(f"alphas[{(j, i)}] has shape {tuple(old.shape)}: it is for {old.shape[0]} domains; "
                             f"this call has {n}")
        if j in layout.windowed:  # the same window positions in both
            f_new = f_old = torch.arange(v.shape[-1], device=v.device)
        else:
            f_new, f_old = _positions(features[i], alphas.features[i], net.relu_sizes[i], v.device)
        if j == L:
            r = min(old.shape[1], v.shape[1])
            r_new = r_old = torch.arange(r, device=v.device)
            dst, src = v.unsqueeze(1), old.to(v).unsqueeze(1)
        else:
            r_new, r_old = _positions(rows[j], alphas.rows[j], net.relu_sizes[j], v.device)
            dst, src = v.view(n, 2, -1, v.shape[-1]), old.to(v).view(n, 2, -1, old.shape[-1])
        dst[:, :, r_new.unsqueeze(1), f_new.unsqueeze(0)] = src[:, :, r_old.unsqueeze(1), f_old.unsqueeze(0)]
    return values


SLOPE_COPIES = 5  # a slope tensor, its gradient, Adam's two moments and the best slopes so far
SLOPE_MEMORY = 8 << 30  # bytes for the slopes of the intermediate layers (a 24 GiB machine keeps room)


def affordable(rows, widths, n, itemsize, memory=SLOPE_MEMORY):
    """The intermediate layers (of ``rows``: layer -> its unstable neurons) whose slopes fit in ``memory``
    bytes: layer j's slopes take n * 2 r_j * widths[j] numbers (r_j: its unstable neurons, widths[j]: slopes
    per row, sum_{i<j} u_i on whole layers), kept :data:`SLOPE_COPIES` times; the cheapest layers are kept
    first, the others keep their CROWN bounds."""
    cost = {j: SLOPE_COPIES * n * 2 * idx.numel() * widths[j] * itemsize for j, idx in rows.items()}
    kept, total = {}, 0
    for j in sorted(cost, key=cost.get):
        total += cost[j]
        if total > memory:
            break
        kept[j] = rows[j]
    return kept


def windowed_layers(net, layers, ball) -> frozenset:
    """The layers among ``layers`` whose slopes are kept on windows (:class:`~.patches.WindowSlopes`): those
    bounded on windows (:func:`.patches.applies`)."""
    return frozenset(j for j in layers if patches.applies(net, j, ball))


def search_pass(net, x, ball, layout, slopes, beta_terms, base, splits, out, fixed=None):
    """One alpha-CROWN pass: intermediate bounds of the layers in ``layout.rows`` from their slopes (each the
    elementwise best of the new value and ``base``, then clamped to ``splits``), then the output rows
    ``out`` = (coef, bias); ``slopes[(j, i)]`` laid out as in :class:`Slopes` ``layout``; ``fixed``: the
    relaxations of the other layers (from ``base``: the same in every pass), computed here when None. Returns
    (value (n, R_L), bounds, infeasible (n,))."""
    L = len(base)

    def slope(j, i):
        return layout.slope(net, (j, i), slopes[(j, i)])

    relaxations, bounds = [], []
    infeasible = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for j in range(L):
        lo, hi = base[j]
        idx = layout.rows.get(j)
        if idx is not None and idx.numel():
            low, up = crown.bound_rows(net, j, idx, relaxations, [slope(j, i) for i in range(j)], x, ball)
            # the best of the new value and the base, with the new value's gradient (auto_LiRPA's straight-through
            # rule: a slope whose bound is behind the best so far still moves)
            lo = lo.index_copy(1, idx, low + (torch.maximum(lo[:, idx], low) - low).detach())
            hi = hi.index_copy(1, idx, up + (torch.minimum(hi[:, idx], up) - up).detach())
            lo, hi, empty = apply_split(lo, hi, None if splits is None else splits[j])
            infeasible |= empty
        bounds.append((lo, hi))
        relaxations.append(fixed[j] if fixed is not None and j in fixed else crown.ReluRelaxation.from_bounds(lo, hi))
    value = crown.propagate(net, out[0], out[1], L - 1, relaxations, [slope(L, i) for i in range(L)], x, ball,
                            beta_terms)
    return value, bounds, infeasible


def optimize(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, splits=None,
             memory=None, alphas=None, steps=20, lr=0.5, lr_decay=0.98, stop_at=None, time_limit=None,
             search_dtype=None, skip_stable=True, optimize_intermediate=True, beta=None,
             recompute_from=None, floor=True) -> Bounds:
    """The alpha-CROWN search; ``beta`` (beta-CROWN) is None or a callable ``beta(x, R, alphas) -> (params,
    terms, place)``: multiplier tensors to optimize (kept >= 0; warm-started from ``alphas.betas``), the map
    from them to the signed coefficient terms per ReLU layer, and the map to one entry per ReLU layer
    (see :mod:`.beta_crown`). ``recompute_from``: with ``intermediate``, the first layer bounded again
    (:func:`~.backward.first_recomputed`)."""
    steps, lr, lr_decay, stop_at, time_limit = check_search_options(steps, lr, lr_decay, stop_at, time_limit,
                                                                     search_dtype)
    for name, flag in (("optimize_intermediate", optimize_intermediate), ("floor", floor)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False; got {flag!r}")
    deadline = None if time_limit is None else time.perf_counter() + time_limit * len(x)
    base, _, rule, infeasible = crown.intermediate_bounds(net, x, ball, "adaptive", intermediate, splits, memory,
                                                                skip_stable, recompute_from)
    L, top = len(base), len(net.affine) - 1
    start = max(1, first_recomputed(intermediate, splits, L, recompute_from))  # layers bounded here, as in CROWN
    features = {i: unstable_index(*base[i]) for i in range(L)}
    itemsize = torch.finfo(search_dtype or net.dtype).bits // 8
    candidates = {j: unstable_index(*base[j]) for j in range(start, L)} if optimize_intermediate else {}
    windowed = windowed_layers(net, candidates, ball)
    widths = {j: sum(patches.window_width(net, j, i) if j in windowed else features[i].numel() for i in range(j))
              for j in candidates}
    rows = affordable(candidates, widths, len(x), itemsize)
    layout = Slopes(rows, features, {}, None, windowed & set(rows))
    fixed_layers = [j for j in range(start, L) if j not in rows] if optimize_intermediate else []
    op, m = net.affine[top], net.affine[top].out_features
    everything = torch.arange(m, device=x.device)
    out = both_signs(op, everything) if compute_upper else (op.rows(everything), op.bias_rows(everything))
    slopes = _initial_slopes(net, x, rule, layout, out[0].shape[1], alphas)
    sdtype = search_dtype or net.dtype
    snet, sx = net.cast(sdtype), x.to(sdtype)
    sbase = [(lo.to(sdtype), hi.to(sdtype)) for lo, hi in base]
    sout = (out[0].to(sdtype), out[1].to(sdtype))
    keys = list(slopes)
    params = [slopes[key].to(sdtype).requires_grad_(True) for key in keys]
    betas, beta_terms, place = beta(sx, out[0].shape[1], alphas) if beta is not None else ([], lambda b: None, None)
    adam = ProjectedAdam(params + betas, lr, [(0.0, 1.0)] * len(params) + [(0.0, float("inf"))] * len(betas),
                         decay=lr_decay)
    best, best_params, best_betas, iterations = None, None, None, 0
    fixed = {j: crown.ReluRelaxation.from_bounds(*sbase[j]) for j in range(L) if j not in layout.rows}
    with torch.enable_grad():
        for step in range(steps + 1):
            value, bounds, empty = search_pass(snet, sx, ball, layout, dict(zip(keys, params)), beta_terms(betas),
                                               sbase, splits, sout, fixed)
            value_d = value.detach()
            if best is None:
                best = value_d
                best_params, best_betas = [p.detach().clone() for p in params], [b.detach().clone() for b in betas]
            else:
                better = value_d > best
                row_better, example_better = better, value_d.sum(1) > best.sum(1)
                for k, (key, p) in enumerate(zip(keys, params)):
                    mask = row_better if key[0] == L else example_better.view(-1, 1)
                    torch.where(mask.unsqueeze(-1), p.detach(), best_params[k], out=best_params[k])
                best_betas = [torch.where(row_better.unsqueeze(-1), b.detach(), bb) for b, bb in zip(betas, best_betas)]
                best = torch.maximum(value_d, best)
            sbase = [(lo.detach(), hi.detach()) for lo, hi in bounds]
            if sdtype == net.dtype:
                infeasible = infeasible | empty
            settled = stop_at is not None and bool(((best[:, :m].amin(1) > stop_at) | infeasible).all())
            late = deadline is not None and time.perf_counter() > deadline
            if step == steps or not (params or betas) or settled or late:
                break
            adam.ascend(torch.autograd.grad(value.sum(), params + betas, allow_unused=True))
            iterations += 1
    if sdtype != net.dtype:  # one sound pass in the requested dtype with the slopes found
        with torch.no_grad():
            final = dict(zip(keys, (p.to(net.dtype) for p in best_params)))
            terms = beta_terms([b.to(net.dtype) for b in best_betas])
            best, sbase, empty = search_pass(net, x, ball, layout, final, terms, base, splits, out)
            if floor:
                best = torch.maximum(best, search_pass(net, x, ball, layout, slopes, None, base, splits, out)[0])
            infeasible = infeasible | empty
    lower, upper = best[:, :m], (-best[:, m:] if compute_upper else None)
    lower, upper = finish(lower, upper, infeasible)
    result = Slopes(rows, features, {key: p.to(net.dtype) for key, p in zip(keys, best_params)},
                    place([b.to(net.dtype) for b in best_betas]) if beta is not None else None, layout.windowed)
    used = [(lo.to(net.dtype), hi.to(net.dtype)) for lo, hi in sbase]
    return Bounds(lower=lower, upper=upper, intermediate=used if return_intermediate else None, infeasible=infeasible,
                  alphas=result, info={"iterations": iterations, "alphas": result,
                                       "fixed_layers": fixed_layers})


def bounds(net, x, ball, **options) -> Bounds:
    """alpha-CROWN bounds on the outputs of ``net`` (options: see the module docstring); ``Bounds.alphas``
    holds the slopes found, ``info["iterations"]`` the steps run."""
    return optimize(net, x, ball, **options)
