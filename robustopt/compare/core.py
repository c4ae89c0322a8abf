r"""Run attacks and bound methods on the same examples: :func:`compare`.

For each radius ε and each example (x, y), with margins :math:`m_j(x') = f_y(x') - f_j(x')` over the ball
:math:`B = \{x' : \|x' - x\| \le \varepsilon,\ lower \le x' \le upper\}`:

- every **bound method** (``robustopt.verify``: ``ibp``, ``crown``, ``alpha-crown``, ``dual``, ``lp``,
  ``lp-cvxpy``, ``milp``) gives proven lower bounds on :math:`\min_{x' \in B} m_j(x')` for every j;
- every **attack** (``pgd``, ``apgd``) gives a point of B, whose margins (recomputed in float64 after an
  exact projection onto B) are upper bounds on the same minima; so do the clean point and the MILP's
  minimizers;
- ``milp`` solved to optimality gives the exact minimum (within its 1e-6 relative gap).

The bound chain of the design is then checked per example and class (:mod:`.chain`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_choice, check_norm, check_positive_int, reject_unknown_options
from ..verify import METHODS, get_method
from ..verify.api import DEFAULT_BATCH_SIZE, Problem, labels_tensor, margin_spec
from ..verify.methods import UNSETTLED, Bounds, check_time_limit, tightest
from ..verify.parallel import check_client, check_n_jobs
from ..verify.runner import bound_job, bound_tasks, method_options, run_batches
from .chain import check_chain
from .result import Comparison

__all__ = ["compare", "ATTACKS", "DEFAULT_METHODS"]

ATTACKS = ("pgd", "apgd")
DEFAULT_METHODS = ("pgd", "ibp", "crown", "lp", "milp")
EXACT = "milp"


def _split_methods(methods):
    if isinstance(methods, str):
        methods = [methods]
    names = list(dict.fromkeys(methods))
    allowed = (*ATTACKS, *METHODS)
    bad = [m for m in names if m not in allowed]
    if bad or not names:
        raise ValueError(f"methods must be names among {', '.join(allowed)}; got {bad or methods!r}")
    bounds = [m for m in names if m in METHODS]
    for m in bounds:
        get_method(m)  # a method that is not available raises here, before any work
    # closed-form methods first (their intermediate bounds feed the solvers), solvers after, the MILP last
    bounds.sort(key=lambda m: (get_method(m).SOLVER, get_method(m).EXACT))
    return [m for m in names if m in ATTACKS], bounds


def _levels(eps):
    """A list of radii levels: a list / tuple is a sweep; a number or a 1-D array is one level."""
    if isinstance(eps, (list, tuple)):
        if not eps:
            raise ValueError("eps must be a radius or a non-empty list of radii")
        return list(eps)
    return [eps]


def _level_value(eps):
    """A JSON-able radius: float, or a list for per-example radii."""
    if isinstance(eps, Real):
        return float(eps)
    return np.asarray(torch.as_tensor(eps).detach().cpu(), dtype=float).tolist()


def _point_margins(net, points, C):
    """Margins rows (n, k-1) of C f(points) by a forward pass of the canonical network."""
    logits = net(points)
    return torch.einsum("nmk,nk->nm", C, logits)


def _run_attack(name, model, x_model, y, eps, norm, lower, upper, steps, restarts, seed, classes):
    from ..attacks import apgd, pgd

    if name == "pgd":
        return pgd(model, x_model, y, eps, norm=norm, steps=steps, restarts=restarts, loss="margin", lower=lower,
                   upper=upper, seed=seed)
    loss = "dlr" if classes >= 3 else "ce"
    return apgd(model, x_model, y, eps, norm=norm, steps=steps, restarts=restarts, loss=loss, lower=lower,
                upper=upper, seed=seed)


def _attack_margins(name, model, x_model, y, problem, C, settings):
    """Margin rows (n, k-1) at the attack's points, projected onto the ball in float64 first."""
    net = problem.net
    ball = problem.ball().flat(x_model)  # eps and box in the attack's dtype, on its device
    result = _run_attack(name, model, x_model, y.to(x_model.device), ball.eps, problem.norm, ball.lower, ball.upper,
                         settings["attack_steps"], settings["attack_restarts"], settings["seed"], net.out_features)
    points = result.x_adv.reshape(problem.n, -1).to(dtype=net.dtype, device=net.device)
    points = problem.ball().project(points, problem.x)
    return _point_margins(net, points, C)


