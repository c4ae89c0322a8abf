"""Closed-form inner maximization of robustopt.linear against brute force (vertices, linprog, cvxpy)."""
import itertools

import cvxpy as cp
import numpy as np
import pytest
from scipy.optimize import linprog
from scipy.special import logsumexp

from robustopt.linear import (optimal_perturbation, robust_cross_entropy_bound, robust_error, robust_hinge_loss,
                              robust_logistic_loss, worst_case_margin, worst_case_margins)
from robustopt.sets import Ball

BOXES = [(None, None), (0.0, 1.0)]


def _problem(seed, n=6, d=7):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, d))
    X[:, :2] = rng.choice([0.0, 1.0, 0.05, 0.97], (n, 2))  # centres on or near the box faces
    w = rng.normal(size=d)
    w[rng.integers(d)] = 0.0
    y = rng.choice([-1, 1], n)
    return X, w, float(rng.normal()), y


def _linf_vertices_min(v, x, eps, lower, upper):
    """min over the vertices of the l_inf ball (clipped to the box, which keeps them the box's vertices)."""
    points = x + eps * np.array(list(itertools.product([-1.0, 1.0], repeat=x.size)))
    if lower is not None:
        points = np.clip(points, lower, upper)
    return (points @ v).min()


def _lp_min(v, x, eps, norm, lower, upper):
    """min v.x' over the l_inf / l_1 ball (and box) by linprog, with delta = p - q, p, q >= 0."""
    d = x.size
    lo = np.full(d, -np.inf) if lower is None else lower - x
    hi = np.full(d, np.inf) if upper is None else upper - x
    cost = np.concatenate([v, -v])
    if norm == "inf":
        bounds = [(0, min(eps, max(h, 0))) for h in hi] + [(0, min(eps, max(-l, 0))) for l in lo]
        res = linprog(cost, bounds=bounds, method="highs")
    else:
        bounds = [(0, max(h, 0)) for h in hi] + [(0, max(-l, 0)) for l in lo]
        res = linprog(cost, A_ub=np.ones((1, 2 * d)), b_ub=[eps], bounds=bounds, method="highs")
    assert res.status == 0
    return v @ x + res.fun


