r"""beta-CROWN: alpha-CROWN plus Lagrange multipliers for the split constraints (Wang et al., NeurIPS 2021).

A domain fixes some ReLU neurons active (:math:`z_{ij} \ge 0`, split +1) or inactive (:math:`z_{ij} \le 0`,
split -1); write the constraint :math:`s_{ij} z_{ij} \ge 0`. For any :math:`\beta \ge 0`,

.. math::
    \min_{x' \in D} c^\top f(x') \;\ge\; \min_{x' \in B} \big[ c^\top f(x') - \textstyle\sum_{ij} \beta_{ij} s_{ij} z_{ij}(x') \big],

and the right side is bounded from below by the same backward pass as CROWN, with
:math:`-\beta_{ij} s_{ij}` added to the coefficient on :math:`z_{ij}` when the pass crosses layer i. The
clamps of the split neurons' bounds (:mod:`.backward`) already make them stable; the multipliers add
what clamping cannot: the constraint itself, coupling the neurons through the input. The multipliers
(one per domain, output row and split neuron, shape (n, R, h_i)) are optimized jointly with the alpha
slopes by the same projected Adam (kept >= 0), the best bound per row kept (:mod:`.alpha_crown`).
With every unstable neuron split and the multipliers at their optimum, the bound of a domain is the
exact minimum over it (strong duality of the remaining linear program), so the minimum over all
domains is the exact minimum margin: the method is complete under branch and bound.

Options: those of alpha-CROWN (``splits`` being the point of it; without splits this is alpha-CROWN).
Multipliers are not applied to the intermediate layers' bounds (those use alpha and the clamps).
"""
from __future__ import annotations

from . import alpha_crown
from .methods import Bounds

NORMS = alpha_crown.NORMS
OPTIONS = alpha_crown.OPTIONS
SOLVER = False
EXACT = False
TAKES_TIME_LIMIT = True
TAKES_STOP_AT = True
TAKES_SPLITS = True


def _multipliers(splits, dtype):
    """The beta hook of :func:`alpha_crown.optimize`: zero multipliers (n, R, h_i) for each split layer, and
    the map from them to the terms -beta * s added to the coefficients on z_i."""
    layers = [i for i, s in enumerate(splits) if s is not None and bool(s.any())]
    signs = {i: splits[i].to(dtype).unsqueeze(1) for i in layers}

    def start(x, R, alphas):
        params = [x.new_zeros(x.shape[0], R, splits[i].shape[1]) for i in layers]
        if alphas is not None and alphas.betas is not None and len(alphas.betas) == len(splits):
            for i, p in zip(layers, params):
                old = alphas.betas[i]
                if old is not None and old.shape == p.shape:
                    p.copy_(old)
        params = [p.requires_grad_(True) for p in params]
        return params, terms, place

    def place(params):
        """The multipliers as a list with one entry per ReLU layer (None where nothing is split)."""
        out = [None] * len(splits)
        for i, b in zip(layers, params):
            out[i] = b
        return out

    def terms(params):
        if not params:
            return None
        out = [None] * len(splits)
        for i, b in zip(layers, params):
            out[i] = -b * signs[i].to(b.dtype)
        return out

    return start


def bounds(net, x, ball, *, splits=None, **options) -> Bounds:
    """beta-CROWN bounds on the outputs of ``net`` over the domains given by ``splits``."""
    beta = None if splits is None else _multipliers(splits, x.dtype)
    return alpha_crown.optimize(net, x, ball, splits=splits, beta=beta, **options)
