r"""The triangle LP and the big-M MILP of one example as sparse matrices, and the LP's rigorous dual bound.

Shared by the solver methods (:mod:`.lp`, :mod:`.lp_cvxpy`, :mod:`.milp`): one builder, so the MILP is
exactly the LP's constraints plus binaries.

**The program.** For a network :math:`z_k = W_k a_{k-1} + b_k`, :math:`a_k = \sigma(z_k)` (:math:`a_0 = x`)
and sound pre-activation bounds :math:`l_k \le z_k \le u_k`, the variables are the input :math:`x`
(plus :math:`p, q \ge 0` with :math:`x - x_0 = p - q`, :math:`\sum p + q \le \varepsilon` for an
:math:`\ell_1` ball) and the activations :math:`a_k \in [\sigma(l_k), \sigma(u_k)]`. Per neuron:

- active (:math:`l \ge 0`): :math:`a = z`;  inactive (:math:`u \le 0`): :math:`a = 0` (its bounds);
- unstable (:math:`l < 0 < u`), the triangle: :math:`a \ge z` and the chord :math:`a \le s (z - l)`,
  :math:`s = u / (u - l)` (with :math:`a \ge 0` from the bounds);
- MILP only, a binary :math:`\delta` per unstable neuron: :math:`a \le u \delta`,
  :math:`a \le z - l (1 - \delta)` (these and the triangle force :math:`a = \sigma(z)`).

The bounds :math:`\sigma(l) \le a \le \sigma(u)` are implied on unstable neurons; on active ones they add
:math:`l \le z \le u`, valid since (l, u) are sound, which the bare triangle LP leaves out: the LP can only
get tighter, and every variable is bounded, which the certificate below needs.
Rows are stored as :math:`L \le A v \le U` (HiGHS's form) with the objectives :math:`c_r^\top v + o_r`, the
rows of the last affine layer. ``x`` lies in the box of the ball, padded outward by a few units in the
last place so that rounding in its computation cannot cut off a point of the ball.

**The rigorous LP bound** (:func:`dual_bound`). For *any* multipliers :math:`y` on the ReLU rows (signs
clipped to those a one-sided row allows) and every point :math:`v` of the relaxation,

.. math:: c^\top v = (c - A^\top y)^\top v + y^\top A v \ \ge\ \sum_i \min(y_i L_i, y_i U_i)
          + \sum_{j \in \text{hidden}} \min(\rho_j \underline v_j, \rho_j \overline v_j)
          + \min_{x \in B} \rho_x^\top x, \qquad \rho = c - A^\top y,

with the last term the exact support function of ball ∩ box (:func:`~.methods.minimize_linear`; this
also makes :math:`\ell_2` balls work for the cvxpy SOCP). Every variable is bounded, so the value is
finite whatever :math:`y` is: the solver's duals only decide how *tight* it is, never whether it is
*sound* — dual infeasibility is paid for through the variable bounds. Two rounding effects remain, both
bounded and subtracted: (1) stored rows differ from the exact relaxation by rounding (the chord's slope
:math:`s` and :math:`s W`, :math:`s (b - l)`), at most :math:`4u` relative per entry, so a true point
violates row i by at most :math:`4u(|A_i| \bar v + |U_i| + e_i)` with :math:`e_i = s(|b_i| + |l_i|)`
(:math:`u = 2^{-53}`, :math:`\bar v = \max(|\underline v|, |\overline v|)`); (2) evaluating the bound in
float64 errs by at most :math:`\gamma_N` times the sum of the absolute values of its terms (Higham's
bound for sums and dot products of N terms). Both are at most :math:`(16u + 2\gamma_N) M` with
:math:`M = |o| + |y|^\top (2|A|\bar v + |L \text{ or } U| + e) + |c|^\top \bar v` (:func:`rounding_slack`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

from .backward import apply_split
from .methods import minimize_linear, tightest

__all__ = ["ReluPhases", "Program", "build_program", "dual_bound", "rounding_slack", "certified_lower",
           "RowCertificates", "solver_inputs", "split_inactive",
           "example_bounds", "input_box"]

UNIT_ROUNDOFF = 2.0 ** -53


@dataclass
class ReluPhases:
    """One ReLU layer of one example: bounds (h,), phase masks and the chord slope on unstable neurons."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self):
        self.active = self.lower >= 0
        self.unstable = (self.lower < 0) & (self.upper > 0)
        width = np.where(self.unstable, self.upper - self.lower, 1.0)
        self.slope = np.where(self.unstable, self.upper / width, 0.0)


