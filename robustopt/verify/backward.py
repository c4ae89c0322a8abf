r"""What the linear-bound methods (IBP, CROWN, alpha-/beta-CROWN, dual) share: ReLU splits, the choice of
the neurons that need a backward pass, and chunking under a memory budget.

**Splits.** ``splits[k]`` is an int8 tensor (n, h_k) for ReLU layer k: +1 fixes the neuron active
(:math:`z_{kj} \ge 0`), -1 inactive (:math:`z_{kj} \le 0`), 0 leaves it free. Row i of the batch is then
the domain :math:`\{x' \in B(x_i) : \text{the split constraints hold}\}`. A method applies the splits
by clamping the pre-activation bounds it computed (or was given) on layer k (:math:`l \leftarrow \max(l, 0)` where +1,
:math:`u \leftarrow \min(u, 0)` where -1) before it relaxes that layer and bounds the next ones, so
every later bound is a bound over the domain. If some :math:`l > u` after the clamps, the domain is
empty (**infeasible**): its output lower bounds are :math:`+\infty`, its upper bounds :math:`-\infty`,
and ``Bounds.infeasible`` flags it. With ``intermediate=`` (a parent domain's bounds, say) the given
bounds are used up to the first split layer; every later layer is bounded again from the clamped
bounds and intersected with the given ones (:func:`first_recomputed`), so a split never loosens a bound.

**Which neurons get a backward pass.** The bounds of layer k > 0 start from a *reference*: one
interval step (IBP) from layer k-1's bounds. A neuron stable in the reference (:math:`l \ge 0` or
:math:`u \le 0`) keeps it, since a relaxation only needs its sign; the neurons unstable in the
reference for at least one example of the batch are bounded by backward passes, in chunks of rows,
and each example takes the backward value exactly where its own reference is unstable (so a bound
does not depend on the other examples of the batch). This is auto_LiRPA's sparse intermediate bounds
(which, unlike this, uses the batch's union: ``skip_stable="batch"`` reproduces it). Since the reference
can prove a neuron stable where the backward pass would not, the bound can differ from bounding every
neuron (``skip_stable=False``: every neuron gets a pass, as before this module existed).

**Memory.** ``memory`` (bytes, default :data:`DEFAULT_MEMORY`) caps one chunk's coefficient tensor
(n, rows, width) at a quarter of it (the ReLU step makes temporaries of the same size).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_MEMORY = 4 << 30  # bytes for one backward pass's coefficient tensors: fits a 24 GiB GPU with room


@dataclass
class FeatureSlopes:
    """Lower slopes stored for some neurons only: ``values`` (n, R, u) for the neurons ``features`` (u,)
    of a layer of width ``width`` (the others are stable: their slope is never read)."""

    values: torch.Tensor
    features: torch.Tensor
    width: int

    def full(self):
        """(n, R, width), zero outside the features."""
        n, rows, _ = self.values.shape
        return self.values.new_zeros(n, rows, self.width).index_copy(2, self.features, self.values)

def check_memory(memory, name: str = "memory") -> int:
    """None (the default budget) or a number of bytes > 0, as int."""
    if memory is None:
        return DEFAULT_MEMORY
    if isinstance(memory, bool) or not isinstance(memory, (int, float)) or not memory > 0:
        raise ValueError(f"{name} must be a number of bytes > 0 (or None for {DEFAULT_MEMORY}); got {memory!r}")
    return int(memory)

def check_per_layer(net, value, name: str, what: str):
    """Raise unless ``value`` is a list or tuple with one entry per ReLU layer of ``net``; returns the widths."""
    sizes = net.relu_sizes
    if not isinstance(value, (list, tuple)) or len(value) != len(sizes):
        raise ValueError(f"{name} must be a list of {len(sizes)} {what}, one per ReLU layer (widths {sizes}); got "
                         f"{type(value).__name__} of length {len(value) if hasattr(value, '__len__') else '?'}")
    return sizes


def check_splits(net, splits, n: int, name: str = "splits"):
    """Validate ``splits`` for ``net`` and a batch of n domains: None, or a list with one entry per ReLU
    layer, each None (all free) or an integer tensor (n, h_k) with values in {-1, 0, 1}. Returns a list
    of int8 tensors (or None) on the network's device, or None when nothing is split."""
    if splits is None:
        return None
    sizes = check_per_layer(net, splits, name, "tensors of shape (n, h_k)")
    out = []
    for k, (s, h) in enumerate(zip(splits, sizes)):
        if s is None:
            out.append(None)
            continue
        s = torch.as_tensor(s)
        if s.is_floating_point() or s.is_complex() or tuple(s.shape) != (n, h):
            raise ValueError(f"{name}[{k}] must be an integer tensor of shape ({n}, {h}); got "
                             f"{s.dtype} {tuple(s.shape)}")
        if ((s < -1) | (s > 1)).any():
            raise ValueError(f"{name}[{k}] values must be -1 (inactive), 0 (free) or +1 (active)")
        out.append(s.to(dtype=torch.int8, device=net.device))
    return out if any(s is not None and bool(s.any()) for s in out) else None

