r"""``milp``: the exact minimum of each output row as a mixed-integer program (HiGHS, ``highspy``).

The program is :mod:`.lp`'s triangle LP plus one binary :math:`\delta` per unstable ReLU
(:func:`~.program.build_program` with ``integer=True``): :math:`a \le u\delta`,
:math:`a \le z - l(1 - \delta)`, which with :math:`a \ge z, a \ge 0` force :math:`a = \sigma(z)`. The big-M
values are the intermediate bounds: ``intermediate=`` or, by default, the elementwise tightest of IBP and
CROWN (tighter bounds mean fewer unstable neurons and smaller M). Each row is solved to a relative gap
of 1e-6 (:data:`~.highs.MIP_REL_GAP`).

**What is returned.** ``lower`` is, per row, the larger of the cheap IBP/CROWN bound and the MILP's
proven bound minus a safety margin (below); ``points[i, r]`` is the best point found (projected onto the
ball, NaN where none) and ``info["replayed"]`` its row value by a float64 forward pass — an upper bound
on the minimum that does not trust the solver. On time-out the proven bound so far is returned (still
sound) with status "time_limit", which ``certify`` reports as unknown.

**Early stop** (``stop_at=t``, what ``certify`` passes): rows whose cheap bound exceeds t are skipped;
the others are solved weakest first, each stopped as soon as HiGHS finds a point with objective
<= t - margin (then replayed: only a replayed value <= t counts, and the example stops there) or its proven
bound minus the margin exceeds t. An example stops at its first row that cannot be lifted above t.

**Safety margin.** HiGHS solves its node LPs to primal and dual feasibility tolerance
:math:`\tau` = :data:`~.highs.FEASIBILITY_TOLERANCE` (1e-9, asked for here). By the reduced-cost argument
of :mod:`.program`, a node bound from duals infeasible by at most :math:`\tau` per column overstates that
node's LP optimum by at most :math:`\tau \sum_j (\overline v_j - \underline v_j)`; tolerances act on
HiGHS's scaled model, so we allow a factor 100 for scaling and subtract
``margin = 100 τ (1 + Σ_j (ub_j - lb_j))`` (about 1e-5 on the digits 64-32-32-10 net at ε = 0.05). The big-M
values are never tiny or huge in a harmful way: an M below HiGHS's ``small_matrix_value`` only concerns
neurons with |l| or u below 1e-9, whose effect on the objective the margin also covers.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .highs import FEASIBILITY_TOLERANCE, HighsModel
from .lp import SolverBatch, rows_to_solve, solve_rows
from .methods import COMMON_OPTIONS, Bounds, check_stop_at, check_time_limit
from .program import RowCertificates, dual_bound

NORMS = ("inf", 1)
OPTIONS = COMMON_OPTIONS | {"time_limit", "stop_at", "threads", "highs_options"}
SOLVER = True
MARGIN_PER_UNIT = 100 * FEASIBILITY_TOLERANCE
PROVEN = ("optimal", "target", "settled", "time_limit")  # statuses whose dual bound is a proven bound


def safety_margin(program) -> float:
    """The margin subtracted from HiGHS's proven bound (see the module docstring)."""
    return MARGIN_PER_UNIT * (1.0 + float(np.sum(program.col_upper - program.col_lower)))


def _example_ball(ball, x, i):
    """The ball of example i alone (eps and box rows picked out of batched tensors)."""
    from ..sets import Ball

    def pick(side):
        if isinstance(side, torch.Tensor) and side.dim() > 0:
            return torch.broadcast_to(side.to(x), x.shape).reshape(x.shape[0], -1)[i:i + 1]
        return side

    eps = ball.eps if isinstance(ball.eps, float) else ball.eps[i:i + 1]
    return Ball(eps, ball.norm, pick(ball.lower), pick(ball.upper))


def replay(hidden, last, point, row):
    """Row ``row`` of the network at ``point`` by a float64 forward pass of the matrices."""
    a = point
    for W, b in hidden:
        a = np.maximum(W @ a + b, 0.0)
    W, b = last
    return float((W[[row]] @ a)[0] + b[row])


