r"""``milp``: the exact minimum of each output row, searched by HiGHS and proven by LPs we can check.

The program is :mod:`.lp`'s triangle LP plus one binary :math:`\delta` per unstable ReLU
(:func:`~.program.build_program` with ``integer=True``): :math:`a \le u\delta`,
:math:`a \le z - l(1 - \delta)`, which with :math:`a \ge z, a \ge 0` force :math:`a = \sigma(z)`. The big-M
values are the intermediate bounds: ``intermediate=`` or, by default, the elementwise tightest of IBP and
CROWN (tighter bounds mean fewer unstable neurons and smaller M).

**Search, then proof.** HiGHS's MILP solver (``highspy``) runs first, to a relative gap of 1e-6
(:data:`~.highs.MIP_REL_GAP`): its points are replayed through the network in float64, so they are facts; its
final dual bound is only a claim (``info["claimed"]``). HiGHS 1.16 with presolve probing and our tight
``mip_feasibility_tolerance`` once claimed 0.02506 on a row whose minimum, 0.00192, is attained at a point
satisfying every row of the program exactly (``shared/data/regressions/``): a defect of the solver, so no
setting of it is trusted. The bound returned is proven by :class:`~.phase_search.PhaseSearch`, a branch and
bound on the binaries whose every domain bound is rebuilt from LP duals (:func:`~.program.dual_bound`,
valid for any multipliers), down to the best replayed value minus the gap (``Bounds.margin``, the most
the bound may sit below the exact minimum). A row without binaries is one LP, made rigorous the same way.

**What is returned.** ``lower`` is, per row, the larger of the cheap IBP/CROWN bound and the proven bound;
``points[i, r]`` is the best point found (projected onto the ball, NaN where none) and ``replayed[i, r]``
its row value, an upper bound on the minimum; ``seconds`` the time per example. On time-out the bound proven so
far is returned (still sound) with status "time_limit", which ``certify`` reports as unknown.

**Early stop** (``stop_at=t``, what ``certify`` passes): rows whose cheap bound exceeds t are skipped;
the others are solved weakest first. HiGHS stops at a point with objective <= t (replayed: only a replayed
value <= t counts, and the example stops there) or once it claims a bound above t; the proof then only needs
every domain above t. An example stops at its first row that cannot be lifted above t.

**Splits** (``splits=``, :mod:`.backward`): the program of a domain is built from IBP and CROWN bounds over
it, clamped, with the row :math:`z \le 0` for each neuron fixed inactive (:func:`~.program.build_program`):
split neurons are stable, so they need no binary. A domain those bounds prove empty gets +inf without a solve
(``Bounds.infeasible``); one HiGHS finds infeasible is proven so by :mod:`.phase_search` (the LP's dual ray).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .highs import HighsModel
from .lp import SolverBatch, solve_rows
from .methods import COMMON_OPTIONS, Bounds, check_stop_at, check_time_limit
from .phase_search import PhaseSearch, gap
from .program import RowCertificates, dual_bound

NORMS = ("inf", 1)
OPTIONS = COMMON_OPTIONS | {"time_limit", "stop_at", "threads", "highs_options", "splits"}
SOLVER = True
EXACT = True
TAKES_TIME_LIMIT = True
TAKES_STOP_AT = True
TAKES_SPLITS = True


@dataclass
class RowOutcome:
    """One row of one example: the proof's status, the proven bound, the best point (or None) with HiGHS's
    objective there and its replayed value, seconds, HiGHS's claimed bound, LPs solved by the proof."""

    status: str
    proven: float
    point: object
    objective: float
    value: float
    seconds: float
    claimed: float
    domains: int


def _small_dense(W, limit=1 << 22):
    """A scipy sparse matrix as a dense numpy array when it has at most ``limit`` entries."""
    return W.toarray() if W.shape[0] * W.shape[1] <= limit else W


def replay(hidden, last, point, row, splits=None):
    """Row ``row`` of the network at ``point`` by a float64 forward pass of the matrices; +inf when the point
    breaks a split (``splits``: per layer an int array or None; a pre-activation z of a neuron split s must
    have s z >= 0, to within 1e-9 (1 + |z|)): it is then outside the domain, so no upper bound on its minimum."""
    a = point
    for k, (W, b) in enumerate(hidden):
        z = W @ a + b
        if splits is not None and splits[k] is not None and (splits[k] * z < -1e-9 * (1 + np.abs(z))).any():
            return np.inf
        a = np.maximum(z, 0.0)
    W, b = last
    return float((W[[row]] @ a)[0] + b[row])