@dataclass
class Program:
    """``row_lower <= A v <= row_upper``, ``col_lower <= v <= col_upper``, objectives ``objective @ v + offset``.

    Columns: ``x`` (0..d-1), then for l_1 the split p, q, then ``layer_cols[k]`` (a_k) per ReLU layer, then
    (MILP) ``binary_cols``. Rows: the l_1 input rows, then ``relu_rows``: the triangle LP, then (MILP) the
    big-M rows; they are the rows :func:`dual_bound` uses."""

    A: sp.csr_array
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    objective: np.ndarray  # (m, columns)
    offset: np.ndarray  # (m,)
    d: int
    relu_rows: slice
    row_extra: np.ndarray  # e_i for the relu rows (rounding in the stored coefficients and sides)
    layer_cols: list
    phases: list
    binary_cols: slice | None = None
    chord_rows: np.ndarray | None = None  # per unstable neuron (binary order): its chord row a <= s (z - l)
    big_m_rows: np.ndarray | None = None  # (MILP) per binary: its row a <= z - l (1 - d)

    @cached_property
    def relu_block(self):
        """(A, A^T, |A|, lower, upper) of the relu rows, sliced once (the certificate's hot path)."""
        A = self.A[self.relu_rows.start:self.relu_rows.stop].tocsr()
        return A, A.T.tocsr(), abs(A), self.row_lower[self.relu_rows], self.row_upper[self.relu_rows]

    @property
    def integrality(self) -> np.ndarray:
        out = np.zeros(self.A.shape[1], dtype=np.uint8)
        if self.binary_cols is not None:
            out[self.binary_cols] = 1
        return out


class _Rows:
    """Accumulates blocks of rows as (row, column, value) triplets with their bounds."""

    def __init__(self):
        self.r, self.c, self.v, self.lo, self.hi, self.extra, self.count = [], [], [], [], [], [], 0

    def add(self, parts, lo, hi, extra=None):
        """``parts``: triplets (local row, global column, value) over the same ``len(lo)`` rows."""
        n = len(lo)
        for r, c, v in parts:
            self.r.append(r + self.count)
            self.c.append(c)
            self.v.append(np.broadcast_to(np.asarray(v, float), r.shape))
        self.lo.append(np.broadcast_to(np.asarray(lo, float), (n,)))
        self.hi.append(np.broadcast_to(np.asarray(hi, float), (n,)))
        self.extra.append(np.zeros(n) if extra is None else np.asarray(extra, float))
        self.count += n

    def matrix(self, columns):
        cat = lambda parts, dtype=float: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        A = sp.csr_array((cat(self.v), (cat(self.r, np.int64), cat(self.c, np.int64))), shape=(self.count, columns))
        return A, cat(self.lo), cat(self.hi), cat(self.extra)


def _diagonal(idx, column_start, values=1.0):
    """Triplets with values[t] at (t, column_start + idx[t])."""
    return np.arange(len(idx)), column_start + idx, values


def _csr_rows(W, idx, column_start, scale=None):
    """Triplets of the rows ``idx`` of a CSR matrix (row t of the block = row idx[t] of W), columns
    shifted by ``column_start``, row t multiplied by ``scale[t]``."""
    starts, counts = W.indptr[idx], W.indptr[idx + 1] - W.indptr[idx]
    local = np.repeat(np.arange(len(idx)), counts)
    pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    values = W.data[pos] if scale is None else W.data[pos] * np.repeat(scale, counts)
    return local, W.indices[pos] + column_start, values


