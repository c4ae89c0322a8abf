r"""Per-example verdicts (:func:`certify`) and certified radii (:func:`certified_radius`).

``certify`` settles each example in three stages, cheapest first: the clean prediction (a wrong or
tied prediction is its own counterexample), a short PGD attack (``robustopt.attacks.pgd``, margin
loss), then the bound method on the margins. An example is

- ``"falsified"`` when a point of the ball with margin <= 0 was found, re-checked by a forward pass
  of the canonical network in ``dtype`` (the point is in ``counterexample``);
- ``"certified"`` when the method's lower bound on every margin is > 0;
- ``"unknown"`` otherwise (including solver failure or time-out).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_eps
from .api import DEFAULT_BATCH_SIZE, Problem, _check_options, labels_tensor, margin_bounds, margin_spec, spread_margins
from .methods import UNSETTLED, get_method
from .parallel import check_n_jobs, solve_examples

__all__ = ["CertifyResult", "certify", "certified_radius"]

ATTACK_STEPS = 20


@dataclass
class CertifyResult:
    """Verdicts of :func:`certify`. ``status`` (n,) in {"certified", "falsified", "unknown"};
    ``margin_lower`` (n,) = min over j of ``margin_bounds`` (n, k) (+inf in column y; -inf where the
    method was not run, e.g. a solver on an example the attack had already falsified);
    ``counterexample``: index -> point of the ball (shape of one example) with margin <= 0;
    ``seconds``: total wall time, ``seconds_per_example`` (n,): each batch's time split evenly."""

    status: np.ndarray
    margin_lower: torch.Tensor
    margin_bounds: torch.Tensor
    counterexample: dict
    certified_accuracy: float
    seconds: float
    seconds_per_example: np.ndarray = field(repr=False)
    method: str = "crown"

    @property
    def counts(self) -> dict:
        return {s: int((self.status == s).sum()) for s in ("certified", "falsified", "unknown")}

    def __repr__(self):
        return (f"CertifyResult(method={self.method!r}, n={len(self.status)}, {self.counts}, "
                f"certified_accuracy={self.certified_accuracy:.4f}, seconds={self.seconds:.3f})")


def _margins_at(net, points, y):
    """min_{j != y} f_y - f_j at ``points`` (n, d) by a forward pass of the canonical network."""
    logits = net(points)
    own = logits.gather(1, y.unsqueeze(1))
    other = logits.scatter(1, y.unsqueeze(1), float("-inf"))
    return (own[:, 0] - other.amax(1))


class _AsModule(nn.Module):
    """A canonical Network as an nn.Module, so that the attack can run on it."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.anchor = nn.Parameter(torch.zeros(0, dtype=net.dtype, device=net.device), requires_grad=False)

    def forward(self, x):
        return self.net(x)


def _attack(model, problem, idx, y, steps):
    """PGD on the examples idx; returns the points (n_idx, d) in the network's dtype."""
    from ..attacks import pgd  # imported here: the attacks module is optional for bounding

    if not isinstance(model, nn.Module):
        model = _AsModule(problem.net)
    param = next(iter(model.parameters()), None)
    kw = dict(dtype=param.dtype if param is not None else torch.float32, device=problem.net.device)
    shape = (len(idx), *problem.net.in_shape)
    box = lambda b: b[idx].to(**kw).view(shape) if isinstance(b, torch.Tensor) else b
    eps = problem.eps[idx].to(**kw) if isinstance(problem.eps, torch.Tensor) else problem.eps
    result = pgd(model, problem.x[idx].to(**kw).view(shape), y[idx], eps, norm=problem.norm, steps=steps,
                 loss="margin", lower=box(problem.lower), upper=box(problem.upper), seed=0)
    return result.x_adv.reshape(len(idx), -1).to(dtype=problem.net.dtype)


def _method_options(module, options, time_limit):
    options = dict(options)
    if time_limit is not None:
        if "time_limit" not in module.OPTIONS:
            raise ValueError("this method does not take time_limit (methods that do: solvers and alpha-crown)")
        options["time_limit"] = time_limit
    if "stop_at" in module.OPTIONS:
        options.setdefault("stop_at", 0.0)
    return options