def _method_options(method, options, time_limit, intermediate):
    """The options of one method: the user's, the time limit where the method takes one (ignored elsewhere, see
    :mod:`robustopt.verify.runner`), and for a solver the shared intermediate bounds."""
    opts = method_options(method, options.get(method, {}), time_limit)
    if intermediate is not None and get_method(method).SOLVER and "intermediate" not in opts:
        opts["intermediate"] = intermediate
    return opts


def _run_bounds(method, problem, C, opts, batch_size, where) -> Bounds:
    """One bound method on every example, a task per batch (``where``: ``n_jobs`` / ``client``), through the batch
    runner: ``lower`` rows (n, k-1), ``status``, ``seconds`` (n,), the ``intermediate`` bounds it used and, for the
    MILP, ``replayed`` rows of its minimizers' values and its gap ``margin`` (n,)."""
    job = bound_job(problem, C, method, dict(opts, return_intermediate=True))
    return run_batches(job, problem.batches(batch_size), desc=method, **where)


def _run_exact(problem, C, opts, lowers, upper_rows, where):
    """The MILP on the rows that can attain each example's minimum margin, a task per example: a row whose best
    lower bound so far exceeds the smallest margin seen at a point cannot be the minimum, so it keeps that
    (proven) bound. Returns the Bounds of every row (as :func:`_run_bounds`) and ``solved`` (n, k-1), the rows
    the MILP solved."""
    net, n = problem.net, problem.n
    cheap = torch.stack(list(lowers.values())).amax(0) if lowers else \
        torch.full((n, C.shape[1]), -float("inf"), dtype=net.dtype, device=net.device)
    candidate = cheap <= upper_rows.amin(1, keepdim=True)
    job = bound_job(problem, C, EXACT, opts)
    out = Bounds(lower=cheap.clone(), status=np.full(n, "optimal", dtype=object), seconds=np.zeros(n),
                 intermediate=job.options.get("intermediate"), replayed=torch.full_like(cheap, float("nan")),
                 margin=np.zeros(n))
    tasks = [([i], torch.nonzero(candidate[i]).flatten().tolist()) for i in range(n)]
    for i, res in bound_tasks(job, tasks, desc=EXACT, **where):
        rows = tasks[i][1]
        out.lower[i, rows] = torch.maximum(cheap[i, rows], res.lower[0])
        out.replayed[i, rows] = res.replayed[0].to(out.replayed)
        out.status[i], out.seconds[i], out.margin[i] = res.status[0], res.seconds[0], res.margin[0]
    out.status = out.status.astype(str)
    return out, candidate.cpu().numpy()


def _verdict(lower, upper, solver_status):
    """certified / falsified / time_limit / error / unknown per example: a solver that timed out or failed never
    certifies, even with a proven bound > 0 (its example shows the status instead)."""
    unsettled = np.isin(solver_status, UNSETTLED)
    out = np.where((lower > 0) & ~unsettled, "certified", np.where(upper <= 0, "falsified", "unknown")).astype(object)
    failed = (out == "unknown") & unsettled
    out[failed] = solver_status[failed]
    return out.astype(str)


@dataclass
class _Run:
    """The settings of one :func:`compare` call, checked, shared by every radius."""

    model: object
    x: torch.Tensor
    y: object
    norm: object
    lower: object
    upper: object
    dtype: torch.dtype
    attacks: list
    methods: list
    options: dict
    time_limit: object
    exact: str
    shared_intermediate: bool
    batch_size: int
    where: dict
    attack_settings: dict
    atol: float
    rtol: float
    bar: object = None

    def step(self, level, levels, name):
        self.bar.set_postfix_str(f"eps {level + 1}/{levels}: {name}")


