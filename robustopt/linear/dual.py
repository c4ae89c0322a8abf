r"""Duality gaps for robust logistic regression: rigorous bounds on the distance to the optimum.

With :math:`\ell(m) = \log(1 + e^{-m}) = \max_{\alpha \in [0, 1]} -\alpha m + H(\alpha)` (H the binary entropy) and
margins linear in the split variables, :math:`m_i = a_i^\top (w^+, w^-, b)`, the dual of
:math:`\min \gamma \sum_i \ell(m_i) + \frac{\lambda}{2}\|w\|^2` is

.. math::  D(\alpha) = \gamma \sum_i H(\alpha_i) - \frac{1}{2\lambda} \|(u)_+\|^2, \qquad
           u = \gamma \sum_i \alpha_i (\pm y_i c_i - r_i) \in \mathbb R^{2d},

subject to :math:`\sum_i \alpha_i y_i = 0` with an intercept, and for :math:`\lambda = 0` (``C=None``) to
:math:`u \le 0` instead of the quadratic term. Any feasible :math:`\alpha` gives :math:`D(\alpha) \le` the optimum,
so :math:`F(w, b) - D(\alpha)` bounds how far :math:`F(w, b)` is from it. ``problem`` is the solver's
``_Problem`` (``margins`` with ``y`` and ``transposed``, ``gamma``, ``lam``, ``fit_intercept``, ``value``).
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit

__all__ = ["dual_point", "dual_slopes", "dual_value", "certified_gap"]


def dual_point(problem, m):
    """alpha = -loss'(m) in (0, 1), made feasible for the intercept (sum_i alpha_i y_i = 0) by scaling down the
    heavier class."""
    y, alpha = problem.margins.y, expit(-m)
    if problem.fit_intercept:
        pos, neg = alpha[y > 0].sum(), alpha[y < 0].sum()
        heavier, ratio = (y > 0, neg / pos) if pos > neg else (y < 0, pos / neg)
        alpha = np.where(heavier, alpha * ratio, alpha)
    return alpha


def dual_slopes(problem, alpha):
    """u^+- = gamma sum_i alpha_i (+- y_i c_i - r_i), each (d,): the dual's constraints (C=None: u <= 0)."""
    along, radial = problem.margins.transposed(problem.gamma * alpha)
    return np.concatenate([along - radial, -along - radial])


def dual_value(problem, alpha, slopes):
    r"""The dual objective: with :math:`\ell(m) = \max_{\alpha \in [0, 1]} -\alpha m + H(\alpha)` (H the binary
    entropy), :math:`D(\alpha) = \gamma \sum_i H(\alpha_i) - \frac{1}{2\lambda} \|(u)_+\|^2` for
    :math:`\lambda > 0`; for :math:`\lambda = 0` the term is the constraint :math:`u \le 0` (checked by the caller)."""
    entropy = -(alpha * np.log(np.where(alpha > 0, alpha, 1.0)) + (1 - alpha) * np.log1p(-np.minimum(alpha, 1.0)))
    dual = problem.gamma * entropy.sum()
    if problem.lam > 0:
        excess = np.maximum(slopes, 0.0)
        dual -= 0.5 / problem.lam * (excess @ excess)
    return dual


def certified_gap(problem, m, w, solve_smaller_eps):
    """P(w, b) - D(alpha) >= P(w, b) - P*, relative to P, from a dual-feasible alpha (None if none was found).

    C > 0: alpha from the margins. C = None: the dual has the constraints u <= 0, which alpha from the margins
    meets only up to the KKT residual; it is mixed with the dual point of the problem at a slightly smaller
    radius (``solve_smaller_eps()`` returns those margins), which meets them strictly here, just enough to
    make every constraint hold.
    """
    alpha = dual_point(problem, m)
    slopes = dual_slopes(problem, alpha)
    if problem.lam == 0 and slopes.max() > 0:
        other_margins = solve_smaller_eps()
        if other_margins is None:
            return None
        other = dual_point(problem, other_margins)
        other_slopes = dual_slopes(problem, other)
        violated = slopes > 0
        if np.any(other_slopes[violated] >= 0):
            return None
        theta = np.max(slopes[violated] / (slopes[violated] - other_slopes[violated]))
        theta = min(1.0, 2 * theta + 1e-9)  # twice the exact mix: a margin far above rounding errors
        alpha = (1 - theta) * alpha + theta * other
        slopes = dual_slopes(problem, alpha)
        if slopes.max() > 0:
            return None
    primal = problem.value(m, w)
    return (primal - dual_value(problem, alpha, slopes)) / max(abs(primal), np.finfo(float).tiny)
