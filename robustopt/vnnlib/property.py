"""The :class:`Property` a VNNLIB file describes, and the local-robustness property built from an input."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_eps, check_finite, check_positive_int

__all__ = ["Property", "PropertyUnion", "local_robustness"]


@dataclass(frozen=True, eq=False, repr=False)
class Property:
    """A VNNLIB property: the input box ``lower <= X <= upper`` (float64 arrays of shape (n_inputs,)) and the
    output condition ``OR_i (A_i Y <= b_i)``, ``disjuncts`` a tuple of ``(A_i (m_i, num_outputs), b_i (m_i,))``.
    """

    lower: np.ndarray
    upper: np.ndarray
    disjuncts: tuple
    num_outputs: int
    source: str = "<string>"

    def __post_init__(self):
        lower, upper = (np.array(b, dtype=np.float64).reshape(-1) for b in (self.lower, self.upper))
        if lower.shape != upper.shape or not (np.isfinite(lower).all() and np.isfinite(upper).all()) \
                or (lower > upper).any():
            raise ValueError("lower and upper must be finite vectors of one length with lower <= upper")
        disjuncts = tuple((np.array(A, dtype=np.float64), np.array(b, dtype=np.float64)) for A, b in self.disjuncts)
        if not disjuncts or any(A.ndim != 2 or A.shape[1] != self.num_outputs or b.shape != (A.shape[0],)
                                for A, b in disjuncts):
            raise ValueError(f"disjuncts must be a non-empty sequence of (A (m, {self.num_outputs}), b (m,)) pairs")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "disjuncts", disjuncts)

    def __repr__(self):
        return (f"Property({self.num_inputs} inputs, {self.num_outputs} outputs, {len(self.disjuncts)} disjuncts, "
                f"source={self.source!r})")

    @property
    def num_inputs(self) -> int:
        return len(self.lower)

    def input_box(self, shape=None, dtype=torch.float64, device=None):
        """``(lower, upper)`` tensors of shape ``shape`` (default ``(num_inputs,)``; e.g. ``model.input_shape``)."""
        shape = (self.num_inputs,) if shape is None else tuple(shape)
        if math.prod(shape) != self.num_inputs:
            raise ValueError(f"shape {shape} does not hold the property's {self.num_inputs} inputs")
        return tuple(torch.as_tensor(b, dtype=dtype, device=device).reshape(shape) for b in (self.lower, self.upper))

    def ball(self, shape=None, dtype=torch.float64, device=None):
        """The box as an l_inf ball for the attack / certify API: ``(x, eps, lower, upper)`` with ``x`` the
        center of shape (1, *shape), ``eps`` rounded up so that the ball contains the box, and ``lower`` /
        ``upper`` of x's shape; the ball intersected with ``[lower, upper]`` is exactly the box."""
        center = (self.lower + self.upper) / 2
        eps = float(np.nextafter(max(np.max(self.upper - center), np.max(center - self.lower), 0.0), np.inf))
        lower, upper = self.input_box(shape, dtype, device)
        x = torch.as_tensor(center, dtype=dtype, device=device).reshape(lower.shape)
        return x.unsqueeze(0), eps, lower.unsqueeze(0), upper.unsqueeze(0)

    def contains(self, X) -> np.ndarray:
        """Whether each row of ``X`` (n, num_inputs) (or one input) lies in the box, exactly (no tolerance)."""
        X = _rows(X, self.num_inputs, "X")
        return ((X >= self.lower) & (X <= self.upper)).all(axis=1)

    def satisfies_output(self, Y) -> np.ndarray:
        """Whether each row of ``Y`` (n, num_outputs) (or one output vector) satisfies the output condition,
        i.e. makes its input a counterexample. Exact comparisons: ties satisfy ``<=`` and ``>=``."""
        Y = _rows(Y, self.num_outputs, "Y")
        hit = np.zeros(len(Y), dtype=bool)
        for A, b in self.disjuncts:
            hit |= (Y @ A.T <= b).all(axis=1)
        return hit

    def check_witness(self, model, x, shape=None):
        """Replay a claimed counterexample ``x``: a float64 copy of ``model`` evaluated on it (reshaped to
        ``(1, *shape)``, default ``model.input_shape`` when the model has one, else flat). Returns ``(ok, y)``:
        ``ok`` when x lies in the box and its output ``y`` (numpy, (num_outputs,)) satisfies the condition."""
        x, y = _replay(model, x, shape, self.num_inputs, self.num_outputs)
        return bool(self.contains(x)[0] and self.satisfies_output(y)[0]), y

    def robustness(self):
        """``(label, targets)`` when the condition is the local-robustness form ``OR_{j in targets} Y_j >= Y_label``,
        else None."""
        label, targets = None, []
        for A, b in self.disjuncts:
            if A.shape[0] != 1 or b[0] != 0 or np.count_nonzero(A) != 2 or sorted(A[0][A[0] != 0]) != [-1, 1]:
                return None
            y, j = int(np.flatnonzero(A[0] == 1)[0]), int(np.flatnonzero(A[0] == -1)[0])
            if label not in (None, y) or j in targets:
                return None
            label = y
            targets.append(j)
        return label, tuple(targets)

    def spec_matrix(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """For the local-robustness form: C (len(targets), num_outputs) with rows ``e_label - e_j``; the property
        holds iff ``C f(x) > 0`` for every x in the box (a margin of 0 is a counterexample)."""
        found = self.robustness()
        if found is None:
            raise ValueError(f"{self.source}: not a local-robustness property (OR_j Y_j >= Y_label); use spec_rows()")
        label, targets = found
        C = torch.zeros(len(targets), self.num_outputs, dtype=dtype, device=device)
        C[:, label] = 1
        C[torch.arange(len(targets)), torch.as_tensor(targets)] = -1
        return C

    def spec_rows(self, dtype=torch.float64, device=None):
        """Every inequality stacked: ``(C (m, k), d (m,), disjunct (m,))``. The condition holds at Y iff some
        disjunct i has ``C_r Y <= d_r`` for all its rows r; so the property is proven (unsat) when each
        disjunct has a row with ``min_x C_r f(x) > d_r``."""
        C = np.concatenate([A for A, _ in self.disjuncts])
        d = np.concatenate([b for _, b in self.disjuncts])
        which = np.concatenate([np.full(len(b), i) for i, (_, b) in enumerate(self.disjuncts)])
        return (torch.as_tensor(C, dtype=dtype, device=device), torch.as_tensor(d, dtype=dtype, device=device),
                torch.as_tensor(which, device=device))


@dataclass(frozen=True, eq=False, repr=False)
class PropertyUnion:
    """A property over several input boxes: ``OR_p (X in box_p AND condition_p(Y))``, one :class:`Property` per
    part (a VNNLIB file with an ``or`` over inputs, like ACAS Xu's property 6). A counterexample lies in some
    part's box and satisfies that part's condition, so the union is unsat iff every part is."""

    parts: tuple
    source: str = "<string>"

    def __post_init__(self):
        parts = tuple(self.parts)
        if not parts or not all(isinstance(p, Property) for p in parts):
            raise ValueError("parts must be a non-empty sequence of Property")
        if len({(p.num_inputs, p.num_outputs) for p in parts}) != 1:
            raise ValueError("the parts must have the same numbers of inputs and of outputs; got "
                             f"{sorted({(p.num_inputs, p.num_outputs) for p in parts})}")
        object.__setattr__(self, "parts", parts)

    def __repr__(self):
        return (f"PropertyUnion({len(self.parts)} input boxes, {self.num_inputs} inputs, {self.num_outputs} outputs, "
                f"source={self.source!r})")

    @property
    def num_inputs(self) -> int:
        return self.parts[0].num_inputs

    @property
    def num_outputs(self) -> int:
        return self.parts[0].num_outputs

    def contains(self, X) -> np.ndarray:
        """Whether each row of ``X`` lies in some part's box."""
        return np.any([p.contains(X) for p in self.parts], axis=0)

    def check_witness(self, model, x, shape=None):
        """As :meth:`Property.check_witness`: ``ok`` when some part's box holds x and its condition holds at y."""
        x, y = _replay(model, x, shape, self.num_inputs, self.num_outputs)
        return bool(any(p.contains(x)[0] and p.satisfies_output(y)[0] for p in self.parts)), y


def _replay(model, x, shape, num_inputs, num_outputs):
    """(x, y) as float64 numpy arrays: ``x`` flattened, ``y`` a float64 copy of ``model`` on it, reshaped to
    ``(1, *shape)`` (default ``model.input_shape`` when the model has one, else flat)."""
    x = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    if x.numel() != num_inputs:
        raise ValueError(f"x must have {num_inputs} entries (the property's inputs); got {x.numel()}")
    shape = getattr(model, "input_shape", (num_inputs,)) if shape is None else shape
    replica = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    with torch.no_grad():
        y = replica(x.reshape(1, *shape)).reshape(-1).numpy()
    if y.size != num_outputs:
        raise ValueError(f"the model has {y.size} outputs; the property has {num_outputs}")
    return x.numpy(), y


def _rows(values, width, name) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    values = np.asarray(values, dtype=np.float64)
    values = values.reshape(1, -1) if values.ndim == 1 else values.reshape(len(values), -1)
    if values.shape[1] != width:
        raise ValueError(f"{name} must have {width} entries per row; got shape {values.shape}")
    return values


def local_robustness(x, label, eps, num_classes, lower=0.0, upper=1.0, targets=None) -> Property:
    """The VNN-COMP local-robustness property around one input ``x`` (any shape; flattened in C order):
    the box ``[max(lower, x - eps), min(upper, x + eps)]`` and the condition ``OR_{j in targets} Y_j >= Y_label``
    (``targets`` default: every class but ``label``). ``lower`` / ``upper``: scalars or arrays of x's shape."""
    x = check_finite(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64), "x")
    eps = check_eps(eps)
    num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    label = check_positive_int(label, "label", minimum=0)
    if label >= num_classes:
        raise ValueError(f"label must be in [0, {num_classes - 1}]; got {label}")
    targets = [j for j in range(num_classes) if j != label] if targets is None else [int(j) for j in targets]
    if not targets or any(j == label or not 0 <= j < num_classes for j in targets) or len(set(targets)) < len(targets):
        raise ValueError(f"targets must be distinct classes in [0, {num_classes - 1}] other than label {label}; "
                         f"got {targets}")
    lo = np.maximum(x - eps, -np.inf if lower is None else lower).reshape(-1)
    hi = np.minimum(x + eps, np.inf if upper is None else upper).reshape(-1)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or (lo > hi).any():
        raise ValueError("the box [max(lower, x - eps), min(upper, x + eps)] must be finite and non-empty; "
                         "is x inside [lower, upper]?")
    disjuncts = []
    for j in targets:
        A = np.zeros((1, num_classes))
        A[0, label], A[0, j] = 1.0, -1.0
        disjuncts.append((A, np.zeros(1)))
    return Property(lo, hi, tuple(disjuncts), num_classes)
