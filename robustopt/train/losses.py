r"""The training objective of each method on one batch: how the inner maximization is solved or bounded.

Every method minimizes an estimate of the robust loss :math:`\max_{x' \in B(x)} L(f(x'), y)` over the
ball :math:`B(x) = \{x' : \|x' - x\| \le \varepsilon,\ lower \le x' \le upper\}`. By Danskin's theorem
the gradient of that maximum is the gradient at a maximizer, so the attack-based methods find a point
(without tracking its dependence on the weights) and descend on the loss there; the certified methods
replace the maximum by a differentiable upper bound from :mod:`robustopt.verify`.

A method is a function ``loss(model, x, y, ctx) -> (loss, clean_logits or None)``: the scalar batch
objective (with its graph) and, when the method computed them anyway, the clean logits (for the running
accuracy). ``ctx`` is a :class:`Context`: the current radius, the ball, the options and the ramp position.
The model is in training mode when called; attack steps run in eval mode (the attacks switch it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import attacks
from ..attacks._common import ascent_direction, eval_mode, project
from ..sets import Ball
from ..verify import network, run_method
from ..verify.api import margin_spec

__all__ = ["Context", "Method", "METHODS", "worst_case_logits"]


@dataclass
class Context:
    """One batch's settings: radius ``eps`` (after the ε schedule), ``norm``, the box, ``ramp`` (position in
    the ε ramp, 0 to 1, driving κ and the CROWN weight), a ``seed`` for random starts, the method options."""

    eps: float
    norm: str
    lower: object
    upper: object
    ramp: float = 1.0
    seed: int = 0
    options: dict = field(default_factory=dict)

    @property
    def ball(self) -> Ball:
        return Ball(self.eps, self.norm, self.lower, self.upper)

    def ramped(self, name: str) -> float:
        """A (start, end) option at the current ramp position."""
        first, last = self.options[name]
        return first + (last - first) * self.ramp


def _cross_entropy_at(model, x_adv, y):
    return F.cross_entropy(model(x_adv), y), None


# ---------------------------------------------------------------------------------------------- attack-based
def standard(model, x, y, ctx):
    """Empirical risk: :math:`\\mathrm{CE}(f(x), y)`."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def _input_gradient(model, x, y):
    r""":math:`\nabla_x \sum_i \mathrm{CE}(f(x_i), y_i)` in eval mode, without parameter gradients."""
    with eval_mode(model):
        x_req = x.detach().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    return grad


def _one_step(model, x, y, ctx, start, length):
    """``start`` plus one steepest-ascent step of ``length`` on the cross-entropy, projected onto ball ∩ box
    around x: the step of :func:`robustopt.attacks.pgd`, without the attack's argument checks and final
    scoring pass (one forward + backward in all)."""
    ball = ctx.ball
    lo, hi = ball.box(x)
    grad = _input_gradient(model, start, y)
    return project(ball, start + length * ascent_direction(ball, grad, start, lo, hi), x, lo, hi).detach()


def fgsm(model, x, y, ctx):
    """One step of length ε in the steepest-ascent direction from x (Goodfellow et al.), projected."""
    if ctx.eps == 0:
        return standard(model, x, y, ctx)
    return _cross_entropy_at(model, _one_step(model, x, y, ctx, x, ctx.eps), y)


def fgsm_rs(model, x, y, ctx):
    """A uniform random start in the ball, then one step of length ``alpha * eps`` (Wong, Rice, Kolter)."""
    if ctx.eps == 0:
        return standard(model, x, y, ctx)
    start = ctx.ball.random(x, generator=torch.Generator(device=x.device).manual_seed(ctx.seed))
    return _cross_entropy_at(model, _one_step(model, x, y, ctx, start, ctx.options["alpha"] * ctx.eps), y)


def _step_size(ctx):
    step = ctx.options["step_size"]
    return 2.5 * ctx.eps / ctx.options["steps"] if step is None else step


def pgd(model, x, y, ctx):
    """k-step PGD with a random start (Madry et al.); with restarts, the lowest-margin point per example."""
    if ctx.eps == 0:
        return standard(model, x, y, ctx)
    x_adv = attacks.pgd(model, x, y, ctx.eps, ctx.norm, steps=ctx.options["steps"], step_size=_step_size(ctx),
                        restarts=ctx.options["restarts"], random_start=True, lower=ctx.lower, upper=ctx.upper,
                        seed=ctx.seed).x_adv
    return _cross_entropy_at(model, x_adv, y)


def _kl(logits_p, logits_q, reduction="batchmean"):
    """KL(softmax(p) || softmax(q)) per batch (``batchmean``) or summed."""
    return F.kl_div(F.log_softmax(logits_q, 1), F.softmax(logits_p, 1), reduction=reduction)


def trades_point(model, x, ctx):
    r"""TRADES' inner maximization: PGD on :math:`\mathrm{KL}(f(x) \| f(x'))` from x plus N(0, 0.001²) noise,
    in eval mode, with steepest-ascent steps and exact projection onto ball ∩ box."""
    ball = ctx.ball
    generator = torch.Generator(device=x.device).manual_seed(ctx.seed)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = ball.project(x + 0.001 * noise, x)
    step = _step_size(ctx)
    with eval_mode(model):
        with torch.no_grad():
            clean = model(x)
        for _ in range(ctx.options["steps"]):
            x_adv.requires_grad_(True)
            grad, = torch.autograd.grad(_kl(clean, model(x_adv), "sum"), x_adv)
            with torch.no_grad():
                x_adv = ball.project(x_adv + step * ball.steepest_ascent(grad), x)
    return x_adv.detach()


