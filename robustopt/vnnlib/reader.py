"""Reading VNNLIB text (a small S-expression parser into :class:`~robustopt.vnnlib.Property`) and VNN-COMP
result files."""
from __future__ import annotations

import gzip
import math
import os
import re

import numpy as np

from .property import Property, PropertyUnion
from .writer import RESULTS

__all__ = ["load", "parse", "read_result"]

_RESULT_ALIASES = {"holds": "unsat", "violated": "sat"}  # VNN-COMP 2021 wording
_IGNORED_COMMANDS = ("check-sat", "get-model", "set-logic", "set-info", "exit")
_MAX_DISJUNCTS = 10_000
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(\d+)")
_TOKEN = re.compile(r";[^\n]*|\(|\)|[^\s();]+")


def load(path) -> Property | PropertyUnion:
    """Read a ``.vnnlib`` (or ``.vnnlib.gz``) file; see :func:`parse`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VNNLIB file not found: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read ({err})") from None
    return parse(text, source=path)


def parse(text: str, source: str = "<string>") -> Property | PropertyUnion:
    """Parse VNNLIB text. Input constraints are bounds on single variables, under any and / or (several
    input boxes); output constraints are any and / or of linear inequalities over the ``Y_j``; an assertion
    may combine both (a condition per input box). One input box gives a :class:`Property`, several a
    :class:`PropertyUnion` (one part per box, with the output condition that goes with it). Malformed input
    raises a ``ValueError`` naming ``source`` and the line."""
    return _Parser(text, source).run()


class _Expr(list):
    """A parenthesized expression: a list of atoms (str) and sub-expressions; ``line`` is its character offset in the
    text until an error message turns it into a line number."""

    __slots__ = ("line",)


class _Parser:
    def __init__(self, text, source):
        self.source, self.text = source, text
        self.declared = {"X": set(), "Y": set()}
        self.inputs = [[]]  # DNF of the assertions on inputs: each conjunction a box (and maybe output rows)
        self.output = None  # DNF of the assertions on outputs only: conjunctions of rows (coef {var: a}, rhs)

    def error(self, offset, message) -> ValueError:
        line = self.text.count("\n", 0, offset) + 1 if isinstance(offset, int) else "?"
        return ValueError(f"{self.source}, line {line}: {message}")

    def expressions(self) -> list:
        stack = [[]]
        for match in _TOKEN.finditer(self.text):
            token = match.group()
            if token == "(":
                stack.append(_Expr())
                stack[-1].line = match.start()
            elif token == ")":
                if len(stack) == 1:
                    raise self.error(match.start(), "unbalanced ')'")
                done = stack.pop()
                stack[-1].append(done)
            elif token[0] != ";":
                if len(stack) == 1:
                    raise self.error(match.start(), f"unexpected {token!r} outside parentheses")
                stack[-1].append(token)
        if len(stack) > 1:
            raise self.error(stack[-1].line, "unclosed '(' (the file ends inside this expression)")
        return stack[0]

    def run(self) -> Property:
        for command in self.expressions():
            if not command or not isinstance(command[0], str):
                raise self.error(command.line, f"expected a command like (assert ...); got {_show(command)}")
            if command[0] == "declare-const":
                self.declare(command)
            elif command[0] == "assert" and len(command) == 2:
                self.assertion(command)
            elif command[0] not in _IGNORED_COMMANDS:
                raise self.error(command.line, f"unsupported command {command[0]!r}; expected declare-const or assert")
        return self.property()

    def declare(self, command):
        match = _VARIABLE.fullmatch(command[1]) if len(command) == 3 and isinstance(command[1], str) else None
        if match is None or command[2] != "Real":
            raise self.error(command.line, "expected (declare-const X_i Real) or (declare-const Y_j Real)")
        kind, index = match.group(1), int(match.group(2))
        if index in self.declared[kind]:
            raise self.error(command.line, f"{command[1]} is declared twice")
        self.declared[kind].add(index)

    def assertion(self, command):
        dnf = self.condition(command[1], command.line)
        kinds = [{var[0] for var in coef} for conjunction in dnf for coef, _ in conjunction]
        if any(len(kind) != 1 for kind in kinds):
            raise self.error(command.line, "every constraint must be on inputs X_i alone (bounds) or on outputs Y_j "
                                           "alone; constraints mixing them or without variables are not supported")
        if all(kind == {"Y"} for kind in kinds):
            self.output = dnf if self.output is None else _and(self.output, dnf)
            if len(self.output) > _MAX_DISJUNCTS:
                raise self.error(command.line, f"the output condition expands to more than {_MAX_DISJUNCTS} disjuncts")
            return
        for conjunction in dnf:
            for coef, _ in conjunction:
                if "X" in {var[0] for var in coef} and (len(coef) != 1 or abs(next(iter(coef.values()))) != 1):
                    raise self.error(command.line, "input constraints must be bounds on single variables "
                                                   "(X_i <= c, X_i >= c)")
        if len(dnf) == 1:  # a conjunction (one bound per assertion, often): extend every region in place
            for conjunction in self.inputs:
                conjunction.extend(dnf[0])
        else:
            self.inputs = _and(self.inputs, dnf)
        if len(self.inputs) > _MAX_DISJUNCTS:
            raise self.error(command.line, f"the input regions expand to more than {_MAX_DISJUNCTS} disjuncts")

    def condition(self, expr, at):
        """Disjunctive normal form of a Boolean expression: a list of conjunctions of rows (coef, rhs)."""
        if not isinstance(expr, _Expr) or not expr or not isinstance(expr[0], str):
            raise self.error(at, f"expected a Boolean expression; got {_show(expr)}")
        op, args, at = expr[0], expr[1:], expr.line
        if op in ("and", "or") and args:
            parts = [self.condition(a, at) for a in args]
            if op == "or":
                return [conjunction for part in parts for conjunction in part]
            result = parts[0]
            for part in parts[1:]:
                result = _and(result, part)
                if len(result) > _MAX_DISJUNCTS:
                    raise self.error(at, f"the condition expands to more than {_MAX_DISJUNCTS} disjuncts")
            return result
        if op in ("<=", ">=", "=") and len(args) >= 2:
            terms = [self.term(a, at) for a in args]
            rows = []
            for left, right in zip(terms, terms[1:]):
                if op in ("<=", "="):
                    rows.append(_difference(left, right))
                if op in (">=", "="):
                    rows.append(_difference(right, left))
            return [rows]
        if op in ("<", ">"):
            raise self.error(at, f"strict inequality {op!r} is not supported; VNNLIB properties use <= and >=")
        raise self.error(at, f"unsupported Boolean expression {_show(expr)}; expected and, or, <=, >=, =")

    def term(self, expr, at):
        """A linear term as ``(coef {("X"|"Y", index): a}, constant)``."""
        if isinstance(expr, str):
            if _NUMBER.fullmatch(expr):
                return {}, float(expr)
            match = _VARIABLE.fullmatch(expr)
            if match is None:
                raise self.error(at, f"unknown symbol {expr!r}; expected a number or a declared X_i / Y_j")
            var = (match.group(1), int(match.group(2)))
            if var[1] not in self.declared[var[0]]:
                raise self.error(at, f"{expr} is used but not declared")
            return {var: 1.0}, 0.0
        if not expr or not isinstance(expr[0], str):
            raise self.error(at, f"expected an arithmetic term; got {_show(expr)}")
        op, args = expr[0], [self.term(a, expr.line) for a in expr[1:]]
        if op == "+" and args:
            return _combine(args, [1.0] * len(args))
        if op == "-" and len(args) == 1:
            return _combine(args, [-1.0])
        if op == "-" and args:
            return _combine(args, [1.0] + [-1.0] * (len(args) - 1))
        if op == "*" and args and sum(1 for coef, _ in args if coef) <= 1:
            factor = math.prod(c for coef, c in args if not coef)
            linear = [t for t in args if t[0]]
            return _combine(linear, [factor]) if linear else ({}, factor)
        if op == "/" and len(args) == 2 and not args[1][0] and args[1][1] != 0:
            coef, const = args[0]
            return {v: a / args[1][1] for v, a in coef.items()}, const / args[1][1]
        raise self.error(expr.line, f"unsupported term {_show(expr)}; expected +, -, * or / by constants")

    def property(self) -> Property | PropertyUnion:
        n, k = len(self.declared["X"]), len(self.declared["Y"])
        for kind, count in (("X", n), ("Y", k)):
            if count == 0 or self.declared[kind] != set(range(count)):
                raise ValueError(f"{self.source}: the declared {kind} variables must be {kind}_0 .. {kind}_{{m-1}} "
                                 f"(m >= 1); got {count} of them")
        regions = {}  # box -> (lower, upper, the output rows its conjunctions carry)
        for conjunction in self.inputs:
            lower, upper = self.box(conjunction, n)
            rows = [(coef, rhs) for coef, rhs in conjunction if next(iter(coef))[0] == "Y"]
            regions.setdefault((lower.tobytes(), upper.tobytes()), (lower, upper, []))[2].append(rows)
        parts = []
        for lower, upper, conditions in regions.values():
            dnf = conditions if self.output is None else _and(conditions, self.output)
            if any(not conjunction for conjunction in dnf):
                raise ValueError(f"{self.source}: no assertion on the outputs Y_j"
                                 f"{' for one of the input boxes' if len(regions) > 1 else ''}")
            if len(dnf) > _MAX_DISJUNCTS:
                raise ValueError(f"{self.source}: the output condition expands to more than {_MAX_DISJUNCTS} disjuncts")
            disjuncts = []
            for conjunction in dnf:
                A = np.zeros((len(conjunction), k))
                for r, (coef, _) in enumerate(conjunction):
                    for (_, j), a in coef.items():
                        A[r, j] = a
                disjuncts.append((A, np.array([rhs for _, rhs in conjunction])))
            parts.append(Property(lower, upper, tuple(disjuncts), k, self.source))
        return parts[0] if len(parts) == 1 else PropertyUnion(tuple(parts), self.source)

    def box(self, conjunction, n):
        """The input box (lower, upper) of one conjunction's bounds on the X_i; every input must be bounded."""
        lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
        for coef, rhs in conjunction:
            (kind, i), a = next(iter(coef.items()))
            if kind != "X":
                continue
            if a > 0:
                upper[i] = min(upper[i], rhs)
            else:
                lower[i] = max(lower[i], -rhs)
        unbounded = np.flatnonzero(~np.isfinite(lower) | ~np.isfinite(upper))
        if len(unbounded):
            raise ValueError(f"{self.source}: every input needs a lower and an upper bound; missing for "
                             f"{', '.join(f'X_{i}' for i in unbounded[:5])}{' ...' if len(unbounded) > 5 else ''}")
        empty = np.flatnonzero(lower > upper)
        if len(empty):
            raise ValueError(f"{self.source}: empty input box: X_{empty[0]} has lower bound {lower[empty[0]]} > "
                             f"upper bound {upper[empty[0]]}")
        return lower, upper


