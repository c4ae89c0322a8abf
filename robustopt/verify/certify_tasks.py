"""The work of :func:`~robustopt.verify.certify`, cut into tasks that run anywhere (this process, a local
process, a Dask worker), and the JSON-ready rows, one per example, made from their outcomes.

- :func:`screen_task` (clean point, then PGD) on a batch of examples, before any bound;
- the bounds themselves come from the batch runner (:mod:`.runner`), and :func:`bound_rows` turns them into rows.

A batch is always one of the fixed batches of the whole run, so its PGD starts and its batched arithmetic are
the same whether the run is serial, parallel, or resumed.
"""
from __future__ import annotations

import hashlib
import pickle
import time
from dataclasses import dataclass

import torch
from torch import nn

from .api import spread_margins
from .journal import encode_float
from .methods import UNSETTLED
from .runner import BoundJob

__all__ = ["Job", "screen", "screen_task", "bound_rows", "make_row", "unbounded_row", "error_row", "fingerprint"]


@dataclass
class Job(BoundJob):
    """What every task of one certify run shares (the bound job, plus the model, labels and attack); sent to
    each worker once."""

    model: object  # the nn.Module the attack runs on (or a canonical Network)
    y: torch.Tensor
    attack: bool
    attack_steps: int


def margins_at(net, points, y):
    """min_{j != y} f_y - f_j at ``points`` (n, d) by a forward pass of the canonical network."""
    logits = net(points)
    own = logits.gather(1, y.unsqueeze(1))
    other = logits.scatter(1, y.unsqueeze(1), float("-inf"))
    return own[:, 0] - other.amax(1)


class _AsModule(nn.Module):
    """A canonical Network as an nn.Module, so that the attack can run on it."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.anchor = nn.Parameter(torch.zeros(0, dtype=net.dtype, device=net.device), requires_grad=False)

    def forward(self, x):
        return self.net(x)


def _attack(job, idx):
    """PGD (margin loss, seed 0) on the examples idx; returns the points (len(idx), d) in the network's dtype."""
    from ..attacks import pgd  # imported here: the attacks module is optional for bounding

    problem, model = job.problem, job.model
    if not isinstance(model, nn.Module):
        model = _AsModule(problem.net)
    param = next(iter(model.parameters()), None)
    kw = dict(dtype=param.dtype if param is not None else torch.float32, device=problem.net.device)
    x = problem.x[idx].to(**kw).view(len(idx), *problem.net.in_shape)
    ball = problem.ball(idx).flat(x)  # in the attack's dtype, boxes (len(idx), d) broadcast to x by the attack
    result = pgd(model, x, job.y[idx], ball.eps, norm=problem.norm, steps=job.attack_steps, loss="margin",
                 lower=ball.lower, upper=ball.upper, seed=0)
    return result.x_adv.reshape(len(idx), -1).to(dtype=problem.net.dtype)


def _breaking(job, idx, points):
    """Positions p of idx whose point (a row of ``points``) is in the ball and has margin <= 0."""
    ok = (margins_at(job.problem.net, points, job.y[idx]) <= 0) & \
        job.problem.ball(idx).contains(points, job.problem.x[idx])
    return torch.nonzero(ok).flatten().tolist()


def screen(job, idx) -> dict:
    """The clean point, then PGD on the rest: {position in idx: counterexample (d,)}."""
    found = {p: job.problem.x[idx[p]] for p in _breaking(job, idx, job.problem.x[idx])}
    if job.attack:
        open_ = [p for p in range(len(idx)) if p not in found]
        if open_:
            points = _attack(job, idx[open_])
            found.update((open_[q], points[q]) for q in _breaking(job, idx[open_], points))
    return found


def make_row(job, i, bounds, counterexample, solver_status, seconds) -> dict:
    """The JSON-ready row of example i: ``bounds`` (k,) lower bounds on each margin (+inf at the label)."""
    margin_lower = float(bounds.min())
    settled = solver_status not in UNSETTLED
    status = ("falsified" if counterexample is not None else
              "certified" if margin_lower > 0 and settled else "unknown")
    cex = None if counterexample is None else counterexample.reshape(-1).tolist()
    return {"example": int(i), "status": status, "margin_lower": encode_float(margin_lower),
            "margin_bounds": [encode_float(v) for v in bounds.tolist()], "solver_status": solver_status,
            "seconds": seconds, "counterexample": cex}


def unbounded_row(job, i, counterexample, solver_status, seconds) -> dict:
    """The row of example i without a bound: -inf on every margin (+inf at the label)."""
    bounds = torch.full((job.problem.net.out_features,), float("-inf"))
    bounds[int(job.y[i])] = float("inf")
    return make_row(job, i, bounds, counterexample, solver_status, seconds)


def error_row(job, i, message) -> dict:
    """The row of an example whose task failed."""
    return dict(unbounded_row(job, i, None, "error", 0.0), status="error", message=message)


def bound_rows(job, examples, res, found) -> list:
    """The rows of the ``examples`` (a list of indices) of one bound task from its Bounds ``res``; ``found``:
    example -> counterexample (d,) of the screen. The method's points (e.g. the MILP's minimizers) that really
    break a margin become counterexamples too."""
    net, k = job.problem.net, job.problem.net.out_features
    idx = torch.tensor(examples, dtype=torch.long, device=job.problem.x.device)
    bounds = spread_margins(res.lower, job.y[idx], k)
    found = {p: found[i] for p, i in enumerate(examples) if i in found}
    if res.points is not None:
        pts = res.points.to(net.dtype)
        for r in range(pts.shape[1]):
            has = [p for p in range(len(examples)) if not torch.isnan(pts[p, r]).any() and p not in found]
            if has:
                found.update((has[h], pts[has[h], r]) for h in _breaking(job, idx[has], pts[has, r]))
    status = [None] * len(examples) if res.status is None else [str(s) for s in res.status]
    return [make_row(job, i, bounds[p], found.get(p), status[p], float(res.seconds[p]))
            for p, i in enumerate(examples)]


def screen_task(job, examples) -> tuple:
    """Screen a batch of examples (a list of indices): ({example: counterexample as a list}, seconds)."""
    tic = time.perf_counter()
    idx = torch.tensor(examples, dtype=torch.long, device=job.problem.x.device)
    found = {examples[p]: point.tolist() for p, point in screen(job, idx).items()}
    return found, time.perf_counter() - tic


def fingerprint(model, problem, y) -> str:
    """A short hash of the network's weights, the inputs, labels and ball: a resumed run must be the same run."""
    digest = hashlib.sha256()
    if isinstance(model, nn.Module):
        for name, value in model.state_dict().items():
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    else:
        digest.update(pickle.dumps(model))
    for value in (problem.x, y, problem.eps, problem.lower, problem.upper, problem.norm):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous().numpy().tobytes()
        digest.update(repr(value).encode() if not isinstance(value, bytes) else value)
    return digest.hexdigest()[:16]
