r"""Decide a VNNLIB property for a network: :func:`verify_property`.

With :math:`h_i(x) = \max_r (A_{ir} f(x) - b_{ir})` per disjunct (:mod:`.objective`), the property is
**sat** iff some x in the box has :math:`h_i(x) \le 0` for some i, **unsat** iff every disjunct is refuted,
:math:`\min_x h_i(x) > 0`. ``method="auto"`` runs the stages cheapest first and stops at the first verdict:

1. **attack**: the box centre, then PGD (``robustopt.attacks.pgd``, margin loss, ``attack_restarts`` random
   starts in one batch, early stop) minimizing :math:`\min_i h_i`;
2. **bounds**: CROWN, then alpha-CROWN (``robustopt.verify.spec_bounds`` on the rows :math:`A_{ir}` of the
   disjuncts still open). Disjunct i is refuted when some row has a proven lower bound
   :math:`\min_x A_{ir} f(x) > b_{ir}` (strictly: equality is a counterexample), or, for a disjunct of several
   rows, when :math:`h_i` has a proven lower bound > 0 (alpha-CROWN then optimizes a convex combination of the
   rows: :mod:`.objective`);
3. **targeted attack**: PGD again, one run per disjunct still open (multi-targeted, the ten with the lowest
   :math:`h_i` at the centre), on its :math:`h_i`;
4. **bab**: branch and bound (``robustopt.verify`` method ``"bab"``; input splitting on low-dimensional inputs,
   ReLU splitting otherwise) on :math:`h_i` of the open disjuncts, within the time left, stopping as soon as the
   verdict is known. A disjunct is refuted by a proven lower bound > 0; the points it finds are candidate
   witnesses. ``method="milp"`` runs the exact MILP in this stage instead, ``method="bab"`` branch and bound
   (both after the attacks only).

A witness from any stage is reported only after :meth:`Property.check_witness` replays it: clipped to the
box in float64, run through a float64 copy of the model, and tested against the condition with exact
comparisons (ties satisfy ``>=``). A witness that fails the replay is dropped, never reported.

``result`` is ``"sat"``, ``"unsat"``, ``"timeout"`` (the time limit ran out first) or ``"unknown"`` (the
methods asked for could not decide, e.g. an incomplete ``method`` or a solver error).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .._validation import check_choice, check_positive_int
from ..models import model_device
from ..verify.methods import check_time_limit
from .objective import ObjectiveView, objective_model
from .property import Property, PropertyUnion

__all__ = ["verify_property", "METHODS", "DEFAULT_TIME_LIMIT"]

METHODS = ("auto", "ibp", "crown", "alpha-crown", "dual", "lp", "milp", "bab")
COMPLETE = ("milp", "bab")  # complete methods: run after the attacks (and, for "auto", the bounds)
AUTO_COMPLETE = "bab"
DEFAULT_TIME_LIMIT = 300.0
AUTO_BOUNDS = ("crown", "alpha-crown")
TARGETED_SHARE = 4  # the targeted attack runs attack_restarts // 4 starts per open disjunct
MAX_TARGETS = 10  # ... on at most this many open disjuncts (those with the lowest h_i at the centre)
WITNESS_TRIES = 4  # attack points replayed per attack
WITNESS_SLACK = 1e-9  # attack margins up to this are replayed (the replay decides)


class _Run:
    """One verification: the model, the property, the ball and the clock."""

    def __init__(self, model, prop, time_limit, shape):
        self.start = time.perf_counter()
        self.model, self.prop, self.time_limit, self.shape = model, prop, time_limit, shape
        self.x, self.eps, self.lower, self.upper = prop.ball(self.shape, torch.float64, model_device(model))
        self.open = list(range(len(prop.disjuncts)))  # disjuncts not refuted yet
        self.disjunct_lower = np.full(len(prop.disjuncts), -np.inf)  # proven lower bounds on min_x h_i(x)
        self.witness = None
        self.decided_by = None

    def left(self):
        return None if self.time_limit is None else self.time_limit - (time.perf_counter() - self.start)

    def out_of_time(self) -> bool:
        left = self.left()
        return left is not None and left <= 0

    # ------------------------------------------------------------------ witnesses
    def try_witness(self, points, stage) -> bool:
        """Replay candidate points (p, *shape) in float64; keep the first that is a real counterexample."""
        lo, hi = self.prop.lower, self.prop.upper
        for point in points:
            x = np.clip(point.detach().cpu().double().numpy().reshape(-1), lo, hi)
            ok, y = self.prop.check_witness(self.model, x, self.shape)
            if ok:
                self.witness, self.decided_by = {"x": x, "y": y}, stage
                return True
        return False

    def _drop(self, refuted, stage):
        """Close the refuted disjuncts; the stage that closes the last one decides unsat."""
        self.open = [i for i in self.open if i not in refuted]
        if not self.open:
            self.decided_by = stage

    # ------------------------------------------------------------------ stages
    def attack(self, steps, restarts, seed, targeted) -> bool:
        """PGD minimizing min_i h_i over the open disjuncts from ``restarts`` random starts at once
        (``targeted``: one run per open disjunct, on its h_i alone); the best points are replayed."""
        from ..attacks import pgd

        view = ObjectiveView(objective_model(self.model, self.prop, self.open, self.shape))
        batch = lambda t: t.expand(restarts, *t.shape[1:])
        label = torch.zeros(restarts, dtype=torch.long, device=self.x.device)
        result = pgd(view, batch(self.x), label, self.eps, norm="inf", steps=steps, loss="margin",
                     lower=batch(self.lower), upper=batch(self.upper), seed=seed, early_stop=True,
                     n_targets=min(len(self.open), MAX_TARGETS) if targeted else None)
        order = torch.argsort(result.margin)[:WITNESS_TRIES]
        return self.try_witness(result.x_adv[order[result.margin[order] <= WITNESS_SLACK]], "attack")

    def refute(self, method) -> None:
        """Incomplete bounds on every row of the open disjuncts, then on h_i of those of several rows still
        open (a combination of the rows, :mod:`.objective`); drop the refuted ones."""
        rows = [(i, r) for i in self.open for r in range(len(self.prop.disjuncts[i][1]))]
        C = np.stack([self.prop.disjuncts[i][0][r] for i, r in rows])
        lb = self._bounds(self.model, C, method)
        refuted = set()
        for (i, r), value in zip(rows, lb):
            b = self.prop.disjuncts[i][1][r]
            self.disjunct_lower[i] = max(self.disjunct_lower[i], value - b)
            if value > b:
                refuted.add(i)
        self._drop(refuted, method)
        joint = [i for i in self.open if len(self.prop.disjuncts[i][1]) > 1]
        if not joint or self.out_of_time():
            return
        lb = self._bounds(objective_model(self.model, self.prop, joint, self.shape), np.eye(len(joint)), method)
        for i, value in zip(joint, lb):
            self.disjunct_lower[i] = max(self.disjunct_lower[i], value)
        self._drop({i for i, value in zip(joint, lb) if value > 0}, method)

    def _bounds(self, model, C, method) -> np.ndarray:
        """Proven lower bounds on min_x C_r model(x) over the box, by ``method`` within the time left."""
        from ..verify import get_method, spec_bounds

        options = {}
        if self.time_limit is not None and get_method(method).TAKES_TIME_LIMIT:
            options["time_limit"] = max(self.left(), 1e-3)
        C = torch.as_tensor(C, dtype=torch.float64, device=self.x.device)
        lb = spec_bounds(model, self.x, C, self.eps, "inf", method, self.lower, self.upper, **options)[0]
        return lb.detach().cpu().double().numpy()

    def exact(self, method, options) -> str | None:
        """A complete method (``"milp"`` or ``"bab"``) on h_i of the open disjuncts, stopping as soon as the verdict
        is known, within the time left. Returns "timeout" when time ran out with disjuncts open, else None
        (refuted disjuncts are dropped; a replayed point becomes the witness)."""
        from ..verify.api import Problem

        objective = objective_model(self.model, self.prop, self.open, self.shape)
        problem = Problem(objective, self.x, self.eps, "inf", self.lower, self.upper)
        eye = torch.eye(len(self.open), dtype=torch.float64, device=self.x.device)
        options = options | {"stop_at": 0.0,
                             "time_limit": None if self.time_limit is None else max(self.left(), 1e-3)}
        res = problem.bounds(eye, method, torch.arange(1, device=self.x.device), options)
        points = res.points[0]
        points = points[~torch.isnan(points).any(1)]
        if len(points) and self.try_witness(points.reshape(-1, *self.shape), method):
            return None
        lower = res.lower[0].detach().cpu().double().numpy()
        refuted = {i for i, value in zip(self.open, lower) if value > 0}
        for i, value in zip(self.open, lower):
            self.disjunct_lower[i] = max(self.disjunct_lower[i], value)
        self._drop(refuted, method)
        timed_out = str(res.status[0]) == "time_limit"
        return "timeout" if self.open and (timed_out or self.out_of_time()) else None

    def report(self, result):
        counterexample = self.witness if result == "sat" else None
        return {"result": result, "counterexample": counterexample, "seconds": time.perf_counter() - self.start,
                "decided_by": self.decided_by if result in ("sat", "unsat") else None,
                "disjunct_lower": self.disjunct_lower.copy()}


def _input_shape(model, prop, input_shape) -> tuple:
    """The shape of one input, checked against the property (and the model and property types)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module (e.g. from robustopt.onnx.load); got {type(model).__name__}")
    if not isinstance(prop, (Property, PropertyUnion)):
        raise ValueError(f"prop must be a robustopt.vnnlib.Property or PropertyUnion (from robustopt.vnnlib.load); "
                         f"got {type(prop).__name__}")
    shape = tuple(input_shape) if input_shape is not None else tuple(getattr(model, "input_shape", (prop.num_inputs,)))
    if int(np.prod(shape)) != prop.num_inputs:
        raise ValueError(f"the input shape {tuple(shape)} has {int(np.prod(shape))} entries but the property has "
                         f"{prop.num_inputs} inputs; pass input_shape=")
    return shape


