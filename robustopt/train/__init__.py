r"""Adversarial and certified training: the outer minimization of the empirical adversarial risk.

.. math::  \min_\theta \frac1n \sum_i \max_{x' \in B(x_i)} L(f_\theta(x'), y_i)

One loop (:func:`train`) serves every method; they differ in how the inner maximum is solved or bounded
(:mod:`.losses`): ``standard`` (no inner problem), ``fgsm``, ``fgsm_rs``, ``pgd``, ``trades`` and ``onestep``
find a point of the ball and descend there (Danskin's theorem); ``ibp`` and ``crown_ibp`` descend on a
certified upper bound from :mod:`robustopt.verify`, kept differentiable in the weights. Schedules
(:mod:`.schedules`) are counted in epochs. :func:`evaluate` gives the clean / PGD / certified accuracy
of a trained model, and :func:`robust_loss` a method's objective on a data set.
"""
from .evaluation import evaluate
from .loop import robust_loss, train
from .losses import METHODS

__all__ = ["train", "evaluate", "robust_loss", "METHODS"]
