"""Exact robust linear classification (the Kolter–Madry tutorial's chapter 2, with an optional input box).

* :mod:`~robustopt.linear.closed_form`: worst-case margins, optimal perturbations, robust losses, exact robust
  error, for binary and multiclass linear classifiers.
* :mod:`~robustopt.linear.problems`: the robust training problems as cvxpy problems ``(problem, w, b)``.
* :mod:`~robustopt.linear.fast`: a fast exact solver for ℓ∞- (and ℓ2-) robust logistic regression.
* :mod:`~robustopt.linear.estimators`: scikit-learn estimators built on them.
* :func:`demo_table`: clean and exact worst-case error of a standard and a robust classifier.
"""
from .closed_form import (optimal_perturbation, robust_cross_entropy_bound, robust_error, robust_hinge_loss,
                          robust_logistic_loss, worst_case_margin, worst_case_margins)
from .estimators import RobustLinearSVC, RobustLogisticRegression, RobustSoftmaxRegression
from .fast import RobustlySeparableError, robust_logistic_l2, robust_logistic_linf
from .problems import (SolverStatusError, robust_hinge_problem, robust_logistic_problem,
                       robust_multiclass_problem, solve, worst_case_margin_expression)
from .report import demo_table

__all__ = ["worst_case_margin", "worst_case_margins", "optimal_perturbation", "robust_logistic_loss",
           "robust_hinge_loss", "robust_cross_entropy_bound", "robust_error",
           "robust_logistic_problem", "robust_hinge_problem", "robust_multiclass_problem",
           "worst_case_margin_expression", "solve", "SolverStatusError",
           "robust_logistic_linf", "robust_logistic_l2", "RobustlySeparableError",
           "RobustLogisticRegression", "RobustLinearSVC", "RobustSoftmaxRegression", "demo_table"]