def verify_property(model, prop, method="auto", time_limit=DEFAULT_TIME_LIMIT, *, input_shape=None, attack=True,
                    attack_steps=100, attack_restarts=16, seed=0, complete_options=None) -> dict:
    """Decide ``prop`` (a :class:`Property`) for ``model`` (an ``nn.Sequential`` of supported layers, e.g.
    from :func:`robustopt.onnx.load`); see the module docstring.

    ``method``: ``"auto"`` (attack, CROWN, alpha-CROWN, targeted attack, then branch and bound), ``"bab"`` or
    ``"milp"`` (attacks, then that complete method), or one bound method (``"ibp"``, ``"crown"``,
    ``"alpha-crown"``, ``"dual"``, ``"lp"``): attack, then that method alone (it can prove unsat, never sat;
    undecided is "unknown").
    ``time_limit``: seconds for the whole call (``None``: no limit); alpha-CROWN and the complete method get what the
    earlier stages left (the attacks and CROWN always run to the end: a fraction of a second on MNIST MLPs).
    The complete stage's status "error" (a leaf or program it could not settle) is "unknown".
    ``input_shape``: the shape of one input (default ``model.input_shape``, else flat). ``attack=False`` (the
    centre is still checked) skips the attacks; ``attack_steps`` (PGD steps), ``attack_restarts`` (random
    starts, run as one batch) and ``seed`` configure them. ``complete_options``: a dict of options for the
    complete stage's method (``"bab"``: e.g. ``branching``, ``domain_batch``, ``max_domains``, ``split``; see
    ``robustopt.verify.bab``), all but ``time_limit`` and ``stop_at``, which this function sets.

    Returns a dict: ``result`` ("sat", "unsat", "timeout", "unknown"), ``counterexample`` (for sat:
    ``{"x": (num_inputs,), "y": (num_outputs,)}`` float64 arrays, the replayed witness; else None),
    ``seconds`` (wall time), ``decided_by`` (the stage that settled a sat / unsat verdict) and
    ``disjunct_lower`` (the best proven lower bound on :math:`\\min_x h_i(x)` per disjunct, -inf where none).

    A :class:`PropertyUnion` (several input boxes) is decided part by part, in order, each part given an equal
    share of the time left (a part that finishes early leaves its time to the next): sat as soon as one part is,
    unsat when every part is. Its report adds ``parts`` (the parts' reports, up to the last one run) and
    concatenates the parts' ``disjunct_lower`` (-inf for parts not run).
    """
    check_choice(method, METHODS, "method")
    time_limit = check_time_limit(time_limit)
    attack_steps = check_positive_int(attack_steps, "attack_steps")
    attack_restarts = check_positive_int(attack_restarts, "attack_restarts")
    shape = _input_shape(model, prop, input_shape)
    complete_options = {} if complete_options is None else complete_options
    if not isinstance(complete_options, dict) or {"time_limit", "stop_at"} & set(complete_options):
        raise ValueError("complete_options must be a dict of the complete method's options other than time_limit "
                         f"and stop_at (verify_property sets them); got {complete_options!r}")
    options = dict(attack=attack, attack_steps=attack_steps, attack_restarts=attack_restarts, seed=seed,
                   complete_options=complete_options)
    if isinstance(prop, PropertyUnion):
        return _verify_union(model, prop, method, time_limit, shape, options)
    return _verify(model, prop, method, time_limit, shape, **options)


