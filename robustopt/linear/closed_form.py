r"""Exact inner maximization for linear classifiers: worst-case margins, optimal perturbations, robust losses.

For a binary classifier :math:`f(x) = w^\top x + b`, labels :math:`y \in \{-1, +1\}` and the set
:math:`B(x) = \{x' : \|x' - x\|_p \le \varepsilon,\ l \le x' \le u\}`, the worst-case margin is

.. math::  \min_{x' \in B(x)} y (w^\top x' + b) = y b - \sigma_{B(x)}(-y w),

:math:`\sigma` the support function. Without a box this is the tutorial's
:math:`y (w^\top x + b) - \varepsilon \|w\|_q` (q the dual norm); with a box it is computed exactly by
:meth:`robustopt.sets.Ball.support` (per coordinate for ℓ∞, a fractional knapsack for ℓ1, an exact search on the
multiplier for ℓ2). A multiclass classifier :math:`f(x) = W x + b` (W of shape (k, d)) has pairwise margins
:math:`m_j(x') = f_y(x') - f_j(x')`, each minimized the same way with :math:`w = W_y - W_j`.

Labels: binary functions take y in {-1, +1} or {0, 1} (0 means -1); multiclass ones take y in {0, ..., k-1}.
``eps`` is a scalar or one radius per example; ``lower`` / ``upper`` (default None: no box) are scalars or arrays
broadcastable to one example (d,) or to the batch (n, d). Everything is numpy, float64.
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from .._validation import check_eps, check_finite, check_norm, dual_norm_order
from ..sets import Ball

__all__ = ["worst_case_margin", "worst_case_margins", "optimal_perturbation", "robust_logistic_loss",
           "robust_hinge_loss", "robust_cross_entropy_bound", "robust_error", "signed_labels", "box_intervals"]

_CHUNK = 2 ** 22  # elements per block of (examples x classes x features) in the boxed multiclass case


# ---------------------------------------------------------------------------------------------- checks
def _check_X(X, d=None, name="X"):
    X = np.asarray(X)
    check_finite(X, name)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n_samples, n_features); got shape {X.shape} "
                         f"(flatten images with X.reshape(len(X), -1))")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{name} has {X.shape[1]} features but the weights have {d}")
    return X.astype(np.float64, copy=False)


def signed_labels(y, n, name="y"):
    """Binary labels as a float array of -1 / +1: accepts {-1, +1} or {0, 1} (0 maps to -1)."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one label per example; got {y.shape}")
    check_finite(y, name)
    values = set(np.unique(y).tolist())
    if not values <= {-1, 1} and not values <= {0, 1}:
        raise ValueError(f"{name} must hold binary labels in {{-1, +1}} or {{0, 1}}; got values {sorted(values)[:10]}")
    return np.where(y > 0, 1.0, -1.0)


def _class_labels(y, n, k, name="y"):
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one label per example; got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise ValueError(f"{name} must hold integer class labels in [0, {k - 1}]; got dtype {y.dtype}")
        y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"{name} has labels out of range: {y.min()}..{y.max()}, expected [0, {k - 1}] "
                         f"for {k} classes")
    return y.astype(np.int64)


def _check_binary(w, b, X, y, eps):
    w = np.asarray(w, dtype=np.float64)
    if w.ndim == 2 and w.shape[0] == 1:  # scikit-learn's coef_ of a binary model
        w = w[0]
    if w.ndim != 1:
        raise ValueError(f"w must be a weight vector of shape (n_features,); got shape {w.shape}")
    check_finite(w, "w")
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if b.size != 1 or not np.isfinite(b[0]):
        raise ValueError(f"b must be one finite number (the intercept); got {b.tolist()}")
    X = _check_X(X, w.shape[0])
    return w, float(b[0]), X, signed_labels(y, X.shape[0]), _radius(eps, X.shape[0])


def _check_multiclass(W, b, X, y, eps):
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] < 2:
        raise ValueError(f"W must have shape (n_classes, n_features) with n_classes >= 2; got shape {W.shape}")
    check_finite(W, "W")
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if b.shape != (W.shape[0],):
        raise ValueError(f"b must have shape ({W.shape[0]},), one intercept per class; got {b.shape}")
    check_finite(b, "b")
    X = _check_X(X, W.shape[1])
    return W, b, X, _class_labels(y, X.shape[0], W.shape[0]), _radius(eps, X.shape[0])


