"""Benchmark of the solver methods of robustopt.verify on the trained digits MLP 64-32-32-10.

    python bench/verify_solvers.py [--quick] [--threads 1] [--repeats 3] [--json out.json]

1. LP: ``lp`` (HiGHS through highspy, bound from a dual certificate) against ``lp-cvxpy`` (the readable
   cvxpy formulation, Clarabel) on the same examples at eps = 0.02: seconds per example, time ratio (goal
   >= 10x) and the largest bound difference (goal <= 1e-5).
2. MILP: the exact verdict at eps = 0.05 on the examples that reach the MILP (those that PGD and CROWN leave
   open in ``certify``): median / max seconds per example (wall clock of the whole method on that example:
   IBP + CROWN bounds, building the program, HiGHS) and the HiGHS time alone, for robustopt's default
   (tightest IBP/CROWN big-M, rows already settled by CROWN skipped, weakest row first, early stop at the
   verdict; HiGHS searches and :mod:`robustopt.verify.phase_search` proves, "solver s" is both) against variants
   measured in the same run: the same without early stop (every row solved to a
   1e-6 gap), and the naive version (IBP big-M, every row, no early stop, HiGHS's default heuristics).

The network is trained here (bench/verify.py's digits set-up, seeded). Timings: torch and HiGHS pinned to
``--threads`` threads; best of ``--repeats`` for ``lp`` (one run of ``lp-cvxpy``, whose times are long).
``bench/verify.py`` calls the two sections below for its LP and MILP parts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustopt.sets import Ball  # noqa: E402
from robustopt.verify import certify, margin_bounds, network, run_method  # noqa: E402
from robustopt.verify.api import margin_spec  # noqa: E402


def lp_section(setup, args):
    """``lp`` against ``lp-cvxpy`` on the first ``args.n_lp`` examples at setup's middle eps."""
    n = min(len(setup["x"]), args.n_lp)
    x, y, eps = setup["x"][:n], setup["y"][:n], setup["eps"][1]
    net = network(setup["model"], input_shape=tuple(x.shape[1:]))
    times, bounds = {}, {}
    for method, repeats in (("lp", args.repeats), ("lp-cvxpy", 1)):
        best = float("inf")
        for _ in range(repeats):
            tic = time.perf_counter()
            bounds[method] = margin_bounds(net, x, y, eps, method=method)
            best = min(best, time.perf_counter() - tic)
        times[method] = best
    finite = torch.isfinite(bounds["lp"])
    diff = float((bounds["lp"] - bounds["lp-cvxpy"])[finite].abs().max())
    ratio = times["lp-cvxpy"] / times["lp"]
    print(f"\n## {setup['name']}: lp (HiGHS) vs lp-cvxpy (Clarabel), eps {eps}, {n} examples x 9 margins")
    print("| method | s / example | ratio lp-cvxpy / lp | max abs. bound difference |")
    print("|---|---|---|---|")
    print(f"| lp | {times['lp'] / n:.4f} | {ratio:.1f}x | {diff:.2e} |")
    print(f"| lp-cvxpy | {times['lp-cvxpy'] / n:.4f} | | |")
    return {"lp_s": times["lp"] / n, "lp_cvxpy_s": times["lp-cvxpy"] / n, "ratio": ratio, "max_diff": diff}


def _naive_options():
    """IBP bounds for the big-M, every row, no early stop, HiGHS's default sub-MIP heuristics."""
    return {"highs_options": {"mip_heuristic_run_rins": True, "mip_heuristic_run_rens": True}}


VARIANTS = (
    ("robustopt (default: tightest big-M, skip settled rows, early stop)", "default"),
    ("  same, without early stop (every row to gap 1e-6)", "full"),
    ("  naive: IBP big-M, every row, no early stop, HiGHS heuristics", "naive"),
)