def _cvxpy_l2_min(v, x, eps, lower, upper):
    xp = cp.Variable(x.size)
    constraints = [cp.norm(xp - x, 2) <= eps]
    if lower is not None:
        constraints += [xp >= lower, xp <= upper]
    problem = cp.Problem(cp.Minimize(v @ xp), constraints)
    problem.solve(solver="CLARABEL")
    assert problem.status == "optimal"
    return problem.value


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("box", BOXES)
def test_linf_margin_equals_vertex_enumeration(seed, box):
    X, w, b, y = _problem(seed)
    m = worst_case_margin(w, b, X, y, 0.3, "inf", *box)
    brute = [_linf_vertices_min(y[i] * w, X[i], 0.3, *box) + y[i] * b for i in range(len(X))]
    np.testing.assert_allclose(m, brute, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("norm", ["inf", 1])
def test_polyhedral_margin_equals_linprog(seed, box, norm):
    X, w, b, y = _problem(seed)
    m = worst_case_margin(w, b, X, y, 0.4, norm, *box)
    lp = [_lp_min(y[i] * w, X[i], 0.4, norm, *box) + y[i] * b for i in range(len(X))]
    np.testing.assert_allclose(m, lp, atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("box", BOXES)
def test_l2_margin_equals_cvxpy(seed, box):
    X, w, b, y = _problem(seed)
    m = worst_case_margin(w, b, X, y, 0.5, 2, *box)
    ref = [_cvxpy_l2_min(y[i] * w, X[i], 0.5, *box) + y[i] * b for i in range(len(X))]
    np.testing.assert_allclose(m, ref, atol=1e-6)


@pytest.mark.parametrize("norm", ["inf", 2, 1])
@pytest.mark.parametrize("box", BOXES)
def test_optimal_perturbation_lies_in_the_set_and_attains_the_margin(norm, box):
    X, w, b, y = _problem(7, n=20, d=12)
    delta = optimal_perturbation(w, b, X, y, 0.25, norm, *box)
    ball = Ball(0.25, norm, *box)
    assert ball.contains(X + delta, X, atol=1e-9).all()
    np.testing.assert_allclose(y * ((X + delta) @ w + b), worst_case_margin(w, b, X, y, 0.25, norm, *box),
                               atol=1e-12)


def test_unboxed_perturbations_are_the_textbook_ones():
    X, w, b, y = _problem(3, n=5, d=6)
    eps = 0.2
    np.testing.assert_allclose(optimal_perturbation(w, b, X, y, eps, "inf"), -eps * y[:, None] * np.sign(w))
    np.testing.assert_allclose(optimal_perturbation(w, b, X, y, eps, 2),
                               -eps * y[:, None] * w / np.linalg.norm(w), atol=1e-15)
    j = np.argmax(np.abs(w))
    expected = np.zeros_like(X)
    expected[:, j] = -eps * y * np.sign(w[j])
    np.testing.assert_allclose(optimal_perturbation(w, b, X, y, eps, 1), expected)
    np.testing.assert_allclose(worst_case_margin(w, b, X, y, eps, "inf"), y * (X @ w + b) - eps * np.abs(w).sum())


@pytest.mark.parametrize("norm", ["inf", 2, 1])
@pytest.mark.parametrize("box", BOXES)
def test_zero_radius_gives_the_clean_margin(norm, box):
    X, w, b, y = _problem(4)
    np.testing.assert_allclose(worst_case_margin(w, b, X, y, 0.0, norm, *box), y * (X @ w + b), atol=1e-14)
    assert np.all(optimal_perturbation(w, b, X, y, 0.0, norm, *box) == 0)


def test_the_box_only_raises_the_margin_and_labels_0_1_mean_minus_plus():
    X, w, b, y = _problem(5, n=30)
    boxed = worst_case_margin(w, b, X, y, 0.3, "inf", 0.0, 1.0)
    assert np.all(boxed >= worst_case_margin(w, b, X, y, 0.3, "inf") - 1e-12)
    np.testing.assert_array_equal(worst_case_margin(w, b, X, (y > 0).astype(int), 0.3), worst_case_margin(w, b, X, y, 0.3))


def test_per_example_radius_and_per_feature_box():
    X, w, b, y = _problem(6, n=8, d=5)
    eps = np.linspace(0.0, 0.5, 8)
    lower, upper = np.zeros(5), np.array([1.0, 1.0, 0.9, 1.2, 1.0])
    m = worst_case_margin(w, b, X, y, eps, "inf", lower, upper)
    for i in range(8):
        one = worst_case_margin(w, b, X[i:i + 1], y[i:i + 1], float(eps[i]), "inf", lower, upper)
        assert m[i] == pytest.approx(one[0], abs=1e-14)


@pytest.mark.parametrize("norm", ["inf", 2, 1])
@pytest.mark.parametrize("box", BOXES)
def test_multiclass_margins_are_the_pairwise_binary_margins(norm, box):
    rng = np.random.default_rng(1)
    n, d, k = 9, 6, 4
    X, W, bs = rng.uniform(0, 1, (n, d)), rng.normal(size=(k, d)), rng.normal(size=k)
    y = rng.integers(0, k, n)
    M = worst_case_margins(W, bs, X, y, 0.2, norm, *box)
    assert np.all(np.isinf(M[np.arange(n), y]))
    for i, j in itertools.product(range(n), range(k)):
        if j != y[i]:
            pair = worst_case_margin(W[y[i]] - W[j], bs[y[i]] - bs[j], X[i:i + 1], [1], 0.2, norm, *box)[0]
            assert M[i, j] == pytest.approx(pair, abs=1e-12)
    delta = optimal_perturbation(W, bs, X, y, 0.2, norm, *box)
    assert Ball(0.2, norm, *box).contains(X + delta, X, atol=1e-9).all()
    logits = (X + delta) @ W.T + bs
    attained = (logits[np.arange(n), y][:, None] - logits).min(axis=1, initial=np.inf, where=~np.eye(k, dtype=bool)[y])
    np.testing.assert_allclose(attained, M.min(axis=1), atol=1e-12)


def test_cross_entropy_bound_is_an_upper_bound_and_exact_for_two_classes():
    rng = np.random.default_rng(2)
    n, d, k, eps = 5, 5, 3, 0.15
    X, W, bs = rng.uniform(0, 1, (n, d)), rng.normal(size=(k, d)), rng.normal(size=k)
    y = rng.integers(0, k, n)
    vertices = np.array(list(itertools.product([-eps, eps], repeat=d)))
    bound = robust_cross_entropy_bound(W, bs, X, y, eps)
    for i in range(n):
        logits = (X[i] + vertices) @ W.T + bs  # CE is convex in x': its maximum is at a vertex
        worst = (logsumexp(logits, axis=1) - logits[:, y[i]]).max()
        assert worst <= bound[i] + 1e-12
    two = robust_cross_entropy_bound(W[:2], bs[:2], X, y % 2, eps)
    w, b = W[1] - W[0], bs[1] - bs[0]
    np.testing.assert_allclose(two, robust_logistic_loss(w, b, X, y % 2, eps), atol=1e-12)


def test_losses_and_exact_error_with_a_tie():
    X = np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9]])
    w, b, y = np.array([1.0, -1.0]), 0.0, np.array([1, 1, -1])
    # example 0 sits on the boundary: clean margin 0, a tie, which is not robust even at eps = 0
    assert robust_error(w, b, X, y, 0.0) == pytest.approx(1 / 3)
    m = worst_case_margin(w, b, X, y, 0.2)
    np.testing.assert_allclose(m, [-0.4, 0.4, 0.4])
    np.testing.assert_allclose(robust_hinge_loss(w, b, X, y, 0.2), np.maximum(0, 1 - m))
    np.testing.assert_allclose(robust_logistic_loss(w, b, X, y, 0.2), np.log1p(np.exp(-m)))
    assert robust_error(w, b, X, y, 0.4) == 1.0  # margins 0.8 - 0.8 = 0: ties
    assert robust_error(w, b, X, y, 0.39) == pytest.approx(1 / 3)