def _radius(eps, n):
    eps = check_eps(eps, n)
    return eps if isinstance(eps, float) else eps.double().numpy()


def _ball(eps, norm, lower, upper, X):
    """The perturbation set (a :class:`Ball` with the box, or None for no box) after checking X is inside."""
    if lower is None and upper is None:
        return None
    ball = Ball(eps, norm=norm, lower=lower, upper=upper)
    ball.check_center(X, "X")
    return ball


def _has_box(lower, upper):
    return lower is not None or upper is not None


def box_intervals(X, eps, lower, upper):
    """Per-coordinate range [lo, hi] of x' over the set, each (n, d): the ball's own interval cut by the box.

    For ℓ∞ this is the set itself. For ℓ2 / ℓ1 the ball also keeps |x'_j - x_j| <= eps, so cutting the box to
    this range changes nothing and keeps every bound finite. ``eps``: scalar or (n,).
    """
    radius = eps if np.ndim(eps) == 0 else np.asarray(eps, dtype=np.float64)[:, None]
    lo, hi = X - radius, X + radius
    if lower is not None:
        lo = np.maximum(lo, np.asarray(lower, dtype=np.float64))
    if upper is not None:
        hi = np.minimum(hi, np.asarray(upper, dtype=np.float64))
    return lo, hi


# ---------------------------------------------------------------------------------------------- binary
def worst_case_margin(w, b, X, y, eps, norm="inf", lower=None, upper=None):
    r"""Exact :math:`\min_{x' \in B(x_i)} y_i (w^\top x' + b)` for each example, shape (n,).

    Without a box: :math:`y_i (w^\top x_i + b) - \varepsilon \|w\|_q`. ``eps = 0`` gives the clean margin.
    """
    norm = check_norm(norm)
    w, b, X, y, eps = _check_binary(w, b, X, y, eps)
    ball = _ball(eps, norm, lower, upper, X)
    if ball is None:
        return y * (X @ w + b) - eps * np.linalg.norm(w, ord=dual_norm_order(norm))
    return y * b - ball.support(-y[:, None] * w, X)


def optimal_perturbation(w, b, X, y, eps, norm="inf", lower=None, upper=None):
    r"""A perturbation :math:`\delta_i` attaining the worst-case margin, shape (n, d); ``X + delta`` lies in the set.

    Binary (w of shape (d,), y in {-1, +1} / {0, 1}): without a box :math:`-y \varepsilon\,\mathrm{sign}(w)` (ℓ∞),
    :math:`-y \varepsilon w / \|w\|_2` (ℓ2), :math:`-y \varepsilon\,\mathrm{sign}(w_j) e_j` at the largest
    :math:`|w_j|` (ℓ1); with a box, the maximizer of the support function. Multiclass (W of shape (k, d), b (k,),
    y in {0..k-1}): the perturbation of the pair j with the smallest worst-case margin.
    """
    norm = check_norm(norm)
    if np.ndim(w) == 2 and np.shape(w)[0] > 1:
        return _multiclass_perturbation(w, b, X, y, eps, norm, lower, upper)
    w, b, X, y, eps = _check_binary(w, b, X, y, eps)
    ball = Ball(eps, norm=norm, lower=lower, upper=upper)
    if _has_box(lower, upper):
        ball.check_center(X, "X")
    return ball.support_point(-y[:, None] * w, X) - X


# ---------------------------------------------------------------------------------------------- multiclass
def _pairwise_directions(W, y):
    """(n, k, d) array of W_j - W_{y_i}: the objective whose maximum over B(x_i) is -m_j's minimum."""
    return W[None, :, :] - W[y][:, None, :]


