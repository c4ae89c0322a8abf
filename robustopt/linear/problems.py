r"""Robust linear training as cvxpy problems, returned to the user so they can read, extend and solve them.

Each function builds the exact robust problem for the set :math:`B(x) = \{x' : \|x'-x\|_p \le \varepsilon,\
l \le x' \le u\}` and returns ``(problem, w, b)`` (``b`` is ``cvxpy.Constant(0)`` when ``fit_intercept=False``).
Objectives: ``C=None`` is the tutorial's mean robust loss; ``C > 0`` is ``C * sum(robust loss) + ||w||^2 / 2``.

The worst-case margin :math:`\min_{x' \in B(x_i)} y_i (w^\top x' + b)` is concave in (w, b) and is written as
an expression, never as a loop over examples:

* no box: :math:`y_i (w^\top x_i + b) - \varepsilon t` with one epigraph variable :math:`t \ge \|w\|_q`
  (much smaller and faster than repeating the norm in every row);
* ℓ∞ with a box: each coordinate of :math:`x'_i` ranges over an interval with centre :math:`c_{ij}` and
  half-width :math:`r_{ij}`, and :math:`\min_{x'_{ij}} y_i w_j x'_{ij} = y_i w_j c_{ij} - r_{ij} |w_j|` (the minimum
  of two linear functions), so the margin is :math:`y_i (w^\top c_i + b) - r_i^\top s` with :math:`s \ge |w|`;
* ℓ2 / ℓ1 with a box: the support function of ball ∩ box is the infimal convolution of the two support
  functions, :math:`\sigma_{B \cap box}(v) = \min_{g} \varepsilon \|v - g\|_q + \sigma_{box}(g)`, one vector g per
  row (exact by Lagrange duality; n·d extra variables, so meant for small problems).

Solve with :func:`solve` (ECOS, CLARABEL or SCS, named explicitly), which raises on any status but optimal.
"""
from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
from scipy import sparse

from .._validation import check_choice, check_eps, check_norm, dual_norm_order
from ..sets import Ball
from .closed_form import _check_X, _class_labels, box_intervals, signed_labels

__all__ = ["robust_logistic_problem", "robust_hinge_problem", "robust_multiclass_problem",
           "worst_case_margin_expression", "solve", "SolverStatusError", "SOLVERS"]

SOLVERS = ("ECOS", "CLARABEL", "SCS")


class SolverStatusError(RuntimeError):
    """A cvxpy solve that did not end with status ``optimal`` (the status is in ``.status``)."""

    def __init__(self, status, solver):
        super().__init__(f"cvxpy with {solver} ended with status {status!r}, not 'optimal'; the solution is not "
                         f"trusted (try another solver, or rescale the data)")
        self.status, self.solver = status, solver


def solve(problem: cp.Problem, solver="CLARABEL", verbose=False, **options):
    """Solve ``problem`` with ``solver`` (one of :data:`SOLVERS`) and return its optimal value; raise
    :class:`SolverStatusError` on any status other than optimal (``optimal_inaccurate`` included)."""
    name = check_choice(str(solver).upper(), SOLVERS, "solver")
    try:
        with warnings.catch_warnings():  # "solution may be inaccurate": we raise on that status below
            warnings.filterwarnings("ignore", message="Solution may be inaccurate", category=UserWarning)
            problem.solve(solver=name, verbose=verbose, **options)
    except cp.error.SolverError as err:
        raise SolverStatusError(f"solver_error ({err})", name) from err
    if problem.status != cp.OPTIMAL:
        raise SolverStatusError(problem.status, name)
    return problem.value


def _box_intervals(X, eps, lower, upper):
    Ball(eps, "inf", lower, upper).check_center(X, "X")
    return box_intervals(X, eps, lower, upper)


