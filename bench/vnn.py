"""Benchmark of the VNN-COMP path: our own local-robustness instances on a 784-256-256-10 MNIST MLP, n_jobs.

    python bench/vnn.py [--quick] [--n 16] [--timeout 120] [--mnist-root DIR] [--vnncomp]

1. instances: a 784-256-256-10 MLP trained here on MNIST (``robustopt.models.fit``, seeded; cached in the temp
   folder), exported to ONNX; one VNNLIB local-robustness property per test image (the first ``--n``) and
   eps in {0.02, 0.05} (box [max(0, x - eps), min(1, x + eps)], "OR_j Y_j >= Y_label"), and an instances CSV.
   ``robustopt.vnnlib.runner.run_csv`` runs them all with n_jobs=1, then n_jobs=2: per-instance result, stage
   and time, the number solved within the timeout, agreement between the two runs and the wall-time speed-up.
2. certify: ``certify(method="lp")`` on the first images at eps = 0.03, n_jobs=1 vs 2 (same verdicts and
   bounds? speed-up). The LP has no time limit, so the two runs must agree bit for bit.
3. (``--vnncomp``) the VNN-COMP 2021 mnistfc instances from ../shared/data against the known verdicts.

Torch runs with one thread in this process and in every worker. On a shared 2-core machine the speed-up of
two processes is bounded by what the other processes leave: the load average is printed with the numbers, and
the speed-up of two processes on a pure-Python loop, measured in the same run, is the reference.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustopt import data, models  # noqa: E402
from robustopt.verify import certify  # noqa: E402
from robustopt.vnnlib import local_robustness, save  # noqa: E402
from robustopt.vnnlib.runner import run_csv  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
EPS = (0.02, 0.05)
CERTIFY_EPS = 0.03


def mnist_model(root, epochs, cache):
    """The 784-256-256-10 MLP, trained once (seeded) and cached as a robustopt.models file."""
    X, y = data.load_mnist(root, split="train")
    Xt, yt = data.load_mnist(root, split="test")
    path = cache / f"mnist_mlp_256x2_e{epochs}.pt"
    if path.exists():
        model = models.load(path)
    else:
        torch.manual_seed(0)
        model = models.mlp(784, (256, 256), 10)
        models.fit(model, X, y, epochs=epochs, lr=1e-3, batch_size=128, progress=False, device="cpu", seed=0)
        models.save(model, path)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.as_tensor(Xt)).argmax(1).numpy() == yt).mean())
    return model, Xt, yt, accuracy


def write_instances(model, Xt, yt, n, timeout, folder):
    """ONNX network, one VNNLIB file per (image, eps), instances.csv; returns the CSV path."""
    import warnings

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.float(), (torch.rand(1, 784),), str(folder / "mnist_256x2.onnx"), dynamo=False)
    rows = []
    for eps in EPS:
        for i in range(n):
            name = f"prop_{i}_{eps}.vnnlib"
            save(local_robustness(Xt[i], int(yt[i]), eps, 10), folder / name)
            rows.append(("mnist_256x2.onnx", name, timeout))
    path = folder / "instances.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def timed_run(path, n_jobs, **kw):
    tic = time.perf_counter()
    rows = run_csv(path, n_jobs=n_jobs, progress=False, **kw)
    return rows, time.perf_counter() - tic


def load_text():
    return "load average %.1f / %.1f / %.1f" % os.getloadavg()


def _burn(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_calibration(tasks=4, n=4_000_000):
    """Speed-up of 2 processes over 1 on a pure-Python CPU loop, measured now: what the machine gives."""
    from joblib import Parallel, delayed

    list(Parallel(n_jobs=2)(delayed(_burn)(10) for _ in range(2)))  # start the workers
    tic = time.perf_counter()
    for _ in range(tasks):
        _burn(n)
    serial = time.perf_counter() - tic
    tic = time.perf_counter()
    list(Parallel(n_jobs=2)(delayed(_burn)(n) for _ in range(tasks)))
    return serial / (time.perf_counter() - tic)


def instances_section(args, model, Xt, yt):
    folder = Path(tempfile.mkdtemp(prefix="robustopt-vnn-"))
    path = write_instances(model, Xt, yt, args.n, args.timeout, folder)
    print(f"\n## 1. {2 * args.n} local-robustness instances (eps {EPS}, timeout {args.timeout:g} s), {folder}")
    print(load_text())
    runs = {}
    for jobs in (1, 2):
        runs[jobs] = timed_run(path, jobs)
        print(f"n_jobs={jobs}: {runs[jobs][1]:.1f} s wall; {load_text()}")
    one, two = runs[1][0], runs[2][0]
    print(f"\n| instance | eps | result (1 job) | stage | seconds | result (2 jobs) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for a, b in zip(one, two):
        _, i, eps = a["vnnlib"][:-7].split("_")
        print(f"| {i} | {eps} | {a['result']} | {a['decided_by'] or '-'} | {a['seconds']:.2f} | {b['result']} | "
              f"{b['seconds']:.2f} |")
    for eps in EPS:
        part = [r for r in one if r["vnnlib"].endswith(f"_{eps}.vnnlib")]
        counts = {k: sum(r["result"] == k for r in part) for k in ("sat", "unsat", "timeout", "unknown")}
        solved = counts["sat"] + counts["unsat"]
        print(f"eps {eps}: solved {solved}/{len(part)} within {args.timeout:g} s ({counts}); median "
              f"{np.median([r['seconds'] for r in part]):.2f} s, max {max(r['seconds'] for r in part):.2f} s")
    solved = sum(r["result"] in ("sat", "unsat") for r in one)
    agree = sum(a["result"] == b["result"] for a, b in zip(one, two))
    print(f"total: solved {solved}/{len(one)} (1 job); n_jobs=2 agrees on {agree}/{len(one)}; "
          f"speed-up of n_jobs=2 over 1: {runs[1][1] / runs[2][1]:.2f}x ({runs[1][1]:.1f} s -> {runs[2][1]:.1f} s; "
          f"time-outs are wall-clock, so two jobs overlap them whatever the CPU)")
    print(f"reference: 2 processes on a pure-Python loop, now: {cpu_calibration():.2f}x")


def certify_section(args, model, Xt, yt):
    n, eps = args.n_certify, CERTIFY_EPS
    print(f"\n## 2. certify(method='lp') on the first {n} test images, eps {eps}, n_jobs 1 vs 2 (LPs per example, "
          f"no time limit; the worker pool is started before timing)")
    x, y = torch.as_tensor(Xt[:n]), torch.as_tensor(yt[:n])
    certify(model, x[:2], y[:2], eps, method="lp", n_jobs=2, progress=False)  # start the workers
    res = {}
    for jobs in (1, 2):
        res[jobs] = certify(model, x, y, eps, method="lp", n_jobs=jobs, progress=False)
        print(f"n_jobs={jobs}: {res[jobs].seconds:.1f} s, {res[jobs].counts}; {load_text()}")
    same = np.array_equal(res[1].status, res[2].status) and torch.equal(res[1].margin_bounds, res[2].margin_bounds)
    print(f"identical verdicts and bounds: {same}; speed-up {res[1].seconds / res[2].seconds:.2f}x "
          f"(reference: 2 processes on a pure-Python loop, now: {cpu_calibration():.2f}x)")


def vnncomp_section(args):
    folder = SHARED / "vnncomp2021_mnistfc"
    verdicts = SHARED / "vnncomp2021_results" / "verdicts_mnistfc_2021.csv"
    if not verdicts.exists():
        print(f"\n## 3. [skip] VNN-COMP 2021 mnistfc: {verdicts} not found")
        return
    with open(verdicts, newline="") as f:
        known = {row["instance"]: row["consensus"] for row in csv.DictReader(f)}
    csv_path = Path(tempfile.mkdtemp(prefix="robustopt-mnistfc-")) / "instances.csv"
    with open(folder / "mnistfc_instances.csv", newline="") as f:
        rows = [r for r in csv.reader(f) if r and args.vnncomp_net in r[0]]
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([(r[0], r[1], args.vnncomp_timeout) for r in rows])
    print(f"\n## 3. VNN-COMP 2021 mnistfc ({len(rows)} instances of {args.vnncomp_net}, timeout "
          f"{args.vnncomp_timeout:g} s, n_jobs=2)")
    results, wall = timed_run(csv_path, 2, root=folder)
    tally = {"agree": 0, "wrong": 0, "undecided": 0, "no consensus": 0}
    for r in results:
        name = f"{Path(r['onnx']).stem}-{Path(r['vnnlib']).stem}"
        truth = known.get(name)
        kind = ("no consensus" if truth not in ("sat", "unsat") else "undecided" if r["result"] not in
                ("sat", "unsat") else "agree" if r["result"] == truth else "wrong")
        tally[kind] += 1
        print(f"{name:32s} known {str(truth):9s} ours {r['result']:8s} {r['seconds']:7.2f} s  {kind}")
    print(f"{tally}; wall {wall:.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 images per eps, timeout 30 s, 8 certify examples")
    parser.add_argument("--n", type=int, default=16, help="test images per eps (default 16: 32 instances)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per instance (default 120)")
    parser.add_argument("--n-certify", type=int, default=32, help="examples in the certify section (default 32)")
    parser.add_argument("--only", choices=("instances", "certify", "vnncomp"), default=None,
                        help="run one section only")
    parser.add_argument("--epochs", type=int, default=5, help="MNIST training epochs (default 5)")
    parser.add_argument("--mnist-root", default=str(SHARED / "mnist"), help="folder with the MNIST IDX files")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "robustopt-bench"),
                        help="where the trained network is cached")
    parser.add_argument("--vnncomp", action="store_true", help="also run the VNN-COMP 2021 mnistfc instances")
    parser.add_argument("--vnncomp-net", default="256x2", help="which mnistfc network(s) (substring; default 256x2)")
    parser.add_argument("--vnncomp-timeout", type=float, default=120.0, help="seconds per mnistfc instance")
    args = parser.parse_args()
    if args.quick:
        args.n, args.timeout, args.n_certify = 8, 30.0, 8
    torch.set_num_threads(1)
    print(f"torch threads: {torch.get_num_threads()} (also in every worker); CPUs: {os.cpu_count()}; {load_text()}")
    if args.only == "vnncomp":
        return vnncomp_section(args)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        model, Xt, yt, accuracy = mnist_model(args.mnist_root, args.epochs, cache)
    except FileNotFoundError as err:
        print(f"[skip] MNIST not found: {str(err).splitlines()[0]}")
        return
    print(f"network: 784-256-256-10 MLP, {args.epochs} epochs of Adam on MNIST, test accuracy {accuracy:.4f}")
    if args.only in (None, "instances"):
        instances_section(args, model, Xt, yt)
    if args.only in (None, "certify"):
        certify_section(args, model, Xt, yt)
    if args.vnncomp:
        vnncomp_section(args)


if __name__ == "__main__":
    main()