def _check_options(options, bound_methods):
    """``{method: {option: value}}`` for methods among those compared, with options they take."""
    options = dict(options or {})
    for name, opts in options.items():
        if name not in bound_methods:
            raise ValueError(f"options given for {name!r}, which is not among the bound methods compared "
                             f"({', '.join(bound_methods) or 'none'})")
        if not isinstance(opts, dict):
            raise ValueError(f"options[{name!r}] must be a dict of option names to values; got {opts!r}")
        reject_unknown_options(opts, f"options[{name!r}]", get_method(name).OPTIONS - {"compute_upper",
                                                                                       "return_intermediate"})
    return options


def _check_norm(norm, bound_methods):
    norm = check_norm(norm)
    for name in bound_methods:
        if norm not in get_method(name).NORMS:
            raise ValueError(f"method {name!r} does not handle the l_{norm} ball (it takes "
                             f"{', '.join(f'l_{p}' for p in get_method(name).NORMS)}); drop it from methods")
    return norm


def _attack_level(run, problem, labels, C, upper_rows, step):
    """Every attack at one radius: (margin rows (n, k-1) of the best point so far, {attack: min margin (n,)},
    {attack: seconds (n,)})."""
    attack_min, seconds, n = {}, {}, problem.n
    for name in run.attacks:
        step(name)
        tic = time.perf_counter()
        found = _attack_margins(name, run.model, run.x, labels, problem, C, run.attack_settings)
        seconds[name] = np.full(n, (time.perf_counter() - tic) / max(n, 1))
        attack_min[name] = found.amin(1)
        upper_rows = torch.minimum(upper_rows, found)
        run.bar.update()
    return upper_rows, attack_min, seconds


def _bound_level(run, problem, C, upper_rows, step):
    """Every bound method at one radius, closed-form ones first (their intermediate bounds may feed the solvers):
    a dict of ``lowers``, ``status``, ``seconds`` ({method: ...}), ``upper_rows`` (lowered by the MILP's
    replayed points), ``lp_inputs`` (the methods whose intermediate bounds the solvers used), the MILP's
    ``margin`` and ``solved`` rows (None without the MILP)."""
    out = {"lowers": {}, "status": {}, "seconds": {}, "margin": None, "solved": None}
    inter, used_inter = {}, None
    for name in run.methods:
        step(name)
        solver = get_method(name).SOLVER
        if solver and run.shared_intermediate and inter and used_inter is None:
            used_inter = tightest(*inter.values())
        opts = _method_options(name, run.options, run.time_limit, used_inter if solver else None)
        if name == EXACT and run.exact == "min":
            res, out["solved"] = _run_exact(problem, C, opts, out["lowers"], upper_rows, run.where)
        else:
            res = _run_bounds(name, problem, C, opts, run.batch_size, run.where)
        out["lowers"][name], out["seconds"][name] = res.lower, res.seconds
        out["status"][name] = res.status if res.status is not None else np.full(problem.n, "ok")
        if not solver and res.intermediate is not None and "intermediate" not in run.options.get(name, {}):
            inter[name] = res.intermediate
        if name == EXACT:
            out["margin"] = res.margin
        if res.replayed is not None:
            upper_rows = torch.minimum(upper_rows, torch.nan_to_num(res.replayed.to(upper_rows), nan=float("inf")))
        run.bar.update()
    # the methods whose intermediate bounds the solvers used: shared ones, else their default (IBP, CROWN)
    out["lp_inputs"] = list(inter) if used_inter is not None else [m for m in ("ibp", "crown")
                                                                   if not run.options.get(m)]
    out["upper_rows"] = upper_rows
    return out


def _one_level(run, level, levels):
    """One radius: attacks, then bounds, then the chain check and the tables. Returns (rows, summary,
    violations)."""
    eps_value = levels[level]
    step = lambda name: run.step(level, len(levels), name)
    problem = Problem(run.model, run.x, eps_value, run.norm, run.lower, run.upper, run.dtype)
    labels = labels_tensor(run.y, problem)
    C = margin_spec(labels, problem.net.out_features, problem.net.dtype)
    clean = _point_margins(problem.net, problem.x, C)
    upper_rows, attack_min, seconds = _attack_level(run, problem, labels, C, clean.clone(), step)
    b = _bound_level(run, problem, C, upper_rows, step)
    seconds.update(b["seconds"])
    found, count = check_chain(b["lowers"], b["upper_rows"], b["status"], labels, b["lp_inputs"], run.options,
                               b["margin"], b["solved"], atol=run.atol, rtol=run.rtol)
    for v in found:
        v.update(level=level, eps=_level_value(eps_value), example=int(v["example"]))
    rows, summary = _tables(level, eps_value, labels, clean, b["upper_rows"], attack_min, b["lowers"], b["status"],
                            seconds, found)
    summary["chain_checks"] = count
    return rows, summary, found


