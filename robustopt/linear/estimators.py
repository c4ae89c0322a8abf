r"""scikit-learn estimators for exact robust linear classification.

``RobustLogisticRegression`` and ``RobustLinearSVC`` are binary (any two labels; ``classes_[1]`` is the +1 class)
and minimize the **exact** worst-case loss over :math:`B(x) = \{x' : \|x' - x\|_p \le \varepsilon,\
\mathrm{lower} \le x' \le \mathrm{upper}\}`; ``RobustSoftmaxRegression`` minimizes the tutorial's pairwise upper
bound on the worst-case cross-entropy. Objective: ``C * sum_i robust_loss_i + ||w||^2 / 2`` for ``C > 0``
(scikit-learn's convention), or the mean robust loss for ``C=None`` (the tutorial's; it has no minimizer when
the data are eps-robustly separable, and ``fit`` then raises a ``ValueError``).

Robust accuracy (:meth:`robust_score`) is exact (closed form), and :meth:`adversarial_examples` returns points
of the set that attain the worst-case margin.
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from .._validation import check_choice, check_eps, check_norm, check_positive_int
from ..sets import Ball
from . import closed_form, fast, problems

__all__ = ["RobustLogisticRegression", "RobustLinearSVC", "RobustSoftmaxRegression"]

_SOLVER_NAMES = ("auto", "fast", "ecos", "clarabel", "scs")


class _RobustLinearClassifier(ClassifierMixin, BaseEstimator):
    """Shared parameters, checks and robust evaluation."""

    _fast_norms = ()  # norms with a fast exact solver (without a box, or with one for "inf")

    def __init__(self, eps=0.1, norm="inf", C=1.0, fit_intercept=True, lower=None, upper=None, solver="auto",
                 tol=1e-8, max_iter=1000, verbose=False):
        self.eps = eps
        self.norm = norm
        self.C = C
        self.fit_intercept = fit_intercept
        self.lower = lower
        self.upper = upper
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.verbose = verbose

    # -------------------------------------------------------------------------------- checks
    def _check_params(self, n_features):
        norm = check_norm(self.norm)
        eps = check_eps(self.eps)
        C = problems._check_C(self.C)
        solver = check_choice(str(self.solver).lower(), _SOLVER_NAMES, "solver")
        if isinstance(self.tol, bool) or not np.isscalar(self.tol) or not self.tol > 0:
            raise ValueError(f"tol must be a number > 0; got {self.tol!r}")
        check_positive_int(self.max_iter, "max_iter")
        if not isinstance(self.fit_intercept, (bool, np.bool_)):
            raise ValueError(f"fit_intercept must be True or False; got {self.fit_intercept!r}")
        for name in ("lower", "upper"):
            bound = getattr(self, name)
            if bound is not None:
                bound = np.asarray(bound, dtype=np.float64)
                if bound.ndim > 1 or bound.size not in (1, n_features) or np.isnan(bound).any():
                    raise ValueError(f"{name} must be None, a number or an array of shape ({n_features},) "
                                     f"(one bound per feature); got {np.shape(getattr(self, name))}")
        if self.lower is not None and self.upper is not None and np.any(np.asarray(self.lower, dtype=np.float64)
                                                                     > np.asarray(self.upper, dtype=np.float64)):
            raise ValueError("lower must be <= upper in every feature")
        has_box = self.lower is not None or self.upper is not None
        # eps = 0 is plain (smooth) logistic regression whatever the norm and the box
        fast_ok = bool(self._fast_norms) and (eps == 0 or norm in self._fast_norms and (norm == "inf" or not has_box))
        if solver == "fast" and not fast_ok:
            raise ValueError(f"solver='fast' applies to {self._fast_description()}; got norm={self.norm!r}"
                             f"{' with a box' if has_box else ''}. Use solver='auto', 'clarabel', 'ecos' or 'scs'")
        if solver == "auto":
            solver = "fast" if fast_ok else "clarabel"
        return norm, eps, C, solver

    def _fast_description(self):
        return "RobustLogisticRegression with norm='inf' (with or without a box), norm=2 without a box, or eps=0"

    def _box(self):
        to_array = (lambda v: None if v is None else np.asarray(v, dtype=np.float64))
        return to_array(self.lower), to_array(self.upper)

    def _check_inside_box(self, X, eps, norm):
        lower, upper = self._box()
        if lower is not None or upper is not None:
            Ball(eps, norm, lower, upper).check_center(X, "X")

    def _validate_X(self, X):
        check_is_fitted(self)
        return validate_data(self, X, dtype=np.float64, reset=False)

    def _eval_eps(self, eps):
        return check_eps(self.eps if eps is None else eps)

    # -------------------------------------------------------------------------------- solving
    def _solve_cvxpy(self, build, X, y, eps, norm, C, solver, objective_margins):
        """Build and solve a cvxpy problem; ``objective_margins(w, b)`` gives the worst-case margins at a
        solution (to tell eps-robustly separable data from a solver failure). ``solver="auto"`` tries Clarabel,
        then ECOS; any status but optimal from every solver tried raises."""
        lower, upper = self._box()
        problem, w, b = build(X, y, eps, norm=norm, C=C, fit_intercept=self.fit_intercept, lower=lower, upper=upper)
        failures = []
        for name in (("clarabel", "ecos") if str(self.solver).lower() == "auto" else (solver,)):
            try:
                problems.solve(problem, name, verbose=self.verbose)
                break
            except problems.SolverStatusError as err:
                if C is None and w.value is not None and self._separable_at(objective_margins, w, b):
                    raise fast.RobustlySeparableError(eps) from None
                failures.append(err)
        else:
            if len(failures) == 1:
                raise failures[0]
            raise problems.SolverStatusError("; ".join(f"{e.solver}: {e.status}" for e in failures),
                                             " then ".join(e.solver for e in failures))
        if C is None and self._separable_at(objective_margins, w, b):
            raise fast.RobustlySeparableError(eps)
        stats = problem.solver_stats
        self.n_iter_ = int(stats.num_iters) if stats is not None and stats.num_iters is not None else 0
        self.solver_ = f"cvxpy+{name.upper()}"
        self.kkt_residual_ = None
        self.duality_gap_ = None
        return np.asarray(w.value, dtype=np.float64), np.asarray(b.value, dtype=np.float64)

    @staticmethod
    def _separable_at(objective_margins, w, b):
        margins = objective_margins(np.asarray(w.value), np.asarray(b.value))
        return bool(np.all(margins > 0))


class _BinaryRobustClassifier(_RobustLinearClassifier):
    """Binary models: labels mapped to -1 / +1 (``classes_[1]`` is +1), coef_ of shape (1, d)."""

    _problem = None  # the cvxpy problem builder

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind != "binary":
            raise ValueError(f"Only binary classification is supported. The type of the target is {kind}; "
                             f"use RobustSoftmaxRegression for more than two classes.")
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ValueError(f"{type(self).__name__} needs examples of 2 classes; got only one class "
                             f"({self.classes_[0]!r})")
        norm, eps, C, solver = self._check_params(X.shape[1])
        self._check_inside_box(X, eps, norm)
        signs = np.where(y == self.classes_[1], 1.0, -1.0)
        w, b = self._solve(X, signs, eps, norm, C, solver)
        self.coef_ = w.reshape(1, -1)
        self.intercept_ = np.array([float(b) if self.fit_intercept else 0.0])
        self.objective_ = float(np.mean(self._robust_loss(self._worst_case_margin(X, signs, eps))))
        return self

    def _solve(self, X, signs, eps, norm, C, solver):
        lower, upper = self._box()
        return self._solve_cvxpy(type(self)._problem, X, signs, eps, norm, C, solver,
                                 lambda w, b: closed_form.worst_case_margin(w, b, X, signs, eps, norm, lower, upper))

    def _signs(self, y):
        y = np.asarray(y)
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ValueError(f"y has labels {np.unique(y[unknown])[:5].tolist()} that are not among the classes "
                             f"seen in fit, {self.classes_.tolist()}")
        return np.where(y == self.classes_[1], 1.0, -1.0)

    def _worst_case_margin(self, X, signs, eps):
        lower, upper = self._box()
        return closed_form.worst_case_margin(self.coef_[0], self.intercept_[0], X, signs, eps, self.norm,
                                             lower, upper)

    def decision_function(self, X):
        """f(x) = w.x + b, shape (n,); positive means ``classes_[1]``."""
        X = self._validate_X(X)
        return X @ self.coef_[0] + self.intercept_[0]

    def predict(self, X):
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(int)]

    def _checked_pair(self, X, y):
        X = self._validate_X(X)
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), one label per example; got {y.shape}")
        return X, self._signs(y)

    def robust_score(self, X, y, eps=None):
        """Exact robust accuracy: the fraction of examples whose worst-case margin over the set (the
        estimator's ``norm`` and box, radius ``eps``, default ``self.eps``) is > 0 (a tie is not robust)."""
        X, signs = self._checked_pair(X, y)
        return float(np.mean(self._worst_case_margin(X, signs, self._eval_eps(eps)) > 0))

    def adversarial_examples(self, X, y, eps=None):
        """Points ``X + delta`` of the set attaining the worst-case margin (so they are misclassified exactly
        when :meth:`robust_score` counts the example as not robust). Shape (n, d)."""
        X, signs = self._checked_pair(X, y)
        lower, upper = self._box()
        delta = closed_form.optimal_perturbation(self.coef_[0], self.intercept_[0], X, signs, self._eval_eps(eps),
                                                 self.norm, lower, upper)
        return X + delta


class RobustLogisticRegression(_BinaryRobustClassifier):
    r"""Binary logistic regression trained on the exact worst-case logistic loss.

    Minimizes ``C * sum_i log(1 + exp(-m_i)) + ||w||^2 / 2`` (or the mean of ``log(1 + exp(-m_i))`` for
    ``C=None``), :math:`m_i = \min_{x' \in B(x_i)} y_i (w^\top x' + b)` the exact worst-case margin.

    Parameters
    ----------
    eps : float >= 0, the radius. norm : "inf", 2 or 1. C : float > 0 or None.
    fit_intercept : bool. lower, upper : None, a number or an array (d,): the box on x + delta.
    solver : "auto" (the fast exact solver for norm "inf" (box or not), norm 2 without a box and eps = 0, else
        Clarabel, then ECOS if Clarabel fails), "fast", "clarabel", "ecos" or "scs".
    tol : the fast solver stops when its KKT residual (relative to the mean loss) is <= tol.
    max_iter : Newton iterations of the fast solver. verbose : print progress.

    Attributes
    ----------
    coef_ (1, d), intercept_ (1,), classes_ (2,), objective_ (mean exact robust loss on the training data,
    without penalty), n_iter_, solver_ (what ran), kkt_residual_ and duality_gap_ (fast solver: the KKT residual
    it stopped on, and an upper bound on (objective - optimum) / objective from a dual-feasible point, None where
    none was found; both None for cvxpy, which checks its own optimality conditions).
    """

    _problem = staticmethod(problems.robust_logistic_problem)
    _fast_norms = ("inf", 2)

    def _robust_loss(self, margins):
        return np.logaddexp(0.0, -margins)

    def _solve(self, X, signs, eps, norm, C, solver):
        if solver != "fast":
            return super()._solve(X, signs, eps, norm, C, solver)
        lower, upper = self._box()
        options = dict(C=C, fit_intercept=self.fit_intercept, tol=self.tol, max_iter=self.max_iter,
                       verbose=self.verbose)
        if norm == "inf" and eps > 0:
            result = fast.robust_logistic_linf(X, signs, eps, lower=lower, upper=upper, certify=True, **options)
            self.solver_ = "fast (working-set projected Newton, l_inf)"
        else:  # l_2 without a box, or eps = 0 (then the norm and the box play no part)
            result = fast.robust_logistic_l2(X, signs, eps, **options)
            self.solver_ = "fast (trust-region Newton-CG, smooth)"
        if not result.converged:
            raise RuntimeError(f"the fast solver stopped after {result.n_iter} Newton iterations with KKT residual "
                               f"{result.kkt_residual:.2e} > tol={self.tol}; raise max_iter or tol, or use "
                               f"solver='clarabel'")
        self.n_iter_ = result.n_iter
        self.kkt_residual_ = result.kkt_residual
        self.duality_gap_ = result.duality_gap
        return result.coef, result.intercept

    def predict_proba(self, X):
        """Probabilities of ``classes_``, shape (n, 2): (1 - sigmoid(f), sigmoid(f))."""
        p = expit(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict_log_proba(self, X):
        f = self.decision_function(X)
        return np.column_stack([-np.logaddexp(0.0, f), -np.logaddexp(0.0, -f)])


class RobustLinearSVC(_BinaryRobustClassifier):
    r"""Binary linear SVM trained on the exact worst-case hinge loss :math:`\max(0, 1 - m_i)`.

    Minimizes ``C * sum_i hinge_i + ||w||^2 / 2`` (or the mean hinge for ``C=None``) with cvxpy (``solver``:
    "auto" = Clarabel, "clarabel", "ecos", "scs"). Parameters and attributes as :class:`RobustLogisticRegression`
    (``tol`` and ``max_iter`` are not used by cvxpy's solvers; ``kkt_residual_``, ``duality_gap_`` are None).
    """

    _problem = staticmethod(problems.robust_hinge_problem)

    def _fast_description(self):
        return "RobustLogisticRegression only (RobustLinearSVC is solved with cvxpy)"

    def _robust_loss(self, margins):
        return np.maximum(0.0, 1.0 - margins)


class RobustSoftmaxRegression(_RobustLinearClassifier):
    r"""Multiclass linear classifier trained on the tutorial's **upper bound** on the worst-case
    cross-entropy, :math:`\log \sum_j \exp(-m_{ij})` with :math:`m_{ij}` the exact worst-case margin of
    :math:`f_{y_i} - f_j` (each pair minimized separately; exact for two classes).

    Solved with cvxpy (``solver``: "auto" = Clarabel, "clarabel", "ecos", "scs"). ``objective_`` is that bound,
    averaged over the training data, without penalty. coef_ (k, d), intercept_ (k,). :meth:`robust_score` is the
    exact robust accuracy (every pairwise worst-case margin > 0).
    """

    def _fast_description(self):
        return "RobustLogisticRegression only (RobustSoftmaxRegression is solved with cvxpy)"

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, labels = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise ValueError(f"{type(self).__name__} needs examples of at least 2 classes; got only one class "
                             f"({self.classes_[0]!r})")
        norm, eps, C, solver = self._check_params(X.shape[1])
        self._check_inside_box(X, eps, norm)
        lower, upper = self._box()
        k = self.classes_.size

        def build(X, y, eps, **kw):
            return problems.robust_multiclass_problem(X, y, eps, n_classes=k, **kw)

        def margins(W, b):
            return closed_form.worst_case_margins(W, b, X, labels, eps, norm, lower, upper)

        W, b = self._solve_cvxpy(build, X, labels, eps, norm, C, solver, margins)
        self.coef_ = W
        self.intercept_ = b if self.fit_intercept else np.zeros(k)
        self.objective_ = float(np.mean(closed_form.robust_cross_entropy_bound(W, self.intercept_, X, labels, eps,
                                                                               norm, lower, upper)))
        return self

    def _logits(self, X):
        return self._validate_X(X) @ self.coef_.T + self.intercept_

    def decision_function(self, X):
        """Logits, shape (n, k); for two classes, scikit-learn's convention: f_1 - f_0, shape (n,)."""
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict(self, X):
        best = np.argmax(self._logits(X), axis=1)
        return self.classes_[best]

    def predict_proba(self, X):
        return softmax(self._logits(X), axis=1)

    def _labels(self, X, y):
        X = self._validate_X(X)
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), one label per example; got {y.shape}")
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ValueError(f"y has labels {np.unique(y[unknown])[:5].tolist()} that are not among the classes "
                             f"seen in fit, {self.classes_.tolist()}")
        return X, np.searchsorted(self.classes_, y)

    def robust_score(self, X, y, eps=None):
        """Exact robust accuracy: every worst-case pairwise margin > 0 (a tie is not robust)."""
        X, labels = self._labels(X, y)
        lower, upper = self._box()
        margins = closed_form.worst_case_margins(self.coef_, self.intercept_, X, labels, self._eval_eps(eps),
                                                 self.norm, lower, upper)
        return float(np.mean(margins.min(axis=1) > 0))

    def adversarial_examples(self, X, y, eps=None):
        """Points ``X + delta`` of the set attaining the smallest worst-case pairwise margin, shape (n, d)."""
        X, labels = self._labels(X, y)
        lower, upper = self._box()
        delta = closed_form.optimal_perturbation(self.coef_, self.intercept_, X, labels, self._eval_eps(eps),
                                                 self.norm, lower, upper)
        return X + delta
