"""A side-by-side table of a standard and a robust linear classifier (used by ``robustopt demo``)."""
from __future__ import annotations

import time

from .estimators import RobustLogisticRegression


def demo_table(X_train, y_train, X_test, y_test, eps, norm="inf", C=1.0, lower=None, upper=None):
    """Train a standard (eps = 0) and a robust logistic regression and return one dict per model:
    ``{"model", "eps_train", "clean_error", "robust_error", "seconds"}``, errors on the test data, the robust one
    exact (closed form) at radius ``eps`` in ``norm`` with the box [lower, upper] (None: no box)."""
    rows = []
    for name, eps_train in (("standard logistic", 0.0), ("robust logistic", eps)):
        start = time.perf_counter()
        model = RobustLogisticRegression(eps=eps_train, norm=norm, C=C, lower=lower, upper=upper).fit(X_train, y_train)
        seconds = time.perf_counter() - start
        rows.append({"model": name, "eps_train": eps_train, "clean_error": 1.0 - model.score(X_test, y_test),
                     "robust_error": 1.0 - model.robust_score(X_test, y_test, eps=eps), "seconds": seconds})
    return rows
