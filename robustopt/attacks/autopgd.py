r"""APGD: the step-size-adaptive PGD of Croce & Hein (ICML 2020), with its cross-entropy and DLR losses and
the multi-targeted mode.

From :math:`x^0`, with :math:`\eta^0 = 2\varepsilon` and momentum :math:`\alpha = 0.75`,

.. math::
    z^{k+1} = P(x^k + \eta^k s(\nabla L(x^k))), \qquad
    x^{k+1} = P\big(x^k + \alpha (z^{k+1} - x^k) + (1 - \alpha)(x^k - x^{k-1})\big)

(:math:`\alpha = 1` on the first step). At checkpoints :math:`w_j` (after 22% of the steps, then intervals
shrinking by 3% of the steps down to 6%), an example whose loss rose on at most :math:`\rho = 75\%` of the steps
since the last checkpoint, or whose best loss and step did not change, halves its step and restarts from its
best point. DLR: :math:`-(f_y - \max_{j \ne y} f_j) / (f_{\pi_1} - f_{\pi_3})` with sorted logits
:math:`f_{\pi_1} \ge f_{\pi_2} \ge \dots`; its targeted form :math:`-(f_y - f_t) / (f_{\pi_1} - (f_{\pi_3} +
f_{\pi_4}) / 2)`. Invariant to shifting and scaling the logits.
"""
from __future__ import annotations

import functools

import torch

from .._validation import check_positive_int
from ._common import ascent_direction, forward, forward_backward, project, run_attack, setup

__all__ = ["apgd"]


def apgd(model, x, y, eps, norm="inf", steps=100, restarts=1, loss="ce", targeted=None, n_targets=None,
         lower=0.0, upper=1.0, random_start=True, early_stop=False, seed=None, rho=0.75):
    r"""Auto-PGD (Croce & Hein 2020): PGD with momentum and a step size that adapts per example.

    Arguments as in :func:`robustopt.attacks.pgd`, plus:

    loss : ``"ce"``, ``"dlr"`` (needs >= 3 classes, >= 4 when targeted or multi-targeted) or ``"margin"``.
    n_targets : multi-targeted mode (APGD-T): for each example, one run against each of its ``n_targets``
        highest-scoring wrong classes at ``x``, minimizing the pairwise margin :math:`f_y - f_t` (with the
        targeted DLR or CE toward t); success means misclassified, and the point with the lowest margin over all
        runs is kept. Cannot be combined with ``targeted``.
    rho : the checkpoint test's fraction of loss increases (0.75 in the paper).
    early_stop : examples already fooled skip the later restarts / target runs (each run itself goes on).

    ``steps`` counts gradient evaluations per run (plus one forward at the end). The step rule is the paper's
    for ℓ∞ and ℓ2; for ℓ1 the same scheme runs with the sparse top-coordinate step of :func:`pgd` (not the
    paper's dedicated ℓ1 variant). Returns an :class:`AttackResult` with the best point per example.
    """
    problem = setup(model, x, y, eps, norm, lower, upper, targeted)
    steps = check_positive_int(steps, "steps")
    if not (isinstance(rho, (int, float)) and 0 < rho <= 1):
        raise ValueError(f"rho must be in (0, 1]; got {rho!r}")
    return run_attack(problem, functools.partial(_apgd_run, steps=steps, rho=rho), loss=loss, n_targets=n_targets,
                      restarts=restarts, random_start=random_start, early_stop=early_stop, seed=seed)


def _checkpoints(steps):
    """Iterations after which the step-size test runs: 22% of the steps, then shrinking intervals."""
    first, shrink, smallest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, at, interval = [], first, first
    while at < steps:
        points.append((at, interval))
        interval = max(interval - shrink, smallest)
        at += interval
    return dict(points)


def _where(mask, a, b):
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def _apgd_run(problem, objective, x_adv, record, idx, steps, rho):
    """One APGD run from ``x_adv``; every iterate is offered to ``record``."""
    model = problem.model
    if idx is not None:
        problem, objective, x_adv = problem.subset(idx), objective.subset(idx), x_adv[idx]
    x0, ball = problem.x, problem.ball
    n = x0.shape[0]
    shape = (-1,) + (1,) * (x0.dim() - 1)
    lo, hi = problem.lo, problem.hi
    eta = (2 * torch.as_tensor(ball.eps, dtype=x0.dtype, device=x0.device)).expand(n).clone().view(shape)

    logits, loss, grad = forward_backward(model, objective, x_adv)
    record.observe(idx, x_adv, logits, loss, objective)
    best_loss, x_best, grad_best = loss.clone(), x_adv.clone(), grad.clone()
    best_loss_at_check = best_loss.clone()
    reduced_at_check = torch.zeros(n, dtype=torch.bool, device=x0.device)
    increases = torch.zeros(n, dtype=x0.dtype, device=x0.device)
    previous_loss, x_prev = loss, x_adv
    checkpoints = _checkpoints(steps)
    for k in range(steps):
        with torch.no_grad():
            z = project(ball, x_adv + eta * ascent_direction(ball, grad, x_adv, lo, hi), x0, lo, hi)
            if k > 0:
                z = project(ball, x_adv + 0.75 * (z - x_adv) + 0.25 * (x_adv - x_prev), x0, lo, hi)
        x_prev, x_adv = x_adv, z
        if k == steps - 1:
            logits, loss = forward(model, objective, x_adv)
        else:
            logits, loss, grad = forward_backward(model, objective, x_adv)
        record.observe(idx, x_adv, logits, loss, objective)
        increases += (loss > previous_loss).to(increases.dtype)
        previous_loss = loss
        improved = loss > best_loss
        best_loss = torch.where(improved, loss, best_loss)
        x_best, grad_best = _where(improved, x_adv, x_best), _where(improved, grad, grad_best)
        if k + 1 in checkpoints:
            interval = checkpoints[k + 1]
            oscillating = increases <= rho * interval
            stalled = ~reduced_at_check & (best_loss_at_check >= best_loss)
            reduce = oscillating | stalled
            reduced_at_check, best_loss_at_check = reduce, best_loss.clone()
            eta = torch.where(reduce.view(shape), eta / 2, eta)
            x_adv, grad = _where(reduce, x_best, x_adv), _where(reduce, grad_best, grad)
            x_prev = _where(reduce, x_adv, x_prev)
            increases.zero_()