def compare(model, X, y, eps, methods=DEFAULT_METHODS, norm="inf", lower=0.0, upper=1.0, *, attack_steps=100,
            attack_restarts=2, time_limit=None, exact="min", shared_intermediate=True, options=None, atol=1e-5,
            rtol=1e-5,
            batch_size=DEFAULT_BATCH_SIZE, seed=0, progress=True, dtype=torch.float64, n_jobs=1,
            client=None) -> Comparison:
    r"""Attacks, exact values and certified bounds on the same examples, side by side.

    Parameters
    ----------
    model : an ``nn.Sequential`` of the layers :func:`robustopt.verify.network` supports.
    X : tensor or array (n, ...) inside [lower, upper], in the shape the model takes; y : labels (n,).
    eps : a radius (number, or a tensor (n,) of per-example radii), or a **list** of them for a sweep.
    methods : names among ``"pgd"``, ``"apgd"`` (attacks: upper bounds on the minimum margin) and the bound
        methods of :mod:`robustopt.verify` (``"ibp"``, ``"crown"``, ``"alpha-crown"``, ``"dual"``, ``"lp"``,
        ``"lp-cvxpy"``, ``"milp"``; lower bounds). ``"milp"`` is the exact value.
    norm, lower, upper : the ball (``lower``/``upper``: numbers, None, or tensors broadcastable to X).
    attack_steps, attack_restarts : length of each attack (margin loss for PGD, DLR for APGD).
    time_limit : seconds per example for the methods that take one (``TAKES_TIME_LIMIT``: solvers, alpha- and
        beta-CROWN), ignored for the others (as in ``certify``); a solver that runs out is reported with status
        ``time_limit`` and its proven bound so far.
    exact : ``"min"`` (default): the MILP solves, per example, only the classes j that can attain the minimum
        margin (those whose best lower bound so far is <= the smallest margin seen at a point of the ball): that
        gives the exact minimum over j, the number the tables report; the other classes keep their best
        proven bound. ``"all"``: every class exactly (slower; per-class values in the chain check).
    shared_intermediate : give the solvers (``lp``, ``lp-cvxpy``, ``milp``) the elementwise tightest
        intermediate bounds of the closed-form methods compared, so that the LP dominates each of them
        (their time is counted in those methods' columns). Without it a solver uses its own default
        (the tightest of IBP and CROWN).
    n_jobs, client : where the bound methods run: ``n_jobs`` local processes or a ``dask.distributed.Client``
        (not both); a task per batch of ``batch_size`` examples, a task per example for the exact MILP. The
        results do not depend on it where no time limit binds (the attacks run here).
    options : ``{method: {option: value}}`` passed on to that method (e.g. ``{"alpha-crown": {"steps": 100}}``).
    atol, rtol : tolerance of the chain check: a relation ``a <= b`` is violated when
        ``a - b > atol + rtol * max(|a|, |b|)`` (plus the MILP's own gap where it is involved).

    Returns a :class:`Comparison` (per-example rows, per-radius summary, chain violations). A violation is a
    soundness bug: it is reported with a warning and in the summary, never corrected.
    """
    attacks, bound_methods = _split_methods(methods)
    check_choice(exact, ("min", "all"), "exact")
    attack_steps = check_positive_int(attack_steps, "attack_steps")
    attack_restarts = check_positive_int(attack_restarts, "attack_restarts")
    run = _Run(model=model, x=X if isinstance(X, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(X)), y=y,
               norm=_check_norm(norm, bound_methods), lower=lower, upper=upper, dtype=dtype, attacks=attacks,
               methods=bound_methods, options=_check_options(options, bound_methods),
               time_limit=check_time_limit(time_limit), exact=exact, shared_intermediate=shared_intermediate,
               batch_size=batch_size, where={"n_jobs": check_n_jobs(n_jobs), "client": check_client(client, n_jobs)},
               attack_settings={"attack_steps": attack_steps, "attack_restarts": attack_restarts, "seed": seed},
               atol=atol, rtol=rtol)
    levels = _levels(eps)
    rows, summaries, violations = [], [], []
    with tqdm(total=len(levels) * (len(attacks) + len(bound_methods)), desc="compare", disable=not progress) as bar:
        run.bar = bar
        for level in range(len(levels)):
            level_rows, summary, found = _one_level(run, level, levels)
            rows += level_rows
            summaries.append(summary)
            violations += found
    settings = {"norm": run.norm, "lower": _level_value(lower) if lower is not None else None,
                "upper": _level_value(upper) if upper is not None else None, "attack_steps": attack_steps,
                "attack_restarts": attack_restarts, "time_limit": time_limit, "exact": exact,
                "shared_intermediate": shared_intermediate, "options": run.options, "atol": atol, "rtol": rtol,
                "seed": seed, "dtype": str(dtype).replace("torch.", ""),
                "chain_checks": sum(summary["chain_checks"] for summary in summaries)}
    comparison = Comparison(eps=[_level_value(e) for e in levels], attacks=attacks, methods=bound_methods,
                            rows=rows, summary=summaries, violations=violations, settings=settings)
    comparison.warn_violations()
    return comparison


