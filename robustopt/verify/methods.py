r"""The method contract: what a bound method module provides, and the registry the API dispatches on.

A method bounds the outputs :math:`g(x') \in \mathbb{R}^m` of a canonical :class:`~.network.Network`
over the ball :math:`B(x)` of a :class:`robustopt.sets.Ball`. The API first folds the specification
into the network (``net.with_spec(C)``), so ``g = C f`` and a method never sees C.

Each method is one module ``robustopt/verify/<module>.py`` with

``NORMS``
    the ball norms it handles, a subset of ``("inf", 2, 1)``.
``OPTIONS``
    the keyword options it accepts: :data:`COMMON_OPTIONS` plus its own (``relaxation``, ``steps``,
    ``time_limit``, ``stop_at``, ...). Anything else raises ``ValueError`` before the method runs.

Capability flags (:data:`CAPABILITIES`; every method declares each one, as a bool; callers read these,
never the option names):

``SOLVER``
    per-example optimization (``lp``, ``lp-cvxpy``, ``milp``, ``bab``): ``certify`` runs it in one task per example,
    only on the examples the attack left open; ``compare`` runs it after the closed-form methods and gives
    it their shared intermediate bounds.
``EXACT``
    its lower bound is the exact minimum when it ends "optimal" (``milp``, to its relative gap).
``TAKES_TIME_LIMIT``
    accepts ``time_limit=`` (seconds per example; ``"time_limit"`` in ``OPTIONS``). ``certify``,
    ``compare`` and the CLI pass their ``time_limit`` to such methods and ignore it for the others.
``TAKES_STOP_AT``
    accepts ``stop_at=`` (see below; ``certify`` passes ``stop_at=0.0``).
``TAKES_SPLITS``
    accepts ``splits=`` (per-ReLU-layer phase constraints, see below).
``bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, **own) -> Bounds``
    ``x`` flat, shape (n, d), inside the box; ``net`` ends with an affine layer (``with_spec`` ensures
    it) whose last operator may be per-example. Computes in ``net.dtype`` on ``net.device``.

Semantics of :class:`Bounds` (soundness: every number is a proven bound, whatever happened inside):

- ``lower[i, r] <= min_{x' in B(x_i)} g_r(x')`` and ``upper[i, r] >= max ...`` (``upper`` is ``None``
  when ``compute_upper=False`` was asked). ``-inf`` / ``+inf`` where nothing was proven (solver failure);
- ``intermediate``: when ``return_intermediate=True``, a list with one (lower, upper) pair of shape
  (n, h_k) per ReLU layer of ``net``: the pre-activation bounds the method used (method-specific
  ones may be tighter internally). Passing such a list as ``intermediate=`` makes a method use those
  bounds instead of computing its own (they must be sound: the caller's responsibility);
- ``points``: optional (n, m, d) tensor of points of the ball the method found (e.g. the MILP's
  minimizer for each row), NaN rows where none; the API replays them through the network;
- ``status``: optional numpy array of str, shape (n,), e.g. "optimal", "time_limit", "error";
- ``replayed``: optional float64 tensor (n, m): ``g_r`` at ``points[i, r]`` by a forward pass (NaN where
  no point), an upper bound on each minimum, on ``lower``'s device;
- ``margin``: optional float64 numpy array (n,): how far ``lower`` may sit below the exact minimum of an
  ``EXACT`` method that ended "optimal" (its gap; 0 where nothing was solved);
- ``seconds``: optional float64 numpy array (n,): wall seconds spent on each example (the batch runner,
  :mod:`.runner`, adds to a method's own figures an even share of the rest of its task's time);
- ``info``: a dict of anything else worth reporting (iterations, solver seconds, ...): diagnostics only,
  no caller relies on its keys;
- ``infeasible``: optional bool tensor (n,), True for a domain proven empty by its ``splits=`` (or by
  ``intermediate=`` bounds with lower > upper): its lower bounds are +inf and upper bounds -inf;
- ``alphas``: the slopes an optimizing method (alpha-/beta-CROWN) ended with, to pass back as
  ``alphas=`` (warm start; :class:`~.alpha_crown.Slopes`).

``splits=`` (ibp, crown, alpha-crown, beta-crown, dual, lp, lp-cvxpy, milp): per ReLU layer an int8 tensor
(n, h_k), +1 active, -1 inactive, 0 free; each row of the batch is a domain (:mod:`.backward`). ``memory=`` (bytes) caps a
backward pass's coefficient tensors (chunks of neurons); ``skip_stable=`` chooses which neurons get one.
``alphas=`` (alpha-/beta-CROWN) takes back ``Bounds.alphas`` (warm start).

``stop_at=t`` (methods that accept it): the caller only needs to know, per example, whether
``min_r g_r > t`` or some point has ``g_r <= t``; the method may stop early once that is settled. The
bounds returned stay sound for every row but may be looser than without ``stop_at``.

The registry maps method names to module names, imported on first use, so a new method is one new
file plus one line here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module

import numpy as np
import torch

from .._validation import check_choice, reject_unknown_options
from ..sets import Ball
from .backward import check_per_layer, check_splits
from .network import Network

__all__ = ["Bounds", "METHODS", "COMMON_OPTIONS", "CAPABILITIES", "FLAG_OPTIONS", "get_method", "run_method",
           "check_intermediate", "check_time_limit", "check_stop_at", "tightest", "minimize_linear"]

METHODS = {
    "ibp": "ibp",
    "crown": "crown",
    "alpha-crown": "alpha_crown",
    "dual": "dual",
    "lp": "lp",
    "lp-cvxpy": "lp_cvxpy",
    "milp": "milp",
    "beta-crown": "beta_crown",
    "bab": "bab",
}
COMMON_OPTIONS = frozenset({"compute_upper", "intermediate", "return_intermediate"})
# the capability flags every method module declares (bools; see the module docstring), and the option that each
# TAKES_* flag stands for (the flag is True exactly when the option is in the method's OPTIONS)
CAPABILITIES = ("SOLVER", "EXACT", "TAKES_TIME_LIMIT", "TAKES_STOP_AT", "TAKES_SPLITS")
FLAG_OPTIONS = {"TAKES_TIME_LIMIT": "time_limit", "TAKES_STOP_AT": "stop_at", "TAKES_SPLITS": "splits"}
# example statuses of a solver that never certify, whatever bound came back (DESIGN.md: time-out / failure is unknown)
UNSETTLED = ("time_limit", "error")
_NORM_NAMES = {"inf": "l_inf", 2: "l_2", 1: "l_1"}


@dataclass
class Bounds:
    """Bounds on the outputs of a (spec-folded) network; see the module docstring for the guarantees and
    the shapes (n examples, m rows)."""

    lower: torch.Tensor
    upper: torch.Tensor | None = None
    intermediate: list | None = None
    points: torch.Tensor | None = None
    status: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    infeasible: torch.Tensor | None = None
    alphas: object | None = None
    replayed: torch.Tensor | None = None
    margin: np.ndarray | None = None
    seconds: np.ndarray | None = None

    @classmethod
    def cat(cls, parts) -> "Bounds":
        """The bounds of consecutive batches as one, along the example dimension.

        ``lower``, ``upper``, ``points``, ``status``, ``infeasible``, ``replayed``, ``margin``, ``seconds`` and
        each layer of ``intermediate`` are concatenated; each must be given in every part or in none
        (``ValueError`` otherwise). ``info``: a value that is a per-example array (numpy or torch, first
        dimension that part's n) in every part is concatenated; any other value (a count, an object) becomes a
        list with one entry per part (None where a part lacks the key). ``alphas``: a list, one per part
        (slopes of different batches cover different neurons). One part comes back unchanged.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("Bounds.cat needs at least one Bounds")
        if len(parts) == 1:
            return parts[0]
        sizes = [b.lower.shape[0] for b in parts]

        def joined(name, join):
            values = [getattr(b, name) for b in parts]
            if all(v is None for v in values):
                return None
            if any(v is None for v in values):
                raise ValueError(f"Bounds.cat: {name} is given in some parts and not in others")
            return join(values)

        def cat_any(values):
            return torch.cat(values) if isinstance(values[0], torch.Tensor) else np.concatenate(values)

        fields = {name: joined(name, cat_any) for name in
                  ("lower", "upper", "points", "status", "infeasible", "replayed", "margin", "seconds")}
        fields["intermediate"] = joined("intermediate", lambda lists: [
            tuple(torch.cat([layers[k][side] for layers in lists]) for side in (0, 1)) for k in range(len(lists[0]))])
        info = {}
        for key in dict.fromkeys(k for b in parts for k in b.info):
            values = [b.info.get(key) for b in parts]
            per_example = all(isinstance(v, (np.ndarray, torch.Tensor)) and v.ndim > 0 and v.shape[0] == n
                              for v, n in zip(values, sizes))
            info[key] = cat_any(values) if per_example else values
        alphas = [b.alphas for b in parts]
        return cls(info=info, alphas=None if all(a is None for a in alphas) else alphas, **fields)


def get_method(name: str):
    """The module implementing method ``name`` (imported on first use); it must declare every flag of
    :data:`CAPABILITIES` as a bool."""
    check_choice(name, tuple(METHODS), "method")
    try:
        module = import_module(f".{METHODS[name]}", __package__)
    except ModuleNotFoundError as err:
        if err.name == f"{__package__}.{METHODS[name]}":
            raise ValueError(f"method {name!r} is not available in this version of robustopt") from None
        raise
    missing = [flag for flag in CAPABILITIES if not isinstance(getattr(module, flag, None), bool)]
    if missing:
        raise TypeError(f"method module {module.__name__} must declare the capability flags {missing} (bools; "
                        "see robustopt.verify.methods)")
    return module


def check_intermediate(net: Network, intermediate, n: int, name: str = "intermediate"):
    """Validate a list of per-ReLU-layer (lower, upper) bounds for ``net`` and a batch of n; returns it
    converted to the network's dtype and device."""
    if intermediate is None:
        return None
    sizes = check_per_layer(net, intermediate, name, "(lower, upper) pairs")
    out = []
    for k, (pair, h) in enumerate(zip(intermediate, sizes)):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{name}[{k}] must be a (lower, upper) pair")
        lo, hi = (torch.as_tensor(b).to(dtype=net.dtype, device=net.device) for b in pair)
        for b in (lo, hi):
            if tuple(b.shape) != (n, h):
                raise ValueError(f"{name}[{k}] bounds must have shape ({n}, {h}); got {tuple(b.shape)}")
        if torch.isnan(lo).any() or torch.isnan(hi).any():
            raise ValueError(f"{name}[{k}] must not contain NaN (lower > upper is allowed: it proves the domain "
                             "empty, and the method flags it infeasible)")
        out.append((lo, hi))
    return out


def check_time_limit(time_limit, name: str = "time_limit"):
    """None, or a number of seconds > 0 (as float)."""
    if time_limit is None:
        return None
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"{name} must be a number of seconds > 0 (or None); got {time_limit!r}")
    return float(time_limit)


