"""scikit-learn estimators of robustopt.linear: API compliance, exact robust scores, bad input."""
import warnings

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import check_estimator

from robustopt.data import load_digits
from robustopt.linear import (RobustLinearSVC, RobustLogisticRegression, RobustSoftmaxRegression,
                              robust_cross_entropy_bound, worst_case_margin)
from robustopt.sets import Ball

ESTIMATORS = [RobustLogisticRegression, RobustLinearSVC, RobustSoftmaxRegression]
# check_estimator's checks that may be skipped here, and why (they depend on the environment, not on us):
#   check_array_api_input: runs only with SCIPY_ARRAY_API=1 and an array-API library installed;
#   check_classifier_data_not_an_array: runs only when pandas is installed (it is not a dependency).
ENVIRONMENT_SKIPS = {"check_array_api_input", "check_classifier_data_not_an_array"}


@pytest.fixture(scope="module")
def digits01():
    X, y = load_digits(classes=(0, 1))
    X_test, y_test = load_digits(classes=(0, 1), split="test")
    return X.astype(np.float64), y, X_test.astype(np.float64), y_test


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_scikit_learn_check_estimator(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator(), on_fail=None)
    failed = [(r["check_name"], r["exception"]) for r in results if r["status"] == "failed"]
    assert not failed
    assert {r["check_name"] for r in results if r["status"] == "skipped"} <= ENVIRONMENT_SKIPS


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("box", [(None, None), (0.0, 1.0)])
@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_robust_score_agrees_with_attacking_at_the_optimal_perturbation(estimator, box, norm, digits01):
    X, y, X_test, y_test = digits01
    eps = {"inf": 0.1, 2: 1.0, 1: 3.0}[norm]
    if norm != "inf" and box[0] is not None:  # an n*d-variable cvxpy problem: fewer examples keep it quick
        X, y = X[:120], y[:120]
    model = estimator(eps=eps, norm=norm, C=0.1, lower=box[0], upper=box[1]).fit(X, y)
    X_adv = model.adversarial_examples(X_test, y_test)
    assert Ball(eps, norm, *box).contains(X_adv, X_test, atol=1e-9).all()
    robust = model.robust_score(X_test, y_test)
    attacked = np.mean(model.predict(X_adv) == y_test)
    assert robust <= model.score(X_test, y_test)
    assert robust == pytest.approx(attacked, abs=1 / len(y_test) + 1e-12)  # a tie may be predicted either way
    assert model.robust_score(X_test, y_test, eps=0.0) <= model.score(X_test, y_test)


def test_adversarial_examples_attain_the_worst_case_margin(digits01):
    X, y, X_test, y_test = digits01
    model = RobustLogisticRegression(eps=0.2, lower=0.0, upper=1.0).fit(X, y)
    signs = np.where(y_test == model.classes_[1], 1.0, -1.0)
    attained = signs * model.decision_function(model.adversarial_examples(X_test, y_test))
    exact = worst_case_margin(model.coef_[0], model.intercept_[0], X_test, signs, 0.2, "inf", 0.0, 1.0)
    np.testing.assert_allclose(attained, exact, atol=1e-12)
    assert model.robust_score(X_test, y_test) == np.mean(exact > 0)


@pytest.mark.parametrize("solver", ["fast", "clarabel", "ecos"])
@pytest.mark.parametrize("box", [(None, None), (0.0, 1.0)])
def test_solvers_agree_on_the_digits(solver, box, digits01):
    X, y, *_ = digits01
    reference = RobustLogisticRegression(eps=0.2, C=None, lower=box[0], upper=box[1], solver="fast").fit(X, y)
    model = RobustLogisticRegression(eps=0.2, C=None, lower=box[0], upper=box[1], solver=solver).fit(X, y)
    assert model.objective_ == pytest.approx(reference.objective_, rel=1e-6)
    assert model.solver_.startswith("fast" if solver == "fast" else "cvxpy+" + solver.upper())


