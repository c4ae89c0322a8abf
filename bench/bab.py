"""Complete verification on VNN-COMP 2021 benchmarks: branch and bound against the MILP, and against α,β-CROWN.

    python bench/bab.py [--benchmark acasxu] [--per-prop 2 | --all] [--timeout 20 | --official] [--methods bab,milp]
                        [--only NAME,...] [--out results.csv] [--peer abcrown.csv] [--report]
                        [--device cuda] [--shard K/N] [--deadline SECONDS] [--data DIR]

Benchmarks (``../shared/data``): ``acasxu`` (186 instances, 116 s each), ``mnistfc`` (90, 120 s), ``eran``
(relu_9_200, 36, 300 s), ``oval21`` (30, 720 s). Instances: with ``--all`` every row of the benchmark's instances
CSV, else ``--per-prop`` rows per property (ACAS Xu; spread over the 45 networks, the same rows every run) or the
first ``--first`` rows (the others); ``--only`` keeps those whose name contains one of its substrings. Each is
verified in this process, one torch thread, by ``robustopt.vnnlib.run_instance`` with each of ``--methods``:
``bab`` (attacks, then branch and bound: input splitting on ACAS Xu's 5 inputs, ReLU splitting otherwise),
``milp`` (attacks, then the exact MILP), ``auto`` (attacks, CROWN, α-CROWN, then branch and bound); ``bab:fsb``
(or ``auto:fsb``, any of the ``branching`` choices after the colon) sets the branching heuristic; under
``--timeout`` seconds or the CSV's own (``--official``), on ``--device`` (the network is moved there; the search
runs where the network is). ``--shard K/N`` keeps every N-th instance from the K-th (K = 1..N), for N processes
side by side; ``--deadline`` starts no instance after that many seconds (those left are not run, not counted).
An instance that raises is recorded as ``error`` (with the message) and the run goes on.

Results are appended to ``--out`` (one row per instance and method; rows already there are skipped, so an
interrupted run started again resumes). The summary compares each result with the consensus verdict of the 2021
tools (``vnncomp2021_results/verdicts_*_2021.csv``): solved (sat / unsat, agreeing), timeout / unknown, **wrong**
(disagrees: must be 0), and the median and total seconds. ``--peer`` adds another tool's results (α,β-CROWN's
here) from a CSV with columns ``benchmark, onnx, vnnlib, result, seconds`` and optionally ``seconds_solver`` (its
time without process start-up), on the instances both have: solved counts and the median time per solved
instance, ours ÷ theirs. ``--report``
prints the summary of ``--out`` (and ``--peer``) without running anything.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustopt.vnnlib.runner import cached_model, run_instance  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
BENCHMARKS = {  # name: (folder, instances CSV, verdict table)
    "acasxu": ("vnncomp2021_acasxu", "acasxu_instances.csv", "verdicts_acasxu_2021.csv"),
    "mnistfc": ("vnncomp2021_mnistfc", "mnistfc_instances.csv", "verdicts_mnistfc_2021.csv"),
    "eran": ("vnncomp2021_eran_mnist_relu_9_200", "eran_instances_relu_only.csv", "verdicts_eran_2021.csv"),
    "oval21": ("vnncomp2021_oval21", "oval21_instances.csv", "verdicts_oval21_2021.csv"),
}
FIELDS = ["benchmark", "instance", "method", "timeout", "result", "seconds", "expected", "kind"]


def instance_name(onnx, vnnlib) -> str:
    """The verdict tables' name of an instance: ``{network}-{property}`` (file stems)."""
    return f"{Path(onnx).stem}-{Path(vnnlib).name.removesuffix('.gz').removesuffix('.vnnlib')}"