def certify(model, X, y, eps, norm="inf", method="crown", lower=0.0, upper=1.0, *, batch_size=DEFAULT_BATCH_SIZE,
            time_limit=None, progress=True, attack=True, attack_steps=ATTACK_STEPS, dtype=torch.float64,
            n_jobs=1, **options) -> CertifyResult:
    """Certify, falsify or leave unknown each example (see the module docstring).

    ``time_limit``: seconds per example for the methods that take it. ``attack=False`` skips PGD
    (``attack_steps`` sets its length). ``n_jobs``: processes for the solver methods (``lp``,
    ``lp-cvxpy``, ``milp``), which then run example by example (:mod:`.parallel`; the same results for
    any ``n_jobs`` when no time limit binds); the torch methods stay batched in this process. Other
    keyword options go to the method.
    """
    start = time.perf_counter()
    n_jobs = check_n_jobs(n_jobs)
    _check_options(options)
    module = get_method(method)
    options = _method_options(module, options, time_limit)
    problem = Problem(model, X, eps, norm, lower, upper, dtype)
    y = labels_tensor(y, problem)
    n, k, net = problem.n, problem.net.out_features, problem.net
    falsified = torch.zeros(n, dtype=torch.bool, device=net.device)
    unsettled = torch.zeros(n, dtype=torch.bool, device=net.device)  # a solver timed out or failed
    bounds = torch.full((n, k), float("-inf"), dtype=net.dtype, device=net.device)
    counterexample, seconds = {}, np.zeros(n)

    def record(idx, points, ball):
        ok = (_margins_at(net, points, y[idx]) <= 0) & ball.contains(points, problem.x[idx]) & ~falsified[idx]
        for i in torch.nonzero(ok).flatten().tolist():
            counterexample[int(idx[i])] = points[i].view(net.in_shape).clone()
        falsified[idx[ok]] = True

    spec = margin_spec(y, k, net.dtype)
    batches = problem.batches(batch_size)
    for idx in tqdm(batches, desc=f"certify ({method})", disable=not progress):
        tic = time.perf_counter()
        ball = problem.ball(idx)
        record(idx, problem.x[idx], ball)  # misclassified or tied: the clean point is a counterexample
        if attack:
            open_ = idx[~falsified[idx]]
            if len(open_):
                record(open_, _attack(model, problem, open_, y, attack_steps), problem.ball(open_))
        # iterative methods and solvers only run on open examples (a falsified one could never settle them)
        run = idx[~falsified[idx]] if module.SOLVER or "stop_at" in module.OPTIONS else idx
        if len(run):
            res = (solve_examples(problem, spec, method, run, options, n_jobs, progress) if module.SOLVER
                   else problem.bounds(spec, method, run, options))
            bounds[run] = spread_margins(res.lower, y[run], k)
            if res.status is not None:
                unsettled[run] = torch.as_tensor(np.isin(res.status, UNSETTLED), device=net.device)
            if res.points is not None:  # e.g. the MILP's minimizers: keep those that really break the margin
                pts = res.points.to(net.dtype)
                for r in range(pts.shape[1]):
                    has = ~torch.isnan(pts[:, r]).any(1)
                    if has.any():
                        record(run[has], pts[has, r], problem.ball(run[has]))
        seconds[idx.cpu().numpy()] = (time.perf_counter() - tic) / len(idx)
    margin_lower = bounds.amin(1)
    conflict = (margin_lower > 0) & falsified
    if conflict.any():  # a proven bound above a real point's margin: rounding at a tie, or a bug
        warnings.warn(f"certify: {int(conflict.sum())} example(s) have a margin lower bound > 0 and a counterexample "
                      f"(indices {torch.nonzero(conflict).flatten().tolist()[:10]}); reported as falsified")
    certified = (margin_lower > 0) & ~falsified & ~unsettled
    status = np.where(falsified.cpu().numpy(), "falsified", np.where(certified.cpu().numpy(), "certified", "unknown"))
    return CertifyResult(status=status.astype(str), margin_lower=margin_lower, margin_bounds=bounds,
                         counterexample=counterexample, certified_accuracy=float(certified.double().mean()) if n else 0.0,
                         seconds=time.perf_counter() - start, seconds_per_example=seconds, method=method)


def _largest_radius(problem):
    """An eps beyond which the ball covers the whole box (per example), or None when unbounded."""
    if problem.lower is None or problem.upper is None:
        return None
    width = (torch.as_tensor(problem.upper) - torch.as_tensor(problem.lower)).to(problem.x)
    width = torch.broadcast_to(width, problem.x.shape)
    order = {"inf": float("inf"), 2: 2.0, 1: 1.0}[problem.norm]
    return torch.linalg.vector_norm(width, ord=order, dim=1)


def certified_radius(model, x, y, norm="inf", method="crown", tol=1e-4, lower=0.0, upper=1.0, *, eps_max=None,
                     dtype=torch.float64, batch_size=DEFAULT_BATCH_SIZE, **options) -> torch.Tensor:
    """The largest eps (within ``tol``) that ``method`` certifies, per example, by bisection; shape (n,).

    Every returned radius is certified (0 for a misclassified example). The search starts at ``eps_max``
    (default: the radius at which the ball covers the whole box; doubling from 1 for an unbounded box).
    """
    tol = check_eps(tol, name="tol")
    if tol <= 0:
        raise ValueError(f"tol must be > 0; got {tol}")
    problem = Problem(model, x, 0.0, norm, lower, upper, dtype)
    n = problem.n

    def certified(eps):
        bounds = margin_bounds(problem.net, x, y, eps, norm, method, lower, upper, dtype=dtype,
                               batch_size=batch_size, **options)
        return bounds.amin(1) > 0

    zero = torch.zeros(n, dtype=problem.net.dtype, device=problem.net.device)
    lo = zero.clone()
    ok0 = certified(zero)
    if eps_max is not None:
        hi = torch.full_like(lo, check_eps(eps_max, name="eps_max"))
    else:
        hi = _largest_radius(problem)
        if hi is None:  # grow until the bound fails (or a large cap)
            hi = torch.ones_like(lo)
            for _ in range(30):
                grow = certified(hi) & ok0
                if not grow.any():
                    break
                lo, hi = torch.where(grow, hi, lo), torch.where(grow, 2 * hi, hi)
    done_at_hi = certified(hi) & ok0
    lo = torch.where(done_at_hi, hi, lo)
    hi = torch.where(ok0, hi, zero)
    while bool(((hi - lo) > tol).any()):
        mid = (lo + hi) / 2
        ok = certified(mid)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return torch.where(ok0, lo, zero)
