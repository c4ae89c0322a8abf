"""Scaling benchmark: certify on MNIST serially, over n_jobs=2 processes and on a 2-worker Dask LocalCluster.

    python bench/scale.py [--n 200] [--eps 0.02] [--methods lp,milp] [--milp-time-limit 10] [--vnn]
                          [--vnn-timeout 10] [--no-certify]

1. Per-task overhead of each way to run tasks (:func:`robustopt.verify.parallel.run_tasks`: loky processes,
   Dask futures; and joblib's Dask backend, the alternative to Dask futures), from N tasks that do nothing.
2. ``certify`` with ``lp`` and ``milp`` on the first ``--n`` MNIST test images (``../shared/data/mnist``) and a
   784-100-100-10 MLP trained here (2 epochs, seeded; about 20 s): serial, ``n_jobs=2`` and a 2-worker
   LocalCluster, measured in the same run, in turn per method. Throughput (examples/s), the time per solver
   task, the overhead per task (workers x wall - serial wall, over tasks), and whether the verdicts and bounds
   equal the serial run's (bit for bit; for the MILP, under its time limit, on the examples that no run left
   unknown). Also CROWN's time per example, to show what is too short to
   send on its own.
3. Projected speed-up at 10, 100, 1000 workers from these measurements (see :func:`projected_speedup`).
4. (``--vnn``) the 90 VNN-COMP 2021 mnistfc instances with a per-instance time limit of ``--vnn-timeout`` s, on
   ``--jobs 2`` (loky) and on a 2-worker LocalCluster: verdict agreement and wall time.

Torch runs with one thread here and in every worker. The machine this was written on has 2 cores shared with
other jobs: every figure printed comes with the load average, and the variants are measured in the same run.
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
from robustopt.verify.parallel import local_client, run_tasks  # noqa: E402
from vnn import cpu_calibration, load_text  # noqa: E402  (bench/vnn.py)

SHARED = ROOT.parent / "shared" / "data"
WORKERS = 2


def mnist_mlp(root):
    """A 784-100-100-10 MLP trained 2 epochs on MNIST (seeded, deterministic on one thread)."""
    X, y = data.load_mnist(root, split="train")
    Xt, yt = data.load_mnist(root, split="test")
    torch.manual_seed(0)
    model = models.mlp(784, (100, 100), 10)
    models.fit(model, X, y, epochs=2, lr=1e-3, batch_size=128, progress=False, device="cpu", seed=0)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.as_tensor(Xt)).argmax(1).numpy() == yt).mean())
    return model, Xt, yt, accuracy


def _nothing(shared, t):
    return t


def _nothing_joblib(t):
    return t


def task_overhead(client, tasks=400):
    """ms per task of doing nothing, per worker (wall x workers / tasks), for each way to run tasks."""
    import joblib

    out = {}
    for name, kw in (("loky (n_jobs=2)", {"n_jobs": WORKERS}), ("Dask futures", {"client": client})):
        list(run_tasks(_nothing, None, range(8), **kw))  # warm: workers started, modules imported
        tic = time.perf_counter()
        list(run_tasks(_nothing, np.zeros(1000), range(tasks), **kw))
        out[name] = (time.perf_counter() - tic) * WORKERS / tasks * 1e3
    with joblib.parallel_config(backend="dask", wait_for_workers_timeout=60):
        joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(_nothing_joblib)(t) for t in range(8))
        tic = time.perf_counter()
        joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(_nothing_joblib)(t) for t in range(tasks))
        out["joblib Dask backend"] = (time.perf_counter() - tic) * WORKERS / tasks * 1e3
    return out


def projected_speedup(workers, screen, task, overhead, scheduler):
    """Speed-up over one process of W workers for one example: its share s of a batched screening task (clean
    check and PGD, on a worker), its own task time t, the per-task overhead o on a worker, and the scheduler's
    time per task c (one central scheduler handles every task in turn): (s + t) / max((s + t + o) / W, c)."""
    return (screen + task) / max((screen + task + overhead) / workers, scheduler)


def run_certify(model, X, y, eps, method, client, time_limit):
    """The three runs of one method, one after the other; returns {variant: CertifyResult}. Each is preceded by
    an untimed run on 24 images, so that every worker has imported the solver (a one-off cost of seconds)."""
    runs = {}
    for name, kw in (("serial", {}), (f"n_jobs={WORKERS}", {"n_jobs": WORKERS}),
                     (f"Dask {WORKERS} workers", {"client": client})):
        certify(model, X[:24], y[:24], eps, method=method, progress=False, batch_size=4, time_limit=time_limit, **kw)
        runs[name] = certify(model, X, y, eps, method=method, progress=False, time_limit=time_limit, **kw)
    return runs


def certify_section(args, client, overhead):
    model, Xt, yt, accuracy = mnist_mlp(args.mnist_root)
    X, y = torch.as_tensor(Xt[:args.n]), torch.as_tensor(yt[:args.n])
    print(f"\n## 2. certify on the first {args.n} MNIST test images, eps {args.eps}, 784-100-100-10 MLP "
          f"(test accuracy {accuracy:.4f}); {load_text()}")
    crown = certify(model, X, y, args.eps, method="crown", progress=False)
    crown_ms = crown.seconds / args.n * 1e3
    screen = certify(model, X, y, args.eps, method="ibp", progress=False)  # clean check + PGD + IBP, batched
    screen_ms = screen.seconds / args.n * 1e3
    print(f"crown: {crown_ms:.2f} ms per example in batches of 128 (screen included); clean check + PGD-20 + IBP "
          f"{screen_ms:.2f} ms per example (a solver run's screening tasks, a batch each)")
    header = (f"{'method':6s} {'variant':16s} {'wall s':>8s} {'ex/s':>7s} {'tasks':>6s} {'task ms':>8s} "
              f"{'overhead ms':>12s} {'speed-up':>8s} {'same as serial':>15s}  verdicts")
    print(header)
    summary = {}
    for method in args.methods:
        print(f"(what the machine gives now: 2 processes on a pure-Python loop run {cpu_calibration():.2f}x faster "
              f"than 1)")
        limit = args.milp_time_limit if method == "milp" else None
        runs = run_certify(model, X, y, args.eps, method, client, limit)
        base = runs["serial"]
        open_ = int((base.status != "falsified").sum())
        # time per task measured by the serial run (there no task waits): its wall time less the screen's
        task_ms = max(base.seconds * 1e3 - screen_ms * args.n, 0.0) / max(open_, 1)
        for name, res in runs.items():
            workers = 1 if name == "serial" else WORKERS
            overhead_ms = (res.seconds * workers - base.seconds) * 1e3 / max(open_, 1)
            # where the time limit bound (unknown in either run) the verdicts may differ; elsewhere bit for bit
            free = (res.status != "unknown") & (base.status != "unknown") if limit else np.ones(args.n, bool)
            same = np.array_equal(res.status[free], base.status[free]) and \
                torch.equal(res.margin_bounds[free], base.margin_bounds[free])
            print(f"{method:6s} {name:16s} {res.seconds:8.2f} {args.n / res.seconds:7.1f} {open_:6d} {task_ms:8.1f} "
                  f"{overhead_ms if name != 'serial' else 0.0:12.1f} {base.seconds / res.seconds:8.2f} "
                  f"{str(same):>15s}  {res.counts}")
        summary[method] = task_ms, open_
    print(f"(task ms: one solver task, from the serial run less the screen; overhead ms: workers x wall less the "
          f"serial wall, per solver task; {load_text()})")

    print("\n## 3. projected speed-up over one process, (s + t) / max((s + t + o) / W, c)")
    scheduler_ms = overhead["Dask futures"] / WORKERS  # the no-op rate is bounded by the scheduler's per-task work
    print(f"s = {screen_ms:.2f} ms screen (batched clean check + PGD-20 + IBP) per example, o = {overhead['Dask futures']:.2f} ms Dask overhead "
          f"per task (no-op tasks, section 1), c = {scheduler_ms:.2f} ms scheduler time per task (upper estimate: the "
          f"no-op rate on {WORKERS} workers)")
    print(f"{'tasks':24s} {'t ms':>8s} " + " ".join(f"{f'W={w}':>8s}" for w in (10, 100, 1000)))
    rows = [(f"{m} (one example)", t) for m, (t, _) in summary.items()]
    rows += [("crown (one example)", crown_ms), ("crown (chunk of 128)", crown_ms * 128)]
    for name, t in rows:
        s = screen_ms if "crown" not in name else 0.0  # crown's time already includes its screen
        print(f"{name:24s} {t:8.2f} " + " ".join(
            f"{projected_speedup(w, s, t, overhead['Dask futures'], scheduler_ms):8.1f}" for w in (10, 100, 1000)))


def vnn_section(args, client):
    from robustopt.vnnlib.runner import run_csv

    folder = SHARED / "vnncomp2021_mnistfc"
    if not folder.is_dir():
        print(f"\n## 4. skipped: {folder} not found")
        return
    tmp = Path(tempfile.mkdtemp(prefix="robustopt_scale_"))
    with open(folder / "mnistfc_instances.csv", newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    path = tmp / "instances.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([(r[0], r[1], args.vnn_timeout) for r in rows])
    print(f"\n## 4. VNN-COMP 2021 mnistfc, {len(rows)} instances, time limit {args.vnn_timeout:g} s each; "
          f"{load_text()}")
    results = {}
    for name, kw in ((f"--jobs {WORKERS}", {"n_jobs": WORKERS}), (f"local:{WORKERS} cluster", {"client": client})):
        tic = time.perf_counter()
        out = run_csv(path, root=folder, progress=False, **kw)
        wall = time.perf_counter() - tic
        results[name] = [r["result"] for r in out]
        counts = {v: results[name].count(v) for v in ("sat", "unsat", "timeout", "unknown", "error")}
        print(f"{name:18s} wall {wall:7.1f} s  {counts}  ({load_text()})")
    (a, ra), (b, rb) = results.items()
    decided = [i for i in range(len(ra)) if ra[i] in ("sat", "unsat") and rb[i] in ("sat", "unsat")]
    conflicts = [rows[i][:2] for i in decided if ra[i] != rb[i]]
    only = sum((ra[i] in ("sat", "unsat")) != (rb[i] in ("sat", "unsat")) for i in range(len(ra)))
    print(f"same verdict on all {len(decided)} instances both decided; conflicts: {conflicts or 'none'}; "
          f"decided by one run only (a time limit that binds): {only}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--methods", default="lp,milp")
    parser.add_argument("--milp-time-limit", type=float, default=10.0,
                        help="seconds per example for the MILP (a few images take minutes at eps 0.02)")
    parser.add_argument("--mnist-root", default=str(SHARED / "mnist"))
    parser.add_argument("--vnn", action="store_true", help="also run section 4 (about 2 x 90 x timeout / 2 s)")
    parser.add_argument("--vnn-timeout", type=float, default=10.0)
    parser.add_argument("--no-certify", action="store_true", help="skip sections 2 and 3")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    torch.set_num_threads(1)
    print(f"# bench/scale.py: torch {torch.__version__}, 1 thread per process, {os.cpu_count()} CPUs; {load_text()}")
    client = local_client(WORKERS)
    try:
        overhead = task_overhead(client)
        print("\n## 1. per-task overhead of a task that does nothing, ms x workers (lower is better)")
        for name, ms in overhead.items():
            print(f"{name:22s} {ms:7.2f}")
        if not args.no_certify:
            certify_section(args, client, overhead)
        if args.vnn:
            vnn_section(args, client)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
