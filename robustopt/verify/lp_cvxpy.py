r"""``lp-cvxpy``: the triangle LP relaxation written in cvxpy as readable math, for small networks.

The same relaxation as :mod:`.lp` (read that docstring), one example at a time:

.. math:: \min_{x, a_1..a_{K-1}} c^\top a_{K-1} + o \quad\text{s.t.}\quad \|x - x_0\| \le \varepsilon,\
          \text{lower} \le x \le \text{upper}, \text{ and for each layer } z_k = W_k a_{k-1} + b_k:\\
          a_k = z_k \text{ (active)},\ a_k \ge z_k,\ a_k \le s_k \odot (z_k - l_k) \text{ (unstable)},\
          \sigma(l_k) \le a_k \le \sigma(u_k).

:func:`triangle_lp` returns the cvxpy problem (the objective row ``c`` and offset ``o`` are parameters) so
it can be read, printed and extended. For an l_2 ball the problem is a second-order cone program.

The bound reported is made rigorous the same way as ``lp``'s: the duals cvxpy returns for the ReLU
constraints are fed to :func:`~.program.dual_bound` (a Lagrangian bound valid for any multipliers, with
the ball handled by its exact support function, so l_2 is rigorous too). A solve whose status is not
"optimal" leaves the row at the cheap IBP/CROWN bound. Options: ``solver`` (a cvxpy solver name,
default ``"CLARABEL"``), ``time_limit``, ``stop_at``, ``splits`` (as in ``lp``; the time is checked between rows).
"""
from __future__ import annotations

import numpy as np
import torch

from .lp import relaxation_bounds
from .methods import COMMON_OPTIONS, Bounds
from .program import ReluPhases, split_inactive

NORMS = ("inf", 2, 1)
OPTIONS = COMMON_OPTIONS | {"time_limit", "stop_at", "solver", "splits"}
SOLVER = True
EXACT = False
TAKES_TIME_LIMIT = True
TAKES_STOP_AT = True
TAKES_SPLITS = True


def triangle_lp(hidden, bounds, x0, eps, norm="inf", lower=None, upper=None, inactive=None):
    """The triangle LP of one example as a cvxpy problem.

    ``hidden``: [(W_k, b_k)] of the layers before each ReLU (numpy or scipy.sparse); ``bounds``:
    [(l_k, u_k)] pre-activation bounds; ``x0`` (d,), ``eps``, ``norm`` in {"inf", 2, 1}; ``lower`` /
    ``upper``: the input box (scalars or (d,) arrays, None for none). The objective is ``c @ a_last + o``
    (``a_last`` is x without hidden layers) with parameters ``c``, ``o``: set them, then ``solve()``.
    ``inactive``: per layer a bool mask (or None) of neurons a split fixes inactive: they get ``z <= 0``.
    Returns ``(problem, variables)``: variables has ``x``, ``a`` (list), ``c``, ``o`` and
    ``relu_constraints``: per layer the constraints (a = z on active, a >= z and a <= s (z - l) on unstable,
    z <= 0 on split-inactive), None where a set is empty.
    """
    import cvxpy as cp

    x = cp.Variable(len(x0), name="x")
    p = {"inf": "inf", 2: 2, 1: 1}[norm]
    constraints = [cp.norm(x - x0, p) <= eps]
    if lower is not None:
        constraints.append(x >= lower)
    if upper is not None:
        constraints.append(x <= upper)
    a_prev, activations, relu_constraints = x, [], []
    for k, ((W, b), (l, u)) in enumerate(zip(hidden, bounds)):
        ph = ReluPhases(l, u)
        a = cp.Variable(len(b), name=f"a{k + 1}")
        z = W @ a_prev + b
        act, uns, off = np.flatnonzero(ph.active), np.flatnonzero(ph.unstable), split_inactive(inactive, k)
        layer = (a[act] == z[act] if len(act) else None,
                 a[uns] >= z[uns] if len(uns) else None,
                 a[uns] <= cp.multiply(ph.slope[uns], z[uns] - l[uns]) if len(uns) else None,
                 z[off] <= 0 if len(off) else None)
        constraints += [c for c in layer if c is not None]
        constraints += [a >= np.maximum(l, 0.0), a <= np.maximum(u, 0.0)]
        activations.append(a)
        relu_constraints.append(layer)
        a_prev = a
    c = cp.Parameter(a_prev.shape[0], name="c")
    o = cp.Parameter(name="o")
    problem = cp.Problem(cp.Minimize(c @ a_prev + o), constraints)
    return problem, {"x": x, "a": activations, "c": c, "o": o, "relu_constraints": relu_constraints}


def program_duals(program, relu_constraints):
    """cvxpy's duals of the ReLU constraints as HiGHS-convention row duals of ``program`` (rows in the
    order of :func:`~.program.build_program`: per layer active, a >= z, chord, split z <= 0). cvxpy's
    multipliers are >= 0 on inequalities and enter its Lagrangian with the sign opposite to HiGHS's."""
    duals = np.zeros(program.A.shape[0])
    row = program.relu_rows.start
    for ph, layer in zip(program.phases, relu_constraints):
        split = 0 if layer[3] is None else layer[3].shape[0]
        sizes = (int(ph.active.sum()), int(ph.unstable.sum()), int(ph.unstable.sum()), split)
        for size, constraint in zip(sizes, layer):
            if size:
                value = constraint.dual_value
                duals[row:row + size] = -np.asarray(value, float).reshape(-1) if value is not None else 0.0
            row += size
    return duals


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, time_limit=None,
           stop_at=None, solver="CLARABEL", splits=None) -> Bounds:
    """Triangle-LP bounds through cvxpy (see the module docstring)."""
    import cvxpy as cp

    if not isinstance(solver, str) or solver.upper() not in cp.installed_solvers():
        raise ValueError(f"solver must be one of the installed cvxpy solvers {cp.installed_solvers()}; got {solver!r}")
    ball_rows = ball.flat(x)
    as_numpy = lambda side: side[0].cpu().double().numpy() if isinstance(side, torch.Tensor) else side
    hidden = [(op.scipy(), op.bias_numpy()) for op in net.affine[:-1]]

    def make_solver(program, i, x0, eps):
        d = len(x0)
        box = ball_rows.select(slice(i, i + 1))
        inactive = None if splits is None else [None if t is None else (t[i] < 0).cpu().numpy() for t in splits]
        problem, v = triangle_lp(hidden, [(ph.lower, ph.upper) for ph in program.phases], x0, eps, ball.norm,
                                 as_numpy(box.lower), as_numpy(box.upper), inactive)

        def solve(row, _left):
            v["c"].value = program.objective[row][program.layer_cols[-1]] if program.layer_cols \
                else program.objective[row][:d]
            v["o"].value = float(program.offset[row])
            try:
                value = problem.solve(solver=solver.upper())
            except cp.error.SolverError:
                return "error", None, None
            if problem.status != cp.OPTIMAL:
                return "error", None, None
            return "optimal", program_duals(program, v["relu_constraints"]), value

        return solve

    return relaxation_bounds(net, x, ball, make_solver, compute_upper=compute_upper, intermediate=intermediate,
                             return_intermediate=return_intermediate, time_limit=time_limit, stop_at=stop_at,
                             splits=splits)
