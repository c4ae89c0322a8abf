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
from numbers import Real

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_choice, check_norm, check_positive_int, reject_unknown_options
from ..verify import METHODS, get_method
from ..verify.api import DEFAULT_BATCH_SIZE, Problem, labels_tensor, margin_spec
from ..verify.methods import UNSETTLED, check_intermediate, tightest
from ..verify.parallel import TaskError, check_client, check_n_jobs, run_tasks
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
    bounds.sort(key=lambda m: (get_method(m).SOLVER, m == EXACT))
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
    eps = problem.eps if isinstance(problem.eps, float) else problem.eps.to(x_model)
    result = _run_attack(name, model, x_model, y.to(x_model.device), eps, problem.norm, settings["lower"],
                         settings["upper"], settings["attack_steps"], settings["attack_restarts"], settings["seed"],
                         net.out_features)
    points = result.x_adv.reshape(problem.n, -1).to(dtype=net.dtype, device=net.device)
    points = problem.ball().project(points, problem.x)
    return _point_margins(net, points, C)


def _method_options(method, options, time_limit, intermediate):
    module = get_method(method)
    opts = dict(options.get(method, {}))
    if time_limit is not None and "time_limit" in module.OPTIONS:
        opts.setdefault("time_limit", time_limit)
    if intermediate is not None and module.SOLVER and "intermediate" not in opts:
        opts["intermediate"] = intermediate
    return opts


def _bounds_chunk(shared, examples):
    """Runs anywhere (:func:`~robustopt.verify.parallel.run_tasks`): one method on a batch of examples."""
    problem, C, method, opts = shared
    idx = torch.tensor(examples, dtype=torch.long, device=problem.x.device)
    tic = time.perf_counter()
    res = problem.bounds(C, method, idx, dict(opts, return_intermediate=True))
    return res, time.perf_counter() - tic


def _raise_failed(outcome, what):
    """compare has no per-example error state: a failed task stops it, with the worker's message."""
    if isinstance(outcome, TaskError):
        raise RuntimeError(f"compare: {what} failed: {outcome.message}")
    return outcome


def _run_bounds(method, problem, C, opts, batch_size, where):
    """One bound method on every example, a task per batch (``where``: run_tasks' ``n_jobs`` / ``client``):
    a dict with ``lower`` rows (n, k-1), solver ``status`` (n,), ``seconds`` (n,), the ``intermediate``
    bounds it used, ``replayed`` rows (n, k-1) of its minimizers' values (NaN where none) and the MILP's
    ``margin`` (n,): its gap (zeros for other methods)."""
    net, n = problem.net, problem.n
    opts = dict(opts)
    if opts.get("intermediate") is not None:
        opts["intermediate"] = check_intermediate(net, opts["intermediate"], n)
    batches = [idx.tolist() for idx in problem.batches(batch_size)]
    results = dict(run_tasks(_bounds_chunk, (problem, C, method, opts), batches, desc=method, **where))
    parts = {"lower": [], "status": [], "inter": [], "replayed": [], "margin": []}
    seconds = np.zeros(n)
    for b, rows in enumerate(batches):
        res, spent = _raise_failed(results[b], method)
        info = res.info or {}
        per = info.get("seconds")
        seconds[rows] = per if per is not None and len(per) == len(rows) else spent / len(rows)
        parts["lower"].append(res.lower)
        parts["status"].append(res.status if res.status is not None else np.full(len(rows), "ok"))
        parts["inter"].append(res.intermediate or [])
        rep = info.get("replayed")
        parts["replayed"].append(np.full(tuple(res.lower.shape), np.nan) if rep is None else np.asarray(rep, float))
        parts["margin"].append(np.asarray(info.get("margin", np.zeros(len(rows))), dtype=float))
    inter = parts["inter"]
    intermediate = [(torch.cat([b[k][0] for b in inter]), torch.cat([b[k][1] for b in inter]))
                    for k in range(len(inter[0]))] if inter and inter[0] else None
    return {"lower": torch.cat(parts["lower"]), "status": np.concatenate(parts["status"]).astype(str),
            "seconds": seconds, "intermediate": intermediate,
            "replayed": torch.as_tensor(np.concatenate(parts["replayed"]), dtype=net.dtype, device=net.device),
            "margin": np.concatenate(parts["margin"])}


