r"""Fast exact solver for :math:`\ell_\infty`-robust logistic regression, with or without a box on x + δ.

The robust margin of example i is concave and piecewise linear in w:

.. math::  m_i(w, b) = y_i (c_i^\top w + b) - r_i^\top |w|,

with :math:`c_i = x_i`, :math:`r_i = \varepsilon \mathbf 1` without a box, and the centre / half-width of
:math:`[\max(x_i - \varepsilon, l), \min(x_i + \varepsilon, u)]` with a box :math:`[l, u]` (the per-coordinate
minimum of :math:`y_i w_j x'_j` over an interval). The training objective

.. math::  F(w, b) = \sum_i \gamma_i \log(1 + e^{-m_i(w, b)}) + \tfrac{\lambda}{2} \|w\|_2^2

(:math:`\gamma_i = 1/n, \lambda = 0` for ``C=None``; :math:`\gamma_i = C, \lambda = 1` otherwise) is, in the split
variables :math:`w = w^+ - w^-`, :math:`w^\pm \ge 0`, smooth and bound-constrained with the same optimum. Its
solution is sparse (the :math:`r_i^\top |w|` term acts like an :math:`\ell_1` penalty), which the solver exploits:

* an outer **working-set** loop: one pass over all coordinates computes the KKT residual (the minimum-norm
  subgradient, i.e. the projected gradient of the split problem) and adds the worst violators to the set;
* an inner **projected Newton** method on the working set, orthant by orthant (the sign of each free
  coordinate is fixed; a step that crosses zero stops at zero), with an Armijo line search.

It stops when the KKT residual over **all** coordinates is at most ``tol`` (in units of the mean loss's gradient)
and reports it, with a duality gap from a dual-feasible point (:mod:`~robustopt.linear.dual`): a rigorous bound on
the distance of the objective to the optimum. :func:`robust_logistic_l2` handles the ℓ2 ball without a box (and
eps = 0), where the objective is smooth away from w = 0, by a trust-region Newton-CG method.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from scipy.optimize import minimize
from scipy.special import expit
from threadpoolctl import threadpool_limits

from .closed_form import box_intervals
from .dual import certified_gap, dual_point, dual_value

__all__ = ["FastResult", "robust_logistic_linf", "robust_logistic_l2", "RobustlySeparableError"]

_SINGLE_THREAD_SIZE = 2 ** 24  # data with at most this many entries are solved with one BLAS thread


@dataclass
class FastResult:
    """What :func:`robust_logistic_linf` and :func:`robust_logistic_l2` return."""

    coef: np.ndarray
    intercept: float
    objective: float          # the training objective F at the solution (penalty included)
    kkt_residual: float       # max |projected gradient| over all coordinates, divided by sum(gamma)
    duality_gap: float | None  # (F - dual value) / F >= (F - optimum) / F; None if not asked or not found
    n_iter: int               # Newton iterations, all working sets together
    n_outer: int              # full passes over the coordinates
    converged: bool
    seconds: float


def _loss(m):
    return np.logaddexp(0.0, -m)


class _Margins:
    """m = y * (centers @ w + b) - radii @ |w|, radii a scalar (no box) or an (n, d) array."""

    def __init__(self, centers, radii, y):
        self.centers, self.radii, self.y = centers, radii, y
        self.scalar_radius = np.ndim(radii) == 0

    def restrict(self, cols):
        radii = self.radii if self.scalar_radius else np.ascontiguousarray(self.radii[:, cols])
        return _Margins(np.ascontiguousarray(self.centers[:, cols]), radii, self.y)

    def __call__(self, w, b):
        penalty = self.radii * np.abs(w).sum() if self.scalar_radius else self.radii @ np.abs(w)
        return self.y * (self.centers @ w + b) - penalty

    def transposed(self, v):
        """(sum_i v_i y_i c_i, sum_i v_i r_i): the two halves of the gradient."""
        radial = np.full(self.centers.shape[1], self.radii * v.sum()) if self.scalar_radius else self.radii.T @ v
        return self.centers.T @ (v * self.y), radial

    def jacobian(self, cols, signs):
        """Columns u_j = y * c_j - s_j * r_j (j in ``cols``) of the margins' Jacobian in orthant ``signs``."""
        radii = self.radii if self.scalar_radius else self.radii[:, cols]
        return self.y[:, None] * self.centers[:, cols] - radii * signs


