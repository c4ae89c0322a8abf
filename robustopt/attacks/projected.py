r"""FGSM and projected gradient descent on the inner maximization.

For a batch ``x`` (n, ...) with labels ``y`` and the set :math:`B(x) = \{x' : \|x'-x\|_p \le \varepsilon,\
\mathrm{lower} \le x' \le \mathrm{upper}\}` (:class:`robustopt.sets.Ball`), PGD iterates

.. math::  x^{k+1} = P_{B(x)}\big(x^k + \alpha\, s(\nabla_x L(f(x^k)))\big)

with :math:`s` the steepest-ascent direction of the norm (sign for ℓ∞, :math:`g/\|g\|_2` for ℓ2; for ℓ1 the
``max(1, d // 100)`` largest gradient coordinates, skipping those pinned at the box) and :math:`P` the exact
projection onto ball ∩ box. Every returned point lies in B(x), so its margin is an upper bound on the minimum
margin over the ball.
"""
from __future__ import annotations

import functools

import torch

from .._validation import check_positive_int
from ._common import ascent_direction, forward, forward_backward, margin, run_attack, scaled, setup, step_sizes

__all__ = ["fgsm", "pgd"]


def fgsm(model, x, y, eps, norm="inf", lower=0.0, upper=1.0, targeted=None, loss="ce"):
    r"""Fast gradient sign method (Goodfellow et al.): one step of length ``eps`` in the steepest-ascent
    direction from ``x``, projected onto ball ∩ box. For ℓ∞ that is :math:`\mathrm{clip}(x + \varepsilon\,
    \mathrm{sign}(\nabla_x L))`; for ℓ2 the normalized gradient, for ℓ1 the top coordinates.

    Arguments as in :func:`pgd`. Returns an :class:`AttackResult`.
    """
    problem = setup(model, x, y, eps, norm, lower, upper, targeted)
    lengths = [scaled(problem.ball.eps, 1.0, problem.x)]
    return run_attack(problem, functools.partial(_ascend, steps=lengths, early_stop=False), loss=loss,
                      random_start=False, seed=0)


def pgd(model, x, y, eps, norm="inf", steps=40, step_size=None, restarts=1, random_start=True, targeted=None,
        loss="ce", lower=0.0, upper=1.0, early_stop=False, seed=None, n_targets=None):
    r"""Projected gradient descent (Madry et al.) with exact projection onto ball ∩ box.

    Parameters
    ----------
    model : nn.Module mapping (n, ...) to logits (n, k). Put in eval mode for the attack, then restored; its
        parameters get no gradients. The attack runs on the model's device and dtype (``x`` is moved / cast).
    x : tensor (n, ...) inside [lower, upper]; never modified. y : int labels (n,).
    eps : radius >= 0, a number or a tensor (n,). norm : ``"inf"``, ``2`` or ``1``.
    steps : gradient steps per restart. step_size : a number or tensor (n,), the same at every step; ``None``
        means a schedule that converges: geometric decay from ``eps / 4`` to ``eps / 80`` over the run (the
        path, about ``0.08 * steps * eps`` long, grows with ``steps``; a linear model's worst case is reached
        to 1e-4 in 200 steps for ℓ∞ and ℓ2).
    restarts : independent runs; restart r starts from the point drawn by a generator seeded with
        ``(seed, r)``, whatever ``restarts`` is, and the point with the lowest margin (targeted: the largest
        lead of the target) is kept per example, so more restarts are never worse.
    random_start : start restart 0 at a random point of the ball (``False``: at ``x``; later restarts are
        random either way).
    targeted : None, or target labels (n,) to reach (success = the target is an argmax).
    loss : ``"ce"`` (cross-entropy), ``"margin"`` (Carlini–Wagner :math:`\max_{j \ne y} f_j - f_y`, targeted
        :math:`f_t - \max_{j \ne t} f_j`; usually stronger), or ``"dlr"`` (see :func:`apgd`).
    lower, upper : the input box (default [0, 1]; ``None`` = unbounded; tensors broadcastable to x).
    early_stop : stop iterating on examples as soon as they are fooled (their point is kept as found). Saves time;
        off by default, so the margin keeps decreasing.
    seed : int for reproducible random starts; ``None`` draws one from torch's global generator.
    n_targets : multi-targeted mode (Gowal et al. 2019): one run per each of the ``n_targets`` highest-scoring
        wrong classes, minimizing the pairwise margin :math:`f_y - f_t`; the lowest margin over the runs is kept.
        On a linear model with loss ``"margin"`` this reaches the exact worst case for any number of classes.

    Returns an :class:`AttackResult` (on the model's device).
    """
    problem = setup(model, x, y, eps, norm, lower, upper, targeted)
    steps = check_positive_int(steps, "steps")
    lengths = step_sizes(step_size, problem.ball, steps, problem.x)
    return run_attack(problem, functools.partial(_ascend, steps=lengths, early_stop=early_stop), loss=loss,
                      n_targets=n_targets, restarts=restarts, random_start=random_start, early_stop=early_stop,
                      seed=seed)


def _ascend(problem, objective, x_adv, record, idx, steps, early_stop):
    """Run projected steps of lengths ``steps`` (a list) from ``x_adv`` (owned here, updated in place) and offer
    the final points to ``record``. With ``early_stop``, examples leave the batch at the first iterate that fools
    the model."""
    model, x0, ball = problem.model, problem.x, problem.ball
    if idx is not None:  # work on the examples still standing only
        problem, objective, x_adv = problem.subset(idx), objective.subset(idx), x_adv[idx]
        x0, ball, steps = problem.x, problem.ball, _rows(steps, idx)
    lo, hi = problem.lo, problem.hi
    for k in range(len(steps)):
        logits, loss, grad = forward_backward(model, objective, x_adv)
        if early_stop:
            done = objective.score(logits, margin(logits, objective.y, objective.mask_y)) <= 0
            if bool(done.any()):
                record.observe(idx[done], x_adv[done], logits[done], loss[done], objective.subset(done))
                keep = ~done
                if not bool(keep.any()):
                    return
                idx, x_adv, grad = idx[keep], x_adv[keep], grad[keep]
                problem, objective, steps = problem.subset(keep), objective.subset(keep), _rows(steps, keep)
                x0, ball, lo, hi = problem.x, problem.ball, problem.lo, problem.hi
        x_adv = _step(ball, x_adv, grad, x0, steps[k], lo, hi)
    logits, loss = forward(model, objective, x_adv)
    record.observe(idx, x_adv, logits, loss, objective)


def _step(ball, x_adv, grad, x0, step, lo, hi):
    """One projected steepest-ascent step. ℓ∞ runs in place with no allocation: sign, add, clamp to the box."""
    if ball.norm == "inf":
        grad.sign_()
        if isinstance(step, float):
            x_adv.add_(grad, alpha=step)
        else:
            x_adv.addcmul_(grad, step)
        return x_adv.clamp_(lo, hi)
    with torch.no_grad():
        return ball.project(x_adv + step * ascent_direction(ball, grad, x_adv, lo, hi), x0)


def _rows(steps, keep):
    """Per-step lengths restricted to some examples (tensor lengths are per example)."""
    return [s if isinstance(s, float) else s[keep] for s in steps]
