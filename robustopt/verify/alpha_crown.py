r"""alpha-CROWN: CROWN with the ReLU lower slopes optimized.

The lower line :math:`a \ge \alpha z` of every unstable neuron is sound for any
:math:`\alpha \in [0, 1]`, so each choice gives a valid CROWN bound. Here the slopes are free
parameters, one per example, output row and neuron of every ReLU layer (shape (n, r, h_k)), started at
CROWN's adaptive rule and moved by projected Adam steps (clamped to [0, 1]) to maximize the sum of
the row lower bounds. The best value seen per example and row is kept, so the result is never looser
than CROWN (step 0 *is* CROWN). The intermediate bounds are CROWN's (or those given), held fixed:
then the bound is at most the triangle LP with the same intermediate bounds, and equals it at the
optimum on one-hidden-layer networks (the bound is concave in the slopes there).

Options: ``steps`` (Adam iterations, default 20), ``lr`` (step size, default 0.5), ``lr_decay`` (factor
per step, default 0.98; the bound is piecewise linear in the slopes, so reaching the LP value to 1e-5
takes a few hundred steps, e.g. ``steps=300, lr=1.0``), ``stop_at`` (stop once every example's smallest lower bound exceeds it), ``time_limit``
(seconds per example; the batch stops after ``time_limit * n``).
"""
from __future__ import annotations

import time

import torch

from .._validation import check_positive_int
from . import crown
from .methods import COMMON_OPTIONS, Bounds, check_stop_at, check_time_limit

NORMS = ("inf", 2, 1)
OPTIONS = COMMON_OPTIONS | {"steps", "lr", "lr_decay", "stop_at", "time_limit"}
SOLVER = False


class _ProjectedAdam:
    """Adam ascent steps on tensors kept in [0, 1] (projection by clamping), step size decayed by 0.98."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, decay=0.98):
        self.params, self.lr, self.betas, self.eps, self.decay = params, lr, betas, eps, decay
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def ascend(self, grads):
        self.t += 1
        b1, b2 = self.betas
        lr = self.lr * self.decay ** (self.t - 1)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            g = torch.nan_to_num(g)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step = (m / (1 - b1 ** self.t)) / ((v / (1 - b2 ** self.t)).sqrt() + self.eps)
            p.add_(lr * step).clamp_(0.0, 1.0)


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, steps=20, lr=0.5,
           lr_decay=0.98, stop_at=None, time_limit=None) -> Bounds:
    """alpha-CROWN bounds on the outputs of ``net``; ``info`` holds the iterations run and the slopes."""
    steps = check_positive_int(steps, "steps", minimum=0)
    for value, name, top in ((lr, "lr", float("inf")), (lr_decay, "lr_decay", 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= top:
            raise ValueError(f"{name} must be a number in (0, {top}]; got {value!r}")
    stop_at, time_limit = check_stop_at(stop_at), check_time_limit(time_limit)
    deadline = None if time_limit is None else time.perf_counter() + time_limit * len(x)
    used, relaxations, rule_alphas = crown.intermediate_bounds(net, x, ball, "adaptive", intermediate)
    top = len(net.affine) - 1
    rows, bias = crown.output_rows(net.affine[top], compute_upper)
    n, r = x.shape[0], rows.shape[1]
    m = r // 2 if compute_upper else r  # rows [C; -C] when upper bounds are asked for
    alphas = [a.expand(n, r, -1).clone().requires_grad_(True) for a in rule_alphas]
    adam = _ProjectedAdam(alphas, float(lr), decay=float(lr_decay))
    best, iterations = None, 0
    with torch.enable_grad():
        for step in range(steps + 1):
            value = crown.propagate(net, rows, bias, top - 1, relaxations, alphas, x, ball)
            best = value.detach() if best is None else torch.where(value.detach() > best, value.detach(), best)
            settled = stop_at is not None and bool((best[:, :m].amin(1) > stop_at).all())
            if step == steps or not alphas or settled or (deadline is not None and time.perf_counter() > deadline):
                break
            grads = torch.autograd.grad(value.sum(), alphas)
            adam.ascend(grads)
            iterations += 1
    return Bounds(lower=best[:, :m], upper=-best[:, m:] if compute_upper else None,
                  intermediate=used if return_intermediate else None,
                  info={"iterations": iterations, "alphas": [a.detach() for a in alphas]})
