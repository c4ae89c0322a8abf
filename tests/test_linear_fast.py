"""The fast exact robust logistic solvers reach cvxpy's optimum (two solvers) and report honest residuals."""
from pathlib import Path

import numpy as np
import pytest

from robustopt.linear import (RobustlySeparableError, robust_logistic_l2, robust_logistic_linf,
                              robust_logistic_loss, robust_logistic_problem, solve)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def _data(seed=0, n=120, d=15, noise=0.6):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, d))
    y = np.where(X[:, :3].sum(1) - 1.5 + noise * rng.normal(size=n) > 0, 1.0, -1.0)
    return X, y


def _objective(w, b, X, y, eps, norm, box, C):
    loss = robust_logistic_loss(w, b, X, y, eps, norm, *box)
    return loss.mean() if C is None else C * loss.sum() + 0.5 * w @ w


@pytest.mark.parametrize("box", [(None, None), (0.0, 1.0), (0.1, 0.95)])
@pytest.mark.parametrize("C", [None, 0.5])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_linf_fast_solver_matches_two_cvxpy_solvers(box, C, fit_intercept):
    X, y = _data()
    X = np.clip(X, 0.1, 0.95)
    eps = 0.05
    fast = robust_logistic_linf(X, y, eps, C=C, fit_intercept=fit_intercept, lower=box[0], upper=box[1])
    assert fast.converged and fast.kkt_residual <= 1e-8
    # the reported objective is the exact robust objective (closed form) at the returned point
    assert fast.objective == pytest.approx(_objective(fast.coef, fast.intercept, X, y, eps, "inf", box, C), rel=1e-12)
    for solver in ("CLARABEL", "ECOS"):
        problem, *_ = robust_logistic_problem(X, y, eps, C=C, fit_intercept=fit_intercept, lower=box[0],
                                              upper=box[1])
        reference = solve(problem, solver)
        # never worse than the interior-point solution, and equal to 1e-6 relative
        assert fast.objective <= reference * (1 + 1e-9)
        assert fast.objective == pytest.approx(reference, rel=1e-6)
    # a certificate: the relative duality gap from a dual-feasible point (C=None mixes in the dual point of a
    # slightly smaller radius to make it feasible)
    certified = robust_logistic_linf(X, y, eps, C=C, fit_intercept=fit_intercept, lower=box[0], upper=box[1],
                                     certify=True)
    assert -1e-12 < certified.duality_gap < 1e-7


@pytest.mark.parametrize("C", [None, 0.5])
def test_l2_fast_solver_matches_cvxpy(C):
    X, y = _data(1)
    eps = 0.3
    fast = robust_logistic_l2(X, y, eps, C=C)
    assert fast.converged
    problem, *_ = robust_logistic_problem(X, y, eps, norm=2, C=C)
    assert fast.objective == pytest.approx(solve(problem, "CLARABEL"), rel=1e-6)


def test_l2_zero_weights_are_detected_as_optimal():
    X, y = _data(2)
    fast = robust_logistic_l2(X, y, 50.0)
    assert np.all(fast.coef == 0) and fast.converged
    problem, *_ = robust_logistic_problem(X, y, 50.0, norm=2)
    assert fast.objective == pytest.approx(solve(problem), rel=1e-6)


def test_zero_radius_is_plain_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    X, y = _data(3, noise=1.0)
    fast = robust_logistic_linf(X, y, 0.0, C=2.0)
    ref = LogisticRegression(C=2.0, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(fast.coef, ref.coef_[0], rtol=1e-5, atol=1e-6)


def test_duality_gap_and_kkt_residual_are_honest_before_convergence():
    X, y = _data(4)
    early = robust_logistic_linf(X, y, 0.05, C=1.0, max_iter=1)
    final = robust_logistic_linf(X, y, 0.05, C=1.0)
    assert not early.converged and early.kkt_residual > 1e-8
    # the gap bounds the distance to the optimum from above
    assert early.duality_gap * early.objective >= early.objective - final.objective - 1e-9


def test_robustly_separable_data_raise_for_the_pure_robust_objective():
    X, y = _data(5, noise=0.0)
    X = X + 0.5 * y[:, None] * np.array([1.0] + [0.0] * 14)  # a wide gap along the first feature
    with pytest.raises(RobustlySeparableError, match="separable"):
        robust_logistic_linf(X, y, 0.01)
    with pytest.raises(ValueError, match="separable"):
        robust_logistic_l2(X, y, 0.01)
    assert robust_logistic_linf(X, y, 0.01, C=1.0).converged  # with a penalty there is a minimizer


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/mnist is absent")
def test_mnist_zero_vs_one_subset_matches_clarabel():
    from robustopt.data import load_mnist
    X, y = load_mnist(root=DATA, classes=(0, 1))
    X, y = X[:300].astype(np.float64), np.where(y[:300] == 1, 1.0, -1.0)
    fast = robust_logistic_linf(X, y, 0.2)
    problem, *_ = robust_logistic_problem(X, y, 0.2)
    assert fast.objective == pytest.approx(solve(problem, "CLARABEL"), rel=1e-6)
