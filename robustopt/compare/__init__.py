r"""Lower, exact and upper bounds side by side: attacks, MILP and certificates on the same examples.

:func:`compare` runs attacks (upper bounds on each minimum margin), bound methods (proven lower bounds) and
the exact MILP on the same examples, for one radius or a sweep, checks the bound chain of the design on every
example and class (:mod:`.chain`), and returns a :class:`Comparison` with ``to_markdown``, ``to_csv``,
``to_json`` / ``from_json`` and ``plot``.
"""
from .chain import check_chain
from .core import ATTACKS, DEFAULT_METHODS, compare
from .result import BoundChainWarning, Comparison

__all__ = ["compare", "Comparison", "BoundChainWarning", "check_chain", "ATTACKS", "DEFAULT_METHODS"]
