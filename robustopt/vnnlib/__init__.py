"""VNNLIB properties in, VNN-COMP result files out.

A VNNLIB file declares inputs ``X_0 .. X_{n-1}`` and outputs ``Y_0 .. Y_{k-1}`` (``declare-const ... Real``),
bounds every input (``(assert (<= X_i c))``, ``(assert (>= X_i c))``) and asserts a condition on the outputs:
``and`` / ``or`` of linear inequalities (``<=``, ``>=``, ``=``; terms built with ``+``, ``-``, ``*`` and ``/`` by
constants). It asks whether some input in the box gives an output satisfying the condition: **sat** means such
a counterexample exists (the network violates the property), **unsat** that the property holds. ``>=`` includes
equality: a point where ``Y_j = Y_y`` satisfies ``Y_j >= Y_y``. ``X_i`` index the network's input flattened in
C order.

:class:`Property` keeps the box and the condition in disjunctive normal form, ``OR_i (A_i Y <= b_i)``; a file
with an ``or`` over inputs (several boxes, each with its condition) reads as a :class:`PropertyUnion` of them.
:func:`verify_property` decides a property for a network (attack, bounds, exact MILP); :mod:`.runner` runs
VNN-COMP instances and instance CSVs (``robustopt vnnlib`` / ``robustopt vnncomp``).
"""
from .property import Property, PropertyUnion, local_robustness
from .reader import load, parse, read_result
from .verify import verify_property
from .writer import RESULTS, format_result, save, to_vnnlib, write_result

__all__ = ["Property", "PropertyUnion", "load", "parse", "local_robustness", "save", "to_vnnlib", "format_result", "write_result",
           "read_result", "RESULTS", "verify_property"]
