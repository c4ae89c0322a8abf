"""``robustopt certify MODEL``: certify, falsify or leave unknown each example with one or more bound methods."""
from __future__ import annotations

from .options import (add_ball_options, add_cluster_options, add_data_options, add_run_options, cluster, emit,
                      load_data, load_model, method_list, prepare_inputs, setup)

DEFAULT_METHODS = ["crown"]


def add_parser(subparsers):
    from ..verify import METHODS

    parser = subparsers.add_parser(
        "certify", help="certify a model's predictions with bound methods",
        description="For each example: 'falsified' when a point of the ball (the clean one, or one found by a short "
                    "PGD) has margin <= 0; 'certified' when the method's lower bound on every margin f_y - f_j "
                    "over the ball is > 0; 'unknown' otherwise (also on solver time-out).")
    parser.add_argument("model", metavar="MODEL", help="a robustopt.models.save file or an .onnx file")
    parser.add_argument("--method", "--methods", dest="methods", action="append", metavar="M[,M...]",
                        help=f"bound method(s): {', '.join(METHODS)} (default: crown; repeat or separate by commas)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="seconds per example for the methods that take one (lp, lp-cvxpy, milp, alpha-crown, "
                             "beta-crown); the others ignore it")
    parser.add_argument("--no-attack", action="store_true", help="skip the PGD attack before bounding")
    parser.add_argument("--batch-size", type=int, default=128, metavar="B", help="examples per batch (default 128)")
    add_data_options(parser, n=100)
    add_ball_options(parser)
    add_cluster_options(parser)
    add_run_options(parser, out_help="a JSON-lines file (.jsonl): one row per method and example (numbered from 0 "
                                     "at --start), appended as each is known, after a header line that identifies "
                                     "the run")
    parser.set_defaults(run=run)
    return parser


def run(args):
    import torch

    from ..verify import METHODS, certify

    setup(args)
    methods = method_list(args.methods, tuple(METHODS)) or DEFAULT_METHODS
    model = load_model(args.model, args.device)
    X, y = load_data(args)
    x = prepare_inputs(model, X)
    results = {}
    with cluster(args) as client:
        for method in methods:
            result = certify(model, x, torch.as_tensor(y), args.eps, args.norm, method, args.lower, args.upper,
                             batch_size=args.batch_size, time_limit=args.time_limit,
                             progress=args.progress, attack=not args.no_attack, n_jobs=args.jobs, client=client,
                             out=args.out, resume=args.resume)
            results[method] = {**result.counts, "certified_accuracy": result.certified_accuracy,
                               "seconds": result.seconds, "status": result.status,
                               "margin_lower": result.margin_lower, "errors": result.errors}
    payload = {"model": args.model, "data": args.data, "split": args.split, "start": args.start, "n": len(y),
               "eps": args.eps, "norm": args.norm, "lower": args.lower, "upper": args.upper, "methods": results}
    emit(args, payload, _text(payload))
    return 0


def _text(payload):
    lines = [f"{payload['n']} examples of {payload['data']} ({payload['split']}), l_{payload['norm']} ball eps = "
             f"{payload['eps']}, box [{payload['lower']}, {payload['upper']}]",
             f"{'method':12s} {'certified':>9s} {'falsified':>9s} {'unknown':>8s} {'error':>6s} {'cert. acc':>9s} "
             f"{'seconds':>8s}"]
    for method, r in payload["methods"].items():
        lines.append(f"{method:12s} {r['certified']:9d} {r['falsified']:9d} {r['unknown']:8d} {r['error']:6d} "
                     f"{r['certified_accuracy']:9.3f} {r['seconds']:8.2f}")
    return "\n".join(lines)
