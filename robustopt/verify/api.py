r"""Bounds on logits, margins and linear specifications of a torch model over a perturbation ball.

All functions take a model (an ``nn.Sequential`` of supported layers, or a :class:`~.network.Network`),
a batch ``x`` (n, *shape) inside the box [lower, upper], and a radius ``eps`` (scalar or (n,)); the
ball is :math:`\{x' : \|x' - x\| \le \varepsilon,\ lower \le x' \le upper\}`. They compute in ``dtype``
(float64 by default) on the model's device, over batches of ``batch_size`` examples, and fold the
specification into the last layer before bounding, whatever the method. Method options
(``relaxation=``, ``intermediate=``, ``steps=``, ``time_limit=``, ...) are passed on and checked by the
method (:mod:`.methods`); unknown ones raise ``ValueError``.
"""
from __future__ import annotations

import numpy as np
import torch

from .._validation import check_batch, check_labels, check_positive_int
from ..sets import Ball
from .methods import Bounds, run_method
from .network import Network, network
from .runner import bound_job, run_batches

__all__ = ["logit_bounds", "margin_bounds", "spec_bounds", "margin_spec", "Problem"]

DEFAULT_BATCH_SIZE = 128


def _as_tensor(x):
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return x


class Problem:
    """A model, a batch and a ball, validated once and cut into batches of examples. ``x`` is flat (n, d) in
    the network's dtype; ``eps``, ``lower``, ``upper`` are those of :meth:`Ball.flat` (floats, None, or
    tensors aligned with ``x``)."""

    def __init__(self, model, x, eps, norm="inf", lower=0.0, upper=1.0, dtype=torch.float64):
        x = check_batch(_as_tensor(x), "x")
        if isinstance(model, Network):
            self.net = model
        else:
            self.net = network(model, input_shape=tuple(x.shape[1:]), dtype=dtype)
        self.n = x.shape[0]
        self.x = self.net.flatten_input(x)
        ball = Ball(eps, norm, lower, upper).flat(x.to(dtype=self.net.dtype, device=self.net.device))
        self.eps, self.norm, self.lower, self.upper = ball.eps, ball.norm, ball.lower, ball.upper
        ball.check_center(self.x)
        self._ball = ball

    def ball(self, idx=None) -> Ball:
        """The ball of the examples ``idx`` (all when None)."""
        return self._ball if idx is None else self._ball.select(idx)

    def batches(self, batch_size):
        batch_size = check_positive_int(batch_size, "batch_size")
        return [torch.arange(i, min(i + batch_size, self.n), device=self.x.device) for i in range(0, self.n, batch_size)]

    def bounds(self, C, method, idx, options, compute_upper=False, rows=None):
        """run_method on the examples ``idx`` with the spec C ((m, k) shared or (n, m, k)) folded in (only its
        ``rows`` when given); per-example options (``intermediate``, ``splits``, ``alphas``) cover all n examples
        and are cut to ``idx`` here."""
        spec = C if C.dim() == 2 else C[idx]
        if rows is not None:
            spec = spec.index_select(-2, torch.as_tensor(rows, dtype=torch.long, device=spec.device))
        options = dict(options)
        if options.get("intermediate") is not None:
            options["intermediate"] = [(lo[idx], hi[idx]) for lo, hi in options["intermediate"]]
        if isinstance(options.get("splits"), (list, tuple)):
            options["splits"] = [None if s is None else torch.as_tensor(s)[idx.to(torch.as_tensor(s).device)]
                                 for s in options["splits"]]
        if hasattr(options.get("alphas"), "select"):
            options["alphas"] = options["alphas"].select(idx)
        return run_method(method, self.net.with_spec(spec), self.x[idx], self.ball(idx),
                          compute_upper=compute_upper, **options)


def margin_spec(y: torch.Tensor, classes: int, dtype=torch.float64) -> torch.Tensor:
    """C (n, k-1, k) with rows e_y - e_j for j != y (in increasing j)."""
    n = y.shape[0]
    others = torch.arange(classes, device=y.device).expand(n, -1)
    others = others[others != y.unsqueeze(1)].view(n, classes - 1)
    C = torch.zeros(n, classes - 1, classes, dtype=dtype, device=y.device)
    C.scatter_(2, y.view(n, 1, 1).expand(n, classes - 1, 1), 1.0)
    C.scatter_(2, others.unsqueeze(-1), -1.0)
    return C


