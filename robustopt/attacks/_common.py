"""What every attack shares: argument checks, losses, the eval-mode guard, seeding, and the per-example
record of the best point found."""
from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice, check_eps, check_positive_int
from ..models import as_inputs, as_labels, model_device, model_dtype
from ..sets import Ball

LOSSES = ("ce", "margin", "dlr")


# ---------------------------------------------------------------------------------------------- margins, losses
def margin(logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Per-example :math:`f_{label} - \max_{j \ne label} f_j` (shape (n,)). ``mask``: one-hot of ``label``."""
    if mask is None:
        mask = F.one_hot(label, logits.shape[1]).bool()
    own = logits.gather(1, label[:, None])[:, 0]
    return own - logits.masked_fill(mask, -math.inf).amax(1)


def _dlr_scale(logits, targeted: bool):
    """DLR's denominator: f_pi1 - f_pi3 (untargeted) or f_pi1 - (f_pi3 + f_pi4) / 2 (targeted), sorted logits."""
    top = logits.topk(4 if targeted else 3, dim=1).values
    low = 0.5 * (top[:, 2] + top[:, 3]) if targeted else top[:, 2]
    return top[:, 0] - low + 1e-12


class Objective:
    """The loss an attack maximizes and the score it keeps the lowest of, for one batch.

    Goals: ``"untargeted"`` (score: the margin at y; success: margin <= 0), ``"targeted"`` (reach class t;
    score: :math:`\\max_{j \\ne t} f_j - f_t`; success: t is an argmax), ``"pairwise"`` (multi-targeted runs:
    minimize :math:`m_t = f_y - f_t`; score and success as untargeted).
    Losses to maximize: ``"ce"`` (cross-entropy; toward t: minus the cross-entropy at t), ``"margin"``
    (Carlini–Wagner: minus the score; pairwise: :math:`f_t - f_y`), ``"dlr"`` (Croce & Hein's difference of
    logits ratio; targeted and pairwise use its targeted form).
    """

    def __init__(self, loss, y, target, goal, classes):
        self.loss_name, self.y, self.target, self.goal = loss, y, target, goal
        self.mask_y = F.one_hot(y, classes).bool()
        self.mask_t = F.one_hot(target, classes).bool() if target is not None else None

    def subset(self, keep):
        new = object.__new__(Objective)
        new.loss_name, new.goal = self.loss_name, self.goal
        new.y, new.mask_y = self.y[keep], self.mask_y[keep]
        new.target = self.target[keep] if self.target is not None else None
        new.mask_t = self.mask_t[keep] if self.mask_t is not None else None
        return new

    def loss(self, logits):
        """Per-example loss (n,) to maximize."""
        name, y, t = self.loss_name, self.y, self.target
        if self.goal == "untargeted":
            if name == "ce":
                return F.cross_entropy(logits, y, reduction="none")
            m = margin(logits, y, self.mask_y)
            return -m if name == "margin" else -m / _dlr_scale(logits, False)
        if name == "ce":
            return -F.cross_entropy(logits, t, reduction="none")
        if self.goal == "targeted" and name == "margin":
            return margin(logits, t, self.mask_t)
        pair = logits.gather(1, t[:, None])[:, 0] - logits.gather(1, y[:, None])[:, 0]  # f_t - f_y
        return pair if name == "margin" else pair / _dlr_scale(logits, True)

    def score(self, logits, margin_y):
        """What is kept lowest per example; success iff <= 0 (a tie counts as success)."""
        return -margin(logits, self.target, self.mask_t) if self.goal == "targeted" else margin_y


def check_loss(loss, classes, goal):
    check_choice(loss, LOSSES, "loss")
    needed = 3 if goal == "untargeted" else 4
    if loss == "dlr" and classes < needed:
        raise ValueError(f"loss='dlr' needs at least {needed} classes here (the model has {classes}); use "
                         f"loss='ce' or 'margin'")
    return loss


# ---------------------------------------------------------------------------------------------- problem setup
@dataclass
class Problem:
    """One batch to attack: the model, centres ``x`` (n, ...), labels (and targets), the ball, the number of
    classes."""
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    ball: Ball  # batch-aligned (Ball.flat)
    classes: int
    lo: torch.Tensor  # elementwise bounds of B(x), shape of x (for ℓ∞, B(x) is exactly [lo, hi])
    hi: torch.Tensor

    def subset(self, keep):
        """The problem restricted to examples ``keep`` (bool mask or indices)."""
        return replace(self, x=self.x[keep], y=self.y[keep],
                       target=self.target[keep] if self.target is not None else None,
                       ball=self.ball.select(keep), lo=self.lo[keep], hi=self.hi[keep])

    def objective(self, loss, goal=None, target=None):
        goal = goal or ("targeted" if self.target is not None else "untargeted")
        return Objective(loss, self.y, target if target is not None else self.target, goal, self.classes)


def setup(model, x, y, eps, norm, lower, upper, targeted=None) -> Problem:
    """Validate an attack's arguments; the model's device and dtype decide where the work happens."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    device = model_device(model, default=x.device if isinstance(x, torch.Tensor) else None)
    dtype = model_dtype(model, default=x.dtype if isinstance(x, torch.Tensor) and x.is_floating_point() else None)
    x = as_inputs(x, "x", dtype=dtype, device=device).detach()
    n = x.shape[0]
    ball = Ball(eps, norm, lower, upper).flat(x)  # eps and box rows aligned with the batch, for subset()
    lo, hi = ball.box(x)
    if bool(((lo - x).amax() > 1e-6) | ((x - hi).amax() > 1e-6)):  # x outside [lower, upper]
        ball.check_center(x)  # raises, explaining
    with eval_mode(model), torch.no_grad():
        probe = model(x[:1])  # one example tells the number of classes
    if probe.dim() != 2 or probe.shape[0] != 1:
        raise ValueError(f"the model must output logits of shape (n, classes); got {tuple(probe.shape)} for one "
                         f"example")
    classes = probe.shape[1]
    y = as_labels(y, n, classes, "y", device=device)
    target = None
    if targeted is not None:
        target = as_labels(targeted, n, classes, "targeted", device=device)
        if bool((target == y).any()):
            raise ValueError("targeted must differ from y for every example (a target class other than the "
                             "true label)")
    return Problem(model, x, y, target, ball, classes, lo, hi)


def step_sizes(step_size, ball: Ball, steps: int, x: torch.Tensor):
    """Per-step step lengths, each a number or a tensor shaped to broadcast against x.

    ``step_size`` (a number or a tensor (n,)) is used at every step. ``None`` gives the default schedule: a
    geometric decay from ``eps / 4`` down to ``eps / 80`` at the last step, so early steps explore and late ones
    settle; the path length (about ``0.08 * steps * eps``) grows with ``steps``, so more steps converge further.
    """
    if step_size is None:
        base, decay = scaled(ball.eps, 0.25, x), (1 / 20) ** (1 / max(steps - 1, 1))
        return [base * decay ** k for k in range(steps)]
    value = check_eps(step_size, x.shape[0], name="step_size", like=x)
    if (isinstance(value, float) and value == 0) or (isinstance(value, torch.Tensor) and bool((value == 0).any())):
        raise ValueError("step_size must be > 0")
    return [scaled(value, 1.0, x)] * steps


def scaled(value, factor, x):
    """factor * value, a float or a tensor (n,) viewed as (n, 1, ...) on x's device / dtype."""
    if isinstance(value, torch.Tensor):
        return (factor * value).to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return factor * float(value)


# ---------------------------------------------------------------------------------------------- hygiene, seeds
@contextmanager
def eval_mode(model: nn.Module):
    """Run with every submodule in eval mode; restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    if any(flag for _, flag in flags):  # an eval-mode model (the usual case) is left alone
        model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            if m.training != flag:
                m.training = flag


def resolve_seed(seed) -> int:
    """``None``: a seed drawn from torch's global generator (so ``torch.manual_seed`` makes runs repeatable)."""
    if seed is None:
        return int(torch.randint(0, 2 ** 62, (1,)).item())
    return check_positive_int(seed, "seed", minimum=0)


def generator(seed: int, *stream: int, device=None) -> torch.Generator:
    """An independent generator for (seed, stream...): restart r gets the same one whatever ``restarts`` is."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2 ** 63 - 1))


def project(ball: Ball, z, x0, lo, hi):
    """Exact projection onto ball ∩ box; for ℓ∞ that set is the box [lo, hi] = ``ball.box(x0)``."""
    return torch.clamp(z, lo, hi) if ball.norm == "inf" else ball.project(z, x0)


def ascent_direction(ball: Ball, grad: torch.Tensor, x_adv: torch.Tensor, lo=None, hi=None):
    """Steepest-ascent unit direction in the ball's norm. For ℓ1, coordinates pinned at the box in the
    gradient's direction are left out first (they cannot move), and the step spreads over the top
    ``max(1, d // 100)`` coordinates."""
    if ball.norm != 1:
        return ball.steepest_ascent(grad)
    blocked = ((x_adv >= hi) & (grad > 0)) | ((x_adv <= lo) & (grad < 0))
    return ball.steepest_ascent(grad.masked_fill(blocked, 0.0), k=max(1, grad[0].numel() // 100))


# ---------------------------------------------------------------------------------------------- restarts and targets
def run_attack(problem: Problem, run, loss="ce", n_targets=None, restarts=1, random_start=True, early_stop=False,
               seed=None):
    """Drive ``run(problem, objective, start, record, idx)`` over target classes and restarts; return the best
    point per example as an :class:`AttackResult`.

    Run (i, r) — target rank i (0 when not multi-targeted), restart r — starts from the point drawn by a
    generator seeded with (seed, i, r), so it does not depend on ``restarts``; restart 0 starts at x when
    ``random_start`` is False. With ``early_stop``, examples already fooled skip later runs (``idx`` lists the
    examples still standing; ``None`` means all).
    """
    restarts = check_positive_int(restarts, "restarts")
    targets, goal = [None], "untargeted" if problem.target is None else "targeted"
    if n_targets is not None:
        if problem.target is not None:
            raise ValueError("n_targets (multi-targeted mode) cannot be combined with targeted")
        n_targets = check_positive_int(n_targets, "n_targets")
        if n_targets > problem.classes - 1:
            raise ValueError(f"n_targets must be <= {problem.classes - 1} (the number of wrong classes); got "
                             f"{n_targets}")
        with eval_mode(problem.model), torch.no_grad():
            clean = problem.model(problem.x)
        wrong = clean.masked_fill(F.one_hot(problem.y, problem.classes).bool(), -math.inf)
        ranked = wrong.argsort(1, descending=True)
        targets, goal = [ranked[:, i] for i in range(n_targets)], "pairwise"
    check_loss(loss, problem.classes, goal)
    seed = resolve_seed(seed)
    record = Record(problem)
    with eval_mode(problem.model):
        for i, target in enumerate(targets):
            objective = problem.objective(loss, goal, target)
            for r in range(restarts):
                if r == 0 and not random_start:
                    start = problem.x.clone()
                else:
                    start = problem.ball.random(problem.x, generator=generator(seed, i, r, device=problem.x.device))
                idx = None
                if early_stop:
                    idx = (record.score > 0).nonzero()[:, 0]
                    if len(idx) == 0:
                        return record.result()
                run(problem, objective, start, record, idx)
    return record.result()


# ---------------------------------------------------------------------------------------------- best point per example
class Record:
    """The best point per example seen so far: lowest score, then its margin at y and loss."""

    def __init__(self, problem: Problem):
        n = problem.x.shape[0]
        like = problem.x
        self.x = problem.x.clone()
        self.empty = True  # nothing offered yet
        self.score = torch.full((n,), math.inf, dtype=like.dtype, device=like.device)
        self.margin = torch.full_like(self.score, math.inf)
        self.loss = torch.full_like(self.score, math.nan)

    def update(self, idx, x, score, margin_y, loss):
        """Keep (x, ...) where its score is lower; ``idx`` = the examples' positions (None: all of them)."""
        if idx is None and self.empty:
            self.x, self.score, self.margin, self.loss = x.clone(), score, margin_y, loss
            self.empty = False
            return
        self.empty = False
        if idx is None:
            better = score < self.score
            self.x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x, self.x)
            for name, value in (("score", score), ("margin", margin_y), ("loss", loss)):
                setattr(self, name, torch.where(better, value, getattr(self, name)))
            return
        better = score < self.score[idx]
        pos = idx[better]
        self.x[pos] = x[better]
        self.score[pos], self.margin[pos], self.loss[pos] = score[better], margin_y[better], loss[better]

    def observe(self, idx, x, logits, loss, objective: Objective):
        """Offer points x with their logits and loss (from a clean forward pass at x)."""
        margin_y = margin(logits, objective.y, objective.mask_y)
        self.update(idx, x, objective.score(logits, margin_y), margin_y, loss)

    def result(self):
        from .result import AttackResult
        return AttackResult(x_adv=self.x.detach(), success=self.score <= 0, loss=self.loss, margin=self.margin)


def forward(model, objective: Objective, x):
    """A clean forward pass: (logits, loss (n,))."""
    with torch.no_grad():
        logits = model(x)
        return logits, objective.loss(logits)


@functools.lru_cache(maxsize=8)
def _ones_cached(n, dtype, device):
    return torch.ones(n, dtype=dtype, device=device)


def _ones(loss):
    """d(sum of the per-example losses) / d(loss): a vector of ones, made once per shape (no reduction kernel)."""
    return _ones_cached(loss.shape[0], loss.dtype, loss.device)


def forward_backward(model, objective: Objective, x):
    """Forward, and backward to the input only (no parameter gradients): (logits, loss (n,), grad of the
    summed loss w.r.t. x). ``x`` must be a tensor without history; it is left as it was."""
    x.requires_grad_(True)
    logits = model(x)
    loss = objective.loss(logits)
    grad, = torch.autograd.grad(loss, x, grad_outputs=_ones(loss))
    x.requires_grad_(False)
    return logits.detach(), loss.detach(), grad
