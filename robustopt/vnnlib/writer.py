"""Writing VNNLIB text and VNN-COMP result files."""
from __future__ import annotations

import gzip
import os

import numpy as np
import torch

from .property import Property, PropertyUnion

__all__ = ["to_vnnlib", "save", "format_result", "write_result", "RESULTS"]

RESULTS = ("sat", "unsat", "timeout", "unknown")


def _decimal(v: float) -> str:
    """Shortest decimal that reads back as the same float64, without an exponent (SMT-LIB style)."""
    return np.format_float_positional(float(v), unique=True, trim="0")


def _number(v: float) -> str:
    return _decimal(v) if v >= 0 else f"(- {_decimal(-v)})"


def _vector(values, name) -> np.ndarray:
    values = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{name} must be finite")
    return values.reshape(-1)


def _row(a, b) -> str:
    nonzero = np.flatnonzero(a)
    if len(nonzero) == 2 and b == 0 and sorted(a[nonzero]) == [-1, 1]:  # Y_j >= Y_y, as VNN-COMP writes it
        y, j = nonzero[a[nonzero] == 1][0], nonzero[a[nonzero] == -1][0]
        return f"(>= Y_{j} Y_{y})"
    terms = " ".join(f"(* {_number(a[j])} Y_{j})" for j in nonzero)
    return f"(<= (+ {terms} 0.0) {_number(b)})"


def to_vnnlib(prop: Property | PropertyUnion) -> str:
    """The property as VNNLIB text; :func:`~robustopt.vnnlib.parse` reads it back exactly. A
    :class:`PropertyUnion` is one assertion: an ``or`` over its parts of (box and condition)."""
    lines = [f"; {prop.source}" if prop.source != "<string>" else "; written by robustopt.vnnlib", ""]
    lines += [f"(declare-const X_{i} Real)" for i in range(prop.num_inputs)] + [""]
    lines += [f"(declare-const Y_{j} Real)" for j in range(prop.num_outputs)] + [""]
    if isinstance(prop, PropertyUnion):
        lines += ["; input boxes, each with its output condition (sat = counterexample)", "(assert (or"]
        for part in prop.parts:
            box = " ".join(f"(<= X_{i} {_number(hi)}) (>= X_{i} {_number(lo)})"
                           for i, (lo, hi) in enumerate(zip(part.lower, part.upper)))
            lines += [f"    (and {box} (or {' '.join(_conjunction(A, bs) for A, bs in part.disjuncts)}))"]
        return "\n".join(lines + ["))", ""])
    lines += ["; input box"]
    for i, (lo, hi) in enumerate(zip(prop.lower, prop.upper)):
        lines += [f"(assert (<= X_{i} {_number(hi)}))", f"(assert (>= X_{i} {_number(lo)}))"]
    lines += ["", "; output condition (sat = counterexample)", "(assert (or"]
    lines += [f"    {_conjunction(A, bs)}" for A, bs in prop.disjuncts]
    return "\n".join(lines + ["))", ""])


def _conjunction(A, bs) -> str:
    return f"(and {' '.join(_row(a, b) for a, b in zip(A, bs))})"


def save(prop: Property | PropertyUnion, path) -> None:
    """Write ``prop`` as a VNNLIB file (gzip-compressed when ``path`` ends in ``.gz``)."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(to_vnnlib(prop))


def format_result(result: str, x=None, y=None) -> str:
    """A VNN-COMP result file: ``unsat``, ``timeout``, ``unknown``, or ``sat`` followed by the witness
    ``((X_0 v) (X_1 v) ... (Y_0 v) ... (Y_k v))``, one pair per line (``x`` flattened in C order; values as
    the shortest decimals that read back as the same float64)."""
    if result not in RESULTS:
        raise ValueError(f"result must be one of {', '.join(RESULTS)}; got {result!r}")
    if result != "sat":
        if x is not None or y is not None:
            raise ValueError(f"only a 'sat' result carries a witness; got result {result!r} with x / y")
        return result + "\n"
    if x is None or y is None:
        raise ValueError("a 'sat' result needs the witness: the input x and the output y")
    pairs = [f"(X_{i} {_decimal(v)})" for i, v in enumerate(_vector(x, "x"))]
    pairs += [f"(Y_{j} {_decimal(v)})" for j, v in enumerate(_vector(y, "y"))]
    return "sat\n(" + "\n ".join(pairs) + ")\n"


def write_result(path, result: str, x=None, y=None) -> None:
    """Write :func:`format_result`'s text to ``path``."""
    text = format_result(result, x, y)
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        f.write(text)
