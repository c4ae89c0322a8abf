"""``robustopt vnnlib NET.onnx PROP.vnnlib`` (one VNN-COMP instance) and ``robustopt vnncomp INSTANCES.csv``
(every instance of a benchmark's CSV); the work is in :mod:`robustopt.vnnlib.runner`."""
from __future__ import annotations

from .options import CommandError, add_cluster_options, add_run_options, cluster, emit, setup

METHOD_HELP = ("auto (attack, CROWN, alpha-CROWN, then the exact MILP; the default), milp, or one incomplete "
               "method: ibp, crown, alpha-crown, dual, lp")


def _positive_seconds(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0; got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0; got {text!r}")
    return value


def add_parser(subparsers):
    from ..vnnlib.verify import DEFAULT_TIME_LIMIT, METHODS

    one = subparsers.add_parser(
        "vnnlib", help="verify one VNNLIB property of an ONNX network (VNN-COMP result file)",
        description="Decide whether some input in the property's box makes the network's output satisfy the "
                    "property's output condition: 'sat' (a counterexample, replayed in float64, is written "
                    "with the result), 'unsat' (proven: the property holds), 'timeout' or 'unknown'.")
    one.add_argument("onnx", metavar="NET.onnx", help="the network (ONNX)")
    one.add_argument("vnnlib", metavar="PROP.vnnlib", help="the property (.vnnlib or .vnnlib.gz)")
    one.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_TIME_LIMIT, metavar="S",
                     help=f"seconds for the whole verification (default: {DEFAULT_TIME_LIMIT:g})")
    one.add_argument("--method", default="auto", choices=METHODS, metavar="M", help=METHOD_HELP)
    add_run_options(one, out_help="write the VNN-COMP result file here (sat + witness, unsat, timeout or unknown)")
    one.set_defaults(run=run_one)

    many = subparsers.add_parser(
        "vnncomp", help="run every instance of a VNN-COMP instances CSV",
        description="Each row of INSTANCES.csv is onnx,vnnlib,timeout (paths relative to --root). Writes a CSV "
                    "onnx,vnnlib,result,seconds.")
    many.add_argument("instances", metavar="INSTANCES.csv", help="the benchmark's instances file")
    many.add_argument("--root", default=None, metavar="DIR",
                      help="folder the CSV's paths are relative to (default: the CSV's folder)")
    many.add_argument("--method", default="auto", choices=METHODS, metavar="M", help=METHOD_HELP)
    add_cluster_options(many)
    add_run_options(many, out_help="the results CSV (onnx,vnnlib,result,seconds,message), one row appended as each "
                                   "instance finishes")
    many.set_defaults(run=run_many)
    return one


def run_one(args):
    from ..vnnlib.runner import run_instance

    setup(args)
    model_path = _existing(args.onnx, "NET.onnx")
    _existing(args.vnnlib, "PROP.vnnlib")
    _load_to_device(model_path, args.device)
    report = run_instance(model_path, args.vnnlib, args.timeout, args.method, out=args.out, seed=args.seed)
    payload = {"onnx": args.onnx, "vnnlib": args.vnnlib, "timeout": args.timeout, "method": args.method, **report}
    how = f" by {report['decided_by']}" if report["decided_by"] else ""
    emit(args, payload, f"{report['result']}{how} in {report['seconds']:.2f} s")
    return 0


def run_many(args):
    from ..vnnlib.runner import run_csv

    setup(args)
    if args.device not in (None, "cpu"):
        raise CommandError("vnncomp runs on the CPU (the solvers do); drop --device")
    with cluster(args) as client:
        rows = run_csv(args.instances, root=args.root, out=args.out, n_jobs=args.jobs, method=args.method,
                       progress=args.progress, client=client, resume=args.resume, seed=args.seed)
    counts = {r: sum(row["result"] == r for row in rows) for r in ("sat", "unsat", "timeout", "unknown", "error")}
    payload = {"instances": args.instances, "method": args.method, "jobs": args.jobs, "scheduler": args.scheduler,
               "counts": counts,
               "results": [{k: row[k] for k in ("onnx", "vnnlib", "result", "seconds", "decided_by", "message")}
                           for row in rows]}
    emit(args, payload, _table(rows, counts))
    return 0


def _existing(path, what):
    import os

    if not os.path.isfile(path):
        raise CommandError(f"{what}: file {path!r} does not exist")
    return path


def _load_to_device(path, device):
    """Load the network once (the runner's per-process cache keeps it) on ``--device``."""
    if device is None:
        return
    from ..vnnlib import runner

    runner.cached_model(path).to(device)


def _table(rows, counts):
    width = max(len(row["vnnlib"]) for row in rows)
    onnx_width = max(len(row["onnx"]) for row in rows)
    lines = [f"{'onnx':{onnx_width}s}  {'vnnlib':{width}s}  {'result':7s}  {'seconds':>8s}"]
    lines += [f"{row['onnx']:{onnx_width}s}  {row['vnnlib']:{width}s}  {row['result']:7s}  {row['seconds']:8.2f}"
              + (f"  {row['message']}" if row["message"] else "") for row in rows]
    lines.append(", ".join(f"{n} {r}" for r, n in counts.items()) + f" of {len(rows)}")
    return "\n".join(lines)