def instances(data, benchmark, everything, per_prop, first):
    """Rows (onnx, vnnlib, timeout) of the benchmark's instances CSV under ``data``: all, ``per_prop`` per ACAS Xu
    property (evenly spaced over its rows), or the first ``first``."""
    folder, listing, _ = BENCHMARKS[benchmark]
    with open(data / folder / listing, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if everything:
        return rows
    if benchmark != "acasxu":
        return rows[:first]
    chosen = []
    for prop in range(1, 11):
        mine = [r for r in rows if Path(r[1]).stem == f"prop_{prop}"]
        chosen += mine[::max(1, len(mine) // per_prop)][:per_prop]
    return chosen


def verdicts(data, benchmark) -> dict:
    path = data / "vnncomp2021_results" / BENCHMARKS[benchmark][2]
    with open(path, newline="") as f:
        return {row["instance"]: row["consensus"] for row in csv.DictReader(f)}


def kind_of(result, expected) -> str:
    if result == "error":
        return "error"
    if result not in ("sat", "unsat"):
        return "timeout"
    return "solved" if result == expected or expected not in ("sat", "unsat") else "wrong"


def run(args, rows, known):
    done = set()
    if os.path.exists(args.out):
        with open(args.out, newline="") as f:
            done = {(r["instance"], r["method"]) for r in csv.DictReader(f)}
    fresh = not os.path.exists(args.out)
    folder = args.data / BENCHMARKS[args.benchmark][0]
    methods = args.methods.split(",")
    print(f"{args.benchmark}: {len(rows)} instances, methods {methods}, 1 torch thread, device {args.device}, load "
          "average %.1f / %.1f / %.1f" % os.getloadavg(), flush=True)
    start = time.perf_counter()
    with open(args.out, "a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if fresh:
            writer.writeheader()
        for onnx, vnnlib, official in rows:
            if args.deadline is not None and time.perf_counter() - start > args.deadline:
                print(f"deadline of {args.deadline:.0f} s reached: the instances left are not run", flush=True)
                return
            name = instance_name(onnx, vnnlib)
            timeout = float(official) if args.official else args.timeout
            for method in methods:
                if (name, method) in done:
                    continue
                cached_model(os.fspath(folder / onnx)).to(args.device)
                tic = time.perf_counter()
                try:
                    base, _, branching = method.partition(":")
                    options = {"complete_options": {"branching": branching}} if branching else {}
                    result = run_instance(folder / onnx, folder / vnnlib, timeout, base, **options)["result"]
                except Exception as err:  # noqa: BLE001 -- recorded and counted; the other instances go on
                    result = "error"
                    print(f"{name}: {type(err).__name__}: {err}", flush=True)
                seconds = time.perf_counter() - tic
                row = {"benchmark": args.benchmark, "instance": name, "method": method, "timeout": timeout,
                       "result": result, "seconds": f"{seconds:.2f}", "expected": known.get(name),
                       "kind": kind_of(result, known.get(name))}
                writer.writerow(row)
                f.flush()
                print(f"{name:60s} {method:5s} {result:7s} {seconds:7.2f} s  (known {known.get(name)})", flush=True)


def tally(results):
    """{solved, sat, unsat, timeout, wrong, median (solved), total} of [(result, seconds, kind)]."""
    solved = [s for r, s, k in results if k == "solved"]
    return {"n": len(results), "solved": len(solved), "sat": sum(r == "sat" and k == "solved" for r, _, k in results),
            "unsat": sum(r == "unsat" and k == "solved" for r, _, k in results),
            "timeout": sum(k == "timeout" for _, _, k in results), "wrong": sum(k == "wrong" for _, _, k in results),
            "error": sum(k == "error" for _, _, k in results),
            "median": statistics.median(solved) if solved else float("nan"),
            "total": sum(s for _, s, _ in results)}


def report(args, known):
    ours = {}
    with open(args.out, newline="") as f:
        for r in csv.DictReader(f):
            if r["benchmark"] == args.benchmark:
                ours.setdefault(r["method"], {})[r["instance"]] = (r["result"], float(r["seconds"]), r["kind"])
    peer, solver = {}, {}
    if args.peer:
        with open(args.peer, newline="") as f:
            for r in csv.DictReader(f):
                if r["benchmark"] == args.benchmark:
                    name = instance_name(r["onnx"], r["vnnlib"])
                    peer[name] = (r["result"], float(r["seconds"]), kind_of(r["result"], known.get(name)))
                    solver[name] = float(r.get("seconds_solver") or "nan")
    print(f"\n## {args.benchmark}\n\n| method | instances | solved (sat / unsat) | timeout / unknown | wrong | "
          "median s (solved) | total s | error |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, results in list(ours.items()) + ([("α,β-CROWN", peer)] if peer else []):
        t = tally(list(results.values()))
        print(f"| {method} | {t['n']} | {t['solved']} ({t['sat']} / {t['unsat']}) | {t['timeout']} | {t['wrong']} | "
              f"{t['median']:.2f} | {t['total']:.0f} | {t['error']} |")
    for method, results in ours.items() if peer else ():
        both = sorted(set(results) & set(peer))
        a, b = tally([results[i] for i in both]), tally([peer[i] for i in both])
        startless = [solver[i] for i in both if peer[i][2] == "solved"]
        print(f"\n{method} vs α,β-CROWN on the {len(both)} instances both ran: solved {a['solved']} vs {b['solved']}, "
              f"wrong {a['wrong']} vs {b['wrong']}, median s per solved instance {a['median']:.2f} vs "
              f"{b['median']:.2f} (ours ÷ theirs {a['median'] / b['median']:.2f}); theirs without its process "
              f"start-up: {statistics.median(startless or [float('nan')]):.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="acasxu", choices=sorted(BENCHMARKS))
    parser.add_argument("--all", action="store_true", help="every instance of the benchmark")
    parser.add_argument("--per-prop", type=int, default=2, help="ACAS Xu instances per property (default 2)")
    parser.add_argument("--first", type=int, default=10, help="other benchmarks: the first rows (default 10)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per instance and method (default 20)")
    parser.add_argument("--only", default=None,
                        help="comma-separated substrings: of the instances chosen, those whose name contains one, "
                             "in this order (e.g. --only img4549,img1697)")
    parser.add_argument("--official", action="store_true", help="the instances CSV's own timeouts")
    parser.add_argument("--methods", default="bab,milp",
                        help="comma-separated: bab, milp, auto, bab:BRANCHING (default bab,milp)")
    parser.add_argument("--out", default=".bench/bab_results.csv", help="results CSV (appended; resumable)")
    parser.add_argument("--peer", default=None, help="α,β-CROWN results CSV to compare with")
    parser.add_argument("--report", action="store_true", help="only summarize --out (and --peer)")
    parser.add_argument("--device", default="cpu", type=torch.device, help="torch device (default cpu)")
    parser.add_argument("--shard", default="1/1", help="K/N: every N-th instance from the K-th (default 1/1)")
    parser.add_argument("--deadline", type=float, default=None, help="start no instance after this many seconds")
    parser.add_argument("--data", type=Path, default=DATA, help=f"benchmark folders (default {DATA})")
    args = parser.parse_args(argv)
    parts = args.shard.split("/")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 1 <= int(parts[0]) <= int(parts[1]):
        parser.error(f"--shard must be K/N with 1 <= K <= N, got {args.shard!r}")
    shard, shards = map(int, parts)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    verdict_table = args.data / "vnncomp2021_results" / BENCHMARKS[args.benchmark][2]
    if not verdict_table.exists():
        print(f"[skip] {verdict_table} not found")
        return
    known = verdicts(args.data, args.benchmark)
    if not args.report:
        torch.set_num_threads(1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        rows = instances(args.data, args.benchmark, args.all, args.per_prop, args.first)
        if args.only:
            wanted = args.only.split(",")
            rows = list({tuple(r): r for w in wanted for r in rows if w in instance_name(r[0], r[1])}.values())
            if not rows:
                parser.error(f"--only {args.only!r} matches no instance of {args.benchmark}")
        run(args, rows[shard - 1::shards], known)
    report(args, known)


if __name__ == "__main__":
    main()
