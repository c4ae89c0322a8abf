r"""Perturbation sets: an :math:`\ell_p` ball around each example, intersected with an input box.

For a centre ``x`` the set is

.. math::  B(x) = \{x' : \|x' - x\|_p \le \varepsilon,\ \mathrm{lower} \le x' \le \mathrm{upper}\},

with :math:`p \in \{\infty, 2, 1\}`. Everything here is exact (no alternating clips): projection onto
ball ∩ box, the support function :math:`\max_{x' \in B(x)} c^\top x'` and its maximizer. The ℓ2 and ℓ1
cases reduce to a one-dimensional search on a Lagrange multiplier, solved exactly by sorting the
breakpoints of a piecewise function (no iteration, no tolerance).

Batches have the example dimension first: ``x`` of shape (n, *s); operations act on each example's
flattened coordinates. Torch tensors are the native type (any device / dtype); numpy arrays are
accepted and numpy arrays come back.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ._validation import check_eps, check_norm, dual_norm_order, norm_order

__all__ = ["Ball"]


def _numpy_compatible(method):
    """Let a method take numpy arrays: convert to torch, run, convert results back."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        was_numpy = any(isinstance(a, np.ndarray) for a in args)
        if not was_numpy:
            return method(self, *args, **kwargs)
        args = [torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args]
        out = method(self, *args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.numpy() for o in out)
        return out.numpy()

    return wrapper