def _pseudo_gradient(w, along, radial, lam):
    """Minimum-norm subgradient of F in w (the projected gradient of the split problem)."""
    g_plus = along - radial + lam * w   # derivative as w_j increases from w_j >= 0 (radial <= 0)
    g_minus = along + radial + lam * w  # derivative as w_j decreases from w_j <= 0
    pg = np.where(w > 0, g_plus, np.where(w < 0, g_minus, 0.0))
    at_zero = w == 0
    pg = np.where(at_zero & (g_plus < 0), g_plus, pg)
    pg = np.where(at_zero & (g_minus > 0), g_minus, pg)
    return pg


class _Problem:
    def __init__(self, margins, gamma, lam, fit_intercept, eps):
        self.margins, self.gamma, self.lam, self.fit_intercept = margins, gamma, lam, fit_intercept
        self.eps = eps

    def check_not_separable(self, m):
        """For C=None, all margins > 0 means (w, b) is a direction along which F decreases for ever."""
        if self.lam == 0 and m.size and m.min() > 0:
            raise RobustlySeparableError(self.eps)

    def value(self, m, w):
        return self.gamma * _loss(m).sum() + 0.5 * self.lam * (w @ w)

    def gradient(self, m, w, margins=None):
        """(pseudo-gradient in w, derivative in b) at margins m; ``margins`` restricts w to a working set."""
        dloss = -self.gamma * expit(-m)
        along, radial = (margins or self.margins).transposed(dloss)
        grad_b = float(dloss @ self.margins.y) if self.fit_intercept else 0.0
        return _pseudo_gradient(w, along, radial, self.lam), grad_b


def _newton_step(u, curvature, ridge, grad, dense_limit=200):
    """Solve (u^T diag(curvature) u + diag(ridge)) step = -grad: Cholesky for a few columns, else
    preconditioned conjugate gradients (Hessian-vector products only, to a relative residual that shrinks
    with the gradient, which keeps Newton's fast local convergence)."""
    keep = curvature > 1e-15 * curvature.max(initial=0.0)  # rows that add nothing to the curvature
    u, curvature = u[keep], curvature[keep]
    k = u.shape[1]
    if k <= dense_limit:
        hess = u.T @ (curvature[:, None] * u)
        hess[np.diag_indices(k)] += ridge + 1e-12 * max(1.0, np.abs(np.diag(hess)).max(initial=0.0))
        try:
            return -cho_solve(cho_factor(hess), grad)
        except LinAlgError:
            return -np.linalg.lstsq(hess, grad, rcond=None)[0]
    diag = curvature @ (u * u) + ridge + 1e-12
    norm_g = np.linalg.norm(grad)
    target = min(0.1, np.sqrt(norm_g)) * norm_g
    step, residual = np.zeros(k), -grad
    z = residual / diag
    direction, rz = z, residual @ z
    for _ in range(4 * k):
        hd = u.T @ (curvature * (u @ direction)) + ridge * direction
        size = rz / (direction @ hd)
        step += size * direction
        residual -= size * hd
        if np.linalg.norm(residual) <= target:
            break
        z = residual / diag
        rz, rz_old = residual @ z, rz
        direction = z + (rz / rz_old) * direction
    return step