def _exact_example(shared, task):
    """Runs anywhere: the MILP on example i's candidate rows of C."""
    from ..verify.methods import run_method

    problem, C, opts, inter = shared
    i, rows = task
    idx = torch.tensor([i], device=problem.x.device)
    example_opts = dict(opts)
    if inter is not None:
        example_opts["intermediate"] = [(lo[idx], hi[idx]) for lo, hi in inter]
    tic = time.perf_counter()
    res = run_method(EXACT, problem.net.with_spec(C[i:i + 1, rows]), problem.x[idx], problem.ball(idx),
                     compute_upper=False, **example_opts)
    return res, time.perf_counter() - tic


def _run_exact(problem, C, opts, lowers, upper_rows, where):
    """The MILP on the rows that can attain each example's minimum margin, a task per example: a row whose best
    lower bound so far exceeds the smallest margin seen at a point cannot be the minimum, so it keeps that
    (proven) bound. Returns :func:`_run_bounds`'s dict plus ``solved`` (n, k-1), the rows the MILP solved."""
    net, n, m = problem.net, problem.n, C.shape[1]
    cheap = torch.full((n, m), -float("inf"), dtype=net.dtype, device=net.device)
    for low in lowers.values():
        cheap = torch.maximum(cheap, low)
    candidate = cheap <= upper_rows.amin(1, keepdim=True)
    inter = opts.pop("intermediate", None)
    inter = check_intermediate(net, inter, n) if inter is not None else None
    out = {"lower": cheap.clone(), "status": np.full(n, "optimal", dtype=object), "seconds": np.zeros(n),
           "intermediate": inter, "replayed": torch.full_like(cheap, float("nan")), "margin": np.zeros(n),
           "solved": candidate.cpu().numpy()}
    tasks = [(i, torch.nonzero(candidate[i]).flatten()) for i in range(n)]
    for t, outcome in run_tasks(_exact_example, (problem, C, opts, inter), tasks, desc=EXACT, **where):
        (i, rows), (res, spent) = tasks[t], _raise_failed(outcome, f"{EXACT} on example {t}")
        out["seconds"][i] = spent
        out["lower"][i, rows] = torch.maximum(cheap[i, rows], res.lower[0])
        out["status"][i] = res.status[0]
        out["replayed"][i, rows] = torch.as_tensor(res.info["replayed"][0], dtype=net.dtype, device=net.device)
        out["margin"][i] = res.info["margin"][0]
    out["status"] = out["status"].astype(str)
    return out