def input_box(x, ball):
    """Per-coordinate bounds (lo, hi) of ball ∩ box, (n, d) float64 numpy, padded outward by
    4u (|x| + |lo| + |hi|) so that no point of the ball is cut off by rounding."""
    lo, hi = (b.detach().cpu().double().numpy() for b in ball.box(x))
    xn = x.detach().cpu().double().numpy()
    pad = 4 * UNIT_ROUNDOFF * (np.abs(xn) + np.abs(lo) + np.abs(hi))
    return lo - pad, hi + pad


def build_program(hidden, last, x0, box, eps, norm, bounds, integer=False, inactive=None) -> Program:
    """The program of one example.

    ``hidden``: [(W_k csr (h_k, h_{k-1}), b_k (h_k,))] for the ReLU layers; ``last``: (W, b) of the
    objectives (rows of the next affine layer); ``x0`` (d,), ``box`` = (lo, hi) (d,) from
    :func:`input_box`; ``eps`` float; ``norm`` "inf" or 1 (for 2 the input set is left to the certificate:
    only the box is a constraint, so the solver's program is a relaxation); ``bounds``: [(l_k, u_k)] numpy.
    ``integer`` adds the binaries and big-M rows. ``inactive``: per layer a bool mask (h_k,) (or None) of
    neurons a split fixes inactive: each gets the row ``z <= 0`` (its bounds, clamped to ``u <= 0``,
    only make ``a = 0``; a split fixing a neuron active needs no row: clamped ``l >= 0`` makes ``a = z >= 0``).
    """
    d = len(x0)
    lo, hi = box
    col_lower, col_upper = [lo], [hi]
    rows = _Rows()
    columns = d
    if norm == 1:  # x - p + q = x0, sum(p + q) <= eps, 0 <= p, q <= eps
        every = np.arange(d)
        rows.add([_diagonal(every, 0), _diagonal(every, d, -1.0), _diagonal(every, 2 * d)], x0, x0)
        rows.add([(np.zeros(2 * d, dtype=np.int64), np.arange(d, 3 * d), 1.0)], [-np.inf], [eps])
        col_lower += [np.zeros(2 * d)]
        col_upper += [np.full(2 * d, float(eps))]
        columns += 2 * d
    relu_start = rows.count
    prev = slice(0, d)
    layer_cols, phases, matrices, chord_rows, big_m_rows = [], [], [], [], []
    for (W, b), (l, u) in zip(hidden, bounds):
        ph = ReluPhases(l, u)
        h = len(b)
        cols = slice(columns, columns + h)
        columns += h
        W = sp.csr_array(W)
        W.sort_indices()
        matrices.append(W)
        act, uns = np.flatnonzero(ph.active), np.flatnonzero(ph.unstable)
        no_lower, s = np.full(len(uns), -np.inf), ph.slope[uns]
        rows.add([_diagonal(act, cols.start), _csr_rows(W, act, prev.start, -np.ones(len(act)))],  # a = z
                 b[act], b[act])
        rows.add([_csr_rows(W, uns, prev.start), _diagonal(uns, cols.start, -1.0)], no_lower, -b[uns])  # a >= z
        chord_rows.append(rows.count + np.arange(len(uns)))
        rows.add([_diagonal(uns, cols.start), _csr_rows(W, uns, prev.start, -s)],  # a <= s (z - l)
                 no_lower, s * (b[uns] - l[uns]), s * (np.abs(b[uns]) + np.abs(l[uns])))
        off = split_inactive(inactive, len(phases))
        rows.add([_csr_rows(W, off, prev.start)], np.full(len(off), -np.inf), -b[off])  # split: z <= 0
        col_lower.append(np.maximum(l, 0.0))
        col_upper.append(np.maximum(u, 0.0))
        layer_cols.append(cols)
        phases.append(ph)
        prev = cols
    binary_cols = None
    if integer:
        total = sum(int(ph.unstable.sum()) for ph in phases)
        binary_cols = slice(columns, columns + total)
        start = columns
        for (_, b), W, ph, cols, p in zip(hidden, matrices, phases, layer_cols, [slice(0, d)] + layer_cols[:-1]):
            uns = np.flatnonzero(ph.unstable)
            k, no_lower = len(uns), np.full(len(uns), -np.inf)
            own = np.arange(k)
            rows.add([_diagonal(uns, cols.start), _diagonal(own, start, -ph.upper[uns])], no_lower, 0.0)  # a <= u d
            big_m_rows.append(rows.count + np.arange(k))
            rows.add([_diagonal(uns, cols.start), _csr_rows(W, uns, p.start, -np.ones(k)),  # a <= z - l (1 - d)
                      _diagonal(own, start, -ph.lower[uns])], no_lower, b[uns] - ph.lower[uns],
                     np.abs(b[uns]) + np.abs(ph.lower[uns]))
            start += k
        columns += total
        col_lower.append(np.zeros(total))
        col_upper.append(np.ones(total))
    relu_rows = slice(relu_start, rows.count)
    extra = np.concatenate(rows.extra)[relu_start:] if rows.extra else np.zeros(0)
    A, row_lower, row_upper, _ = rows.matrix(columns)
    W_last, b_last = last
    objective = np.zeros((len(b_last), columns))
    objective[:, prev] = sp.csr_array(W_last).toarray()
    return Program(A=A, row_lower=row_lower, row_upper=row_upper, col_lower=np.concatenate(col_lower),
                   col_upper=np.concatenate(col_upper), objective=objective, offset=np.asarray(b_last, float),
                   d=d, relu_rows=relu_rows, row_extra=extra, layer_cols=layer_cols, phases=phases,
                   binary_cols=binary_cols, chord_rows=np.concatenate(chord_rows or [np.zeros(0, int)]),
                   big_m_rows=np.concatenate(big_m_rows) if integer and big_m_rows else None)