def test_zero_radius_takes_the_smooth_fast_path_for_any_norm_and_box(digits01):
    X, y, *_ = digits01
    fast = RobustLogisticRegression(eps=0.0, norm=1, lower=0.0, upper=1.0).fit(X, y)
    reference = RobustLogisticRegression(eps=0.0, norm=1, lower=0.0, upper=1.0, solver="clarabel").fit(X, y)
    assert fast.solver_.startswith("fast") and fast.duality_gap_ < 1e-9
    assert fast.objective_ == pytest.approx(reference.objective_, rel=1e-5, abs=1e-7)


def test_the_box_lowers_the_robust_error_on_the_digits(digits01):
    X, y, X_test, y_test = digits01
    standard = RobustLogisticRegression(eps=0.0).fit(X, y)
    free = standard.robust_score(X_test, y_test, eps=0.2)
    boxed = RobustLogisticRegression(eps=0.0, lower=0.0, upper=1.0).fit(X, y).robust_score(X_test, y_test, eps=0.2)
    assert boxed >= free  # the same model: a smaller set can only help
    robust = RobustLogisticRegression(eps=0.2, C=None, lower=0.0, upper=1.0).fit(X, y)
    assert robust.robust_score(X_test, y_test) > free


def test_any_two_labels_and_softmax_with_two_classes_equals_logistic():
    X, y = load_digits(classes=(3, 8))
    X = X.astype(np.float64)
    names = np.where(y == 8, "eight", "three")
    binary = RobustLogisticRegression(eps=0.05, C=None).fit(X, names)
    assert list(binary.classes_) == ["eight", "three"] and set(binary.predict(X)) <= {"eight", "three"}
    softmax = RobustSoftmaxRegression(eps=0.05, C=None).fit(X, names)
    assert softmax.objective_ == pytest.approx(binary.objective_, rel=1e-5)
    assert softmax.decision_function(X).shape == (len(X),)
    assert binary.predict_proba(X).shape == (len(X), 2)
    np.testing.assert_allclose(binary.predict_proba(X).sum(1), 1.0)


def test_softmax_on_three_digits_with_a_box():
    X, y = load_digits(classes=(0, 1, 2))
    X_test, y_test = load_digits(classes=(0, 1, 2), split="test")
    model = RobustSoftmaxRegression(eps=0.1, lower=0.0, upper=1.0).fit(X[:200], y[:200])
    assert model.coef_.shape == (3, 64) and model.intercept_.shape == (3,)
    assert model.score(X_test, y_test) > 0.9
    X_adv = model.adversarial_examples(X_test, y_test)
    assert model.robust_score(X_test, y_test) == pytest.approx(np.mean(model.predict(X_adv) == y_test),
                                                               abs=1 / len(y_test))
    unboxed = robust_cross_entropy_bound(model.coef_, model.intercept_, X[:200], y[:200], 0.1).mean()
    assert model.objective_ <= unboxed  # the box can only lower the bound