def check_stop_at(stop_at, name: str = "stop_at"):
    """None, or a finite number (as float)."""
    if stop_at is None:
        return None
    if isinstance(stop_at, bool) or not isinstance(stop_at, (int, float)) or not np.isfinite(stop_at):
        raise ValueError(f"{name} must be a finite number (or None); got {stop_at!r}")
    return float(stop_at)


def tightest(*bound_lists):
    """Elementwise tightest of several intermediate-bound lists: max of the lowers, min of the uppers."""
    lists = [b for b in bound_lists if b is not None]
    return [(torch.stack([b[k][0] for b in lists]).amax(0), torch.stack([b[k][1] for b in lists]).amin(0))
            for k in range(len(lists[0]))]


def run_method(name: str, net: Network, x: torch.Tensor, ball: Ball, **options) -> Bounds:
    """Validate everything once, then call ``get_method(name).bounds``. ``x`` (n, *in_shape) or flat."""
    module = get_method(name)
    if ball.norm not in module.NORMS:
        supported = ", ".join(_NORM_NAMES[p] for p in module.NORMS)
        raise ValueError(f"method {name!r} supports {supported} balls; got norm={ball.norm!r}")
    reject_unknown_options(options, f"method {name!r}", module.OPTIONS)
    if net.ends_with_relu:
        raise ValueError("the network ends with a ReLU: fold a specification first (net.with_spec(C))")
    x = net.flatten_input(x)
    ball.check_center(x)
    if not isinstance(ball.eps, float) and ball.eps.shape[0] != x.shape[0]:
        raise ValueError(f"eps has {ball.eps.shape[0]} radii but x has {x.shape[0]} examples")
    if "intermediate" in options:
        options["intermediate"] = check_intermediate(net, options["intermediate"], x.shape[0])
    if "splits" in options:
        options["splits"] = check_splits(net, options["splits"], x.shape[0])
    return module.bounds(net, x, ball, **options)