def apply_split(lo, hi, split, given: bool = False):
    """Clamp the bounds (n, h) of one layer to its split (or None): returns (lo, hi, empty) with ``empty``
    (n,) True where a clamped neuron's lower bound now exceeds its upper bound (the domain is infeasible).
    For bounds the caller ``given`` (``intermediate=``), any lower > upper proves the domain empty; computed
    bounds are only tested where a split clamps them (elsewhere l > u could only be rounding)."""
    if given:
        empty = (lo > hi).any(1)
    if split is None:
        return lo, hi, empty if given else torch.zeros(lo.shape[0], dtype=torch.bool, device=lo.device)
    lo = torch.where(split > 0, lo.clamp(min=0), lo)
    hi = torch.where(split < 0, hi.clamp(max=0), hi)
    clamped = ((lo > hi) & (split != 0)).any(1)
    return lo, hi, (clamped | empty) if given else clamped

def first_recomputed(intermediate, splits, layers: int, recompute_from=None) -> int:
    """The first ReLU layer whose bounds a method computes: 0 without ``intermediate``; with it,
    ``recompute_from`` if given (any layer is sound: the given bounds hold on the domain), else the layer
    after the first split one (the given bounds hold before it; after it, a bound computed from the
    clamped ones, intersected with the given one, is tighter), or ``layers`` (none) without splits."""
    if intermediate is None:
        return 0
    if recompute_from is not None:
        if isinstance(recompute_from, bool) or not isinstance(recompute_from, int) or recompute_from < 0:
            raise ValueError(f"recompute_from must be a ReLU layer index >= 0 (or None); got {recompute_from!r}")
        return min(recompute_from, layers)
    split_layers = [k for k, s in enumerate(splits or []) if s is not None and bool(s.any())]
    return split_layers[0] + 1 if split_layers else layers

def intersect(bounds, given):
    """Elementwise tightest of two (lo, hi) pairs (``given`` may be None)."""
    if given is None:
        return bounds
    return torch.maximum(bounds[0], given[0]), torch.minimum(bounds[1], given[1])

