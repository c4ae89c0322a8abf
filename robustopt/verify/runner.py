r"""The one batch runner: a bound method over the examples of a :class:`~.api.Problem`, a task at a time.

``margin_bounds`` / ``spec_bounds`` / ``logit_bounds`` (serially), :func:`~.certification.certify` and
:func:`robustopt.compare.compare` (on ``n_jobs`` processes or a Dask ``client``) all bound through here:

1. :func:`bound_job` checks the method's options once, for the whole batch, and returns the :class:`BoundJob`
   every task shares (the problem, the spec C of shape (m, k) or (n, m, k), the method, its options);
2. a task is a list of example indices, or a pair (examples, rows of C): :func:`bound_task` runs the method on
   them (:meth:`~.api.Problem.bounds`) and fills in ``Bounds.seconds``;
3. :func:`bound_tasks` yields each task's :class:`~.methods.Bounds` as it finishes; :func:`run_batches`
   concatenates consecutive batches into one (:meth:`~.methods.Bounds.cat`).

**Time limits.** :func:`method_options` passes a ``time_limit`` (seconds per example) to the methods that take
one (``TAKES_TIME_LIMIT``: the solvers, alpha- and beta-CROWN) and ignores it for the others, which run to
completion anyway: one ``time_limit`` for a comparison of several methods is never an error.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_choice, reject_unknown_options
from .methods import Bounds, check_intermediate, check_time_limit, get_method
from .parallel import TaskError, check_n_jobs, run_tasks

__all__ = ["BoundJob", "bound_job", "method_options", "bound_task", "bound_tasks", "run_batches"]


@dataclass
class BoundJob:
    """What every bound task shares (sent to each worker once): an :class:`~.api.Problem`, the spec C
    ((m, k) shared or (n, m, k)), the method, its validated options (per-example ones cover all n examples)
    and whether upper bounds are wanted."""

    problem: object
    spec: torch.Tensor
    method: str
    options: dict
    compute_upper: bool


def method_options(method: str, options: dict, time_limit=None) -> dict:
    """``options`` with ``time_limit`` (seconds per example, > 0) added for a method that takes one; for a method
    that does not, the time limit is ignored (see the module docstring). An explicit option wins."""
    options = dict(options)
    time_limit = check_time_limit(time_limit)
    if time_limit is not None and get_method(method).TAKES_TIME_LIMIT:
        options.setdefault("time_limit", time_limit)
    return options


def bound_job(problem, C, method: str, options: dict, compute_upper: bool = False) -> BoundJob:
    """A :class:`BoundJob`, its options checked here rather than in every task: unknown ones raise
    ``ValueError``, ``compute_upper`` is the caller's choice (not an option), ``intermediate=`` must cover the
    n examples."""
    if "compute_upper" in options:
        raise ValueError("compute_upper is chosen by the API function (use logit_bounds for upper bounds)")
    module = get_method(method)
    reject_unknown_options(options, f"method {method!r}", module.OPTIONS)
    options = dict(options)
    if options.get("intermediate") is not None:
        options["intermediate"] = check_intermediate(problem.net, options["intermediate"], problem.n)
    return BoundJob(problem, C, method, options, bool(compute_upper))


def bound_task(job: BoundJob, task) -> Bounds:
    """Runs anywhere (:func:`~.parallel.run_tasks`): the method on one task's examples (a list or tensor of
    indices, or a pair (examples, rows of C)). ``seconds`` (per example): the method's own, plus an even share
    of the rest of the task's wall time (e.g. intermediate bounds), so that they add up to it."""
    examples, rows = task if isinstance(task, tuple) else (task, None)
    idx = torch.as_tensor(examples, dtype=torch.long, device=job.problem.x.device).reshape(-1)
    tic = time.perf_counter()
    res = job.problem.bounds(job.spec, job.method, idx, job.options, job.compute_upper, rows=rows)
    spent, n = time.perf_counter() - tic, len(idx)
    own = np.zeros(n) if res.seconds is None else np.asarray(res.seconds, dtype=float)
    res.seconds = own + max(spent - float(own.sum()), 0.0) / max(n, 1)
    return res


def bound_tasks(job: BoundJob, tasks, *, errors="raise", n_jobs=1, client=None, progress=False, desc="bounds"):
    """Yield ``(t, Bounds)`` for every task as it finishes (in order when serial).

    ``errors="raise"``: a failed task stops the run: serially (``n_jobs=1``, no client) with its own exception,
    on workers with a ``RuntimeError`` carrying the worker's message. ``errors="yield"``: ``(t, TaskError)``
    is yielded instead and the run goes on (``certify`` records the examples as "error")."""
    check_choice(errors, ("raise", "yield"), "errors")
    tasks = list(tasks)
    if errors == "raise" and client is None and check_n_jobs(n_jobs) == 1:
        for t, task in enumerate(tasks):
            yield t, bound_task(job, task)
        return
    for t, outcome in run_tasks(bound_task, job, tasks, n_jobs=n_jobs, client=client, progress=progress, desc=desc):
        if isinstance(outcome, TaskError) and errors == "raise":
            raise RuntimeError(f"{desc}: a task failed: {outcome.message}")
        yield t, outcome


def run_batches(job: BoundJob, batches, **where) -> Bounds:
    """The method on consecutive ``batches`` of examples (lists or tensors of indices), as one :class:`Bounds`
    in their order (:meth:`Bounds.cat`). ``where``: :func:`bound_tasks`' ``n_jobs``, ``client``, ``progress``,
    ``desc``; a failed batch raises."""
    batches = list(batches)
    done = dict(bound_tasks(job, batches, **where))
    return Bounds.cat([done[b] for b in range(len(batches))])