class _Example:
    """The MILP of example i of a :class:`~.lp.SolverBatch`: HiGHS searches, :class:`~.phase_search.PhaseSearch`
    proves."""

    def __init__(self, batch, i, highs):
        self.program, self.last, self.x0, _ = batch.example(i, integer=True)
        self.hidden = [(_small_dense(W), b) for W, b in batch.hidden]  # replayed at many points: dense is faster
        self.last = (_small_dense(self.last[0]), self.last[1])
        self.splits = batch.example_splits(i)
        self.ball = batch.ball.flat(batch.x).select(slice(i, i + 1))
        self.x = batch.x[i:i + 1]
        self.exact_lp = self.program.binary_cols.stop == self.program.binary_cols.start  # no unstable ReLU
        self.model = HighsModel(self.program, integer=not self.exact_lp, **highs)
        self._search = None

    def point(self, solution):
        """The solution's x projected onto the ball (HiGHS may leave it outside by its tolerance)."""
        pt = torch.as_tensor(solution[:len(self.x0)], dtype=self.x.dtype, device=self.x.device)[None]
        return self.ball.project(pt, self.x)[0]

    def evaluate(self, solution, row):
        """(point, replayed row value) of a solver's column values; (None, +inf) for a point outside the domain."""
        pt = self.point(solution)
        value = replay(self.hidden, self.last, pt.cpu().double().numpy(), row, self.splits)
        return (pt, value) if value < np.inf else (None, np.inf)

    def search(self):
        if self._search is None:
            self._search = PhaseSearch(self.program, self.hidden, self.x, self.ball, self.evaluate)
        return self._search

    def solve_lp(self, row, left):
        """Without binaries the LP is exact: its bound is made rigorous from the duals."""
        tic = time.perf_counter()
        state, duals, objective = self.model.solve_lp(row, left)
        seconds = time.perf_counter() - tic
        if state != "optimal":
            return RowOutcome(state, -np.inf, None, np.nan, np.nan, seconds, np.nan, 0)
        certificate = RowCertificates(1, 1, len(self.x0))
        certificate.add(0, [0], dual_bound(self.program, duals[None], [row]), self.program)
        proven = float(certificate.finish(self.x, self.ball)[0, 0])
        pt, value = self.evaluate(self.model.highs.getSolution().col_value, row)
        return RowOutcome(state, proven, pt, objective, value, seconds, objective, 1)

    def solve(self, row, left, stop_at) -> RowOutcome:
        """Search with HiGHS (stopping at a point <= stop_at or a claimed bound above it), then prove."""
        if self.exact_lp:
            return self.solve_lp(row, left)
        tic = time.perf_counter()
        out = self.model.solve_milp(row, left, target=stop_at, settle_above=stop_at)
        pt, value = self.evaluate(out.solution, row) if out.solution is not None else (None, np.inf)
        if out.status == "target" and value > stop_at:  # its point does not replay <= t: go on
            spent = time.perf_counter() - tic
            out = self.model.solve_milp(row, None if left is None else max(left - spent, 1e-3), settle_above=stop_at)
            if out.solution is not None and (found := self.evaluate(out.solution, row))[1] < value:
                pt, value = found
        claim = out.dual_bound if out.status in ("optimal", "settled", "target", "time_limit") else np.nan
        if stop_at is not None and value <= stop_at:  # settled by a replayed point: nothing to prove
            return RowOutcome("optimal", -np.inf, pt, out.objective, value, time.perf_counter() - tic, claim, 0)
        left = None if left is None else left - (time.perf_counter() - tic)
        found = self.search().run(row, left, stop_at, value, pt)
        return RowOutcome(found.status, found.lower, found.point, out.objective, found.value,
                          time.perf_counter() - tic, claim, found.domains)


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, time_limit=None,
           stop_at=None, threads=1, highs_options=None, splits=None) -> Bounds:
    """Exact (MILP) bounds on the outputs of ``net`` (see the module docstring). ``threads``: HiGHS threads
    (default 1); ``highs_options``: extra HiGHS options (name -> value) for experiments: they change the
    search, never the proof."""
    time_limit, stop_at = check_time_limit(time_limit), check_stop_at(stop_at)
    if stop_at is not None and compute_upper:
        raise ValueError("stop_at concerns lower bounds: pass compute_upper=False with it")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1; got {threads!r}")
    if highs_options is not None and not isinstance(highs_options, dict):
        raise ValueError(f"highs_options must be a dict of HiGHS option names to values; got {highs_options!r}")
    highs = {"threads": threads, "options": highs_options}
    batch = SolverBatch(net, x, ball, intermediate, compute_upper, splits)
    n, rows = batch.cheap.shape
    solver_lower = np.full((n, rows), -np.inf)
    objective, replayed, claimed = (np.full((n, rows), np.nan) for _ in range(3))
    points = torch.full((n, rows, x.shape[1]), float("nan"), dtype=x.dtype, device=x.device)
    status = np.full(n, "optimal", dtype=object)
    seconds, solver_seconds, solves, unstable, margins, domains = (np.zeros(n) for _ in range(6))
    for i in range(n):
        tic = time.perf_counter()
        todo = batch.todo(i, stop_at)
        if todo:  # else settled by the cheap bounds (or an empty domain)
            ex = _Example(batch, i, highs)
            unstable[i] = ex.program.integrality.sum()

            def solve_row(r, left):
                out = ex.solve(r, left, stop_at)
                solver_lower[i, r], objective[i, r], claimed[i, r] = out.proven, out.objective, out.claimed
                solver_seconds[i] += out.seconds
                solves[i] += 1
                domains[i] += out.domains
                if out.point is not None:
                    points[i, r], replayed[i, r] = out.point, out.value
                    margins[i] = max(margins[i], gap(out.value))
                if out.status != "optimal":
                    return out.status, True
                # stop at a replayed point <= stop_at, or at a row that cannot be lifted above it
                return "ok", stop_at is not None and not solver_lower[i, r] > stop_at

            status[i] = solve_rows(todo, tic, time_limit, solve_row)
        seconds[i] = time.perf_counter() - tic
    batch.infeasible |= torch.as_tensor(np.isposinf(solver_lower).any(1), device=batch.infeasible.device)
    m = batch.m
    info = {"solver_lower": solver_lower[:, :m], "objective": objective[:, :m], "claimed": claimed[:, :m],
            "solver_seconds": solver_seconds, "milp_solves": solves, "binaries": unstable, "domains": domains}
    return batch.result(solver_lower, return_intermediate, points=points[:, :m], status=status.astype(str),
                        replayed=torch.as_tensor(replayed[:, :m], device=x.device), margin=margins,
                        seconds=seconds, info=info)