def _verdict(lower, upper, solver_status):
    """certified / falsified / time_limit / error / unknown per example: a solver that timed out or failed never
    certifies, even with a proven bound > 0 (its example shows the status instead)."""
    unsettled = np.isin(solver_status, UNSETTLED)
    out = np.where((lower > 0) & ~unsettled, "certified", np.where(upper <= 0, "falsified", "unknown")).astype(object)
    failed = (out == "unknown") & unsettled
    out[failed] = solver_status[failed]
    return out.astype(str)


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
    time_limit : seconds per example for the methods that take one (solvers, alpha-CROWN); a solver that
        runs out is reported with status ``time_limit`` and its proven bound so far.
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
    where = {"n_jobs": check_n_jobs(n_jobs), "client": check_client(client, n_jobs)}
    options = dict(options or {})
    for name, opts in options.items():
        if name not in bound_methods:
            raise ValueError(f"options given for {name!r}, which is not among the bound methods compared "
                             f"({', '.join(bound_methods) or 'none'})")
        if not isinstance(opts, dict):
            raise ValueError(f"options[{name!r}] must be a dict of option names to values; got {opts!r}")
        reject_unknown_options(opts, f"options[{name!r}]", get_method(name).OPTIONS - {"compute_upper",
                                                                                       "return_intermediate"})
    norm = check_norm(norm)
    for name in bound_methods:
        if norm not in get_method(name).NORMS:
            raise ValueError(f"method {name!r} does not handle the l_{norm} ball (it takes "
                             f"{', '.join(f'l_{p}' for p in get_method(name).NORMS)}); drop it from methods")
    check_choice(exact, ("min", "all"), "exact")
    attack_steps = check_positive_int(attack_steps, "attack_steps")
    attack_restarts = check_positive_int(attack_restarts, "attack_restarts")
    settings = {"lower": lower, "upper": upper, "attack_steps": attack_steps, "attack_restarts": attack_restarts,
                "seed": seed}
    x_model = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(X))
    rows, summaries, violations, checks = [], [], [], 0
    levels = _levels(eps)
    bar = tqdm(total=len(levels) * (len(attacks) + len(bound_methods)), desc="compare", disable=not progress)
    for level, eps_value in enumerate(levels):
        problem = Problem(model, x_model, eps_value, norm, lower, upper, dtype)
        labels = labels_tensor(y, problem)
        net, n, k = problem.net, problem.n, problem.net.out_features
        C = margin_spec(labels, k, net.dtype)
        clean = _point_margins(net, problem.x, C)
        upper_rows = clean.clone()
        attack_min, seconds = {}, {}
        for name in attacks:
            bar.set_postfix_str(f"eps {level + 1}/{len(levels)}: {name}")
            tic = time.perf_counter()
            found = _attack_margins(name, model, x_model, labels, problem, C, settings)
            seconds[name] = np.full(n, (time.perf_counter() - tic) / max(n, 1))
            attack_min[name] = found.amin(1)
            upper_rows = torch.minimum(upper_rows, found)
            bar.update()
        lowers, status, inter, used_inter, milp_margin, milp_solved = {}, {}, {}, None, None, None
        for name in bound_methods:
            bar.set_postfix_str(f"eps {level + 1}/{len(levels)}: {name}")
            solver = get_method(name).SOLVER
            if solver and shared_intermediate and inter and used_inter is None:
                used_inter = tightest(*inter.values())
            opts = _method_options(name, options, time_limit, used_inter if solver else None)
            if name == EXACT and exact == "min":
                out = _run_exact(problem, C, opts, lowers, upper_rows, where)
                milp_solved = out["solved"]
            else:
                out = _run_bounds(name, problem, C, opts, batch_size, where)
            lowers[name], status[name], seconds[name] = out["lower"], out["status"], out["seconds"]
            if not solver and out["intermediate"] is not None and "intermediate" not in options.get(name, {}):
                inter[name] = out["intermediate"]
            if name == EXACT:
                milp_margin = out["margin"]
            upper_rows = torch.minimum(upper_rows, torch.nan_to_num(out["replayed"], nan=float("inf")))
            bar.update()
        # the methods whose intermediate bounds the solvers used: shared ones, else their default (IBP, CROWN)
        lp_inputs = list(inter) if used_inter is not None else [m for m in ("ibp", "crown") if not options.get(m)]
        found, count = check_chain(lowers, upper_rows, status, labels, lp_inputs, options, milp_margin,
                                   milp_solved, atol=atol, rtol=rtol)
        checks += count
        for v in found:
            v.update(level=level, eps=_level_value(eps_value), example=int(v["example"]))
        violations += found
        level_rows, summary = _tables(level, eps_value, labels, clean, upper_rows, attack_min, lowers, status,
                                      seconds, found)
        summary["chain_checks"] = count
        rows += level_rows
        summaries.append(summary)
    bar.close()
    settings = {"norm": problem.norm, "lower": _level_value(lower) if lower is not None else None,
                "upper": _level_value(upper) if upper is not None else None, "attack_steps": attack_steps,
                "attack_restarts": attack_restarts, "time_limit": time_limit, "exact": exact,
                "shared_intermediate": shared_intermediate, "options": options, "atol": atol, "rtol": rtol,
                "seed": seed, "dtype": str(dtype).replace("torch.", ""), "chain_checks": checks}
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
