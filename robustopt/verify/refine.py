r"""Pre-activation bounds of a ReLU layer tightened by branch and bound on the layers before it.

The bounds of layer k's pre-activations :math:`z_j` are the minima of :math:`z_j` and :math:`-z_j` over the ball:
output rows of the network cut after layer k. alpha-CROWN bounds them through the relaxations of layers < k;
:func:`refine_layer` lifts them by ReLU-split branch and bound (:mod:`.bab`) on that prefix network, a search per
row (:math:`z_j` and :math:`-z_j` of each unstable neuron, the nearest to stable first) sharing a fixed time. Every
value it returns is a proven lower bound of bab (the minimum over its domains), so the tightened bounds hold on the
whole ball; a neuron whose new bounds exclude 0 is stable. A row's search ends early in two cases: its bound is
within :data:`ROW_GAP` (relative) of the best value found (bab's ``gap``), or above 0 (``enough=0``: a neuron
proven stable needs no tighter bound); it runs with :data:`ROW_OPTIONS` (3 beta-CROWN steps, BaBSR: a prefix's
searches are short and many). :func:`refine_layers` does layers 1, 2, ... in turn. This is α,β-CROWN's "MIP
refinement" of intermediate bounds, with our own bounds in place of a MIP solver's claims. Only layers with at most
:data:`MAX_NEURONS` unstable neurons are refined (a conv layer has thousands).

On VNN-COMP 2021 mnistfc 256x4 prop_0 (ε = 0.03), layer 1 (57 unstable neurons): exact searches (gap 1e-6, 10
steps, filtered smart branching) made 22 stable in 60 s without finishing; with the early ends all 114 rows
finished in 32.9 s, with these options too in 16.6 s (23 made stable, mean width 6.63 → 4.45). On 256x6 prop_0 the
layers 1-4 then tighten in turn (layer 4: 76 of 79 unstable made stable) and the instance is decided (unsat) in
150 s, where exact searches timed out at 300 s. One search for all the rows at once, split the same way for all, did
much less: on 256x4 prop_0 in 60 s, 11 stable against 22 for the per-row searches.
"""
from __future__ import annotations

import time

import torch

from .methods import run_method
from .network import Network

MAX_NEURONS = 256  # refine a layer only with at most this many unstable neurons (two rows each)
ROW_GAP = 0.01  # a row's search stops within this relative gap of its best point (bab's gap)
ROW_OPTIONS = {"steps": 3, "branching": "babsr"}  # bab options of the row searches


def unstable_count(intermediate, layer: int) -> int:
    """Neurons of ReLU layer ``layer`` with lower < 0 < upper (summed over the examples)."""
    lo, hi = intermediate[layer]
    return int(((lo < 0) & (hi > 0)).sum())


def prefix_network(net: Network, layer: int) -> Network:
    """The network up to the pre-activations of ReLU layer ``layer`` (its output is that layer's z)."""
    return Network(net.affine[:layer + 1], False, net.in_shape)


def refine_layer(net: Network, x: torch.Tensor, ball, intermediate, layer: int, time_limit: float,
                 options=None):
    """Tighten ReLU layer ``layer``'s bounds in ``intermediate`` (a list of (lower, upper) pairs of shape (1, h_k),
    sound on the ball around the single example ``x`` (1, d)) by ``time_limit`` seconds of branch and bound.
    Returns (the new list: the same pairs with that layer's replaced by the tightened ones, how many of its
    unstable neurons became stable). ``options``: more bab options for the row searches (the caller's
    ``search_dtype``, ``recompute_intermediate``)."""
    from .bab import bounds as bab_bounds  # imported here: bab imports this module

    if x.shape[0] != 1:
        raise ValueError(f"refine_layer takes one example; got x of shape {tuple(x.shape)}")
    lo, hi = (b[0].clone() for b in intermediate[layer])
    unstable = torch.nonzero((lo < 0) & (hi > 0)).flatten()
    if len(unstable) == 0:
        return list(intermediate), 0
    eye = torch.eye(lo.numel(), dtype=net.dtype, device=x.device)[unstable]
    spec = torch.cat([eye, -eye])  # rows z_j, then -z_j
    width = (hi - lo)[unstable]
    order = torch.cat([-lo[unstable] / width, hi[unstable] / width]).argsort()  # the nearest to stable first
    prefix, deadline = prefix_network(net, layer), time.perf_counter() + time_limit
    found = spec.new_full((len(spec),), float("-inf"))
    for done, r in enumerate(order.tolist()):  # a search per row, sharing the time left
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        found[r] = bab_bounds(prefix.with_spec(spec[r:r + 1]), x, ball, compute_upper=False,
                              intermediate=intermediate[:layer], time_limit=left / (len(order) - done),
                              split="relu", refine=False, gap=ROW_GAP, enough=0.0,
                              **ROW_OPTIONS | (options or {})).lower[0, 0]
    u = len(unstable)
    lo[unstable] = torch.maximum(lo[unstable], found[:u])
    hi[unstable] = torch.minimum(hi[unstable], -found[u:])
    refined = list(intermediate)
    refined[layer] = (lo.unsqueeze(0), hi.unsqueeze(0))
    return refined, int(((lo[unstable] >= 0) | (hi[unstable] <= 0)).sum())


def refine_layers(net: Network, x: torch.Tensor, ball, intermediate, time_limit: float, stop_at=None,
                  options=None):
    """:func:`refine_layer` on ReLU layers 1, 2, ... in turn (those with 1 to :data:`MAX_NEURONS` unstable
    neurons), the time left shared equally by the layers left; after each, the later layers are bounded again by
    alpha-CROWN from the refined ones (and intersected with theirs), and with ``stop_at`` the refinement ends once
    that pass proves every output row above it; ``options`` go to :func:`refine_layer`. Returns (the new list,
    neurons made stable)."""
    deadline, stable = time.perf_counter() + time_limit, 0
    layers = range(1, len(intermediate))
    for done, layer in enumerate(layers):
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        if not 0 < unstable_count(intermediate, layer) <= MAX_NEURONS:
            continue
        intermediate, made = refine_layer(net, x, ball, intermediate, layer, left / (len(layers) - done),
                                          options)
        stable += made
        res = run_method("alpha-crown", net, x, ball, compute_upper=False, intermediate=intermediate,
                         recompute_from=layer + 1, return_intermediate=True)
        intermediate = res.intermediate
        if stop_at is not None and bool((res.lower > stop_at).all()):
            break
    return intermediate, stable
