"""``robustopt linear``: a standard and a robust logistic regression, clean and exact worst-case test error."""
from __future__ import annotations

from .options import CommandError, add_ball_options, add_data_options, add_run_options, emit, load_data, setup


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "linear", help="standard vs robust logistic regression: clean and exact worst-case error",
        description="Fits a standard (eps = 0) and a robust logistic regression on two classes of the training "
                    "split and reports the clean and the exact worst-case test error (closed form: no attack, no "
                    "relaxation) at radius --eps, inside the box [--lower, --upper].")
    parser.add_argument("--classes", default="0,1", metavar="A,B", help="the two labels (default 0,1)")
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularization strength (default 1.0)")
    add_data_options(parser, split="train")
    add_ball_options(parser, eps=0.2)
    add_run_options(parser, out_help="also write the JSON results to this file")
    parser.set_defaults(run=run)
    return parser


def run(args):
    import numpy as np

    from ..linear import demo_table
    from .options import metadata, write_json

    setup(args)
    try:
        classes = [int(c) for c in args.classes.split(",")]
    except ValueError:
        classes = []
    if len(classes) != 2 or classes[0] == classes[1]:
        raise CommandError(f"--classes must be two distinct labels like 0,1; got {args.classes!r}")
    train = load_data(args, flatten=True, classes=classes, split="train")
    test = load_data(args, flatten=True, classes=classes, split="test")
    train, test = [(np.asarray(X).reshape(len(X), -1), y) for X, y in (train, test)]
    rows = demo_table(*train, *test, args.eps, norm=args.norm, C=args.C, lower=args.lower, upper=args.upper)
    payload = {"data": args.data, "classes": classes, "eps": args.eps, "norm": args.norm, "lower": args.lower,
               "upper": args.upper, "C": args.C, "n_train": len(train[1]), "n_test": len(test[1]), "rows": rows}
    if args.out:
        write_json(args.out, {**payload, "meta": metadata(args)})
    lines = [f"{args.data} {classes[0]} vs {classes[1]} ({payload['n_train']} train / {payload['n_test']} test), "
             f"l_{args.norm} eps = {args.eps}, box [{args.lower}, {args.upper}]",
             f"{'model':20s} {'clean error':>11s} {'worst-case error (exact)':>25s} {'fit seconds':>11s}"]
    lines += [f"{r['model']:20s} {r['clean_error']:11.4f} {r['robust_error']:25.4f} {r['seconds']:11.2f}" for r in rows]
    emit(args, payload, "\n".join(lines))
    return 0