def minimize_linear(A: torch.Tensor, x: torch.Tensor, ball: Ball, chunk_entries: int = 1 << 24) -> torch.Tensor:
    r"""Exact :math:`\min_{x' \in B(x_i)} \langle A_{ir}, x' \rangle` over ball ∩ box, shape (n, m).

    ``A`` of shape (n, m, d) or (1, m, d) (shared rows), ``x`` flat (n, d). For l_inf the set is the box
    ``ball.box(x)`` and the minimum is :math:`A c - |A| r` (centre c, radius r); for l_2 / l_1 it is
    ``-ball.support(-A, x)``, computed over chunks of rows to bound memory.
    """
    n, d = x.shape
    if ball.norm == "inf":
        lo, hi = ball.box(x)
        centre, radius = (hi + lo) / 2, (hi - lo) / 2
        return torch.einsum("nmd,nd->nm", A, centre) - torch.einsum("nmd,nd->nm", A.abs(), radius)
    A = A.expand(n, -1, -1)
    step = max(1, chunk_entries // max(1, n * d))
    if A.requires_grad:  # Danskin: the value is <A, x*> at the minimizer x*, whose gradient in A is x*
        with torch.no_grad():
            points = torch.cat([ball.support_point(-A[:, i:i + step], x) for i in range(0, A.shape[1], step)], 1)
        return (A * points).sum(-1)
    return torch.cat([-ball.support(-A[:, i:i + step], x) for i in range(0, A.shape[1], step)], dim=1)