def trades(model, x, y, ctx):
    r""":math:`\mathrm{CE}(f(x), y) + \beta\,\mathrm{KL}(f(x) \| f(x'))` (Zhang et al.); gradients flow through both."""
    x_adv = trades_point(model, x, ctx) if ctx.eps > 0 else x
    logits = model(x)
    return F.cross_entropy(logits, y) + ctx.options["beta"] * _kl(logits, model(x_adv)), logits


def onestep(model, x, y, ctx):
    r"""Shaham et al.: maximize the loss's linearization over the uncertainty set, then descend there.

    :math:`x' = \arg\max_{x' \in B(x)} \langle \nabla_x L, x' \rangle` (``Ball.support_point``): without a box
    that is one full step along sign(g) (ℓ∞), g/‖g‖₂ (ℓ2) or the single largest coordinate (ℓ1); with the box,
    the exact maximizer over ball ∩ box.
    """
    if ctx.eps == 0:
        return standard(model, x, y, ctx)
    x_adv = ctx.ball.support_point(_input_gradient(model, x, y), x).detach()
    return _cross_entropy_at(model, x_adv, y)


# ---------------------------------------------------------------------------------------------- certified
def margin_spec_network(model, x, y):
    """The canonical network of ``model`` (weights attached to its parameters, in x's dtype) with the
    specification rows :math:`e_y - e_j`, j != y (:func:`robustopt.verify.api.margin_spec`), folded into the
    last layer: its outputs are the k - 1 margins."""
    net = network(model, input_shape=tuple(x.shape[1:]), dtype=x.dtype, keep_graph=True)
    return net.with_spec(margin_spec(y, net.out_features, x.dtype))


def worst_case_logits(margin_lower: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Logits :math:`z_y = 0`, :math:`z_j = -\underline m_j` from lower bounds (n, k - 1) on the margins
    :math:`m_j = f_y - f_j` (in the order of ``margin_spec``): then
    :math:`\mathrm{CE}(z, y) \ge \max_{x' \in B} \mathrm{CE}(f(x'), y)` (Wong & Kolter; Gowal et al.). Shape (n, k)."""
    n, k = margin_lower.shape[0], margin_lower.shape[1] + 1
    others = torch.ones(n, k, dtype=torch.bool, device=y.device).scatter_(1, y.view(n, 1), False)
    return margin_lower.new_zeros(n, k).masked_scatter(others, -margin_lower)


def _certified_mixture(model, x, y, ctx, margin_lower_fn):
    """κ·CE(f(x), y) + (1 − κ)·CE(worst-case logits, y), κ ramped from its start to its end value."""
    logits = model(x)
    clean = F.cross_entropy(logits, y)
    kappa = ctx.ramped("kappa")
    if ctx.eps == 0 or kappa == 1:  # at eps = 0 the bounds are the exact margins: the loss is the clean one
        return clean, logits
    robust = F.cross_entropy(worst_case_logits(margin_lower_fn(model, x, y, ctx), y), y)
    return kappa * clean + (1 - kappa) * robust, logits


def ibp_margins(model, x, y, ctx):
    """IBP lower bounds on the margins, (n, k - 1), differentiable in the weights."""
    return run_method("ibp", margin_spec_network(model, x, y), x, ctx.ball, compute_upper=False).lower


def crown_ibp_margins(model, x, y, ctx):
    r"""CROWN-IBP (Zhang et al.): :math:`w\,\underline m_{CROWN\text{-}IBP} + (1 - w)\,\underline m_{IBP}`, where
    CROWN-IBP is CROWN's backward pass over IBP's intermediate bounds and w ramps from its start to its end."""
    net = margin_spec_network(model, x, y)
    ibp = run_method("ibp", net, x, ctx.ball, compute_upper=False, return_intermediate=True)
    weight = ctx.ramped("crown_weight")
    if weight == 0:
        return ibp.lower
    crown = run_method("crown", net, x, ctx.ball, compute_upper=False, intermediate=ibp.intermediate).lower
    return weight * crown + (1 - weight) * ibp.lower


def ibp(model, x, y, ctx):
    """Interval bound propagation training (Gowal et al.)."""
    return _certified_mixture(model, x, y, ctx, ibp_margins)


def crown_ibp(model, x, y, ctx):
    """CROWN-IBP training (Zhang et al.)."""
    return _certified_mixture(model, x, y, ctx, crown_ibp_margins)


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Method:
    """A training method: its batch loss, its options with defaults, and whether it trains on certified
    bounds (then its ε ramp is on by default)."""

    loss: object
    defaults: dict
    certified: bool = False


METHODS = {
    "standard": Method(standard, {}),
    "fgsm": Method(fgsm, {}),
    "fgsm_rs": Method(fgsm_rs, {"alpha": 1.25}),
    "pgd": Method(pgd, {"steps": 10, "step_size": None, "restarts": 1}),
    "trades": Method(trades, {"beta": 6.0, "steps": 10, "step_size": None}),
    "onestep": Method(onestep, {}),
    "ibp": Method(ibp, {"kappa": (1.0, 0.5)}, certified=True),
    "crown_ibp": Method(crown_ibp, {"kappa": (1.0, 0.5), "crown_weight": (1.0, 0.0)}, certified=True),
}
