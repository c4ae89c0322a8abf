r"""The Wong–Kolter dual network (convex outer adversarial polytope).

For rows c of the (spec-folded) output :math:`z_K`, the dual of the LP relaxation with the
"same-slope" lower line gives the closed-form bound (Wong & Kolter 2018, Thm. 1, with the box added)

.. math::
    J(\nu) = -\sum_{k=0}^{K} \nu_k^\top b_k \;-\; \max_{x' \in B(x)} \hat\nu_{in}^\top x'
             \;+\; \sum_{k<K} \sum_{j \in \mathcal I_k} l_{kj} [\nu_{kj}]_+ \;\le\; \min_{x' \in B(x)} c^\top z_K(x'),

where the dual network runs backwards: :math:`\nu_K = -c`, :math:`\hat\nu_k = W_{k+1}^\top \nu_{k+1}`
(the variable on :math:`a_k`), :math:`\nu_k = D_k \hat\nu_k` with :math:`D_k` = 1 on active, 0 on
inactive and :math:`u/(u-l)` on unstable neurons :math:`\mathcal I_k`, :math:`\hat\nu_{in} = W_0^\top \nu_0`.
The maximum over ball ∩ box is the exact support function (l_inf, l_2, l_1).

The variables are kept (:class:`DualNetwork`, in ``Bounds.info["dual_network"]``):
:meth:`DualNetwork.objective` re-computes the bound from them alone and :meth:`DualNetwork.residual`
measures how far they are from satisfying the dual network's equations. Intermediate bounds are
computed by the same dual network, one layer at a time (rows :math:`c = \pm e_j`, through the operators'
transposes), in chunks under ``memory``; ``splits=`` clamps each layer's bounds (:mod:`.backward`), as in
CROWN. By default every neuron is bounded (``skip_stable=False``), as Wong and Kolter do: it equals CROWN
with the ``"same-slope"`` relaxation, whose default this also is; ``skip_stable=True`` bounds only the
neurons one IBP step leaves unstable (faster, but not always tighter: see :mod:`.crown`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .backward import (apply_split, check_memory, check_skip_stable, finish, first_recomputed, intersect, refine,
                       rows_per_chunk)
from .crown import path_width, reference_bounds
from .methods import COMMON_OPTIONS, Bounds, minimize_linear

NORMS = ("inf", 2, 1)
OPTIONS = COMMON_OPTIONS | {"splits", "memory", "skip_stable"}
SOLVER = False
EXACT = False
TAKES_TIME_LIMIT = False
TAKES_STOP_AT = False
TAKES_SPLITS = True


def _diagonal(lower, upper):
    """D_k = 1 active, 0 inactive, u/(u-l) unstable; and the unstable mask. Each (n, 1, h)."""
    lower, upper = lower.unsqueeze(1), upper.unsqueeze(1)
    unstable = (lower < 0) & (upper > 0)
    chord = upper / torch.where(unstable, upper - lower, torch.ones_like(upper))
    return torch.where(unstable, chord, (lower >= 0).to(lower.dtype)), unstable


@dataclass
class DualNetwork:
    """Dual variables for lower bounds on the rows of ``c . z_top``.

    ``nu[k]`` (n, r, h_k) is the variable on the pre-activation z_k for k = 0..top (``nu[top] = -c``),
    ``nu_hat[k]`` the one on the activation a_k for k < top, ``nu_input`` (n, r, d) the one on x;
    ``lower_bounds[k]`` (n, h_k) are the pre-activation lower bounds l_k that enter J (their
    unstable sets, with the upper bounds, define D_k).
    """

    top: int
    nu: list
    nu_hat: list
    nu_input: torch.Tensor
    lower_bounds: list
    upper_bounds: list

    @classmethod
    def build(cls, net, c, top, bounds):
        """Run the dual network backwards from ``nu_top = -c`` (c of shape (n or 1, r, h_top))."""
        nu, nu_hat = [None] * (top + 1), [None] * top
        nu[top] = -c
        for k in range(top - 1, -1, -1):
            nu_hat[k] = net.affine[k + 1].transpose(nu[k + 1])
            D, _ = _diagonal(*bounds[k])
            nu[k] = D * nu_hat[k]
        nu_input = net.affine[0].transpose(nu[0])
        return cls(top, nu, nu_hat, nu_input, [b[0] for b in bounds[:top]], [b[1] for b in bounds[:top]])

    def objective(self, net, x, ball):
        """J(nu), shape (n, r): computed from the stored variables, biases, x, the ball and l only."""
        J = -sum((self.nu[k] @ net.affine[k].bias.unsqueeze(-1)).squeeze(-1) for k in range(self.top + 1))
        J = J + minimize_linear(-self.nu_input, x, ball)  # - max_{x' in B} <nu_input, x'>
        for k in range(self.top):
            _, unstable = _diagonal(self.lower_bounds[k], self.upper_bounds[k])
            J = J + (torch.where(unstable, self.lower_bounds[k].unsqueeze(1), 0.0) * self.nu[k].clamp(min=0)).sum(-1)
        return J

    def residual(self, net):
        """Largest violation of the dual network's equations (0 for variables built by :meth:`build`)."""
        worst = (self.nu_input - net.affine[0].transpose(self.nu[0])).abs().amax()
        for k in range(self.top):
            D, _ = _diagonal(self.lower_bounds[k], self.upper_bounds[k])
            worst = torch.maximum(worst, (self.nu_hat[k] - net.affine[k + 1].transpose(self.nu[k + 1])).abs().amax())
            worst = torch.maximum(worst, (self.nu[k] - D * self.nu_hat[k]).abs().amax())
        return float(worst)


