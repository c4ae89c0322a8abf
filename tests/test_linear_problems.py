"""cvxpy formulations of robustopt.linear: two solvers agree, and the value equals the closed-form evaluation."""
import cvxpy as cp
import numpy as np
import pytest

from robustopt.linear import (SolverStatusError, robust_cross_entropy_bound, robust_hinge_loss, robust_hinge_problem,
                              robust_logistic_loss, robust_logistic_problem, robust_multiclass_problem, solve)

EPS = 0.1


def _data(seed=0, n=40, d=6):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, d))
    y = np.where(X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=n) > 0, 1, -1)
    return X, y


def _closed_form_objective(loss, w, b, X, y, norm, box, C):
    values = loss(w, b, X, y, EPS, norm, *box)
    return values.mean() if C is None else C * values.sum() + 0.5 * w @ w


@pytest.mark.parametrize("norm", ["inf", 2, 1])
@pytest.mark.parametrize("box", [(None, None), (0.0, 1.0)])
@pytest.mark.parametrize("build, loss", [(robust_logistic_problem, robust_logistic_loss),
                                         (robust_hinge_problem, robust_hinge_loss)])
@pytest.mark.parametrize("C", [None, 2.0])
def test_binary_problem_value_is_the_exact_robust_objective(norm, box, build, loss, C):
    X, y = _data()
    values = []
    for solver in ("CLARABEL", "ECOS"):
        problem, w, b = build(X, y, EPS, norm=norm, C=C, lower=box[0], upper=box[1])
        values.append(solve(problem, solver))
        # the solver's value is the exact robust objective (closed form) at its own solution
        assert _closed_form_objective(loss, w.value, b.value, X, y, norm, box, C) == pytest.approx(values[-1],
                                                                                                   rel=1e-6)
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_linf_logistic_is_the_tutorial_l1_penalized_form():
    X, y = _data(1)
    problem, w, b = robust_logistic_problem(X, y, EPS)
    solve(problem, "ECOS")
    tutorial = np.mean(np.logaddexp(0, -y * (X @ w.value + b.value) + EPS * np.abs(w.value).sum()))
    assert problem.value == pytest.approx(tutorial, rel=1e-7)


def test_the_box_helps_and_users_can_add_constraints():
    X, y = _data(2)
    free, w, b = robust_logistic_problem(X, y, 0.2)
    boxed, *_ = robust_logistic_problem(X, y, 0.2, lower=0.0, upper=1.0)
    assert solve(boxed) <= solve(free) + 1e-7  # a smaller set, a smaller worst-case loss
    problem, w, b = robust_hinge_problem(X, y, EPS, C=1.0, fit_intercept=False)
    assert isinstance(b, cp.Constant) and b.value == 0
    constrained = cp.Problem(problem.objective, problem.constraints + [w >= 0])
    solve(constrained, "CLARABEL")
    assert w.value.min() >= -1e-7 and constrained.value >= solve(problem) - 1e-7


@pytest.mark.parametrize("norm", ["inf", 2, 1])
@pytest.mark.parametrize("box", [(None, None), (0.0, 1.0)])
def test_multiclass_problem_value_is_the_cross_entropy_bound(norm, box):
    rng = np.random.default_rng(3)
    X = rng.uniform(0, 1, (24, 4))
    y = np.argmax(X[:, :3] + 0.2 * rng.normal(size=(24, 3)), axis=1)
    values = []
    for solver in ("CLARABEL", "ECOS"):
        problem, W, b = robust_multiclass_problem(X, y, EPS, norm=norm, lower=box[0], upper=box[1])
        values.append(solve(problem, solver))
        bound = robust_cross_entropy_bound(W.value, b.value, X, y, EPS, norm, *box).mean()
        assert bound == pytest.approx(values[-1], rel=1e-6)
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_two_class_multiclass_problem_equals_the_binary_one():
    X, y = _data(4)
    binary, *_ = robust_logistic_problem(X, y, EPS)
    multi, *_ = robust_multiclass_problem(X, (y > 0).astype(int), EPS)
    assert solve(multi) == pytest.approx(solve(binary), rel=1e-6)


def test_non_optimal_status_raises_with_the_status():
    X, y = _data(5)
    problem, *_ = robust_logistic_problem(X, y, EPS)
    with pytest.raises(SolverStatusError, match="status") as info:
        solve(problem, "ECOS", max_iters=2)
    assert info.value.status != "optimal"


@pytest.mark.parametrize("call, message", [
    (lambda X, y: solve(robust_logistic_problem(X, y, EPS)[0], "HIGHS"), "solver"),
    (lambda X, y: robust_logistic_problem(X, y, -1.0), "eps"),
    (lambda X, y: robust_logistic_problem(X, y, EPS, norm="l3"), "norm"),
    (lambda X, y: robust_logistic_problem(X, y, EPS, C=0.0), "C"),
    (lambda X, y: robust_logistic_problem(X, y + 1, EPS), "y"),
    (lambda X, y: robust_hinge_problem(X[:-1], y, EPS), "y"),
    (lambda X, y: robust_hinge_problem(np.where(X > 0.9, np.nan, X), y, EPS), "X"),
    (lambda X, y: robust_hinge_problem(X - 0.5, y, EPS, lower=0.0, upper=1.0), "X"),
    (lambda X, y: robust_multiclass_problem(X, y, EPS), "y"),
    (lambda X, y: robust_multiclass_problem(X, (y > 0).astype(int), EPS, n_classes=1), "y"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    X, y = _data(6)
    with pytest.raises(ValueError, match=message):
        call(X, y)
