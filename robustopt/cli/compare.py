"""``robustopt compare MODEL``: attack margins, exact MILP values and certified bounds side by side."""
from __future__ import annotations

import os
import sys

from .options import (add_ball_options, add_cluster_options, add_data_options, add_run_options, cluster, emit,
                      load_data, load_model, method_list, prepare_inputs, setup)

OUTPUTS = (".md", ".csv", ".json", ".png")


def add_parser(subparsers):
    from ..compare import ATTACKS, DEFAULT_METHODS
    from ..verify import METHODS

    parser = subparsers.add_parser(
        "compare", help="attack, exact and certified bounds on the same examples",
        description="Runs attacks (upper bounds on each example's minimum margin), bound methods (certified lower "
                    "bounds) and the exact MILP on the same examples, for one radius or a sweep; checks the bound "
                    "chain (bounds <= LP <= exact <= attack margin) on every example and class, and prints the "
                    "summary and the per-example table. Exit code 3 if the chain is violated.")
    parser.add_argument("model", metavar="MODEL", help="a robustopt.models.save file or an .onnx file")
    parser.add_argument("--method", "--methods", dest="methods", action="append", metavar="M[,M...]",
                        help=f"attacks ({', '.join(ATTACKS)}) and bound methods ({', '.join(METHODS)}); default: "
                             f"{','.join(DEFAULT_METHODS)}")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="seconds per example for the solvers and alpha-crown (default: none)")
    parser.add_argument("--attack-steps", type=int, default=100, metavar="K", help="steps per attack (default 100)")
    parser.add_argument("--restarts", type=int, default=2, metavar="R", help="attack restarts (default 2)")
    parser.add_argument("--rows", type=int, default=20, metavar="R",
                        help="per-example rows printed (default 20; all are in the files)")
    add_data_options(parser, n=20)
    add_ball_options(parser, multiple=True)
    add_cluster_options(parser, resume=False)
    add_run_options(parser, out_help="write PATH.md, PATH.csv, PATH.json and PATH.png (PATH/comparison.* when "
                                     "PATH is a folder or ends with /)")
    parser.set_defaults(run=run)
    return parser


def output_paths(out):
    """{suffix: path} for --out: a folder (existing, or ending with a slash) or a path prefix."""
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        os.makedirs(out, exist_ok=True)
        stem = os.path.join(out, "comparison")
    else:
        stem, suffix = os.path.splitext(out)
        stem = stem if suffix in OUTPUTS else out
        parent = os.path.dirname(stem)
        if parent and not os.path.isdir(parent):
            raise FileNotFoundError(f"--out: folder {parent!r} does not exist")
    return {suffix: stem + suffix for suffix in OUTPUTS}


def write_outputs(comparison, out, title=None):
    """Write the four files; the PNG is skipped with a note on stderr when matplotlib is missing."""
    paths = output_paths(out)
    with open(paths[".md"], "w") as f:
        f.write(comparison.to_markdown(max_rows=None) + "\n")
    comparison.to_csv(paths[".csv"])
    comparison.to_json(paths[".json"])
    try:
        from ..compare.plot import plot_comparison, require_matplotlib

        require_matplotlib()
    except ImportError as err:
        print(f"robustopt: note: {err}; not writing {paths['.png']}", file=sys.stderr)
        del paths[".png"]
    else:
        plot_comparison(comparison, paths[".png"], comparison.default_level, title=title)
    return list(paths.values())


def run(args):
    import torch

    from ..compare import ATTACKS, DEFAULT_METHODS, compare
    from ..verify import METHODS

    setup(args)
    methods = method_list(args.methods, (*ATTACKS, *METHODS)) or list(DEFAULT_METHODS)
    model = load_model(args.model, args.device)
    X, y = load_data(args)
    x = prepare_inputs(model, X)
    with cluster(args) as client:
        comparison = compare(model, x, torch.as_tensor(y), list(args.eps), methods, args.norm, args.lower,
                             args.upper, attack_steps=args.attack_steps, attack_restarts=args.restarts,
                             time_limit=args.time_limit, seed=args.seed, progress=args.progress, n_jobs=args.jobs,
                             client=client)
    comparison.meta.update(command=["robustopt", *sys.argv[1:]], model=args.model, data=args.data, split=args.split,
                           start=args.start)
    written = write_outputs(comparison, args.out) if args.out else []
    text = comparison.to_markdown(max_rows=args.rows)
    if written:
        text += "\n\nwrote " + ", ".join(written)
    emit(args, comparison.to_dict(), text)
    return 0 if comparison.ok else 3
