r"""Per-example verdicts (:func:`certify`) and certified radii (:func:`certified_radius`).

``certify`` settles each example in three stages, cheapest first: the clean prediction (a wrong or
tied prediction is its own counterexample), a short PGD attack (``robustopt.attacks.pgd``, margin
loss), then the bound method on the margins. An example is

- ``"falsified"`` when a point of the ball with margin <= 0 was found, re-checked by a forward pass
  of the canonical network in ``dtype`` (the point is in ``counterexample``);
- ``"certified"`` when the method's lower bound on every margin is > 0;
- ``"unknown"`` otherwise (including solver failure or time-out);
- ``"error"`` when its task raised (the message is in ``errors``; the other examples go on).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_eps
from .api import DEFAULT_BATCH_SIZE, Problem, labels_tensor, margin_bounds, margin_spec
from .certify_tasks import Job, bound_rows, error_row, fingerprint, screen_task, unbounded_row
from .journal import Journal
from .methods import get_method
from .parallel import TaskError, check_client, check_n_jobs, run_tasks, scattered
from .runner import bound_job, bound_tasks, method_options

__all__ = ["CertifyResult", "certify", "certified_radius"]

ATTACK_STEPS = 20


@dataclass
class CertifyResult:
    """Verdicts of :func:`certify`. ``status`` (n,) in {"certified", "falsified", "unknown", "error"};
    ``margin_lower`` (n,) = min over j of ``margin_bounds`` (n, k) (+inf in column y; -inf where the
    method was not run, e.g. a solver on an example the attack had already falsified);
    ``counterexample``: index -> point of the ball (shape of one example) with margin <= 0;
    ``errors``: index -> message of the examples whose task failed ("error");
    ``seconds``: total wall time, ``seconds_per_example`` (n,): each task's time split evenly."""

    status: np.ndarray
    margin_lower: torch.Tensor
    margin_bounds: torch.Tensor
    counterexample: dict
    certified_accuracy: float
    seconds: float
    seconds_per_example: np.ndarray = field(repr=False)
    method: str = "crown"
    errors: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict:
        return {s: int((self.status == s).sum()) for s in ("certified", "falsified", "unknown", "error")}

    def __repr__(self):
        return (f"CertifyResult(method={self.method!r}, n={len(self.status)}, {self.counts}, "
                f"certified_accuracy={self.certified_accuracy:.4f}, seconds={self.seconds:.3f})")


def _open_journal(out, resume, job, batch_size, dtype):
    """The ``out`` JSON-lines file: a header that identifies the run, then one row per (method, example)."""
    if out is None:
        if resume:
            raise ValueError("resume=True needs out= (the JSON-lines file of the run to continue)")
        return None
    header = {"robustopt": "certify", "fingerprint": fingerprint(job.model, job.problem, job.y), "n": job.problem.n,
              "norm": str(job.problem.norm), "attack": job.attack, "attack_steps": job.attack_steps,
              "batch_size": batch_size, "dtype": str(dtype).replace("torch.", "")}
    return Journal(out, ("method", "example"), header, resume=resume, scope={"method": job.method})


def _bound_tasks(module, screens, found, done):
    """The bound tasks after the screen: a task per example left open (and not ``done``) for a solver; else a
    task per screened batch, with only its open examples for a method that can stop early (``stop_at``), all of
    them otherwise (the batches stay whole, so their arithmetic does not depend on what was resumed)."""
    if module.SOLVER:
        return [[i] for examples in screens for i in examples if i not in found and i not in done]
    if module.TAKES_STOP_AT:
        return [rest for rest in ([i for i in examples if i not in found] for examples in screens) if rest]
    return list(screens)


def _collect(job, batches, done, accept, where):
    """Screen every batch (clean point, then PGD), then bound (:func:`_bound_tasks`) through the batch runner;
    ``accept`` each example's row (those in ``done`` are kept as they are) as soon as it is known."""
    module = get_method(job.method)
    with scattered(job, where["client"]) as shared:  # sent to the workers once for both kinds of task
        screens, found, share = [idx.tolist() for idx in batches], {}, {}
        screened = []
        for t, outcome in run_tasks(screen_task, shared, screens, desc=f"certify ({job.method}): attack", **where):
            if isinstance(outcome, TaskError):
                for i in screens[t]:
                    if i not in done:
                        accept(error_row(job, i, outcome.message))
                continue
            points, spent = outcome
            found.update((i, torch.tensor(point, dtype=torch.float64)) for i, point in points.items())
            share.update((i, spent / len(screens[t])) for i in screens[t])
            screened.append(screens[t])
        tasks = _bound_tasks(module, sorted(screened), found, done)
        bounded = {i for examples in tasks for i in examples}
        for i in sorted(set(share) - bounded - set(done)):  # falsified, not bounded: no bound, -inf
            accept(unbounded_row(job, i, found[i], None, share[i]))
        for t, outcome in bound_tasks(shared, tasks, errors="yield", desc=f"certify ({job.method})", **where):
            rows = ([error_row(job, i, outcome.message) for i in tasks[t]] if isinstance(outcome, TaskError)
                    else bound_rows(job, tasks[t], outcome, found))
            for row in rows:
                if row["example"] not in done:
                    accept(dict(row, seconds=row["seconds"] + share[row["example"]]))