class Ball:
    r"""The set :math:`\{x' : \|x'-x\|_p \le \varepsilon,\ \mathrm{lower} \le x' \le \mathrm{upper}\}`.

    Parameters
    ----------
    eps : float or tensor of shape (n,)
        Radius, one for all examples or one per example. Must be >= 0.
    norm : ``"inf"``, ``2`` or ``1`` (also ``float("inf")``, ``"linf"``, ``"l2"``, ``"l1"``).
    lower, upper : float, tensor broadcastable to one example or to the batch, or ``None`` (unbounded).
        The box on :math:`x'`. The centre ``x`` must lie inside it (see :meth:`check_center`).
    """

    def __init__(self, eps, norm="inf", lower=0.0, upper=1.0):
        self.norm = check_norm(norm)
        self.eps = check_eps(eps)
        self.lower = lower
        self.upper = upper
        if lower is not None and upper is not None and np.ndim(lower) == 0 and np.ndim(upper) == 0:
            if float(lower) > float(upper):
                raise ValueError(f"lower must be <= upper; got lower={float(lower)}, upper={float(upper)}")

    def __repr__(self):
        eps = self.eps if isinstance(self.eps, float) else f"tensor{tuple(self.eps.shape)}"
        return f"Ball(eps={eps}, norm={self.norm!r}, lower={self.lower!r}, upper={self.upper!r})"

    # ------------------------------------------------------------------ helpers
    def _radius(self, x: torch.Tensor) -> torch.Tensor:
        """Radius as a tensor of shape (n, 1) on x's device / dtype."""
        n = x.shape[0]
        if isinstance(self.eps, float):
            return torch.full((n, 1), self.eps, dtype=x.dtype, device=x.device)
        if self.eps.shape[0] != n:
            raise ValueError(f"eps has {self.eps.shape[0]} radii but the batch has {n} examples")
        return self.eps.to(device=x.device, dtype=x.dtype).reshape(n, 1)

    def _bound(self, bound, x: torch.Tensor, default: float) -> torch.Tensor:
        """lower/upper broadcast to x's shape and flattened to (n, d)."""
        if bound is None:
            return torch.full_like(x, default).flatten(1)
        return _flat_side(bound, x, "box bound")

    def _delta_box(self, x: torch.Tensor):
        """Bounds (lo, hi) on delta = x' - x from the box, flattened to (n, d); lo <= 0 <= hi when x is inside."""
        xf = x.flatten(1)
        return self._bound(self.lower, x, -np.inf) - xf, self._bound(self.upper, x, np.inf) - xf

    # ------------------------------------------------------------------ batches
    def flat(self, x) -> "Ball":
        """This ball aligned with the flat batch ``x.flatten(1)`` of shape (n, d), on x's device and dtype:
        ``eps`` a float or a tensor (n,); ``lower`` / ``upper`` None, a float, or a tensor (n, d) (a broadcast
        view where the box is shared). A box tensor may be given broadcastable to x (n, *s) or to (n, d).
        Raises ``ValueError`` naming ``eps``, ``lower`` or ``upper`` when it does not fit the batch."""
        x = torch.as_tensor(x)
        eps = check_eps(self.eps, n=x.shape[0], like=x)
        sides = [None if b is None else float(b) if np.ndim(b) == 0 else _flat_side(b, x, name)
                 for b, name in ((self.lower, "lower"), (self.upper, "upper"))]
        return Ball(eps, self.norm, *sides)

    def select(self, idx) -> "Ball":
        """The ball of the examples ``idx`` (an index, slice, list or tensor of positions, or a bool mask) of a
        batch-aligned ball (every tensor field has the batch first, as :meth:`flat` gives): rows ``idx`` of a
        tensor ``eps`` and of tensor box bounds; floats and None are kept."""
        pick = lambda b: b[idx] if isinstance(b, torch.Tensor) and b.dim() > 0 else b
        return Ball(pick(self.eps), self.norm, pick(self.lower), pick(self.upper))

    # ------------------------------------------------------------------ public API
    @_numpy_compatible
    def check_center(self, x, name: str = "x", atol: float = 1e-6):
        """Raise ``ValueError`` if some centre lies outside [lower, upper] (the set could then be empty)."""
        lo, hi = self._delta_box(x)
        if (lo > atol).any() or (hi < -atol).any():
            raise ValueError(f"{name} has values outside the box [lower, upper] = [{self.lower}, {self.upper}]; "
                             f"pass lower=None, upper=None for an unbounded input domain")
        return x

    def dual_norm(self, w, dim=-1):
        r"""The dual norm :math:`\|w\|_q` (1/p + 1/q = 1) along ``dim``: ℓ1 for the ℓ∞ ball, and so on."""
        q = dual_norm_order(self.norm)
        if isinstance(w, np.ndarray):
            return np.linalg.norm(w, ord=q, axis=dim)
        return torch.linalg.vector_norm(w, ord=q, dim=dim)

    @_numpy_compatible
    def box(self, x):
        """Elementwise bounds (l, u), each of x's shape, with B(x) ⊆ [l, u] (tight for ℓ∞)."""
        r = self._radius(x)
        lo, hi = self._delta_box(x)
        xf = x.flatten(1)
        return (xf + torch.maximum(lo, -r)).view_as(x), (xf + torch.minimum(hi, r)).view_as(x)

    @_numpy_compatible
    def contains(self, x_adv, x, atol: float = 1e-6):
        """Bool per example: is ``x_adv`` in B(x), up to ``atol`` in the norm and in the box."""
        delta = (x_adv - x).flatten(1)
        lo, hi = self._delta_box(x)
        in_ball = torch.linalg.vector_norm(delta, ord=norm_order(self.norm), dim=1) <= self._radius(x)[:, 0] + atol
        in_box = ((delta >= lo - atol) & (delta <= hi + atol)).all(dim=1)
        return in_ball & in_box

    @_numpy_compatible
    def project(self, x_adv, x):
        r"""Euclidean projection of ``x_adv`` onto B(x), exact for all three norms.

        ℓ∞: a clip. ℓ2: :math:`\delta = \mathrm{clip}(t z)` with the largest :math:`t \le 1` inside the ball.
        ℓ1: :math:`\delta_i = \mathrm{clip}(\mathrm{soft}(z_i, \mu))` with the smallest feasible multiplier
        :math:`\mu \ge 0`. Here :math:`z = x_{adv} - x` and the clip is to the box.
        """
        z = (x_adv - x).flatten(1)
        lo, hi = self._delta_box(x)
        r = self._radius(x)
        if self.norm == "inf":
            delta = torch.clamp(z, torch.maximum(lo, -r), torch.minimum(hi, r))
        else:
            # the breakpoint search runs in float64 (float32 cumulative sums over 2d breakpoints drift by ~1e-4)
            wide = torch.float64 if z.dtype in (torch.float16, torch.bfloat16, torch.float32) else z.dtype
            solve = _l2_clipped_scaling if self.norm == 2 else _l1_box_projection
            kwargs = {"t_max": 1.0} if self.norm == 2 else {}
            delta = solve(z.to(wide), lo.to(wide), hi.to(wide), r.to(wide), **kwargs).to(z.dtype)
            delta = _shrink_into_ball(delta, r, norm_order(self.norm))
        return (x.flatten(1) + delta).view_as(x)

    @_numpy_compatible
    def random(self, x, generator: torch.Generator | None = None):
        """A random point of B(x) per example: uniform for ℓ∞; uniform in the ball, then clipped to the box,
        for ℓ2 and ℓ1 (clipping toward the centre keeps the point in the ball)."""
        xf = x.flatten(1)
        n, d = xf.shape
        r = self._radius(x)
        lo, hi = self._delta_box(x)
        if self.norm == "inf":
            lo, hi = torch.maximum(lo, -r), torch.minimum(hi, r)
            u = torch.rand(xf.shape, generator=generator, dtype=x.dtype, device=x.device)
            delta = lo + u * (hi - lo)
        else:
            if self.norm == 2:
                direction = torch.randn(xf.shape, generator=generator, dtype=x.dtype, device=x.device)
            else:  # normalized Laplace samples are uniform on the ℓ1 sphere's simplex faces
                e = torch.empty(xf.shape, dtype=x.dtype, device=x.device).exponential_(generator=generator)
                sign = torch.randint(0, 2, xf.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
                direction = e * sign
            direction = direction / torch.linalg.vector_norm(direction, ord=norm_order(self.norm), dim=1,
                                                             keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            radius = r * torch.rand((n, 1), generator=generator, dtype=x.dtype, device=x.device) ** (1.0 / d)
            delta = torch.clamp(direction * radius, lo, hi)
        return (xf + delta).view_as(x)

    def steepest_ascent(self, grad, k: int = 1):
        r"""Unit-norm direction :math:`d` (in the ball's norm) maximizing :math:`\langle g, d \rangle`, per example.

        ℓ∞: ``sign(g)``. ℓ2: ``g / ||g||_2``. ℓ1: the ``k`` largest :math:`|g_i|` each get ``sign(g_i) / k``
        (``k=1`` is the exact maximizer, Shaham et al.'s single-coordinate step; larger ``k`` spreads the
        step, as sparse ℓ1 attacks do). A zero gradient gives a zero direction.
        """
        if isinstance(grad, np.ndarray):
            return self.steepest_ascent(torch.from_numpy(grad), k).numpy()
        g = grad.flatten(1)
        if self.norm == "inf":
            d = torch.sign(g)
        elif self.norm == 2:
            d = g / torch.linalg.vector_norm(g, dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
        else:
            k = int(min(max(k, 1), g.shape[1]))
            idx = g.abs().topk(k, dim=1).indices
            d = torch.zeros_like(g).scatter_(1, idx, torch.sign(g.gather(1, idx)) / k)
        return d.view_as(grad)

    @_numpy_compatible
    def support(self, c, x):
        r"""The support function :math:`\max_{x' \in B(x)} \langle c, x' \rangle`, exact.

        ``x`` has shape (n, *s) and ``c`` shape (n, *s) or (n, m, *s) (m objectives per example);
        the result has shape (n,) or (n, m). Minimize with ``-support(-c, x)``.
        """
        delta, cf, xf = self._support_delta(c, x)
        return ((cf * delta).sum(-1) + (cf * xf.unsqueeze(1)).sum(-1)).reshape(c.shape[: c.dim() - x.dim() + 1])

    @_numpy_compatible
    def support_point(self, c, x):
        """The maximizer of :meth:`support`, shape of ``c``: a point of B(x) for each objective."""
        delta, _, xf = self._support_delta(c, x)
        return (xf.unsqueeze(1) + delta).reshape(c.shape)

    def _support_delta(self, c, x):
        n = x.shape[0]
        xf = x.flatten(1)
        d = xf.shape[1]
        if c.shape[0] != n or c.shape[c.dim() - x.dim() + 1:] != x.shape[1:]:
            raise ValueError(f"c must have shape (n, *s) or (n, m, *s) for x of shape {tuple(x.shape)}; "
                             f"got {tuple(c.shape)}")
        cf = c.reshape(n, -1, d).to(x.dtype)
        lo, hi = (b.unsqueeze(1) for b in self._delta_box(x))
        r = self._radius(x).unsqueeze(1)  # (n, 1, 1)
        if self.norm == "inf":
            delta = torch.where(cf > 0, torch.minimum(hi, r), torch.where(cf < 0, torch.maximum(lo, -r), 0.0))
        elif self.norm == 2:
            delta = _l2_clipped_scaling(cf, lo, hi, r, t_max=np.inf)
        else:
            delta = _l1_box_greedy(cf, lo, hi, r)
        return delta, cf, xf


def _flat_side(bound, x, name):
    """A box side (tensor or array) broadcast to the batch x (n, *s), or given as rows (n or 1, d) of the flat
    batch, as a tensor (n, d)."""
    b = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    flat_shape = (x.shape[0], int(np.prod(x.shape[1:])))
    if b.dim() == 2 and b.shape[1] == flat_shape[1] and b.shape[0] in (1, flat_shape[0]):
        return b.expand(flat_shape)
    try:
        return torch.broadcast_to(b, x.shape).reshape(flat_shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(b.shape)} does not broadcast to the batch of shape "
                         f"{tuple(x.shape)} (nor is it rows of its flat shape {flat_shape})") from None


def _shrink_into_ball(delta, r, order):
    """Scale rows of ``delta`` whose norm exceeds ``r`` by rounding back onto the sphere (toward the
    centre, so the box still holds)."""
    size = torch.linalg.vector_norm(delta, ord=order, dim=-1, keepdim=True)
    return torch.where(size > r, delta * (r / size.clamp_min(torch.finfo(delta.dtype).tiny)), delta)


def _l2_clipped_scaling(z, lo, hi, r, t_max):
    r""":math:`\mathrm{clip}(t z, lo, hi)` with the largest :math:`t \in [0, t_{max}]` such that its ℓ2 norm is <= r.

    The norm of :math:`\mathrm{clip}(tz)` is nondecreasing in t (lo <= 0 <= hi); with the coordinates
    sorted by the time :math:`\tau_i = cap_i / |z_i|` at which they saturate,
    :math:`\|\mathrm{clip}(tz)\|^2 = \sum_{\tau_i \le t} cap_i^2 + t^2 \sum_{\tau_i > t} z_i^2`, a quadratic in t
    on each segment. Solves both the support function (t_max = inf) and the projection (t_max = 1).
    Shapes: z (..., d), lo / hi broadcastable to z, r broadcastable to z[..., :1].
    """
    lo, hi = torch.broadcast_to(lo, z.shape), torch.broadcast_to(hi, z.shape)
    a = z.abs()
    cap = torch.where(z > 0, hi, -lo)
    tau = torch.where(a > 0, cap / torch.where(a > 0, a, 1.0), torch.full_like(a, np.inf))
    tau, order = tau.sort(dim=-1)
    cap2 = cap.gather(-1, order) ** 2
    a2 = a.gather(-1, order) ** 2
    zero = torch.zeros_like(a2[..., :1])
    saturated = torch.cat([zero, cap2.cumsum(-1)], -1)  # sum of cap^2 over the first k, k = 0..d
    free = a2.sum(-1, keepdim=True) - torch.cat([zero, a2.cumsum(-1)], -1)  # sum of a^2 over the rest
    free = free.clamp_min(0.0)
    r2 = torch.as_tensor(r, dtype=z.dtype, device=z.device) ** 2
    # norm^2 at each breakpoint (k coordinates saturated); infinite breakpoints are never reached
    at_break = torch.where(torch.isinf(tau), torch.full_like(tau, np.inf), saturated[..., 1:] + tau ** 2 * free[..., 1:])
    k = (at_break <= r2).sum(-1, keepdim=True)
    s_k, f_k = saturated.gather(-1, k), free.gather(-1, k)
    t = torch.where(f_k > 0, torch.sqrt((r2 - s_k).clamp_min(0.0) / torch.where(f_k > 0, f_k, 1.0)),
                    torch.full_like(f_k, np.inf))
    t = torch.clamp(t, max=t_max)
    scaled = torch.where(torch.isinf(t), torch.sign(z) * np.inf, t * z)
    return torch.where(a > 0, torch.clamp(scaled, lo, hi), torch.zeros_like(z))


def _l1_box_greedy(c, lo, hi, r):
    r"""Maximizer of :math:`\langle c, \delta \rangle` over :math:`\|\delta\|_1 \le r,\ lo \le \delta \le hi`.

    A fractional knapsack: spend the budget r on coordinates in decreasing order of :math:`|c_i|`, each up
    to its capacity in the direction of :math:`\mathrm{sign}(c_i)`. Exact.
    """
    lo, hi = torch.broadcast_to(lo, c.shape), torch.broadcast_to(hi, c.shape)
    cap = torch.where(c > 0, hi, torch.where(c < 0, -lo, torch.zeros_like(c)))
    order = c.abs().argsort(dim=-1, descending=True)
    cap_sorted = cap.gather(-1, order)
    before = torch.cat([torch.zeros_like(cap_sorted[..., :1]), cap_sorted.cumsum(-1)[..., :-1]], -1)
    amount_sorted = torch.minimum((r - before).clamp_min(0.0), cap_sorted)
    amount = torch.zeros_like(c).scatter_(-1, order, amount_sorted)
    return torch.sign(c) * amount


def _l1_box_projection(z, lo, hi, r):
    r"""Projection of z onto :math:`\{\delta : \|\delta\|_1 \le r,\ lo \le \delta \le hi\}`.

    :math:`\delta_i(\mu) = \mathrm{sign}(z_i) \min(cap_i, \max(|z_i| - \mu, 0))`; its ℓ1 norm
    :math:`g(\mu)` is piecewise linear and nonincreasing, with slope changes at
    :math:`\max(|z_i| - cap_i, 0)` (slope -1 more) and :math:`|z_i|` (slope +1). Sorting these
    breakpoints gives g at each of them, hence the exact :math:`\mu` with :math:`g(\mu) = r`.
    """
    a = z.abs()
    cap = torch.where(z > 0, hi, -lo)
    clipped = torch.minimum(a, cap)
    g0 = clipped.sum(-1, keepdim=True)
    r = torch.as_tensor(r, dtype=z.dtype, device=z.device).expand_as(g0)
    if bool((g0 <= r).all()):
        return torch.sign(z) * clipped
    points = torch.cat([(a - cap).clamp_min(0.0), a], -1)
    deltas = torch.cat([-torch.ones_like(a), torch.ones_like(a)], -1)
    points, order = points.sort(dim=-1)
    slope = deltas.gather(-1, order).cumsum(-1)  # slope of g right after each breakpoint
    steps = slope[..., :-1] * points.diff(dim=-1)
    g = torch.cat([g0, g0 + steps.cumsum(-1)], -1)  # g at each breakpoint (constant before the first)
    j = (g > r).sum(-1, keepdim=True).clamp(1, points.shape[-1]) - 1  # last breakpoint with g > r
    g_j, p_j, s_j = g.gather(-1, j), points.gather(-1, j), slope.gather(-1, j)
    mu = p_j + (g_j - r) / torch.where(s_j < 0, -s_j, 1.0)
    mu = torch.where(g0 <= r, torch.zeros_like(mu), mu)
    return torch.sign(z) * torch.minimum(cap, (a - mu).clamp_min(0.0))
