"""The result every attack returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttackResult:
    """Per-example outcome of an attack on a batch of n examples.

    ``x_adv`` (n, ...): a point of the ball ∩ box per example (the best one found). ``margin`` (n,):
    :math:`\\min_{j \\ne y} f_y - f_j` at ``x_adv``, recomputed by a clean forward pass in eval mode; an upper bound
    on the exact minimum margin over the ball. ``success`` (n,) bool: untargeted, ``margin <= 0`` (a tie counts);
    targeted, the target is an argmax. ``loss`` (n,): the attack's loss at ``x_adv``.
    """
    x_adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    margin: torch.Tensor

    def __len__(self):
        return self.x_adv.shape[0]

    @property
    def success_rate(self) -> float:
        """Fraction of examples where the attack succeeded."""
        return float(self.success.float().mean()) if len(self) else 0.0

    def __repr__(self):
        return (f"AttackResult(n={len(self)}, success_rate={self.success_rate:.4f}, "
                f"median_margin={float(self.margin.median()) if len(self) else float('nan'):.4g})")
