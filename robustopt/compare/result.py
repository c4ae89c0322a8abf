"""The :class:`Comparison` that :func:`robustopt.compare.compare` returns: tables, checks, files."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field

from . import report

__all__ = ["Comparison", "BoundChainWarning"]

FORMAT = "robustopt-comparison"
FORMAT_VERSION = 1


class BoundChainWarning(UserWarning):
    """A certified lower bound above a value it must stay below: a soundness bug."""


@dataclass
class Comparison:
    """Attack margins, exact values and certified lower bounds on the same examples, per radius.

    ``eps``: the radii (one entry per level; a list for per-example radii). ``attacks`` and ``methods``: the
    attacks and bound methods run (``"milp"`` gives the exact value). ``rows``: one dict per (level, example)
    with ``level, eps, example, label, clean_margin``, ``<attack>_margin``, ``upper`` (the smallest margin seen
    at any point of the ball), per method ``<m>_lower`` (lower bound on the minimum margin), ``<m>_status``
    (certified / falsified / unknown / time_limit / error) and ``<m>_seconds``, ``exact`` (the MILP's value
    where it was solved to optimality, else NaN) and ``chain`` (ok / VIOLATED). ``summary``: one dict per
    level (accuracies, seconds per method, chain check). ``violations``: every failed relation of the bound
    chain (see :mod:`robustopt.compare.chain`). ``settings`` and ``meta`` record how it was computed.
    """

    eps: list
    attacks: list
    methods: list
    rows: list
    summary: list
    violations: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    meta: dict = field(default_factory=report.environment)

    # ------------------------------------------------------------------------------------------ access
    @property
    def ok(self) -> bool:
        """True when the bound chain held on every example and class checked."""
        return not self.violations

    @property
    def exact(self) -> bool:
        return "milp" in self.methods

    def level_rows(self, level=None) -> list:
        """The per-example rows of one radius level (default: :attr:`default_level`)."""
        level = self.default_level if level is None else self._check_level(level)
        return [r for r in self.rows if r["level"] == level]

    @property
    def default_level(self) -> int:
        """The level shown per example by default: the middle radius of a sweep."""
        return len(self.eps) // 2

    def _check_level(self, level):
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < len(self.eps):
            raise ValueError(f"level must be an index in [0, {len(self.eps) - 1}] (one per radius); got {level!r}")
        return level

    def curves(self) -> dict:
        """Accuracy versus eps: {"eps": [...], "clean": [...], <attack>: [...], "exact": [...] (None where
        undecided), <method>: [...] (certified accuracy)}."""
        out = {"eps": [report.level_radius(e) for e in self.eps],
               "clean": [s["clean_accuracy"] for s in self.summary]}
        for a in self.attacks:
            out[a] = [s["attack_accuracy"][a] for s in self.summary]
        if self.exact:
            out["exact"] = [s["exact_robust_accuracy"] for s in self.summary]
        for m in self.methods:
            out[m] = [s["certified_accuracy"][m] for s in self.summary]
        return out

    def warn_violations(self):
        """Warn loudly (a :class:`BoundChainWarning`) when the chain was violated anywhere."""
        if self.violations:
            first = self.violations[0]
            warnings.warn(
                f"robustopt.compare: the bound chain is VIOLATED on {len(self.violations)} (example, class) "
                f"pair(s), e.g. eps={first.get('eps')}, example {first['example']}, class {first['class']}: "
                f"{first['relation']} fails ({first['lhs']:.6g} > {first['rhs']:.6g}). A certified bound above "
                f"a value it must not exceed is a soundness bug; the numbers are reported as computed.",
                BoundChainWarning, stacklevel=3)

    def __repr__(self):
        eps = ", ".join(f"{report.level_radius(e):g}" for e in self.eps)
        n = self.summary[0]["n"] if self.summary else 0
        return (f"Comparison(n={n}, eps=[{eps}], attacks={self.attacks}, methods={self.methods}, "
                f"chain={'ok' if self.ok else f'{len(self.violations)} VIOLATIONS'})")

    # ------------------------------------------------------------------------------------------ output
    def to_markdown(self, level=None, max_rows=20) -> str:
        """Summary per radius, then the per-example table of one level (``max_rows`` rows, None for all)."""
        return report.markdown(self, self.default_level if level is None else self._check_level(level), max_rows)

    def to_csv(self, path) -> None:
        """The per-example rows of every level, one CSV line each."""
        report.write_csv(self.rows, path)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "eps": self.eps, "attacks": self.attacks,
                "methods": self.methods, "settings": self.settings, "summary": self.summary, "rows": self.rows,
                "violations": self.violations, "meta": self.meta}

    def to_json(self, path=None):
        """Write the comparison as JSON to ``path`` (NaN as null, infinities as "inf" / "-inf"); without a
        path, return the JSON text. :meth:`from_json` reads it back."""
        text = json.dumps(report.jsonable(self.to_dict()), indent=1)
        if path is None:
            return text
        with open(path, "w") as f:
            f.write(text + "\n")

    @classmethod
    def from_json(cls, source) -> "Comparison":
        """Read a comparison written by :meth:`to_json` (a path, or the JSON text itself)."""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            data = json.loads(source)
        else:
            with open(source) as f:
                data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{source!r} is not a robustopt comparison (no '{FORMAT}' header)")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"comparison format version {data.get('version')!r}; this robustopt reads "
                             f"{FORMAT_VERSION}")
        rows = [{k: _number(v) for k, v in row.items()} for row in data["rows"]]
        violations = [{k: _number(v) for k, v in v_.items()} for v_ in data["violations"]]
        return cls(eps=data["eps"], attacks=data["attacks"], methods=data["methods"], rows=rows,
                   summary=data["summary"], violations=violations, settings=data["settings"], meta=data["meta"])

    def plot(self, path=None, level=None, max_examples=40, title=None):
        """PNG (or any format matplotlib knows from ``path``'s suffix): (a) per-example intervals [best certified
        lower bound, smallest attack margin] with the exact value marked, (b) accuracy versus eps per method.
        ``title``: the figure's title. Returns the matplotlib figure. Needs matplotlib (``pip install 'robustopt[plot]'``)."""
        from .plot import plot_comparison

        level = self.default_level if level is None else self._check_level(level)
        return plot_comparison(self, path, level, max_examples, title)


def _number(value):
    """A row value read back from JSON: null -> NaN, "inf" / "-inf" -> floats, others unchanged."""
    if value is None:
        return math.nan
    if value in ("inf", "-inf"):
        return float(value)
    return value