def split_inactive(inactive, layer):
    """Indices of the neurons of ``layer`` a split fixes inactive (``inactive``: per-layer masks or None)."""
    if inactive is None or inactive[layer] is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(inactive[layer])


def dual_bound(program: Program, duals: np.ndarray, rows=None, columns=None, objective=None):
    """The pieces of the rigorous bound for objectives ``rows`` (default all) from row multipliers
    ``duals`` (m, all rows) (HiGHS's sign convention: <= 0 on an active upper side when minimizing):
    returns ``(partial (m,), rho_x (m, d), magnitude (m,))`` with
    bound = partial + min_{x in B} rho_x . x - rounding_slack(magnitude, ...). See the module docstring.
    ``columns``: (col_lower, col_upper) to use instead of the program's (e.g. binaries fixed by a branch);
    ``objective``: (c (m, columns), offset (m,)) instead of the program's rows (zero: a bound above 0 then
    proves the program infeasible, Farkas' lemma)."""
    rows = np.arange(len(program.offset)) if rows is None else np.asarray(rows)
    c, offset = (program.objective[rows], program.offset[rows]) if objective is None else objective
    R = program.relu_rows
    _, AT, absA, lo, hi = program.relu_block
    y = np.nan_to_num(np.asarray(duals, float)[:, R], nan=0.0, posinf=0.0, neginf=0.0)
    y = np.where(np.isinf(lo), np.minimum(y, 0.0), y)  # one-sided rows: only the sign that is valid
    y = np.where(np.isinf(hi), np.maximum(y, 0.0), y)
    rho = c - (AT @ y.T).T
    row_term = np.where(y > 0, y * np.where(np.isinf(lo), 0.0, lo), y * np.where(np.isinf(hi), 0.0, hi)).sum(1)
    d = program.d
    col_lower, col_upper = (program.col_lower, program.col_upper) if columns is None else columns
    vl, vu = col_lower[d:], col_upper[d:]
    col_term = np.where(rho[:, d:] > 0, rho[:, d:] * vl, rho[:, d:] * vu).sum(1)
    vmax = np.maximum(np.abs(col_lower), np.abs(col_upper))
    side = np.where(y > 0, np.abs(np.where(np.isinf(lo), 0.0, lo)), np.abs(np.where(np.isinf(hi), 0.0, hi)))
    magnitude = (np.abs(offset) + np.abs(y) @ (2 * (absA @ vmax)) + (np.abs(y) * (side + program.row_extra)).sum(1)
                 + np.abs(c) @ vmax)
    return offset + row_term + col_term, rho[:, :d], magnitude


