r"""``lp``: the triangle LP relaxation, built as sparse matrices and solved by HiGHS (``highspy``).

For each example and output row, :func:`~.program.build_program` gives the LP

.. math:: \min_{x, a} \; c^\top a_{K-1} + o \quad \text{s.t. } x \in B(x_0),\ \text{each ReLU: } a = z
          \text{ (active)},\ a = 0 \text{ (inactive)},\ a \ge z,\ a \le s(z - l) \text{ (unstable)},
          \ \sigma(l) \le a \le \sigma(u),

with the intermediate bounds (l, u) given by ``intermediate=`` or, by default, the elementwise tightest of
IBP and CROWN, so the LP dominates both. One HiGHS model per example; the objective changes per row and
the simplex starts from the previous row's basis (presolve off: 1.6x faster per LP here).

**Soundness.** The reported bound is never HiGHS's objective value: it is recomputed from HiGHS's row
duals by :func:`~.program.dual_bound`, a Lagrangian bound valid for *any* multipliers (dual infeasibility
is paid for through the finite variable bounds; the input set enters through its exact support
function), minus a bound on floating-point rounding. A row whose solve does not end "optimal" (error,
time limit) is not certified by the LP: its value is the cheap IBP/CROWN bound. The result is the
larger of the two (both proven); ``info["solver_lower"]`` holds the LP's own values (-inf where not solved).

Options: ``time_limit`` (seconds per example; the rows left keep the cheap bounds, status "time_limit"),
``stop_at`` (rows whose cheap bound already exceeds it are skipped, and an example stops at its first row
the LP leaves <= stop_at: it can then no longer be certified), ``splits`` (:mod:`.backward`: the intermediate
bounds are those of IBP and CROWN over the domain, clamped, and each neuron fixed inactive adds the row
:math:`z \le 0`; a domain those bounds prove empty gets +inf without a solve, flagged in ``Bounds.infeasible``;
an LP HiGHS finds infeasible keeps the cheap bounds, status "error"). l_inf and l_1 balls (l_2: use ``lp-cvxpy``).
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch

from .highs import HighsModel
from .methods import COMMON_OPTIONS, Bounds, check_stop_at, check_time_limit
from .program import RowCertificates, build_program, dual_bound, example_bounds, input_box, solver_inputs

NORMS = ("inf", 1)
OPTIONS = COMMON_OPTIONS | {"time_limit", "stop_at", "splits"}
SOLVER = True
EXACT = False
TAKES_TIME_LIMIT = True
TAKES_STOP_AT = True
TAKES_SPLITS = True


def rows_to_solve(cheap, stop_at):
    """Row order for one example: all rows, or with ``stop_at`` the unsettled ones, weakest first."""
    if stop_at is None:
        return list(range(len(cheap)))
    return [int(r) for r in np.argsort(cheap, kind="stable") if cheap[r] <= stop_at]


class SolverBatch:
    """What the solver methods share for a batch: the intermediate bounds (given, else the tightest of IBP and
    CROWN), the cheap lower bounds of the rows (n, rows) — the output rows, then with ``compute_upper`` the
    negated rows (upper bounds are minus their lower bounds) — and the float64 matrices of the programs."""

    def __init__(self, net, x, ball, intermediate, compute_upper, splits=None):
        self.net, self.x, self.ball, self.compute_upper = net, x, ball, compute_upper
        self.intermediate, cheap, self.infeasible = solver_inputs(net, x, ball, intermediate, splits)
        self.splits = None if splits is None else [None if t is None else t.cpu().numpy() for t in splits]
        self.m = cheap.shape[1]
        if compute_upper:
            negated = net.with_spec(-torch.eye(self.m, dtype=net.dtype, device=net.device))
            upper_rows = solver_inputs(negated, x, ball, self.intermediate, splits)[1]
            cheap = torch.cat([cheap, torch.where(self.infeasible[:, None], torch.inf, upper_rows)], 1)
        self.cheap = cheap
        self.cheap_np = cheap.detach().cpu().double().numpy()
        self.hidden = [(op.scipy(), op.bias_numpy()) for op in net.affine[:-1]]
        self.boxes = input_box(x, ball)

    def example(self, i, integer=False):
        """(program, last, x0, eps) of example i: ``last`` the rows (W, b) of the objectives."""
        op = self.net.affine[-1]
        W, b = op.scipy(i if op.batched else None), op.bias_numpy(i if op.batched else None)
        if self.compute_upper:
            W, b = sp.vstack([W, -W]).tocsr(), np.concatenate([b, -b])
        eps = self.ball.eps if isinstance(self.ball.eps, float) else float(self.ball.eps[i])
        x0 = self.x[i].detach().cpu().double().numpy()
        splits = self.example_splits(i)
        inactive = None if splits is None else [None if t is None else t < 0 for t in splits]
        program = build_program(self.hidden, (W, b), x0, (self.boxes[0][i], self.boxes[1][i]), eps, self.ball.norm,
                                example_bounds(self.intermediate, i), integer=integer, inactive=inactive)
        return program, (W, b), x0, eps

    def example_splits(self, i):
        """The splits of example i: per ReLU layer an int8 array (h_k,) or None; None without splits."""
        return None if self.splits is None else [None if t is None else t[i] for t in self.splits]

    def todo(self, i, stop_at):
        """The rows to solve for example i (none for a domain its splits make empty: its bounds are +inf)."""
        return [] if bool(self.infeasible[i]) else rows_to_solve(self.cheap_np[i], stop_at)

    def result(self, solver_lower, return_intermediate, **fields) -> Bounds:
        """Bounds from the solvers' proven row bounds (n, rows) (-inf where none): the larger of those and
        the cheap ones, split into lower / upper."""
        exact = torch.as_tensor(solver_lower, dtype=torch.float64, device=self.cheap.device)
        solver_lower = exact.to(self.cheap.dtype)  # rounded down where a narrower dtype rounded it up
        down = torch.nextafter(solver_lower, torch.full_like(solver_lower, -torch.inf))
        solver_lower = torch.where(solver_lower.double() > exact, down, solver_lower)
        rows, m = torch.maximum(self.cheap, solver_lower), self.m
        rows = torch.where(self.infeasible[:, None], torch.inf, rows)  # an empty domain: every row (lower and upper)
        return Bounds(lower=rows[:, :m], upper=-rows[:, m:] if self.compute_upper else None,
                      intermediate=self.intermediate if return_intermediate else None, infeasible=self.infeasible,
                      **fields)


def solve_rows(todo, started, time_limit, solve_row):
    """Runs ``solve_row(r, seconds left)`` -> (state, done) over the rows ``todo`` of one example, stopping
    at a failed state or when ``done``; returns the example's status ("optimal", "time_limit", "error")."""
    for r in todo:
        left = None if time_limit is None else time_limit - (time.perf_counter() - started)
        if left is not None and left <= 0:
            return "time_limit"
        state, done = solve_row(r, left)
        if state != "ok":
            return "time_limit" if state == "time_limit" else "error"
        if done:
            break
    return "optimal"


