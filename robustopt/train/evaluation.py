"""Clean, attacked and certified accuracy of a trained model: the three columns of a training table."""
from __future__ import annotations

import time

import numpy as np
import torch

from .._validation import check_positive_int
from ..attacks import evaluate_robustness
from ..verify import certify

__all__ = ["evaluate"]


def _certify_plan(methods, n):
    """[(method, number of examples)] from names or (name, n_subset) pairs."""
    if methods is None:
        return []
    if isinstance(methods, str):
        methods = [methods]
    plan = []
    for entry in methods:
        if isinstance(entry, str):
            plan.append((entry, n))
        elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str):
            plan.append((entry[0], min(n, check_positive_int(entry[1], f"subset size for {entry[0]!r}"))))
        else:
            raise ValueError(f"certify entries must be method names or (name, n_examples) pairs; got {entry!r}")
    return plan


def evaluate(model, X, y, eps, norm="inf", lower=0.0, upper=1.0, *, pgd_steps=40, pgd_restarts=1, pgd_loss="ce",
             certify_methods=("ibp", "crown"), time_limit=None, batch_size=256, seed=0, progress=False) -> dict:
    r"""Clean accuracy, PGD robust accuracy and certified accuracy of ``model`` on (X, y) at radius ``eps``.

    PGD (``pgd_steps`` steps, 0 to skip the attack (then ``pgd_accuracy`` is None), ``pgd_restarts`` restarts, loss ``pgd_loss``) gives an upper bound on the true
    robust accuracy; each certification method in ``certify_methods`` (names of :func:`robustopt.verify.certify`
    methods, or ``(name, n)`` pairs to run on the first n examples only: slow methods on a subset) a lower
    bound, computed in float64 without an attack. ``time_limit``: seconds per example, for the methods that take
    one (solvers, alpha-CROWN); the others ignore it.

    Returns a dict: ``clean_accuracy``, ``pgd_accuracy``, ``n``, ``certified_accuracy`` ({method: value}),
    ``certified_n`` ({method: examples used}), ``seconds`` ({"pgd": ..., method: ...}), and per example (numpy
    bool): ``pgd_robust`` (n,) and ``certified`` ({method: (n_method,)}), and ``status`` ({method: (n_method,)
    strings of :func:`~robustopt.verify.certify`}: complete methods also say "falsified"). A certified example
    the attack broke would be a soundness bug: check ``certified[m] <= pgd_robust[:n_m]``.
    """
    plan = _certify_plan(certify_methods, len(y))
    out = {"n": len(y), "certified_accuracy": {}, "certified_n": {}, "seconds": {}, "certified": {}, "status": {}}
    tic = time.perf_counter()
    pgd_steps = check_positive_int(pgd_steps, "pgd_steps", minimum=0)
    attacked = evaluate_robustness(model, X, y, attack="pgd", batch_size=batch_size, progress=progress,
                                   eps=eps if pgd_steps else 0.0, norm=norm, steps=max(pgd_steps, 1),
                                   restarts=pgd_restarts, loss=pgd_loss, lower=lower, upper=upper, seed=seed)
    out["seconds"]["pgd"] = time.perf_counter() - tic
    out["clean_accuracy"] = attacked["clean_accuracy"]
    out["pgd_accuracy"] = attacked["robust_accuracy"] if pgd_steps else None
    out["pgd_robust"] = attacked["robust"] if pgd_steps else attacked["clean_margin"] > 0
    for method, n in plan:
        tic = time.perf_counter()
        result = certify(model, _rows(X, n), _rows(y, n), eps, norm, method, lower, upper, batch_size=batch_size,
                         time_limit=time_limit, progress=progress, attack=False)
        out["certified_accuracy"][method] = result.certified_accuracy
        out["certified_n"][method] = n
        out["certified"][method] = result.status == "certified"
        out["status"][method] = result.status
        out["seconds"][method] = time.perf_counter() - tic
    return out


def _rows(a, n):
    return a[:n] if isinstance(a, (np.ndarray, torch.Tensor)) else np.asarray(a)[:n]