def _tables(level, eps_value, labels, clean, upper_rows, attack_min, lowers, status, seconds, violations):
    """The per-example rows and the summary of one radius."""
    n = labels.shape[0]
    bad = np.zeros(n, dtype=bool)
    for v in violations:
        bad[v["example"]] = True
    clean_min = clean.amin(1).cpu().numpy()
    upper_min = upper_rows.amin(1).cpu().numpy()
    lower_min = {m: low.amin(1).cpu().numpy() for m, low in lowers.items()}
    verdicts = {m: _verdict(lower_min[m], upper_min, status[m]) for m in lowers}
    exact = None
    if EXACT in lowers:
        solved = status[EXACT] == "optimal"
        exact = np.where(solved, lower_min[EXACT], np.nan)
    eps_out = _level_value(eps_value)
    rows = []
    for i in range(n):
        row = {"level": level, "eps": eps_out if isinstance(eps_out, float) else eps_out[i], "example": i,
               "label": int(labels[i]), "clean_margin": float(clean_min[i])}
        for name, values in attack_min.items():
            row[f"{name}_margin"] = float(min(values[i], clean_min[i]))
        row["upper"] = float(upper_min[i])
        for m in lowers:
            row[f"{m}_lower"] = float(lower_min[m][i])
            row[f"{m}_status"] = str(verdicts[m][i])
            row[f"{m}_seconds"] = float(seconds[m][i])
        if exact is not None:
            row["exact"] = float(exact[i])
        for name in attack_min:
            row[f"{name}_seconds"] = float(seconds[name][i])
        row["chain"] = "VIOLATED" if bad[i] else "ok"
        rows.append(row)
    summary = {"level": level, "eps": eps_out, "n": n, "clean_accuracy": float(np.mean(clean_min > 0)),
               "attack_accuracy": {a: float(np.mean(np.minimum(v.cpu().numpy(), clean_min) > 0))
                                   for a, v in attack_min.items()},
               "best_upper_accuracy": float(np.mean(upper_min > 0)),
               "certified_accuracy": {m: float(np.mean(verdicts[m] == "certified")) for m in lowers},
               "seconds": {m: float(np.sum(s)) for m, s in seconds.items()},
               "exact_robust_accuracy": None, "undecided": None,
               "chain_ok": not violations, "chain_violations": len(violations)}
    if exact is not None:
        decided = (verdicts[EXACT] == "certified") | (upper_min <= 0)
        summary["undecided"] = int(np.sum(~decided))
        if decided.all():
            summary["exact_robust_accuracy"] = float(np.mean(verdicts[EXACT] == "certified"))
    return rows, summary
