"""Solver methods (LP, MILP) example by example, over ``n_jobs`` worker processes.

The per-example work of the solver methods (``lp``, ``lp-cvxpy``, ``milp``: one program per example) is
independent across examples, so :func:`solve_examples` hands one example at a time to a pool of
processes (joblib's ``loky`` backend: no ``if __name__ == "__main__"`` guard needed, workers reused
across calls). Each task carries the canonical network pickled to bytes (its weights by value, no
closures), the example's centre, radius, box and specification rows, and returns numpy arrays. Workers
run torch with one thread.

``n_jobs=1`` runs the very same per-example function in this process, so the results do not depend on
``n_jobs`` (bit for bit, as long as no time limit binds): the IBP/CROWN preamble of a solver rounds
differently in a batch of one than in a larger batch, which is why the examples are never batched here.
The torch methods (IBP, CROWN, alpha-CROWN, dual) stay batched in one process and never come here.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import torch
from tqdm.auto import tqdm

from ..sets import Ball
from .methods import Bounds, run_method

__all__ = ["solve_examples", "check_n_jobs", "worker_pool"]

_CACHE = {}  # network bytes -> Network, per worker process


def check_n_jobs(n_jobs) -> int:
    """``None`` -> 1, ``-1`` -> every CPU (``os.cpu_count()``), an int >= 1 as is; anything else raises."""
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or (n_jobs < 1 and n_jobs != -1):
        raise ValueError(f"n_jobs must be an int >= 1, -1 (every CPU) or None (1); got {n_jobs!r}")
    return (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)


def worker_pool(n_jobs):
    """A joblib ``Parallel`` yielding results as they finish (needs joblib >= 1.4, which scikit-learn brings)."""
    import joblib

    try:
        return joblib.Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")
    except (TypeError, ValueError) as err:  # pragma: no cover - old joblib
        raise ValueError(f"n_jobs > 1 needs joblib >= 1.4 (installed: {joblib.__version__}): {err}") from None


def _pick(value, i):
    """Row i of a per-example tensor (kept 2-D), or the scalar / None as is."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value[i:i + 1]
    return value


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _task(problem, spec, i, options):
    """Everything one example needs, as numpy arrays and plain values."""
    own = dict(options)
    if own.get("intermediate") is not None:
        own["intermediate"] = [(_numpy(lo[i:i + 1]), _numpy(hi[i:i + 1])) for lo, hi in own["intermediate"]]
    C = spec if spec.dim() == 2 else spec[i]
    return (_numpy(problem.x[i:i + 1]), _numpy(_pick(problem.eps, i)), problem.norm,
            _numpy(_pick(problem.lower, i)), _numpy(_pick(problem.upper, i)), _numpy(C), own)


def _solve(net, method, task):
    """Solve one example: (lower (m,), points (m, d) or None, status) as numpy."""
    x, eps, norm, lower, upper, C, options = task
    like = dict(dtype=net.dtype, device=net.device)
    as_t = lambda v: torch.as_tensor(v, **like) if isinstance(v, np.ndarray) else v
    if options.get("intermediate") is not None:
        options = dict(options, intermediate=[(as_t(lo), as_t(hi)) for lo, hi in options["intermediate"]])
    eps = float(eps) if np.ndim(eps) == 0 else as_t(eps)
    ball = Ball(eps, norm, as_t(lower), as_t(upper))
    res = run_method(method, net.with_spec(as_t(C)), as_t(x), ball, compute_upper=False, **options)
    points = None if res.points is None else _numpy(res.points[0])
    status = None if res.status is None else str(res.status[0])
    return _numpy(res.lower[0]), points, status


def _worker(blob, method, index, task):
    """Runs in a worker process: one thread for torch, the network unpickled once per process."""
    torch.set_num_threads(1)
    net = _CACHE.get(blob)
    if net is None:
        _CACHE.clear()
        net = _CACHE[blob] = pickle.loads(blob)
    return index, _solve(net, method, task)


def solve_examples(problem, spec, method, idx, options, n_jobs=1, progress=False) -> Bounds:
    """Lower bounds of solver ``method`` on ``spec`` (``(m, k)`` or ``(n, m, k)``) for the examples ``idx`` of
    a :class:`~.api.Problem`, one example at a time, over ``n_jobs`` processes. Returns :class:`Bounds` with
    ``lower`` (len(idx), m), ``points`` (len(idx), m, d) (NaN where none) and ``status`` (len(idx),)."""
    n_jobs = check_n_jobs(n_jobs)
    net = problem.net
    order = [int(i) for i in idx]
    tasks = [_task(problem, spec, i, options) for i in order]
    results = [None] * len(order)
    bar = tqdm(total=len(order), desc=f"{method} ({n_jobs} job{'s' if n_jobs > 1 else ''})", leave=False,
               disable=not progress)
    with bar:
        if n_jobs == 1 or len(order) == 1:
            for t, task in enumerate(tasks):
                results[t] = _solve(net, method, task)
                bar.update()
        else:
            if net.device.type != "cpu":
                raise ValueError("n_jobs > 1 runs the solvers in CPU processes: build the problem on the CPU "
                                 f"(the network is on {net.device})")
            from joblib import delayed

            blob = pickle.dumps(net)
            for t, result in worker_pool(min(n_jobs, len(order)))(
                    delayed(_worker)(blob, method, t, task) for t, task in enumerate(tasks)):
                results[t] = result
                bar.update()
    like = dict(dtype=net.dtype, device=net.device)
    lower = torch.stack([torch.as_tensor(r[0], **like) for r in results]) if results else torch.zeros(0, **like)
    points = None
    if any(r[1] is not None for r in results):
        m, d = lower.shape[1], problem.x.shape[1]
        points = torch.stack([torch.as_tensor(r[1], **like) if r[1] is not None
                              else torch.full((m, d), float("nan"), **like) for r in results])
    status = np.array([r[2] if r[2] is not None else "" for r in results], dtype=str)
    return Bounds(lower=lower, points=points, status=status)
