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
``SOLVER``
    ``True`` for per-example optimization methods (``lp``, ``lp-cvxpy``, ``milp``, ``bab``): ``certify`` runs
    them only on examples the attack and cheap bounds left open, and passes ``time_limit`` (seconds
    per example) and ``stop_at=0.0``.
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
- ``info``: a dict of anything else worth reporting (iterations, solver seconds, ...);
- ``infeasible``: optional bool tensor (n,), True for a domain proven empty by its ``splits=`` (or by
  ``intermediate=`` bounds with lower > upper): its lower bounds are +inf and upper bounds -inf;
- ``alphas``: the slopes an optimizing method (alpha-/beta-CROWN) ended with, to pass back as
  ``alphas=`` (warm start; :class:`~.alpha_crown.Slopes`).

``splits=`` (ibp, crown, alpha-crown, beta-crown, dual): per ReLU layer an int8 tensor (n, h_k), +1 active,
-1 inactive, 0 free; each row of the batch is a domain (:mod:`.backward`). ``memory=`` (bytes) caps a
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

__all__ = ["Bounds", "METHODS", "COMMON_OPTIONS", "get_method", "run_method", "check_intermediate",
           "check_time_limit", "check_stop_at", "tightest", "minimize_linear"]

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
# example statuses of a solver that never certify, whatever bound came back (DESIGN.md: time-out / failure is unknown)
UNSETTLED = ("time_limit", "error")
_NORM_NAMES = {"inf": "l_inf", 2: "l_2", 1: "l_1"}


@dataclass
class Bounds:
    """Bounds on the outputs of a (spec-folded) network; see the module docstring for the guarantees."""

    lower: torch.Tensor
    upper: torch.Tensor | None = None
    intermediate: list | None = None
    points: torch.Tensor | None = None
    status: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    infeasible: torch.Tensor | None = None
    alphas: object | None = None


def get_method(name: str):
    """The module implementing method ``name`` (imported on first use)."""
    check_choice(name, tuple(METHODS), "method")
    try:
        return import_module(f".{METHODS[name]}", __package__)
    except ModuleNotFoundError as err:
        if err.name == f"{__package__}.{METHODS[name]}":
            raise ValueError(f"method {name!r} is not available in this version of robustopt") from None
        raise


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