def _boxed_support(V, X, eps, norm, lo, hi):
    r"""Expression (m,) and its constraints (a list) of :math:`\max_{x' \in B(x_r)} v_r^\top x'` for the rows
    :math:`v_r` of the affine expression V (m, d), over ball ∩ box (ℓ2 or ℓ1); :math:`[lo, hi]` is the box on x' (from :func:`box_intervals`).

    ℓ1, by LP duality on the fractional knapsack: :math:`v^\top x + \min_{\lambda \ge 0} \varepsilon\lambda +
    \sum_j h_j (v_j - \lambda)_+ + l_j (-v_j - \lambda)_+` with :math:`h = hi - x`, :math:`l = x - lo`.
    ℓ2, by infimal convolution of the two support functions: :math:`v^\top x + \min_g \varepsilon \|v - g\|_2
    + \sum_j (g_j c_j + r_j |g_j|)`, c and r the centre and half-width of the box on x' - x; g is needed only on
    coordinates the box cuts (elsewhere g_j = 0 is optimal), which keeps the problem small and well posed.
    """
    m, d = V.shape
    radius = eps if np.ndim(eps) == 0 else np.asarray(eps)
    room_up, room_down = hi - X, X - lo
    if norm == 1:
        lam = cp.Variable(m, nonneg=True, name="knapsack_multiplier")
        lam_cols = cp.reshape(lam, (m, 1), order="C") @ np.ones((1, d))
        spend = cp.multiply(room_up, cp.pos(V - lam_cols)) + cp.multiply(room_down, cp.pos(-V - lam_cols))
        return cp.sum(cp.multiply(V, X), axis=1) + cp.multiply(radius, lam) + cp.sum(spend, axis=1), []
    r_cols = np.broadcast_to(np.reshape(radius, (-1, 1)), room_up.shape)
    cut = np.flatnonzero((np.minimum(room_up, room_down) < r_cols).ravel())
    if cut.size == 0:  # the box cuts nothing: the plain ball
        return cp.sum(cp.multiply(V, X), axis=1) + cp.multiply(radius, cp.norm(V, 2, axis=1)), []
    # A share g_j > 0 costs room_up_j per unit and lowers eps ||v - g|| by at most eps per unit, so where
    # room_up_j >= eps it never helps: g_j <= 0 there (and g_j >= 0 where room_down_j >= eps). These sign
    # constraints make the cost linear on one-sided coordinates, which are most of them (pixels at 0 or 1),
    # and remove the kinks that stalled interior-point solvers.
    up, down, r_cut = room_up.ravel()[cut], room_down.ravel()[cut], r_cols.ravel()[cut]
    g = cp.Variable(cut.size, name="box_share")
    place = sparse.csr_matrix((np.ones(cut.size), (cut, np.arange(cut.size))), shape=(m * d, cut.size))
    G = cp.reshape(place @ g, (m, d), order="C")
    only_down, only_up = up >= r_cut, down >= r_cut
    both = ~(only_down | only_up)
    cost = (cp.multiply(np.where(only_down, -down, 0.0) + np.where(only_up, up, 0.0), g)
            + cp.multiply(np.where(both, (up - down) / 2, 0.0), g) + cp.multiply(np.where(both, (up + down) / 2, 0.0), cp.abs(g)))
    constraints = [g[np.flatnonzero(only_down)] <= 0, g[np.flatnonzero(only_up)] >= 0]
    per_row = sparse.csr_matrix((np.ones(cut.size), (cut // d, np.arange(cut.size))), shape=(m, cut.size))
    support = cp.sum(cp.multiply(V, X), axis=1) + cp.multiply(radius, cp.norm(V - G, 2, axis=1)) + per_row @ cost
    return support, constraints


def worst_case_margin_expression(X, y, w, b, eps, norm="inf", lower=None, upper=None):
    r"""cvxpy expression (n,) of the exact worst-case margins :math:`\min_{x' \in B(x_i)} y_i (w^\top x' + b)`, and
    the constraints it needs (a list). ``w`` is a variable of shape (d,), ``b`` a scalar variable or constant;
    y in {-1, +1} as a float array. Concave in (w, b)."""
    norm = check_norm(norm)
    n, d = X.shape
    radius = eps if np.ndim(eps) == 0 else np.asarray(eps)
    if lower is None and upper is None:
        t = cp.Variable(nonneg=True, name="dual_norm_of_w")
        return cp.multiply(y, X @ w + b) - cp.multiply(radius, t), [cp.norm(w, dual_norm_order(norm)) <= t]
    lo, hi = _box_intervals(X, eps, lower, upper)
    if norm == "inf":  # sum over coordinates of min(y w_j lo_ij, y w_j hi_ij)
        s = cp.Variable(d, nonneg=True, name="abs_w")
        return cp.multiply(y, (lo + hi) / 2 @ w + b) - (hi - lo) / 2 @ s, [s >= w, s >= -w]
    rows = np.reshape(-y, (n, 1)) @ cp.reshape(w, (1, d), order="C")  # row i: -y_i w
    support, constraints = _boxed_support(rows, X, eps, norm, lo, hi)
    return cp.multiply(y, b) - support, constraints


def _prepare_binary(X, y, eps):
    X = _check_X(X)
    return X, signed_labels(y, X.shape[0]), _problem_radius(eps, X.shape[0])


def _problem_radius(eps, n):
    eps = check_eps(eps, n)
    return eps if isinstance(eps, float) else eps.double().numpy()


def _check_C(C):
    if C is None:
        return None
    if isinstance(C, bool) or not np.isscalar(C) or not np.isfinite(C) or C <= 0:
        raise ValueError(f"C must be a number > 0 or None (the pure robust objective); got {C!r}")
    return float(C)


def _variables(d, fit_intercept):
    w = cp.Variable(d, name="w")
    b = cp.Variable(name="b") if fit_intercept else cp.Constant(0.0)
    return w, b


def _objective(losses, w, C):
    """Mean loss (C=None) or C * sum(loss) + ||w||^2 / 2."""
    if C is None:
        return cp.Minimize(cp.sum(losses) / losses.shape[0])
    return cp.Minimize(C * cp.sum(losses) + 0.5 * cp.sum_squares(w))


def robust_logistic_problem(X, y, eps, norm="inf", C=None, fit_intercept=True, lower=None, upper=None):
    r"""Robust logistic regression: minimize the mean (or C-weighted) of
    :math:`\log(1 + \exp(-m_i))`, :math:`m_i` the exact worst-case margin. For the ℓ∞ ball without a box this is
    the tutorial's :math:`\ell_1`-penalized form :math:`\log(1 + \exp(-y_i(w^\top x_i + b) + \varepsilon\|w\|_1))`.

    X (n, d), y in {-1, +1} or {0, 1}. Returns ``(problem, w, b)``.
    """
    C = _check_C(C)
    X, y, eps = _prepare_binary(X, y, eps)
    w, b = _variables(X.shape[1], fit_intercept)
    margins, constraints = worst_case_margin_expression(X, y, w, b, eps, norm, lower, upper)
    return cp.Problem(_objective(cp.logistic(-margins), w, C), constraints), w, b


def robust_hinge_problem(X, y, eps, norm="inf", C=None, fit_intercept=True, lower=None, upper=None):
    r"""Robust linear SVM: minimize the mean (or C-weighted) of :math:`\max(0, 1 - m_i)`, :math:`m_i` the exact
    worst-case margin. Returns ``(problem, w, b)``."""
    C = _check_C(C)
    X, y, eps = _prepare_binary(X, y, eps)
    w, b = _variables(X.shape[1], fit_intercept)
    margins, constraints = worst_case_margin_expression(X, y, w, b, eps, norm, lower, upper)
    return cp.Problem(_objective(cp.pos(1 - margins), w, C), constraints), w, b


def robust_multiclass_problem(X, y, eps, norm="inf", C=None, fit_intercept=True, lower=None, upper=None,
                              n_classes=None):
    r"""Robust softmax regression through the tutorial's bound on the worst-case cross-entropy:
    minimize the mean (or C-weighted) of :math:`\log \sum_j \exp(-m_{ij})` with :math:`m_{ij}` the exact
    worst-case pairwise margin of :math:`f_{y_i} - f_j` (:math:`m_{iy_i} = 0`). This is an **upper bound** on
    the robust cross-entropy (each pair has its own worst case), exact for two classes.

    y in {0, ..., k-1} (k = ``n_classes``, default max(y) + 1). Returns ``(problem, W, b)`` with W of shape (k, d).
    Without a box, one epigraph variable :math:`T_{aj} \ge \|W_a - W_j\|_q` per pair of classes; with a box and
    ℓ∞, one vector :math:`S_{aj} \ge |W_a - W_j|` per ordered pair; ℓ2 / ℓ1 with a box use the infimal
    convolution row by row (n (k-1) d extra variables: small problems only).
    """
    C = _check_C(C)
    norm = check_norm(norm)
    X = _check_X(X)
    n, d = X.shape
    y_int = np.asarray(y)
    k = int(n_classes) if n_classes is not None else (int(np.max(y_int)) + 1 if n else 2)
    y = _class_labels(y, n, k)
    eps = _problem_radius(eps, n)
    radius = eps if np.ndim(eps) == 0 else eps[:, None]
    W = cp.Variable((k, d), name="W")
    b = cp.Variable(k, name="b") if fit_intercept else cp.Constant(np.zeros(k))
    onehot = np.eye(k)[y]
    ones_row = np.ones((1, k))
    pairs = np.array([np.eye(k)[a] - np.eye(k)[j] for a in range(k) for j in range(k)])  # row a*k+j: e_a - e_j
    constraints = []
    if lower is None and upper is None:
        # T[a, j] >= ||W_a - W_j||_q, one scalar per pair; the penalty of row i, column j is eps_i T[y_i, j]
        T = cp.Variable((k, k), nonneg=True, name="pair_norms")
        constraints += [cp.norm(W[a] - W[j], dual_norm_order(norm)) <= T[a, j]
                        for a in range(k) for j in range(k) if a != j]
        constraints += [cp.diag(T) == 0]
        centres, penalty = X, cp.multiply(radius, onehot @ T)
    elif norm == "inf":
        lo, hi = _box_intervals(X, eps, lower, upper)
        centres, half = (lo + hi) / 2, (hi - lo) / 2
        # S[:, a*k+j] >= |W_a - W_j|; the penalty of row i, column j is half_i . S[:, y_i*k+j], computed class
        # by class (rows with y_i = a use the block a) and put back in the order of the examples
        S = cp.Variable((d, k * k), nonneg=True, name="pair_abs")
        constraints += [S.T >= pairs @ W, S.T >= -(pairs @ W)]
        order = np.argsort(y, kind="stable")
        blocks = [half[order[y[order] == a]] @ S[:, a * k:(a + 1) * k] for a in range(k) if np.any(y == a)]
        back = sparse.csr_matrix((np.ones(n), (order, np.arange(n))), shape=(n, n))
        penalty = back @ cp.vstack(blocks)
    else:
        lo, hi = _box_intervals(X, eps, lower, upper)
        rows = np.array([(i, j) for i in range(n) for j in range(k) if j != y[i]])
        select = np.eye(k)[rows[:, 1]] - np.eye(k)[y[rows[:, 0]]]  # row (i, j): e_j - e_{y_i}
        support, box_constraints = _boxed_support(select @ W, X[rows[:, 0]],
                                                   eps if np.ndim(eps) == 0 else eps[rows[:, 0]], norm,
                                                   lo[rows[:, 0]], hi[rows[:, 0]])
        constraints += box_constraints
        scatter = np.zeros((n * k, rows.shape[0]))
        scatter[rows[:, 0] * k + rows[:, 1], np.arange(rows.shape[0])] = 1.0
        # the worst-case gap f_j - f_y (with the intercepts) of each pair, zero in column y
        gap_offdiag = cp.reshape(scatter @ (support + select @ b), (n, k), order="C")
        losses = cp.log_sum_exp(gap_offdiag, axis=1)
        return cp.Problem(_objective(losses, W, C), constraints), W, b
    logits = centres @ W.T + np.ones((n, 1)) @ cp.reshape(b, (1, k), order="C")
    true_logit = cp.reshape(cp.sum(cp.multiply(onehot, logits), axis=1), (n, 1), order="C")
    gaps = logits - true_logit @ ones_row + penalty  # worst-case f_j - f_y; zero in column y
    return cp.Problem(_objective(cp.log_sum_exp(gaps, axis=1), W, C), constraints), W, b