def rows_per_chunk(n: int, width: int, itemsize: int, memory: int) -> int:
    """How many rows a coefficient tensor (n, rows, width) may have within a quarter of ``memory``."""
    return max(1, memory // (4 * max(1, n) * max(1, width) * itemsize))

def unstable_index(lo, hi):
    """Long tensor of the neurons unstable (l < 0 < u) for at least one example; (n, h) bounds."""
    return ((lo < 0) & (hi > 0)).any(0).nonzero().flatten()

SKIP_MODES = (True, False, "batch")

def check_skip_stable(value):
    if not any(value is m or (isinstance(value, str) and value == m) for m in SKIP_MODES):
        raise ValueError(f"skip_stable must be True, False or 'batch'; got {value!r}")
    return value

GATHER_SHARE = 0.8  # per-example rows when the most unstable example has at most this share of the union's


def refine(reference, bound_rows, width: int, memory: int, skip_stable=True, per_example=False):
    r"""Tighten the reference bounds (lo, hi) of one layer, each (n, h), by backward passes on the neurons
    unstable in the reference: ``bound_rows(idx)`` returns (lower, upper), each (n, r), for the neurons
    ``idx`` (r of them); ``width`` is the widest layer the passes go through (for chunking).

    ``skip_stable``: True, each example keeps the backward value where its own reference is unstable;
    False, every neuron gets a pass and keeps its value (the reference is not used); ``"batch"``,
    auto_LiRPA's rule: the neurons unstable for some example get a pass and keep its value for every
    example, unless they are more than 90% of the layer, then every neuron does (a bound then depends on
    the other examples of the batch).

    ``per_example`` (``bound_rows`` then also takes idx (n, r): row j of example i is neuron idx[i, j]): with
    ``skip_stable=True``, when the examples' unstable sets differ (a batch of small input boxes: each has a
    few unstable neurons, the batch's union most of the layer), each example gets passes for its own
    unstable neurons only, r = the largest count (the others padded with neurons whose value is not kept)."""
    lo_ref, hi_ref = reference
    unstable = (lo_ref < 0) & (hi_ref > 0)
    if skip_stable is not True:
        union = unstable.any(0, keepdim=True)
        if skip_stable is False or int(union.sum()) > 0.9 * union.shape[1]:
            union = torch.ones_like(union)
        unstable = union.expand_as(unstable)
    idx = unstable.any(0).nonzero().flatten()
    if idx.numel() == 0:
        return lo_ref, hi_ref
    step = max(1, rows_per_chunk(lo_ref.shape[0], width, lo_ref.element_size(), memory) // 2)
    lo, hi = lo_ref.clone(), hi_ref.clone()
    most = int(unstable.sum(1).max())
    if per_example and skip_stable is True and most <= GATHER_SHARE * idx.numel():
        order = torch.argsort((~unstable).to(torch.int8), dim=1, stable=True)[:, :most]  # own unstable first
        for chunk in order.split(step, dim=1):
            low, up = bound_rows(chunk)
            keep = unstable.gather(1, chunk)
            lo.scatter_(1, chunk, torch.where(keep, low, lo_ref.gather(1, chunk)))
            hi.scatter_(1, chunk, torch.where(keep, up, hi_ref.gather(1, chunk)))
        return lo, hi
    for chunk in idx.split(step):
        low, up = bound_rows(chunk)
        keep = unstable[:, chunk]
        lo[:, chunk] = torch.where(keep, low, lo_ref[:, chunk])
        hi[:, chunk] = torch.where(keep, up, hi_ref[:, chunk])
    return lo, hi

def both_signs(op, idx):
    """Rows ``idx`` of operator ``op`` and their negations as a linear form on its input: coefficients
    (1 or n, 2r, d_in) and biases (1 or n, 2r), lower-bound rows first. ``idx``: (r,) shared by the batch, or
    (n, r), each example's own rows (then both are (n, ...))."""
    if idx.dim() == 1:
        rows, bias = op.rows(idx), op.bias_rows(idx)
    else:
        union, position = torch.unique(idx, return_inverse=True)
        rows, bias = op.rows(union), op.bias_rows(union)  # (1 or n, u, d_in), (1 or n, u)
        n = idx.shape[0]
        rows = rows.expand(n, -1, -1).gather(1, position.unsqueeze(2).expand(-1, -1, rows.shape[2]))
        bias = bias.expand(n, -1).gather(1, position)
    return torch.cat([rows, -rows], 1), torch.cat([bias, -bias], -1)

def finish(lower, upper, infeasible):
    """Output bounds with the infeasible domains (n,) set to +inf (lower) and -inf (upper)."""
    if infeasible is None or not bool(infeasible.any()):
        return lower, upper
    lower = torch.where(infeasible.unsqueeze(1), torch.full_like(lower, float("inf")), lower)
    if upper is not None:
        upper = torch.where(infeasible.unsqueeze(1), torch.full_like(upper, -float("inf")), upper)
    return lower, upper
