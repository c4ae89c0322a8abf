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
computed by the same dual network, one layer at a time (rows :math:`c = \pm I`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .ibp import first_layer_bounds
from .methods import COMMON_OPTIONS, Bounds, minimize_linear

NORMS = ("inf", 2, 1)
OPTIONS = COMMON_OPTIONS
SOLVER = False


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


def _plus_minus_identity(h, like):
    eye = torch.eye(h, dtype=like.dtype, device=like.device)
    return torch.cat([eye, -eye], 0).unsqueeze(0)


def bounds(net, x, ball, *, compute_upper=True, intermediate=None, return_intermediate=False) -> Bounds:
    """Dual-network bounds on the outputs of ``net``; the final DualNetwork is in ``info["dual_network"]``."""
    layer_bounds = []
    for k in range(len(net.relu_sizes)):
        if intermediate is not None:
            layer_bounds.append(intermediate[k])
        elif k == 0:
            layer_bounds.append(first_layer_bounds(net.affine[0], x, ball))
        else:
            h = net.affine[k].out_features
            both = DualNetwork.build(net, _plus_minus_identity(h, x), k, layer_bounds).objective(net, x, ball)
            layer_bounds.append((both[:, :h], -both[:, h:]))
    top = len(net.affine) - 1
    m = net.out_features
    c = _plus_minus_identity(m, x) if compute_upper else torch.eye(m, dtype=x.dtype, device=x.device).unsqueeze(0)
    dual = DualNetwork.build(net, c, top, layer_bounds)
    J = dual.objective(net, x, ball)
    return Bounds(lower=J[:, :m], upper=-J[:, m:] if compute_upper else None,
                  intermediate=layer_bounds if return_intermediate else None, info={"dual_network": dual})