class _Example:
    """The MILP of example i of a :class:`~.lp.SolverBatch`."""

    def __init__(self, batch, i, highs):
        self.program, self.last, self.x0, _ = batch.example(i, integer=True)
        self.hidden = batch.hidden
        self.margin = safety_margin(self.program)
        self.ball = _example_ball(batch.ball, batch.x, i)
        self.x = batch.x[i:i + 1]
        self.exact_lp = self.program.binary_cols.stop == self.program.binary_cols.start  # no unstable ReLU
        self.model = HighsModel(self.program, integer=not self.exact_lp, **highs)

    def point(self, solution):
        """The solution's x projected onto the ball (HiGHS may leave it outside by its tolerance)."""
        pt = torch.as_tensor(solution[:len(self.x0)], dtype=self.x.dtype, device=self.x.device)[None]
        return self.ball.project(pt, self.x)[0]

    def solve_lp(self, row, left):
        """Without binaries the LP is exact: its bound is made rigorous from the duals (no margin)."""
        tic = time.perf_counter()
        state, duals, objective = self.model.solve_lp(row, left)
        seconds = time.perf_counter() - tic
        if state != "optimal":
            return state, -np.inf, None, np.nan, None, seconds
        certificate = RowCertificates(1, 1, len(self.x0))
        certificate.add(0, [0], dual_bound(self.program, duals[None], [row]), self.program)
        proven = float(certificate.finish(self.x, self.ball)[0, 0])
        pt = self.point(self.model.highs.getSolution().col_value)
        return state, proven, pt, objective, replay(self.hidden, self.last, pt.cpu().double().numpy(), row), seconds

    def solve(self, row, left, stop_at):
        """(status, proven bound, point or None, HiGHS objective, replayed value, solver seconds)."""
        if self.exact_lp:
            return self.solve_lp(row, left)
        target = settle = None
        if stop_at is not None:
            target, settle = stop_at - self.margin, stop_at + self.margin
        out = self.model.solve_milp(row, left, target=target, settle_above=settle)
        seconds = out.seconds
        pt = value = None
        if out.solution is not None:
            pt = self.point(out.solution)
            value = replay(self.hidden, self.last, pt.cpu().double().numpy(), row)
        if out.status == "target" and (value is None or value > stop_at):  # its point does not replay <= t: go on
            out = self.model.solve_milp(row, None if left is None else max(left - seconds, 1e-3), target=None,
                                        settle_above=settle)
            seconds += out.seconds
            if out.solution is not None:
                pt = self.point(out.solution)
                value = replay(self.hidden, self.last, pt.cpu().double().numpy(), row)
        proven = out.dual_bound - self.margin if out.status in PROVEN else -np.inf
        return out.status, proven, pt, out.objective, value, seconds


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, time_limit=None,
           stop_at=None, threads=1, highs_options=None) -> Bounds:
    """Exact (MILP) bounds on the outputs of ``net`` (see the module docstring). ``threads``: HiGHS threads
    (default 1); ``highs_options``: extra HiGHS options (name -> value) for experiments."""
    time_limit, stop_at = check_time_limit(time_limit), check_stop_at(stop_at)
    if stop_at is not None and compute_upper:
        raise ValueError("stop_at concerns lower bounds: pass compute_upper=False with it")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1; got {threads!r}")
    if highs_options is not None and not isinstance(highs_options, dict):
        raise ValueError(f"highs_options must be a dict of HiGHS option names to values; got {highs_options!r}")
    highs = {"threads": threads, "options": highs_options}
    batch = SolverBatch(net, x, ball, intermediate, compute_upper)
    n, rows = batch.cheap.shape
    solver_lower = np.full((n, rows), -np.inf)
    objective, replayed = np.full((n, rows), np.nan), np.full((n, rows), np.nan)
    points = torch.full((n, rows, x.shape[1]), float("nan"), dtype=x.dtype, device=x.device)
    status = np.full(n, "optimal", dtype=object)
    seconds, solver_seconds, solves, unstable, margins = (np.zeros(n) for _ in range(5))
    for i in range(n):
        tic = time.perf_counter()
        todo = rows_to_solve(batch.cheap_np[i], stop_at)
        if todo:  # else settled by the cheap bounds
            ex = _Example(batch, i, highs)
            unstable[i], margins[i] = ex.program.integrality.sum(), ex.margin

            def solve_row(r, left):
                state, solver_lower[i, r], pt, objective[i, r], value, spent = ex.solve(r, left, stop_at)
                solver_seconds[i] += spent
                solves[i] += 1
                if pt is not None:
                    points[i, r], replayed[i, r] = pt, value
                if state not in PROVEN[:3]:
                    return state, True
                # stop at a replayed point <= stop_at, or at a row that cannot be lifted above it
                return "ok", stop_at is not None and not solver_lower[i, r] > stop_at

            status[i] = solve_rows(todo, tic, time_limit, solve_row)
        seconds[i] = time.perf_counter() - tic
    m = batch.m
    info = {"solver_lower": solver_lower[:, :m], "objective": objective[:, :m], "replayed": replayed[:, :m],
            "margin": margins, "seconds": seconds, "solver_seconds": solver_seconds, "milp_solves": solves,
            "binaries": unstable}
    return batch.result(solver_lower, return_intermediate, points=points[:, :m], status=status.astype(str),
                        info=info)