def relaxation_bounds(net, x, ball, make_solver, *, compute_upper, intermediate, return_intermediate, time_limit,
                      stop_at, splits=None) -> Bounds:
    """Shared driver of ``lp`` and ``lp-cvxpy``: per example a program; ``make_solver(program, i, x0, eps)``
    returns a function (row, seconds left) -> (status, row duals, objective value); the bounds are made
    rigorous from the duals (:func:`~.program.dual_bound`)."""
    time_limit, stop_at = check_time_limit(time_limit), check_stop_at(stop_at)
    batch = SolverBatch(net, x, ball, intermediate, compute_upper, splits)
    n, rows = batch.cheap.shape
    certificates = RowCertificates(n, rows, x.shape[1])
    status, seconds = np.full(n, "optimal", dtype=object), np.zeros(n)
    for i in range(n):
        tic = time.perf_counter()
        todo = batch.todo(i, stop_at)
        if todo:  # else settled by the cheap bounds
            program, _, x0, eps = batch.example(i)
            solve, solved = make_solver(program, i, x0, eps), {}

            def solve_row(r, left):
                state, solved[r], value = solve(r, left)
                if state != "optimal":
                    del solved[r]
                    return state, True
                return "ok", stop_at is not None and value <= stop_at  # then the LP cannot certify it

            status[i] = solve_rows(todo, tic, time_limit, solve_row)
            if solved:
                done = list(solved)
                certificates.add(i, done, dual_bound(program, np.stack([solved[r] for r in done]), done), program)
        seconds[i] = time.perf_counter() - tic
    solver_lower = certificates.finish(x, ball)
    return batch.result(solver_lower, return_intermediate, status=status.astype(str), seconds=seconds,
                        info={"solver_lower": solver_lower[:, :batch.m].to(net.dtype)})


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, time_limit=None,
           stop_at=None, splits=None) -> Bounds:
    """Triangle-LP bounds on the outputs of ``net`` (see the module docstring)."""

    def make_solver(program, *_):
        model = HighsModel(program)
        return model.solve_lp

    return relaxation_bounds(net, x, ball, make_solver, compute_upper=compute_upper, intermediate=intermediate,
                             return_intermediate=return_intermediate, time_limit=time_limit, stop_at=stop_at,
                             splits=splits)