def _newton(problem: _Problem, sub: _Margins, w, b, tol, max_iter):
    """Projected Newton on the working set ``sub``, to a KKT residual <= tol (absolute)."""
    y, fit_b = sub.y, problem.fit_intercept
    n_iter = 0
    m = sub(w, b)
    f = problem.value(m, w)
    while n_iter < max_iter:
        problem.check_not_separable(m)
        pg, grad_b = problem.gradient(m, w, sub)
        if max(np.abs(pg).max(initial=0.0), abs(grad_b)) <= tol:
            return w, b, n_iter, True
        n_iter += 1
        # the orthant to move in: the current signs, and for w_j = 0 the sign of descent
        signs = np.where(w != 0, np.sign(w), -np.sign(pg))
        free = signs != 0
        curvature = problem.gamma * expit(m) * expit(-m)
        for _ in range(3):  # drop zero coordinates whose Newton step leaves their orthant (Bertsekas)
            idx = np.flatnonzero(free)
            u = sub.jacobian(idx, signs[idx])
            grad = pg[idx]
            ridge = np.full(idx.size, problem.lam)
            if fit_b:
                u, grad, ridge = np.hstack([u, y[:, None]]), np.append(grad, grad_b), np.append(ridge, 0.0)
            step = _newton_step(u, curvature, ridge, grad)
            leaving = (w[idx] == 0) & (step[:idx.size] * signs[idx] < 0)
            if not leaving.any():
                break
            free[idx[leaving]] = False
        direction = np.zeros_like(w)
        direction[idx] = step[:idx.size]
        step_b = step[-1] if fit_b else 0.0
        if grad @ step >= 0:  # not a descent direction (numerically singular system): steepest descent
            direction = np.where(free, -pg, 0.0)
            step_b = -grad_b
        t = 1.0
        while True:
            w_new = w + t * direction
            w_new[np.sign(w_new) * signs < 0] = 0.0  # stop at zero, never cross into another orthant
            b_new = b + t * step_b
            m_new = sub(w_new, b_new)
            f_new = problem.value(m_new, w_new)
            decrease = pg @ (w_new - w) + grad_b * (b_new - b)
            if f_new <= f + 1e-4 * min(decrease, 0.0) or (t == 1.0 and f_new <= f):
                break
            t *= 0.5
            if t < 1e-12:  # no progress possible in floating point
                return w, b, n_iter, False
        w, b, m, f = w_new, b_new, m_new, f_new
    return w, b, n_iter, False


def _build(X, y, eps, C, fit_intercept, lower, upper):
    n = X.shape[0]
    if lower is None and upper is None:
        margins = _Margins(np.ascontiguousarray(X), float(eps), y)
    else:
        lo, hi = box_intervals(X, float(eps), lower, upper)
        margins = _Margins((lo + hi) / 2.0, (hi - lo) / 2.0, y)
    gamma, lam = (1.0 / n, 0.0) if C is None else (float(C), 1.0)
    return _Problem(margins, gamma, lam, fit_intercept, eps)


def _working_set_newton(problem: _Problem, w, b, tol, max_iter, verbose):
    """The outer loop: full KKT check, grow the working set with the worst violators, Newton on it."""
    scale = problem.gamma * problem.margins.y.size  # tolerances are relative to the mean loss
    working = np.flatnonzero(w)
    n_iter = n_outer = 0
    while True:
        n_outer += 1
        m = problem.margins(w, b)
        problem.check_not_separable(m)
        pg, grad_b = problem.gradient(m, w)
        kkt = max(np.abs(pg).max(initial=0.0), abs(grad_b)) / scale
        if verbose:
            print(f"[fast] pass {n_outer}: objective {problem.value(m, w):.12g}, KKT residual {kkt:.3e}, "
                  f"working set {working.size}, nonzeros {np.count_nonzero(w)}")
        if kkt <= tol or n_iter >= max_iter:
            return w, b, m, kkt, n_iter, n_outer
        outside = np.setdiff1d(np.flatnonzero(pg), working)
        worst = outside[np.argsort(-np.abs(pg[outside]))[:max(10, 2 * working.size)]]
        working = np.union1d(working[(w[working] != 0) | (pg[working] != 0)], worst)
        # solve each working set only as well as the outer residual warrants; the last one to tol / 2
        last = outside.size == worst.size
        inner_tol = scale * (tol / 2 if last else max(tol / 2, 0.1 * kkt))
        # small dense products: one BLAS thread (extra threads only spin, and thrash on a busy machine)
        with threadpool_limits(1 if working.size <= 256 else None):
            w_sub, b, iters, _ = _newton(problem, problem.margins.restrict(working), w[working], b, inner_tol,
                                         max_iter - n_iter)
        n_iter += iters
        w = np.zeros_like(w)
        w[working] = w_sub


