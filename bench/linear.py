"""Benchmark of exact robust logistic regression: the fast solver against cvxpy (ECOS and Clarabel).

    python bench/linear.py [--data fashion-mnist|mnist] [--root DIR] [--classes 0 1] [--eps 0.2]
                           [--subset 1200] [--threads 2] [--repeats 3] [--quick] [--skip-full] [--json PATH]

The problem: the tutorial's pure robust objective (C=None), ℓ∞ ball of radius eps, no box,
mean_i log(1 + exp(-(y_i (w.x_i + b) - eps ||w||_1))), on two classes of 28×28 images (Fashion-MNIST from Debian's
package dataset-fashion-mnist by default, classes 0 and 1; MNIST with --data mnist --root DIR).

1. On a seeded subset (1,200 images): time and objective of cvxpy+ECOS, cvxpy+Clarabel (the same cvxpy problem,
   robustopt.linear.robust_logistic_problem, timed including cvxpy's compilation, as a user pays it) and the fast
   solver (best of --repeats); the objective gaps and the time ratios. Goal: the fast solver >= 20× faster than
   cvxpy+Clarabel at equal objective (1e-6 relative).
2. The fast solver alone on the full two-class training set (12,000 images for Fashion-MNIST), with its KKT
   residual and a certified duality gap (a dual-feasible point's value bounds the optimum from below).
   Goal: under 10 s on 2 cores, within 1e-6 (relative) of the optimum.

Thread count: BLAS is limited to --threads (threadpoolctl) and printed; cvxpy's solvers run single-threaded, and
so does the fast solver on data of up to 2^24 entries (its products are small or memory-bound; it says so below).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robustopt import data  # noqa: E402
from robustopt.linear import fast as fast_solver, robust_logistic_linf, robust_logistic_problem, solve  # noqa: E402


def load(args):
    if args.data == "mnist":
        X, y = data.load_mnist(root=args.root, classes=args.classes)
    else:
        X, y = data.load_fashion_mnist(root=args.root, classes=args.classes)
    return X.astype(np.float64), np.where(y == args.classes[1], 1.0, -1.0)


def time_cvxpy(X, y, eps, solver):
    start = time.perf_counter()
    problem, *_ = robust_logistic_problem(X, y, eps)
    value = solve(problem, solver)
    return {"method": f"cvxpy+{solver}", "seconds": time.perf_counter() - start, "objective": float(value),
            "solver_seconds": float(problem.solver_stats.solve_time or np.nan)}


def time_fast(X, y, eps, repeats):
    best = None
    for _ in range(repeats):
        result = robust_logistic_linf(X, y, eps, certify=True)
        if best is None or result.seconds < best.seconds:
            best = result
    return {"method": "fast", "seconds": best.seconds, "objective": float(best.objective),
            "kkt_residual": float(best.kkt_residual), "duality_gap": best.duality_gap,
            "nonzero_weights": int(np.count_nonzero(best.coef)), "newton_iterations": best.n_iter,
            "passes": best.n_outer}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("fashion-mnist", "mnist"), default="fashion-mnist")
    parser.add_argument("--root", default=None, help="folder with the IDX files (default: the usual places)")
    parser.add_argument("--classes", type=int, nargs=2, default=(0, 1))
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--subset", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fast solver; the best time is kept")
    parser.add_argument("--quick", action="store_true", help="a 300-image subset, one repeat")
    parser.add_argument("--skip-full", action="store_true", help="only the subset comparison")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.subset, args.repeats = min(args.subset, 300), 1

    from threadpoolctl import threadpool_limits
    import cvxpy
    import scipy
    threadpool_limits(args.threads)
    X, y = load(args)
    print(f"# robust logistic regression, l_inf eps={args.eps}, C=None (mean robust loss), no box")
    fast_threads = 1 if X.size <= fast_solver._SINGLE_THREAD_SIZE else args.threads
    print(f"# data: {args.data} classes {args.classes[0]} vs {args.classes[1]}, {len(X)} training images of "
          f"{X.shape[1]} pixels; BLAS threads: {args.threads} (the fast solver uses {fast_threads}); numpy "
          f"{np.__version__}, scipy {scipy.__version__}, cvxpy {cvxpy.__version__}, python {platform.python_version()}")
    results = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}}

    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(X), size=min(args.subset, len(X)), replace=False))
    Xs, ys = X[pick], y[pick]
    print(f"\n## 1. subset of {len(Xs)} images (seed 0)")
    rows = [time_cvxpy(Xs, ys, args.eps, "ECOS"), time_cvxpy(Xs, ys, args.eps, "CLARABEL"),
            time_fast(Xs, ys, args.eps, args.repeats)]
    best = min(r["objective"] for r in rows)
    fast = rows[-1]
    print(f"{'method':<16}{'seconds':>10}{'objective':>22}{'rel. to best':>15}{'time / fast':>13}")
    for r in rows:
        r["relative_to_best"] = (r["objective"] - best) / best
        r["time_ratio_to_fast"] = r["seconds"] / fast["seconds"]
        print(f"{r['method']:<16}{r['seconds']:>10.3f}{r['objective']:>22.13f}{r['relative_to_best']:>15.2e}"
              f"{r['time_ratio_to_fast']:>12.1f}x")
    print(f"fast: KKT residual {fast['kkt_residual']:.2e}, certified relative duality gap {fast['duality_gap']}, "
          f"{fast['nonzero_weights']} nonzero weights, {fast['newton_iterations']} Newton iterations in "
          f"{fast['passes']} passes")
    clarabel = rows[1]
    same = abs(fast["objective"] - clarabel["objective"]) <= 1e-6 * abs(clarabel["objective"])
    print(f"goal (>= 20x faster than cvxpy+CLARABEL at equal objective): ratio "
          f"{clarabel['seconds'] / fast['seconds']:.1f}x, objectives equal to 1e-6: {same} -> "
          f"{'met' if same and clarabel['seconds'] >= 20 * fast['seconds'] else 'NOT met'}")
    results["subset"] = rows

    if not args.skip_full:
        print(f"\n## 2. full training set, {len(X)} images: the fast solver alone (best of {args.repeats})")
        full = time_fast(X, y, args.eps, args.repeats)
        gap = full["duality_gap"]
        print(f"fast: {full['seconds']:.3f} s, objective {full['objective']:.13f}, KKT residual "
              f"{full['kkt_residual']:.2e}, certified relative duality gap {gap}, {full['nonzero_weights']} "
              f"nonzero weights, {full['newton_iterations']} Newton iterations in {full['passes']} passes")
        met = gap is not None and gap <= 1e-6 and full["seconds"] < 10
        print(f"goal (under 10 s on 2 cores, within 1e-6 of the optimum): {full['seconds']:.2f} s, gap "
              f"{'unknown' if gap is None else f'{gap:.1e}'} -> {'met' if met else 'NOT met'}")
        results["full"] = full
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