def rounding_slack(magnitude, terms: int):
    """(16u + 2 gamma_N) * magnitude with gamma_N = N u / (1 - N u): see the module docstring."""
    nu = terms * UNIT_ROUNDOFF
    return (16 * UNIT_ROUNDOFF + 2 * nu / (1 - nu)) * magnitude


def certified_lower(partial, rho_x, magnitude, x, ball, terms):
    """Finish :func:`dual_bound` for a batch: ``partial`` (n, m), ``rho_x`` (n, m, d), ``magnitude`` (n, m)
    numpy; ``x`` (n, d) and ``ball`` of the batch. Returns a float64 tensor (n, m) on x's device."""
    like = dict(dtype=torch.float64, device=x.device)
    rho = torch.as_tensor(rho_x, **like)
    value = torch.as_tensor(partial, **like) + minimize_linear(rho, x.double(), ball)
    lo, hi = ball.box(x.double())
    xmax = torch.maximum(lo.abs(), hi.abs()).flatten(1)
    magnitude = torch.as_tensor(magnitude, **like) + torch.einsum("nmd,nd->nm", rho.abs(), xmax)
    return value - torch.as_tensor(rounding_slack(magnitude.cpu().numpy(), terms), **like)


def solver_inputs(net, x, ball, intermediate=None, splits=None):
    """What every solver method starts from: the intermediate bounds (given, else the elementwise tightest
    of IBP and CROWN; clamped to ``splits``), the cheap lower bounds on the output rows (the better of IBP
    and CROWN with those bounds), shape (n, m), and the (n,) mask of domains the splits make empty (their
    cheap bounds are +inf)."""
    from . import crown, ibp

    if intermediate is None and net.relu_sizes:
        first = ibp.bounds(net, x, ball, compute_upper=False, return_intermediate=True, splits=splits)
        second = crown.bounds(net, x, ball, compute_upper=False, return_intermediate=True, splits=splits)
        intermediate = tightest(first.intermediate, second.intermediate)
    cheap = [method.bounds(net, x, ball, compute_upper=False, intermediate=intermediate, splits=splits)
             for method in (ibp, crown)]
    infeasible = cheap[0].infeasible | cheap[1].infeasible
    if splits is not None and intermediate:  # the bounds the programs use, clamped (CROWN recomputes past a split)
        intermediate = [apply_split(lo, hi, s)[:2] for (lo, hi), s in zip(intermediate, splits)]
    return intermediate or [], torch.maximum(cheap[0].lower, cheap[1].lower), infeasible


def example_bounds(intermediate, i):
    """[(l_k, u_k)] of example i as float64 numpy."""
    return [(lo[i].detach().cpu().double().numpy(), hi[i].detach().cpu().double().numpy()) for lo, hi in intermediate]


class RowCertificates:
    """Collects :func:`dual_bound` pieces per (example, row) and finishes them in one batched call."""

    def __init__(self, n, m, d):
        self.partial = np.full((n, m), np.nan)
        self.rho = np.zeros((n, m, d))
        self.magnitude = np.zeros((n, m))
        self.terms = 0

    def add(self, i, rows, pieces, program):
        self.partial[i, rows], self.rho[i, rows], self.magnitude[i, rows] = pieces
        self.terms = max(self.terms, sum(program.A.shape) + 2 * program.d + 16)

    def finish(self, x, ball):
        """(n, m) float64 tensor: the certified bounds, -inf where no row was certified."""
        solved = ~np.isnan(self.partial)
        if not solved.any():
            return torch.full(self.partial.shape, -np.inf, dtype=torch.float64, device=x.device)
        value = certified_lower(np.nan_to_num(self.partial), self.rho, self.magnitude, x, ball, self.terms)
        return torch.where(torch.as_tensor(solved, device=x.device), value, -np.inf)
