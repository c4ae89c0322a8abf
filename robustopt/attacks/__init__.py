"""Attacks: points of the ball ∩ box whose margins are upper bounds on the exact minimum margin.

``fgsm``, ``pgd`` and ``apgd`` attack a batch and return an :class:`AttackResult`; ``evaluate_robustness`` runs
one of them (or an ensemble) over a whole data set. See :mod:`robustopt.attacks.projected` and
:mod:`robustopt.attacks.autopgd` for the math.
"""
from ._common import margin
from .autopgd import apgd
from .evaluate import evaluate_robustness
from .projected import fgsm, pgd
from .result import AttackResult

__all__ = ["fgsm", "pgd", "apgd", "AttackResult", "evaluate_robustness", "margin"]