def _result(job, rows, start):
    """A CertifyResult from the rows (dicts as written to the journal) of every example."""
    net, n = job.problem.net, job.problem.n
    like = dict(dtype=net.dtype, device=net.device)
    ordered = [rows[i] for i in range(n)]
    bounds = torch.tensor([[float(v) for v in r["margin_bounds"]] for r in ordered], **like).reshape(n, -1)
    status = np.array([r["status"] for r in ordered], dtype=str).reshape(n)
    counterexample = {i: torch.tensor(r["counterexample"], **like).view(net.in_shape)
                      for i, r in enumerate(ordered) if r["counterexample"] is not None}
    margin_lower = bounds.amin(1) if n else torch.zeros(0, **like)
    conflict = [i for i in range(n) if status[i] == "falsified" and margin_lower[i] > 0]
    if conflict:  # a proven bound above a real point's margin: rounding at a tie, or a bug
        warnings.warn(f"certify: {len(conflict)} example(s) have a margin lower bound > 0 and a counterexample "
                      f"(indices {conflict[:10]}); reported as falsified")
    errors = {i: r.get("message", "") for i, r in enumerate(ordered) if r["status"] == "error"}
    if errors:
        first = next(iter(errors.items()))
        warnings.warn(f"certify: {len(errors)} example(s) failed and are reported as 'error' (example {first[0]}: "
                      f"{first[1]})")
    return CertifyResult(status=status, margin_lower=margin_lower, margin_bounds=bounds, counterexample=counterexample,
                         certified_accuracy=float(np.mean(status == "certified")) if n else 0.0,
                         seconds=time.perf_counter() - start,
                         seconds_per_example=np.array([float(r["seconds"]) for r in ordered]), method=job.method,
                         errors=errors)


def certify(model, X, y, eps, norm="inf", method="crown", lower=0.0, upper=1.0, *, batch_size=DEFAULT_BATCH_SIZE,
            time_limit=None, progress=True, attack=True, attack_steps=ATTACK_STEPS, dtype=torch.float64,
            n_jobs=1, client=None, out=None, resume=False, **options) -> CertifyResult:
    """Certify, falsify or leave unknown each example (see the module docstring).

    ``time_limit``: seconds per example for the methods that take one (``TAKES_TIME_LIMIT``); ignored for the
    others, which run to completion (as in ``compare``). ``attack=False`` skips PGD
    (``attack_steps`` sets its length). Other keyword options go to the method.

    Where the work runs: ``n_jobs`` local processes, or ``client``, a ``dask.distributed.Client`` (not both).
    The solver methods (``lp``, ``lp-cvxpy``, ``milp``) send one task per example that the attack left
    open; the torch methods one task per batch of ``batch_size`` examples. The results do not depend on
    where they ran, as long as no time limit binds. An example whose task fails is ``"error"`` (its message
    in ``errors``) and the run goes on.

    ``out``: a JSON-lines file; each example's row is appended and flushed as soon as it is known (a header
    line identifies the run: network, data, ball, attack, batch size). ``resume=True`` keeps the rows of
    this method already in ``out`` and computes only the others; several methods may share one file.
    """
    start = time.perf_counter()
    where = {"n_jobs": check_n_jobs(n_jobs), "client": check_client(client, n_jobs), "progress": progress}
    options = method_options(method, options, time_limit)
    if get_method(method).TAKES_STOP_AT:
        options.setdefault("stop_at", 0.0)
    problem = Problem(model, X, eps, norm, lower, upper, dtype)
    if (where["n_jobs"] > 1 or client is not None) and problem.net.device.type != "cpu":
        raise ValueError("n_jobs > 1 and client= run on CPU workers: build the problem on the CPU (the network is "
                         f"on {problem.net.device})")
    y = labels_tensor(y, problem)
    bound = bound_job(problem, margin_spec(y, problem.net.out_features, problem.net.dtype), method, options)
    job = Job(**vars(bound), model=model, y=y, attack=bool(attack), attack_steps=attack_steps)
    journal = _open_journal(out, resume, job, batch_size, dtype)
    rows = {int(key[1]): row for key, row in journal.done.items()} if journal else {}

    def accept(row):
        rows[row["example"]] = row
        if journal is not None:
            journal.write({"method": method, **row, "time_limit": time_limit})

    batches = [idx for idx in problem.batches(batch_size) if any(int(i) not in rows for i in idx)]
    try:
        _collect(job, batches, dict(rows), accept, where)
    finally:
        if journal is not None:
            journal.close()
    return _result(job, rows, start)


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