def _one_hot_rows(idx, h, like, both=True):
    """c (1, r or 2r, h): rows e_j for j in idx (and -e_j after them when ``both``)."""
    eye = torch.zeros(1, idx.numel(), h, dtype=like.dtype, device=like.device)
    eye[0, torch.arange(idx.numel(), device=like.device), idx] = 1.0
    return torch.cat([eye, -eye], 1) if both else eye


def _row_bounds(net, top, idx, layer_bounds, x, ball, both=True):
    """(lower, upper or None) of the rows ``idx`` of z_top from the dual network, each (n, r), and the
    :class:`DualNetwork` (rows c = e_j, then -e_j when ``both``)."""
    c = _one_hot_rows(idx, net.affine[top].out_features, x, both)
    dual = DualNetwork.build(net, c, top, layer_bounds)
    J, r = dual.objective(net, x, ball), idx.numel()
    return (J[:, :r], -J[:, r:] if both else None, dual)


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False, splits=None,
           memory=None, skip_stable=False) -> Bounds:
    """Dual-network bounds on the outputs of ``net``; the final DualNetwork is in ``info["dual_network"]``."""
    memory, skip_stable = check_memory(memory), check_skip_stable(skip_stable)
    layer_bounds, infeasible = [], torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    start = first_recomputed(intermediate, splits, len(net.relu_sizes))
    for k in range(len(net.relu_sizes)):
        given = None if intermediate is None else intermediate[k]
        if k < start:
            lo, hi = given
        else:
            lo, hi = intersect(reference_bounds(net, k, layer_bounds[-1] if layer_bounds else None, x, ball, memory),
                               given)
            if k > 0:
                width = max(path_width(net, k), net.affine[k].out_features)
                lo, hi = refine((lo, hi), lambda idx: _row_bounds(net, k, idx, layer_bounds, x, ball)[:2], width,
                                memory, skip_stable)
                lo, hi = intersect((lo, hi), given)
        lo, hi, empty = apply_split(lo, hi, None if splits is None else splits[k], given is not None)
        infeasible |= empty
        layer_bounds.append((lo, hi))
    top, m = len(net.affine) - 1, net.out_features
    width = max(path_width(net, top), m)
    step = max(1, rows_per_chunk(x.shape[0], width, x.element_size(), memory) // 2)
    parts = [_row_bounds(net, top, idx, layer_bounds, x, ball, compute_upper)
             for idx in torch.arange(m, device=x.device).split(step)]
    lower = torch.cat([p[0] for p in parts], 1)
    upper = torch.cat([p[1] for p in parts], 1) if compute_upper else None
    lower, upper = finish(lower, upper, infeasible)
    dual = parts[0][2] if len(parts) == 1 else None  # the variables, when one pass bounded every row
    return Bounds(lower=lower, upper=upper, intermediate=layer_bounds if return_intermediate else None,
                  info={"dual_network": dual}, infeasible=infeasible)