def robust_logistic_linf(X, y, eps, C=None, fit_intercept=True, lower=None, upper=None, tol=1e-8,
                         max_iter=1000, coef_init=None, intercept_init=None, certify=False, verbose=False):
    r"""Exact :math:`\ell_\infty`-robust logistic regression (see the module docstring).

    Parameters
    ----------
    X : (n, d) float array, y : (n,) array of +-1, eps : float >= 0.
    C : None (mean robust loss, no penalty) or > 0 (``C * sum(loss) + ||w||^2 / 2``).
    lower, upper : the box on x + delta (None: unbounded), scalars or arrays broadcastable to (d,).
    tol : stop when the KKT residual over all coordinates, divided by sum(gamma) (n*C, or 1 for C=None),
        is at most ``tol``.
    max_iter : Newton iterations in total.
    certify : for C=None, also compute the duality gap (it needs a second solve at radius eps * (1 - 1e-3));
        for C > 0 the gap is always computed (it is cheap).
    Returns a :class:`FastResult`. Checks of the arguments are the caller's job (the estimators do them).
    """
    start = time.perf_counter()
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    problem = _build(X, y, eps, C, fit_intercept, lower, upper)
    w = np.zeros(X.shape[1]) if coef_init is None else np.array(coef_init, dtype=np.float64)
    if intercept_init is not None and fit_intercept:
        b = float(intercept_init)
    else:
        b = _best_intercept(y, problem.gamma) if fit_intercept and coef_init is None else 0.0
    # one BLAS thread unless the data are large: the products here are small or memory-bound, and extra threads
    # mostly spin (which slows everything down on a machine with other work)
    with threadpool_limits(1 if X.size <= _SINGLE_THREAD_SIZE else None):
        w, b, m, kkt, n_iter, n_outer = _working_set_newton(problem, w, b, tol, max_iter, verbose)

        def solve_smaller_eps():
            smaller = _build(X, y, eps * (1 - 1e-3), C, fit_intercept, lower, upper)
            try:
                w2, b2, m2, kkt2, *_ = _working_set_newton(smaller, w, b, tol, max_iter, False)
            except RobustlySeparableError:
                return None
            return m2 if kkt2 <= tol else None

        gap = certified_gap(problem, m, w, solve_smaller_eps) if problem.lam > 0 or certify else None
    return FastResult(coef=w, intercept=float(b), objective=problem.value(m, w), kkt_residual=kkt,
                      duality_gap=gap, n_iter=n_iter, n_outer=n_outer, converged=bool(kkt <= tol),
                      seconds=time.perf_counter() - start)