@pytest.mark.parametrize("call, message", [
    (lambda X, w, y: worst_case_margin(w, 0.0, X, y, -0.1), "eps"),
    (lambda X, w, y: worst_case_margin(w, 0.0, X, y, float("nan")), "eps"),
    (lambda X, w, y: worst_case_margin(w, 0.0, np.where(X > 0.5, np.nan, X), y, 0.1), "X"),
    (lambda X, w, y: worst_case_margin(w, 0.0, np.where(X > 0.5, np.inf, X), y, 0.1), "X"),
    (lambda X, w, y: worst_case_margin(w[:-1], 0.0, X, y, 0.1), "features"),
    (lambda X, w, y: worst_case_margin(w, 0.0, X, y[:-1], 0.1), "y"),
    (lambda X, w, y: worst_case_margin(w, 0.0, X, y + 5, 0.1), "y"),
    (lambda X, w, y: worst_case_margin(w, 0.0, X, y, 0.1, norm=3), "norm"),
    (lambda X, w, y: worst_case_margin(w, 0.0, X, y, np.ones(2), norm=3), "norm"),
    (lambda X, w, y: worst_case_margin(w, 0.0, X, y, np.ones(2)), "eps"),
    (lambda X, w, y: worst_case_margin(w, 0.0, X + 1.0, y, 0.1, lower=0.0, upper=1.0), "X"),
    (lambda X, w, y: worst_case_margin(w, 0.0, X[0], y, 0.1), "X"),
    (lambda X, w, y: worst_case_margin(w, [0.0, 1.0], X, y, 0.1), "b"),
    (lambda X, w, y: worst_case_margins(np.ones((3, X.shape[1])), np.zeros(3), X, y + 2, 0.1), "y"),
    (lambda X, w, y: worst_case_margins(np.ones((3, X.shape[1])), np.zeros(2), X, y, 0.1), "b"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    X, w, _, y = _problem(0)
    with pytest.raises(ValueError, match=message):
        call(X, w, y)