def _run(problem, C, method, batch_size, options, compute_upper=False, return_intermediate=False) -> Bounds:
    job = bound_job(problem, C, method, dict(options, return_intermediate=return_intermediate), compute_upper)
    return run_batches(job, problem.batches(batch_size))


def logit_bounds(model, x, eps, norm="inf", method="crown", lower=0.0, upper=1.0, *, dtype=torch.float64,
                 batch_size=DEFAULT_BATCH_SIZE, return_intermediate=False, **options):
    """Lower and upper bounds on every logit over the ball: ``(lb, ub)``, each (n, k).

    With ``return_intermediate=True`` returns ``(lb, ub, intermediate)``.
    """
    problem = Problem(model, x, eps, norm, lower, upper, dtype)
    eye = torch.eye(problem.net.out_features, dtype=problem.net.dtype, device=problem.net.device)
    res = _run(problem, eye, method, batch_size, options, True, return_intermediate)
    return (res.lower, res.upper, res.intermediate) if return_intermediate else (res.lower, res.upper)


def spec_bounds(model, x, C, eps, norm="inf", method="crown", lower=0.0, upper=1.0, *, dtype=torch.float64,
                batch_size=DEFAULT_BATCH_SIZE, return_intermediate=False, **options):
    r"""Lower bounds on :math:`C f(x')` over the ball, shape (n, m), for a spec C (n, m, k) or (m, k).

    With ``return_intermediate=True`` returns ``(bounds, intermediate)``.
    """
    problem = Problem(model, x, eps, norm, lower, upper, dtype)
    C = torch.as_tensor(_as_tensor(C))
    k = problem.net.out_features
    if C.dim() not in (2, 3) or C.shape[-1] != k or (C.dim() == 3 and C.shape[0] != problem.n):
        raise ValueError(f"C must have shape (n, m, k) = ({problem.n}, m, {k}) or (m, {k}); got {tuple(C.shape)}")
    C = C.to(dtype=problem.net.dtype, device=problem.net.device)
    res = _run(problem, C, method, batch_size, options, False, return_intermediate)
    return (res.lower, res.intermediate) if return_intermediate else res.lower


def margin_bounds(model, x, y, eps, norm="inf", method="crown", lower=0.0, upper=1.0, *, dtype=torch.float64,
                  batch_size=DEFAULT_BATCH_SIZE, return_intermediate=False, **options):
    r"""Lower bounds on the margins :math:`m_j = f_y - f_j` over the ball, shape (n, k), +inf in column y.

    The specification rows :math:`e_y - e_j` are folded into the last layer (tighter than differencing
    :func:`logit_bounds`). With ``return_intermediate=True`` returns ``(bounds, intermediate)``.
    """
    problem = Problem(model, x, eps, norm, lower, upper, dtype)
    y = labels_tensor(y, problem)
    k = problem.net.out_features
    C = margin_spec(y, k, problem.net.dtype)
    res = _run(problem, C, method, batch_size, options, False, return_intermediate)
    out = spread_margins(res.lower, y, k)
    return (out, res.intermediate) if return_intermediate else out


def labels_tensor(y, problem):
    """Validated labels as a long tensor on the network's device."""
    y = _as_tensor(y)
    k = problem.net.out_features
    if k < 2:
        raise ValueError(f"margins need at least 2 outputs; the network has {k}")
    check_labels(y, problem.n, classes=k)
    return torch.as_tensor(y).to(dtype=torch.long, device=problem.net.device)


def spread_margins(rows, y, k):
    """Margin rows (n, k-1) in the order of :func:`margin_spec` -> (n, k) with +inf in column y."""
    n = rows.shape[0]
    out = torch.full((n, k), float("inf"), dtype=rows.dtype, device=rows.device)
    mask = torch.ones(n, k, dtype=torch.bool, device=rows.device)
    mask[torch.arange(n, device=rows.device), y] = False
    out[mask] = rows.reshape(-1)
    return out
