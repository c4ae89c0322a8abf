"""A :class:`~.program.Program` in one HiGHS model (``highspy``), solved for one objective row at a time.

The model is passed once per example; changing the objective keeps the simplex basis, so the LP for
the next row starts warm. The MILP solve can stop early: at a point with objective <= ``target`` (HiGHS's
``objective_target``) or once the proven bound exceeds ``settle_above`` (a callback interrupts the
branch and bound). Nothing here decides soundness: :mod:`.lp` recomputes its bound from the duals and
:mod:`.milp` proves its bounds by :mod:`.phase_search`, whatever HiGHS's MILP solver claims.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["HighsModel", "MilpOutcome", "FEASIBILITY_TOLERANCE", "MIP_REL_GAP", "DEFAULT_OPTIONS"]

FEASIBILITY_TOLERANCE = 1e-9  # primal, dual and integrality tolerance asked of HiGHS
MIP_REL_GAP = 1e-6
DEFAULT_OPTIONS = {
    "primal_feasibility_tolerance": FEASIBILITY_TOLERANCE, "dual_feasibility_tolerance": FEASIBILITY_TOLERANCE,
    "mip_feasibility_tolerance": FEASIBILITY_TOLERANCE, "mip_rel_gap": MIP_REL_GAP, "mip_abs_gap": 1e-9,
    # the sub-MIP heuristics (RINS, RENS) cost most of the time on these small programs and rarely help
    "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False,
}


_BANNER_SHOWN = False


def _highspy():
    global _BANNER_SHOWN
    try:
        import highspy
    except ImportError:  # pragma: no cover - highspy comes with cvxpy >= 1.6
        raise ValueError("the solver methods need the highspy package (pip install highspy; it is installed "
                         "with cvxpy >= 1.6)") from None
    if not _BANNER_SHOWN:  # HiGHS prints a banner on stdout (fd 1) at its first model in a process: not in --json
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _BANNER_SHOWN = True
    return highspy


@dataclass
class MilpOutcome:
    """One MILP solve: HiGHS's status, its claimed lower bound (only a claim: :mod:`.milp` proves its own), the
    best point's objective and column values (None when no point was found), solver seconds."""

    status: str
    dual_bound: float
    objective: float
    solution: np.ndarray | None
    seconds: float


_STATUS = {"kOptimal": "optimal", "kTimeLimit": "time_limit", "kObjectiveTarget": "target",
           "kInterrupt": "settled", "kHighsInterrupt": "settled", "kInfeasible": "infeasible"}


class HighsModel:
    """HiGHS model of ``program`` (with integrality when ``integer``); ``threads`` HiGHS threads;
    ``options``: further HiGHS options (name -> value), applied after :data:`DEFAULT_OPTIONS`."""

    def __init__(self, program, integer=False, threads=1, options=None):
        highspy = _highspy()
        self._hs = highspy
        self.program = program
        h = highspy.Highs()
        h.silent()
        lp_only = {} if integer else {"presolve": "off"}  # measured: 1.6x faster per LP on a warm model
        for name, value in {**DEFAULT_OPTIONS, **lp_only, "threads": int(threads), **(options or {})}.items():
            if h.setOptionValue(name, value) != highspy.HighsStatus.kOk:
                raise ValueError(f"HiGHS rejected option {name}={value!r}")
        A = program.A.tocsc()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = A.shape[1], A.shape[0]
        lp.col_cost_ = np.zeros(A.shape[1])
        lp.col_lower_, lp.col_upper_ = program.col_lower, program.col_upper
        lp.row_lower_, lp.row_upper_ = program.row_lower, program.row_upper
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
        if integer:
            kinds = [highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger]
            lp.integrality_ = [kinds[int(t)] for t in program.integrality]
        h.passModel(lp)
        self.highs = h
        self._columns = np.arange(A.shape[1], dtype=np.int32)
        self._settle_above = self._row = None
        h.cbMipInterrupt.subscribe(self._interrupt)

    def _interrupt(self, event):
        # set the flag either way: HiGHS keeps it from one run to the next
        event.interrupt(self._settle_above is not None and event.data_out.mip_dual_bound > self._settle_above)

    def _objective(self, row):
        h = self.highs
        if row != self._row:  # the same objective again keeps everything (branch and bound changes bounds only)
            h.changeColsCost(len(self._columns), self._columns, self.program.objective[row])
            h.changeObjectiveOffset(float(self.program.offset[row]))
            self._row = row

    def _run(self, time_limit):
        self.highs.setOptionValue("time_limit", float("inf") if time_limit is None else max(float(time_limit), 1e-3))
        self.highs.run()

    def _status(self):
        name = str(self.highs.getModelStatus()).split(".")[-1]
        return _STATUS.get(name, name)

    def set_column_bounds(self, columns, lower, upper):
        """Change the bounds of ``columns`` (int array) to ``lower`` / ``upper`` (arrays)."""
        self.highs.changeColsBounds(len(columns), np.asarray(columns, np.int32), np.asarray(lower, float),
                                    np.asarray(upper, float))

    def primal(self) -> np.ndarray:
        """The column values of the last solve."""
        return np.asarray(self.highs.getSolution().col_value, float)

    def dual_ray(self):
        """HiGHS's dual ray (row multipliers proving the last LP infeasible), or None."""
        _, has_ray, ray = self.highs.getDualRay()
        return np.asarray(ray, float) if has_ray else None

    def solve_lp(self, row, time_limit=None):
        """(status, row duals (rows,), objective value) of the LP for objective ``row``."""
        self._objective(row)
        tic = time.perf_counter()
        self._run(time_limit)
        spent = time.perf_counter() - tic
        # HiGHS (1.16, measured) checks the LP solver's time limit against the model's run time summed over all
        # its runs (a MILP's, against its own run's): on a model that has run longer than time_limit every LP
        # would stop at once. Stopped at the limit sooner than asked: go on, the limit moved by that run time.
        if time_limit is not None and self._status() == "time_limit" and spent < 0.9 * time_limit - 1e-3:
            self._run(self.highs.getRunTime() + max(time_limit - spent, 1e-3))
        status = self._status()
        sol = self.highs.getSolution()
        duals = np.asarray(sol.row_dual, float) if sol.dual_valid else np.zeros(self.program.A.shape[0])
        return status, duals, self.highs.getInfo().objective_function_value

    def solve_milp(self, row, time_limit=None, target=None, settle_above=None) -> MilpOutcome:
        """The MILP for objective ``row``: to a relative gap of 1e-6, or until a point with objective
        <= ``target`` is found, or the proven bound exceeds ``settle_above``."""
        h = self.highs
        self._objective(row)
        h.setOptionValue("objective_target", -np.inf if target is None else float(target))
        self._settle_above = settle_above
        tic = time.perf_counter()
        self._run(time_limit)
        seconds = time.perf_counter() - tic
        status, info = self._status(), h.getInfo()
        sol = h.getSolution()
        has_point = bool(sol.value_valid) and info.primal_solution_status >= 2
        point = np.asarray(sol.col_value, float) if has_point else None
        dual = info.mip_dual_bound if status != "infeasible" else np.inf
        dual = float(dual) if np.isfinite(dual) or dual == np.inf else -np.inf
        return MilpOutcome(status, dual, float(info.objective_function_value) if has_point else np.inf, point, seconds)