def robust_logistic_l2(X, y, eps, C=None, fit_intercept=True, tol=1e-8, max_iter=1000, verbose=False):
    r"""Exact :math:`\ell_2`-robust logistic regression without a box: margins
    :math:`y_i (w^\top x_i + b) - \varepsilon \|w\|_2` are smooth away from w = 0, so a trust-region Newton-CG
    method (Hessian-vector products) solves the problem to a gradient norm <= ``tol`` (relative to the mean
    loss). w = 0 is checked first by its optimality condition. With eps = 0 this is plain logistic regression.
    For C > 0 the result carries a duality gap; for C=None, ``duality_gap`` is None. Returns a :class:`FastResult`.
    """
    start = time.perf_counter()
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    eps = float(eps)
    gamma, lam = (1.0 / n, 0.0) if C is None else (float(C), 1.0)
    scale = gamma * n

    def split(z):
        return z[:d], (z[d] if fit_intercept else 0.0)

    def margins(w, b):
        return y * (X @ w + b) - eps * np.linalg.norm(w)

    def value_and_grad(z):
        w, b = split(z)
        m = margins(w, b)
        dloss = -gamma * expit(-m)
        norm_w = np.linalg.norm(w)
        unit = w / norm_w if norm_w > 0 else np.zeros(d)
        grad_w = X.T @ (dloss * y) - eps * dloss.sum() * unit + lam * w
        grad = np.append(grad_w, dloss @ y) if fit_intercept else grad_w
        return gamma * _loss(m).sum() + 0.5 * lam * (w @ w), grad

    def hess_vec(z, v):
        w, b = split(z)
        m = margins(w, b)
        dloss, curvature = -gamma * expit(-m), gamma * expit(m) * expit(-m)
        norm_w = np.linalg.norm(w)
        unit = w / norm_w
        vw, vb = split(v)
        along = y * (X @ vw + vb) - eps * (unit @ vw)  # directional derivative of each margin
        hv_w = X.T @ (curvature * along * y) - eps * unit * (curvature @ along)
        hv_w += -eps / norm_w * dloss.sum() * (vw - unit * (unit @ vw)) + lam * vw
        return np.append(hv_w, (curvature * along) @ y) if fit_intercept else hv_w

    # w = 0 is optimal iff ||grad of the loss in w||_2 <= eps * |sum of loss'| at the best intercept
    b0 = _best_intercept(y, gamma) if fit_intercept else 0.0
    dloss0 = -gamma * expit(-y * b0)
    g0 = X.T @ (dloss0 * y)
    n_iter = 0
    if np.linalg.norm(g0) <= eps * abs(dloss0.sum()):
        z = np.append(np.zeros(d), b0) if fit_intercept else np.zeros(d)
    else:
        z0 = np.append(-1e-3 * g0 / np.linalg.norm(g0), b0) if fit_intercept else -1e-3 * g0 / np.linalg.norm(g0)
        with threadpool_limits(1 if X.size <= _SINGLE_THREAD_SIZE else None):  # as in robust_logistic_linf
            result = minimize(value_and_grad, z0, jac=True, hessp=hess_vec, method="trust-ncg",
                              options={"gtol": tol * scale, "maxiter": max_iter, "disp": verbose})
        z, n_iter = result.x, int(result.nit)
    w, b = split(z)
    m = margins(w, b)
    if C is None and m.min() > 0:
        raise RobustlySeparableError(eps)
    value, grad = value_and_grad(z)
    # at w = 0 (optimal by the test above) only the intercept's derivative must vanish; elsewhere the gradient
    kkt = (abs(grad[-1]) if fit_intercept else 0.0) / scale if n_iter == 0 else np.abs(grad).max() / scale
    gap = None
    if lam > 0:  # D(alpha) = gamma sum H(alpha) - (max(||g||_2 - eps s, 0))^2 / (2 lambda)
        problem = _Problem(_Margins(X, eps, y), gamma, lam, fit_intercept, eps)
        alpha = dual_point(problem, m)
        slope = np.linalg.norm(X.T @ (gamma * alpha * y)) - eps * gamma * alpha.sum()
        gap = (value - dual_value(problem, alpha, np.array([slope]))) / value
    return FastResult(coef=w, intercept=float(b), objective=float(value), kkt_residual=float(kkt),
                      duality_gap=gap, n_iter=n_iter, n_outer=1, converged=bool(kkt <= tol),
                      seconds=time.perf_counter() - start)


def _best_intercept(y, gamma):
    """The intercept minimizing sum_i gamma log(1 + exp(-y_i b)) (w = 0): the log-odds of the classes."""
    pos = np.count_nonzero(y > 0)
    return float(np.log(max(pos, 0.5) / max(y.size - pos, 0.5)))


class RobustlySeparableError(ValueError):
    """The data are eps-robustly separable: the pure robust objective (C=None) has no minimizer."""

    def __init__(self, eps):
        super().__init__(f"the training data are eps-robustly separable at eps={eps}: some w gives every example "
                         f"a positive worst-case margin, so the pure robust objective (C=None) keeps decreasing as "
                         f"w grows and has no minimizer. Use C > 0 (a norm penalty) or a larger eps.")
