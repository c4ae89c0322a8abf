r"""``lp``: the triangle LP relaxation, built as sparse matrices and solved by HiGHS (``highspy``).

For each example and output row, :func:`~.program.build_program` gives the LP

.. math:: \min_{x, a} \; c^\top a_{K-1} + o \quad \text{s.t. } x \in B(x_0),\ \text{each ReLU: } a = z
          \text{ (active)},\ a = 0 \text{ (inactive)},\ a \ge z,\ a \le s(z - l) \text{ (unstable)},
          \ \sigma(l) \le a \le \sigma(u),

with the intermediate bounds (l, u) given by ``intermediate=`` or, by default, the elementwise tightest of
IBP and CROWN, so the LP dominates both. One HiGHS model per example; the objective changes per row and
the simplex starts from the previous row's basis.

**Soundness.** The reported bound is never HiGHS's objective value: it is recomputed from HiGHS's row
duals by :func:`~.program.dual_bound`, a Lagrangian bound valid for *any* multipliers (dual infeasibility
is paid for through the finite variable bounds; the input set enters through its exact support
function), minus a bound on floating-point rounding. A row whose solve does not end "optimal" (error,
time limit) is not certified by the LP: its value is the cheap IBP/CROWN bound. The result is the
larger of the two (both proven); ``info["solver_lower"]`` holds the LP's own values (-inf where not solved).

Options: ``time_limit`` (seconds per example; the rows left keep the cheap bounds, status "time_limit"),
``stop_at`` (rows whose cheap bound already exceeds it are skipped, and an example stops at its first row
the LP leaves <= stop_at: it can then no longer be certified). l_inf and l_1 balls (l_2: use ``lp-cvxpy``).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .highs import HighsModel
from .methods import COMMON_OPTIONS, Bounds
from .program import RowCertificates, build_program, dual_bound, example_bounds, input_box, solver_inputs

NORMS = ("inf", 1)
OPTIONS = COMMON_OPTIONS | {"time_limit", "stop_at"}
SOLVER = True


def check_time_limit(time_limit):
    if time_limit is None:
        return None
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be a number of seconds > 0 (or None); got {time_limit!r}")
    return float(time_limit)


def check_stop_at(stop_at):
    if stop_at is None:
        return None
    if isinstance(stop_at, bool) or not isinstance(stop_at, (int, float)) or np.isnan(stop_at):
        raise ValueError(f"stop_at must be a number (or None); got {stop_at!r}")
    return float(stop_at)


def example_data(net, x, ball, i, compute_upper):
    """(last, x0, eps) of example i: the output rows (W, b) (with the negated rows appended for upper
    bounds), the centre and the radius, in float64 numpy."""
    last_op = net.affine[-1]
    W, b = last_op.scipy(i if last_op.batched else None), last_op.bias_numpy(i if last_op.batched else None)
    if compute_upper:  # upper bounds are minus the lower bounds of -C
        import scipy.sparse as sp
        W, b = sp.vstack([W, -W]).tocsr(), np.concatenate([b, -b])
    eps = ball.eps if isinstance(ball.eps, float) else float(ball.eps[i])
    return (W, b), x[i].detach().cpu().double().numpy(), eps


def rows_to_solve(cheap, stop_at):
    """Row order for one example: all rows, or with ``stop_at`` the unsettled ones, weakest first."""
    if stop_at is None:
        return list(range(len(cheap)))
    return [int(r) for r in np.argsort(cheap, kind="stable") if cheap[r] <= stop_at]


def relaxation_bounds(net, x, ball, make_solver, *, compute_upper, intermediate, return_intermediate, time_limit,
                      stop_at) -> Bounds:
    """Shared driver of ``lp`` and ``lp-cvxpy``: per example a program, ``make_solver(program, data)``
    (data = (i, hidden, last, x0, eps, norm)) ->
    a function (row, seconds left) -> (status, row duals, objective value); rigorous bounds from the duals."""
    time_limit, stop_at = check_time_limit(time_limit), check_stop_at(stop_at)
    used, cheap = solver_inputs(net, x, ball, intermediate)
    n, m = cheap.shape
    if compute_upper:
        upper_cheap = -solver_inputs(net.with_spec(-torch.eye(m, dtype=net.dtype, device=net.device)), x, ball, used)[1]
        cheap_rows = torch.cat([cheap, -upper_cheap], 1)
    else:
        cheap_rows = cheap
    hidden = [(op.scipy(), op.bias_numpy()) for op in net.affine[:-1]]
    boxes = input_box(x, ball)
    certificates = RowCertificates(n, cheap_rows.shape[1], x.shape[1])
    status, seconds = np.full(n, "optimal", dtype=object), np.zeros(n)
    cheap_np = cheap_rows.detach().cpu().double().numpy()
    for i in range(n):
        tic = time.perf_counter()
        todo = rows_to_solve(cheap_np[i], stop_at)
        if not todo:  # settled by the cheap bounds
            seconds[i] = time.perf_counter() - tic
            continue
        last, x0, eps = example_data(net, x, ball, i, compute_upper)
        program = build_program(hidden, last, x0, (boxes[0][i], boxes[1][i]), eps, ball.norm,
                                example_bounds(used, i))
        solve = make_solver(program, (i, hidden, last, x0, eps, ball.norm))
        for r in todo:
            left = None if time_limit is None else time_limit - (time.perf_counter() - tic)
            if left is not None and left <= 0:
                status[i] = "time_limit"
                break
            state, duals, value = solve(r, left)
            if state != "optimal":
                status[i] = state if state == "time_limit" else "error"
                break
            certificates.add(i, [r], dual_bound(program, duals[None], [r]), program)
            if stop_at is not None and value <= stop_at:  # the LP cannot certify this example
                break
        seconds[i] = time.perf_counter() - tic
    solver_lower = certificates.finish(x, ball).to(dtype=net.dtype)
    lower_rows = torch.maximum(cheap_rows.to(net.dtype), solver_lower)
    info = {"solver_lower": solver_lower[:, :m], "seconds": seconds}
    return Bounds(lower=lower_rows[:, :m], upper=-lower_rows[:, m:] if compute_upper else None,
                  intermediate=used if return_intermediate else None, status=status.astype(str), info=info)


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, time_limit=None,
           stop_at=None) -> Bounds:
    """Triangle-LP bounds on the outputs of ``net`` (see the module docstring)."""

    def make_solver(program, _data):
        model = HighsModel(program)
        return model.solve_lp

    return relaxation_bounds(net, x, ball, make_solver, compute_upper=compute_upper, intermediate=intermediate,
                             return_intermediate=return_intermediate, time_limit=time_limit, stop_at=stop_at)