def _combine(terms, factors):
    coef, const = {}, 0.0
    for (c, k), f in zip(terms, factors):
        for v, a in c.items():
            coef[v] = coef.get(v, 0.0) + f * a
        const += f * k
    return {v: a for v, a in coef.items() if a != 0}, const


def _difference(left, right):
    """The row ``left - right <= 0`` as ``(coef, rhs)``: ``coef . vars <= rhs``."""
    coef, const = _combine([left, right], [1.0, -1.0])
    return coef, -const


def _and(first, second):
    return [a + b for a in first for b in second]


def _show(expr) -> str:
    if isinstance(expr, list):
        text = "(" + " ".join(_show(e) for e in expr) + ")"
        return text if len(text) <= 80 else text[:77] + "..."
    return repr(expr)


def read_result(path):
    """Read a VNN-COMP result file: ``(result, x, y)``, with numpy witnesses for ``sat`` (else None).
    ``holds`` / ``violated`` (VNN-COMP 2021) read as ``unsat`` / ``sat``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"result file not found: {path}")
    with open(path, encoding="utf-8") as f:
        first, newline, rest = f.read().partition("\n")
    result = _RESULT_ALIASES.get(first.strip(), first.strip())
    if result not in RESULTS:
        raise ValueError(f"{path}, line 1: expected one of {', '.join(RESULTS)}; got {first.strip()!r}")
    if result != "sat":
        return result, None, None
    parser = _Parser(newline + rest, path)  # the newline keeps the line numbers
    pairs = parser.expressions()
    values = {"X": {}, "Y": {}}
    for pair in (pairs[0] if len(pairs) == 1 and isinstance(pairs[0], _Expr) else []):
        match = _VARIABLE.fullmatch(pair[0]) if isinstance(pair, _Expr) and len(pair) == 2 else None
        if match is None or not isinstance(pair[1], str) or not _NUMBER.fullmatch(pair[1]):
            raise parser.error(getattr(pair, "line", "?"), f"expected (X_i value) or (Y_j value); got {_show(pair)}")
        values[match.group(1)][int(match.group(2))] = float(pair[1])
    for kind in "XY":
        if not values[kind] or set(values[kind]) != set(range(len(values[kind]))):
            raise ValueError(f"{path}: the sat witness must list {kind}_0 .. {kind}_{{m-1}} as one list ((X_0 v) ...)")
    return result, *(np.array([values[k][i] for i in range(len(values[k]))]) for k in "XY")
