"""Argument checks shared by every module.

Each check raises ``ValueError`` naming the argument and what was expected, so that bad input
never gets silently clipped, dropped or broadcast into a wrong answer.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch

NORMS = ("inf", 2, 1)
_NORM_ALIASES = {
    "inf": "inf", "linf": "inf", "l_inf": "inf", "infinity": "inf",
    "2": 2, "l2": 2, "l_2": 2,
    "1": 1, "l1": 1, "l_1": 1,
}


def check_norm(norm, name: str = "norm"):
    """Canonical form of a norm name: ``"inf"``, ``2`` or ``1``.

    Accepts ``"inf"``, ``float("inf")``, ``"linf"``, ``2``, ``"l2"``, ``1``, ``"l1"`` (case-insensitive).
    """
    if isinstance(norm, str):
        key = norm.strip().lower()
        if key in _NORM_ALIASES:
            return _NORM_ALIASES[key]
    elif isinstance(norm, Real) and not isinstance(norm, bool):
        if math.isinf(norm) and norm > 0:
            return "inf"
        if norm == 2:
            return 2
        if norm == 1:
            return 1
    raise ValueError(f"{name} must be one of 'inf', 2, 1 (or float('inf'), 'linf', 'l2', 'l1'); got {norm!r}")


def dual_norm_order(norm):
    """The dual norm's order q (1/p + 1/q = 1) as a number usable by ``torch.linalg.vector_norm``."""
    norm = check_norm(norm)
    return {"inf": 1.0, 2: 2.0, 1: math.inf}[norm]


def norm_order(norm):
    """The norm's order p as a number usable by ``torch.linalg.vector_norm`` / ``numpy.linalg.norm``."""
    norm = check_norm(norm)
    return {"inf": math.inf, 2: 2.0, 1: 1.0}[norm]


def check_choice(value, choices, name: str):
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value


def check_eps(eps, n: int | None = None, name: str = "eps", like: torch.Tensor | None = None):
    """Validate a radius: a finite scalar >= 0, or (when ``n`` is given) a vector of shape (n,).

    Returns a Python float for a scalar, else a tensor (on ``like``'s device/dtype when given).
    """
    if isinstance(eps, (torch.Tensor, np.ndarray)) and np.ndim(eps) > 0:
        t = torch.as_tensor(eps)
        if t.dim() != 1 or (n is not None and t.shape[0] != n):
            expected = f"shape ({n},)" if n is not None else "a 1-D array"
            raise ValueError(f"{name} must be a scalar or {expected} (one radius per example); got shape "
                             f"{tuple(t.shape)}")
        if not torch.is_floating_point(t):
            t = t.double()
        if not torch.isfinite(t).all() or (t < 0).any():
            raise ValueError(f"{name} must be finite and >= 0; got {t.min().item()} .. {t.max().item()}")
        if like is not None:
            t = t.to(device=like.device, dtype=like.dtype)
        return t
    if isinstance(eps, (torch.Tensor, np.ndarray)):
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, Real):
        raise ValueError(f"{name} must be a number >= 0; got {eps!r}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be finite and >= 0; got {eps}")
    return eps


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_finite(x, name: str = "X"):
    """Raise if ``x`` (numpy array or tensor) contains NaN or infinity."""
    if isinstance(x, torch.Tensor):
        ok = bool(torch.isfinite(x).all()) if torch.is_floating_point(x) else True
    else:
        arr = np.asarray(x)
        ok = bool(np.isfinite(arr).all()) if np.issubdtype(arr.dtype, np.number) else False
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}")
    if not ok:
        raise ValueError(f"{name} contains NaN or infinity")
    return x


def check_labels(y, n: int, classes: int | None = None, name: str = "y"):
    """Validate integer class labels of shape (n,), each in [0, classes)."""
    shape = tuple(y.shape) if hasattr(y, "shape") else (len(y),)
    if shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one label per example; got {shape}")
    if isinstance(y, torch.Tensor):
        if torch.is_floating_point(y) or y.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class labels; got dtype {y.dtype}")
        lo, hi = (int(y.min()), int(y.max())) if n else (0, 0)
    else:
        arr = np.asarray(y)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class labels; got dtype {arr.dtype}")
        lo, hi = (int(arr.min()), int(arr.max())) if n else (0, 0)
    if lo < 0 or (classes is not None and hi >= classes):
        bound = f"[0, {classes - 1}]" if classes is not None else ">= 0"
        raise ValueError(f"{name} has labels out of range: {lo}..{hi}, expected {bound}")
    return y


def check_batch(x, name: str = "x", min_dim: int = 2):
    """A batch: a floating tensor with a leading batch dimension, finite."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must be a batch of shape (n, ...) with at least {min_dim} dimensions; "
                         f"got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    check_finite(x, name)
    return x


def check_same_length(a, b, name_a: str, name_b: str):
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} must have the same number of examples; got {len(a)} and {len(b)}")


def reject_unknown_options(options: dict, where: str, allowed=()):
    """Raise on keyword options a function does not understand (nothing is silently ignored)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        hint = f"; it accepts {', '.join(sorted(allowed))}" if allowed else ""
        raise ValueError(f"{where} got unknown option(s) {', '.join(unknown)}{hint}")