def _verify_union(model, union, method, time_limit, shape, options) -> dict:
    """:func:`verify_property` on each part of ``union`` in turn, sharing ``time_limit``."""
    start, reports = time.perf_counter(), []
    for k, part in enumerate(union.parts):
        left = None if time_limit is None else time_limit - (time.perf_counter() - start)
        if left is not None and left <= 0:
            break
        reports.append(_verify(model, part, method, None if left is None else left / (len(union.parts) - k), shape,
                               **options))
        if reports[-1]["result"] == "sat":
            break
    results = [r["result"] for r in reports]
    if "sat" in results:
        result = "sat"
    elif results.count("unsat") == len(union.parts):
        result = "unsat"
    elif len(results) == len(union.parts) and "timeout" not in results:
        result = "unknown"  # every part run, some left undecided by an incomplete method
    else:
        result = "timeout"
    decided = reports[-1] if result == "sat" else None
    lower = [r["disjunct_lower"] for r in reports] + [np.full(len(p.disjuncts), -np.inf)
                                                     for p in union.parts[len(reports):]]
    return {"result": result, "counterexample": decided["counterexample"] if decided else None,
            "seconds": time.perf_counter() - start,
            "decided_by": decided["decided_by"] if decided else
            ("+".join(dict.fromkeys(r["decided_by"] for r in reports)) if result == "unsat" else None),
            "disjunct_lower": np.concatenate(lower), "parts": reports}


def _verify(model, prop, method, time_limit, shape, *, attack, attack_steps, attack_restarts, seed,
            complete_options) -> dict:
    """:func:`verify_property` on one :class:`Property` (arguments checked)."""
    run = _Run(model, prop, time_limit, shape)
    if run.try_witness(run.x, "attack") or (attack and run.attack(attack_steps, attack_restarts, seed, False)):
        return run.report("sat")
    bound_methods = AUTO_BOUNDS if method == "auto" else (() if method in COMPLETE else (method,))
    for name in bound_methods:
        if not run.open:
            break
        if run.out_of_time():
            return run.report("timeout")
        run.refute(name)
    if run.open and method in ("auto",) + COMPLETE:
        targeted_restarts = max(1, attack_restarts // TARGETED_SHARE)
        if attack and run.attack(attack_steps, targeted_restarts, seed, True):
            return run.report("sat")
        if run.out_of_time():
            return run.report("timeout")
        verdict = run.exact(AUTO_COMPLETE if method == "auto" else method, complete_options)
        if run.witness is not None:
            return run.report("sat")
        if verdict is not None:
            return run.report(verdict)
    if not run.open:
        return run.report("unsat")
    return run.report("timeout" if run.out_of_time() else "unknown")