def _solve_one(model, x, y, eps, variant, time_limit):
    """The MILP verdict of one example: (wall seconds, HiGHS seconds, binaries, MILPs, verdict)."""
    net = network(model).with_spec(margin_spec(y, 10))
    ball = Ball(eps, "inf")
    tic = time.perf_counter()
    options = {"time_limit": time_limit}
    if variant == "default":
        options["stop_at"] = 0.0
    elif variant == "naive":
        options.update(_naive_options())
        options["intermediate"] = run_method("ibp", net, x, ball, compute_upper=False,
                                             return_intermediate=True).intermediate
    res = run_method("milp", net, x, ball, compute_upper=False, **options)
    wall = time.perf_counter() - tic
    if res.status[0] == "time_limit":
        verdict = "unknown"
    elif float(res.lower.amin()) > 0:
        verdict = "certified"
    elif np.nanmin(res.replayed) <= 0:
        verdict = "falsified"
    else:
        verdict = "unknown"
    return wall, float(res.info["solver_seconds"][0]), int(res.info["binaries"][0]), int(res.info["milp_solves"][0]), \
        int(res.info.get("domains", [0])[0]), verdict


def milp_section(setup, args):
    """Exact verdicts at eps 0.05 on the examples ``certify`` leaves open after PGD and CROWN."""
    model, x, y, eps = setup["model"], setup["x"], setup["y"], 0.05
    crown = certify(model, x, y, eps, method="crown", progress=False)
    reach = np.flatnonzero(crown.status == "unknown")
    print(f"\n## {setup['name']}: MILP exact verdicts at eps {eps}: {len(reach)} of {len(x)} examples reach the "
          f"MILP (PGD falsified {crown.counts['falsified']}, CROWN certified {crown.counts['certified']})")
    if len(reach) == 0:
        return None
    xs, ys = x.double(), y
    results, verdicts = {}, {}
    variants = [(label, v) for label, v in VARIANTS if v in args.variants]
    for label, variant in variants:
        rows = [_solve_one(model, xs[i:i + 1], ys[i:i + 1], eps, variant, args.time_limit) for i in reach]
        wall, solver, binaries, solves, domains, verdict = (np.array(c) for c in zip(*rows))
        verdicts[variant] = verdict
        counts = {v: int((verdict == v).sum()) for v in ("certified", "falsified", "unknown")}
        results[variant] = {"label": label.strip(), "median_s": float(np.median(wall)), "max_s": float(wall.max()),
                            "median_solver_s": float(np.median(solver)), "max_solver_s": float(solver.max()),
                            "median_binaries": float(np.median(binaries)), "mean_milps": float(solves.mean()),
                            "median_domains": float(np.median(domains)), "max_domains": int(domains.max()),
                            "verdicts": counts}
    print(f"torch threads {torch.get_num_threads()}, HiGHS threads 1, time limit {args.time_limit} s per example")
    print("| variant | median s / ex | max s / ex | median solver s | max solver s | median binaries | MILPs / ex "
          "| proof LPs / ex (median, max) | certified / falsified / unknown |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, variant in variants:
        r = results[variant]
        c = r["verdicts"]
        print(f"| {label} | {r['median_s']:.4f} | {r['max_s']:.4f} | {r['median_solver_s']:.4f} | "
              f"{r['max_solver_s']:.4f} | {r['median_binaries']:.0f} | {r['mean_milps']:.2f} | "
              f"{r['median_domains']:.0f}, {r['max_domains']} | {c['certified']} / {c['falsified']} / {c['unknown']} |")
    speedup = results["naive"]["median_s"] / results["default"]["median_s"] if len(variants) == 3 else float("nan")
    # a variant stopped by the time limit says "unknown": compare the verdicts where both variants decided
    decided = {v: verdicts[v] != "unknown" for v in verdicts}
    agree = all((verdicts[v] == verdicts["default"])[decided[v] & decided["default"]].all() for v in verdicts)
    print(f"median speed-up over the naive version: {speedup:.1f}x; no two variants give opposite verdicts: {agree}")
    results["speedup_vs_naive"], results["verdicts_agree"] = speedup, agree
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer examples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pinned; default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="best-of repeats for the lp timing")
    parser.add_argument("--time-limit", type=float, default=60.0, help="MILP seconds per example")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--variants", default="default,full,naive",
                        help="MILP variants to run, comma-separated (default, full, naive)")
    args = parser.parse_args(argv)
    args.variants = args.variants.split(",")
    args.n_digits, args.n_lp = (150, 5) if args.quick else (450, 20)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float64 bounds")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from verify import digits_setup  # bench/verify.py: the same seeded digits MLP

    setup = digits_setup(args)
    print(f"{setup['name']}: test accuracy {setup['test_accuracy']:.4f}, {len(setup['x'])} test examples")
    results = {"lp": lp_section(setup, args), "milp": milp_section(setup, args)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