def test_pipeline_and_grid_search(digits01):
    X, y, X_test, y_test = digits01
    pipe = make_pipeline(MinMaxScaler(clip=True), RobustLogisticRegression(eps=0.1, lower=0.0, upper=1.0))
    search = GridSearchCV(pipe, {"robustlogisticregression__eps": [0.0, 0.1, 0.2],
                                 "robustlogisticregression__C": [0.1, 1.0]}, cv=3)
    search.fit(X, y)
    assert search.best_score_ > 0.9
    assert search.score(X_test, y_test) > 0.9
    svc = GridSearchCV(RobustLinearSVC(eps=0.1), {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    assert svc.best_estimator_.robust_score(X_test, y_test) > 0.5


def test_pure_robust_objective_on_separable_data_raises(digits01):
    X, y, *_ = digits01  # digits 0 and 1 are linearly separable, so eps = 0 has no minimizer
    for solver in ("fast", "clarabel"):
        with pytest.raises(ValueError, match="separable"):
            RobustLogisticRegression(eps=0.0, C=None, solver=solver).fit(X, y)
    RobustLogisticRegression(eps=0.0, C=1.0).fit(X, y)  # a penalty makes the minimizer exist


@pytest.mark.parametrize("params, message", [
    ({"eps": -0.1}, "eps"),
    ({"eps": float("nan")}, "eps"),
    ({"norm": "l3"}, "norm"),
    ({"solver": "highs"}, "solver"),
    ({"norm": 1, "solver": "fast"}, "solver"),
    ({"C": 0.0}, "C"),
    ({"C": -1.0}, "C"),
    ({"tol": 0.0}, "tol"),
    ({"max_iter": 0}, "max_iter"),
    ({"lower": np.zeros(3)}, "lower"),
    ({"lower": 0.5, "upper": 1.0}, "X"),
    ({"lower": 1.0, "upper": 0.0}, "lower"),
])
def test_bad_parameters_raise_a_clear_value_error(params, message, digits01):
    X, y, *_ = digits01
    with pytest.raises(ValueError, match=message):
        RobustLogisticRegression(**params).fit(X, y)


def test_bad_data_raise_a_clear_value_error(digits01):
    X, y, X_test, y_test = digits01
    with pytest.raises(ValueError, match="binary"):
        RobustLogisticRegression().fit(X, np.arange(len(y)) % 3)
    with pytest.raises(ValueError, match="NaN"):
        RobustLogisticRegression().fit(np.where(X > 0.9, np.nan, X), y)
    with pytest.raises(ValueError, match="infinity"):
        RobustLinearSVC().fit(np.where(X > 0.9, np.inf, X), y)
    with pytest.raises(ValueError, match="inconsistent|samples"):
        RobustLogisticRegression().fit(X, y[:-1])
    model = RobustLogisticRegression().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        model.robust_score(X_test[:, :10], y_test)
    with pytest.raises(ValueError, match="y must have shape"):
        model.robust_score(X_test, y_test[:-1])
    with pytest.raises(ValueError, match="not among the classes"):
        model.adversarial_examples(X_test, y_test + 5)
    with pytest.raises(ValueError, match="eps"):
        model.robust_score(X_test, y_test, eps=-1.0)
    boxed = RobustLogisticRegression(lower=0.0, upper=1.0).fit(X, y)
    with pytest.raises(ValueError, match="X"):
        boxed.robust_score(X_test + 2.0, y_test)


def test_demo_table_compares_a_standard_and_a_robust_model(digits01):
    from robustopt.linear import demo_table
    rows = demo_table(*digits01, eps=0.2)
    assert [r["model"] for r in rows] == ["standard logistic", "robust logistic"]
    standard, robust = rows
    assert robust["robust_error"] < standard["robust_error"]
    assert all(r["clean_error"] <= r["robust_error"] for r in rows)


def test_boxed_l2_fit_on_the_digits_solves_and_matches_the_closed_form(digits01):
    """Regression: most digits pixels sit at 0, so the box cuts the l2 ball on one side almost everywhere; the
    kinked form of that cut stalled Clarabel ("InsufficientProgress") at C=1."""
    from robustopt.linear import robust_logistic_loss

    X, y, _, _ = digits01
    clf = RobustLogisticRegression(eps=0.2, norm=2, C=1.0, lower=0.0, upper=1.0).fit(X, y)
    assert clf.solver_.startswith("cvxpy")
    signed = np.where(y == clf.classes_[1], 1.0, -1.0)
    exact = robust_logistic_loss(clf.coef_.ravel(), clf.intercept_[0], X, signed, 0.2, 2, 0.0, 1.0)
    assert clf.objective_ == pytest.approx(float(np.mean(exact)), rel=1e-6)
