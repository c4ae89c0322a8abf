r"""The bound chain of the design, checked per example and target class.

With margin rows :math:`m_j = f_y - f_j` (j != y) and :math:`\underline m^{M}_j` the lower bound of method M:

- every method: :math:`\underline m^{M}_j \le m_j(x')` at every known point x' of the ball (the clean point,
  the attacks' points, the MILP's minimizers), always valid;
- every method: :math:`\underline m^{M}_j \le \mathrm{MILP}_j` where the MILP was solved to optimality
  (it is then the exact minimum up to its gap; its gap, ``Bounds.margin``, is added to the tolerance);
- ``lp`` / ``lp-cvxpy`` :math:`\ge` each closed-form method whose intermediate bounds it was given (and
  that the LP solved to optimality); CROWN and IBP have no fixed order, nor do CROWN and the dual network;
- ``alpha-crown`` :math:`\ge` ``crown`` (alpha-CROWN starts from CROWN's slopes and keeps the best), unless
  options change either of them.

A relation :math:`a \le b` is violated when :math:`a - b > atol + rtol \max(|a|, |b|) + extra`. Violations
are returned, never corrected: each one is a soundness bug (or a tolerance too tight for the solver).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["check_chain", "RELATION_SOURCES"]

RELATION_SOURCES = ("points", "milp", "lp", "lp-cvxpy", "alpha-crown")
LP_METHODS = ("lp", "lp-cvxpy")


def _np(t):
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)


def _relations(lowers, status, lp_inputs, options, milp_margin, milp_solved):
    """(lhs name, rhs name, lhs rows, rhs rows, example mask, extra tolerance per example)."""
    n = next(iter(lowers.values())).shape[0]
    everyone, zero = np.ones(n, dtype=bool), np.zeros(n)
    out = []
    if "milp" in lowers:
        solved = status["milp"] == "optimal"
        if milp_solved is not None:  # only the rows the MILP solved (the others hold another method's bound)
            solved = solved[:, None] & np.asarray(milp_solved, dtype=bool)
        extra = zero if milp_margin is None else np.asarray(milp_margin, dtype=float)
        out += [(m, "milp", lowers[m], lowers["milp"], solved, extra) for m in lowers if m != "milp"]
    for lp in LP_METHODS:
        if lp in lowers and "intermediate" not in options.get(lp, {}):
            solved = status[lp] == "optimal"
            out += [(m, lp, lowers[m], lowers[lp], solved, zero) for m in lp_inputs if m in lowers and m != lp]
    if "alpha-crown" in lowers and "crown" in lowers and not options.get("crown") and \
            not options.get("alpha-crown", {}).get("intermediate"):
        out.append(("crown", "alpha-crown", lowers["crown"], lowers["alpha-crown"], everyone, zero))
    return out


def check_chain(lowers, upper, status, labels, lp_inputs=("ibp", "crown"), options=None, milp_margin=None,
                milp_solved=None, atol=1e-5, rtol=1e-5):
    """Check every valid relation; returns ``(violations, checks)``.

    ``lowers``: {method: margin rows (n, k-1)}, ``upper``: rows (n, k-1) of the smallest margin seen at a point
    of the ball (+inf where none), ``status``: {method: solver status (n,)}, ``labels`` (n,), ``lp_inputs``:
    the methods whose intermediate bounds the LP was given, ``milp_margin`` (n,): the MILP's gap (how far below the exact minimum its bound may be),
    ``milp_solved`` (n, k-1): the rows the MILP solved (default: all).
    ``violations``: dicts with ``example``, ``class``, ``relation`` ("a <= b"), ``lhs``, ``rhs``, ``excess``,
    ``tolerance``; ``checks``: the number of (example, class, relation) triples checked.
    """
    options = options or {}
    labels = _np(labels).astype(int)
    violations, checks = [], 0
    relations = [(m, "points", low, upper, None, None) for m, low in lowers.items()]
    relations += _relations(lowers, status, lp_inputs, options, milp_margin, milp_solved)
    for lhs_name, rhs_name, lhs, rhs, mask, extra in relations:
        a, b = _np(lhs), _np(rhs)
        n = a.shape[0]
        mask = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        mask = np.broadcast_to(mask[:, None] if mask.ndim == 1 else mask, a.shape)
        extra = np.zeros(n) if extra is None else extra
        with np.errstate(invalid="ignore"):
            scale = np.maximum(np.abs(np.where(np.isfinite(a), a, 0.0)), np.abs(np.where(np.isfinite(b), b, 0.0)))
            tol = atol + rtol * scale + extra[:, None]
            diff = a - b
            bad = (np.isnan(a) | (diff > tol)) & mask
        checks += int(mask.sum())
        for i, r in zip(*np.nonzero(bad)):
            j = int(r) + (1 if r >= labels[i] else 0)  # rows skip the label's own class
            violations.append({"example": int(i), "class": j, "relation": f"{lhs_name} <= {rhs_name}",
                               "lhs": float(a[i, r]), "rhs": float(b[i, r]), "excess": float(diff[i, r]),
                               "tolerance": float(tol[i, r])})
    return violations, checks
