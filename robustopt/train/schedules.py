r"""Schedules counted in epochs: the radius ramp, the κ / CROWN-weight ramps and the learning rate.

Time :math:`t` is a fractional epoch: batch :math:`b` of :math:`B` in epoch :math:`e` (from 0) is at
:math:`t = e + b / B`, so a schedule moves every batch and a run of any length reaches its end values.
"""
from __future__ import annotations

import math
from numbers import Real

LR_SCHEDULES = ("constant", "cosine", "step", "cyclic")


def ramp(t: float, start: float, end: float, first: float, last: float) -> float:
    r"""Linear ramp: ``first`` until epoch ``start``, ``last`` from epoch ``end`` on, linear in between."""
    if t <= start:
        return first
    if t >= end:
        return last
    return first + (last - first) * (t - start) / (end - start)


def check_window(window, epochs: int, name: str):
    """A (start, end) pair of epochs with 0 <= start <= end <= epochs, as floats."""
    if not (isinstance(window, (tuple, list)) and len(window) == 2 and
            all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in window)):
        raise ValueError(f"{name} must be a (start_epoch, end_epoch) pair of numbers; got {window!r}")
    start, end = float(window[0]), float(window[1])
    if not 0 <= start <= end <= epochs:
        raise ValueError(f"{name} must satisfy 0 <= start <= end <= epochs ({epochs}); got {window!r}")
    return start, end


def check_pair(value, name: str, low: float = 0.0, high: float = 1.0):
    """A (first, last) pair of values in [low, high] (a single number means constant)."""
    if isinstance(value, Real) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and
            all(isinstance(v, Real) and not isinstance(v, bool) for v in value) and
            all(low <= float(v) <= high for v in value)):
        raise ValueError(f"{name} must be a number or a (start, end) pair of numbers in [{low}, {high}]; got {value!r}")
    return float(value[0]), float(value[1])


def check_lr_schedule(schedule):
    """A schedule name from :data:`LR_SCHEDULES` or a callable ``factor(t, epochs) -> float``."""
    if callable(schedule):
        return schedule
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(map(repr, LR_SCHEDULES))} or a callable "
                         f"factor(t, epochs); got {schedule!r}")
    return schedule


def lr_factor(schedule, t: float, epochs: int) -> float:
    r"""The factor multiplying the base learning rate at fractional epoch ``t``.

    ``"constant"``: 1. ``"cosine"``: :math:`(1 + \cos(\pi t / E)) / 2`. ``"step"``: ×0.1 at 50% and again at
    75% of training. ``"cyclic"``: linear up from 0 to 1 over the first 40%, then down to 0 (Wong, Rice and
    Kolter's one-cycle schedule for fast adversarial training). A callable is called as ``schedule(t, epochs)``.
    """
    if callable(schedule):
        return float(schedule(t, epochs))
    frac = t / epochs
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "step":
        return 0.1 ** ((frac >= 0.5) + (frac >= 0.75))
    return frac / 0.4 if frac < 0.4 else max(0.0, (1.0 - frac) / 0.6)