def worst_case_margins(W, b, X, y, eps, norm="inf", lower=None, upper=None):
    r"""Exact worst-case pairwise margins :math:`\min_{x' \in B(x_i)} (W_{y_i} - W_j)^\top x' + b_{y_i} - b_j`,
    shape (n, k); column :math:`y_i` is +inf.

    Without a box: :math:`(W_y - W_j)^\top x + b_y - b_j - \varepsilon \|W_y - W_j\|_q`.
    """
    norm = check_norm(norm)
    W, b, X, y, eps = _check_multiclass(W, b, X, y, eps)
    n, k = X.shape[0], W.shape[0]
    logits = X @ W.T + b
    ball = _ball(eps, norm, lower, upper, X)
    if ball is None:
        pair_norms = np.linalg.norm(W[:, None, :] - W[None, :, :], ord=dual_norm_order(norm), axis=-1)
        eps_col = eps if np.ndim(eps) == 0 else eps[:, None]
        margins = logits[np.arange(n), y][:, None] - logits - eps_col * pair_norms[y]
    else:
        margins = np.empty((n, k))
        step = max(1, _CHUNK // (k * X.shape[1]))
        for s in range(0, n, step):  # the support over B(x_i) of W_j - W_y, in blocks to bound memory
            rows = slice(s, s + step)
            radius = eps if np.ndim(eps) == 0 else eps[rows]
            part = Ball(radius, norm, _bound_rows(lower, rows, n), _bound_rows(upper, rows, n))
            margins[rows] = (b[y[rows]][:, None] - b) - part.support(_pairwise_directions(W, y[rows]), X[rows])
    margins[np.arange(n), y] = np.inf
    return margins


def _bound_rows(bound, rows, n):
    """Rows of a per-example box bound (shape (n, d)); a bound shared by all examples is returned as it is."""
    if np.ndim(bound) == 2 and np.shape(bound)[0] == n:
        return np.asarray(bound)[rows]
    return bound


def _multiclass_perturbation(W, b, X, y, eps, norm, lower, upper):
    W, b, X, y, eps = _check_multiclass(W, b, X, y, eps)
    margins = worst_case_margins(W, b, X, y, eps, norm, lower, upper)
    target = np.argmin(margins, axis=1)
    direction = W[target] - W[y]  # maximize (W_j - W_y) . x' over the set
    ball = Ball(eps, norm=norm, lower=lower, upper=upper)
    return ball.support_point(direction, X) - X


# ---------------------------------------------------------------------------------------------- losses
def robust_logistic_loss(w, b, X, y, eps, norm="inf", lower=None, upper=None):
    r"""Exact worst-case logistic loss :math:`\max_{x' \in B(x)} \log(1 + e^{-y f(x')}) = \log(1 + e^{-m})`,
    m the worst-case margin (the loss decreases in the margin), shape (n,)."""
    return np.logaddexp(0.0, -worst_case_margin(w, b, X, y, eps, norm, lower, upper))


def robust_hinge_loss(w, b, X, y, eps, norm="inf", lower=None, upper=None):
    r"""Exact worst-case hinge loss :math:`\max(0, 1 - m)`, m the worst-case margin, shape (n,)."""
    return np.maximum(0.0, 1.0 - worst_case_margin(w, b, X, y, eps, norm, lower, upper))


def robust_cross_entropy_bound(W, b, X, y, eps, norm="inf", lower=None, upper=None):
    r"""The tutorial's upper bound on the worst-case cross-entropy, shape (n,):

    .. math::  \max_{x' \in B(x)} \mathrm{CE}(Wx' + b, y) \le \log \sum_j \exp(-m_j^\star),

    :math:`m_j^\star` the worst-case pairwise margins (each minimized separately; :math:`m_y^\star = 0`).
    Exact for two classes.
    """
    margins = worst_case_margins(W, b, X, y, eps, norm, lower, upper)
    margins[np.isinf(margins)] = 0.0
    return logsumexp(-margins, axis=1)


def robust_error(w, b, X, y, eps, norm="inf", lower=None, upper=None):
    """Exact robust 0-1 error: the fraction of examples with some point of the set at margin <= 0 (a tie
    counts as an error). Binary (w of shape (d,)) or multiclass (W of shape (k, d), y in {0..k-1})."""
    if np.ndim(w) == 2 and np.shape(w)[0] > 1:
        margin = worst_case_margins(w, b, X, y, eps, norm, lower, upper).min(axis=1)
    else:
        margin = worst_case_margin(w, b, X, y, eps, norm, lower, upper)
    return float(np.mean(margin <= 0)) if margin.size else 0.0
